"""Tests of data/formats.py: reading, writing, the chat template, the cleaning path and the split."""

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import data`
from data.formats import (  # noqa: E402
    FORMATS,
    Collector,
    DataError,
    choose_val,
    fetch,
    join_turns,
    read_jsonl,
    render_prompt,
    render_response,
    write_jsonl,
)


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -----------------------------------------------------------------------------
# read_jsonl

def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    """A line that is not JSON raises DataError naming the file and its line number."""
    path = write_lines(tmp_path / "sft_train.jsonl", ['{"prompt": "a", "response": "b"}', '{"prompt": "a",'])
    with pytest.raises(DataError, match=r"sft_train\.jsonl:2: malformed JSON"):
        read_jsonl(path, FORMATS["sft"])


def test_read_jsonl_missing_field_names_file_line_and_field(tmp_path):
    """A record without a required field raises "FILE:LINE: field 'x' is missing"."""
    path = write_lines(tmp_path / "sft_train.jsonl", ['{"prompt": "a", "response": "b"}', "",
                                                     '{"prompt": "a"}'])
    with pytest.raises(DataError, match=r"sft_train\.jsonl:3: field 'response' is missing"):
        read_jsonl(path, FORMATS["sft"])


def test_read_jsonl_wrong_type_and_empty_string(tmp_path):
    """A field of the wrong type or an empty string is refused with file, line and field."""
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": 3}'])
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'prompt' should be str"):
        read_jsonl(path, FORMATS["prompts"])
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "  "}'])
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'prompt' is empty"):
        read_jsonl(path, FORMATS["prompts"])


@pytest.mark.parametrize("responses, what", [(["only"], "K >= 2"), (["a", "a"], "duplicate"),
                                             (["a", ""], "empty response"), (["a", 1], "should be")])
def test_read_jsonl_checks_rankings(tmp_path, responses, what):
    """A comparison needs K >= 2 distinct non-empty string responses; the error names file, line, field."""
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"prompt": "p", "responses": responses})])
    with pytest.raises(DataError, match=rf"c\.jsonl:1: field 'responses'.*{what}"):
        read_jsonl(path, FORMATS["comparisons"])


def test_read_jsonl_reads_gzip_by_magic_bytes(tmp_path):
    """A gzip file is detected by its magic bytes even without a .gz suffix."""
    path = tmp_path / "prompts_train.jsonl"
    path.write_bytes(gzip.compress(b'{"prompt": "hi"}\n'))
    assert read_jsonl(path, FORMATS["prompts"]) == [{"prompt": "hi"}]


def test_read_jsonl_missing_file(tmp_path):
    """A nonexistent file is a DataError naming it, not a FileNotFoundError traceback."""
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        read_jsonl(tmp_path / "nope.jsonl")


# -----------------------------------------------------------------------------
# write_jsonl

def test_write_jsonl_roundtrips(tmp_path):
    """write_jsonl then read_jsonl gives back the same records, non-ASCII and newlines included."""
    records = [{"prompt": "Grüße\n\nAssistant: x\n\nHuman: y", "responses": ["é", "\"quoted\""]}]
    path = tmp_path / "sub" / "comparisons_train.jsonl"
    assert write_jsonl(path, records) == 1
    assert read_jsonl(path, FORMATS["comparisons"]) == records


def test_write_jsonl_is_atomic(tmp_path):
    """If writing fails midway the old file is untouched and no temp file is left behind."""
    path = tmp_path / "prompts_train.jsonl"
    write_jsonl(path, [{"prompt": "old"}])

    def records():
        yield {"prompt": "new"}
        raise RuntimeError("crash while writing")
    with pytest.raises(RuntimeError):
        write_jsonl(path, records())
    assert read_jsonl(path) == [{"prompt": "old"}]
    assert os.listdir(tmp_path) == ["prompts_train.jsonl"]


# -----------------------------------------------------------------------------
# the chat template

def test_template_renders_hh_transcript_exactly():
    """An HH transcript is exactly "\\n\\n" + render_prompt(prompt) + render_response(response)."""
    transcript = ("\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
                  "\n\nHuman: Name a fruit.\n\nAssistant: A pear.")
    prompt = join_turns(["Hi there", "Hello! How can I help?", "Name a fruit."])
    assert prompt == "Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Name a fruit."
    assert "\n\n" + render_prompt(prompt) + render_response("A pear.") == transcript


def test_template_single_turn():
    """A single-turn prompt renders as "Human: p\\n\\nAssistant:" and the response as " r"."""
    assert render_prompt("What is 2+2?") == "Human: What is 2+2?\n\nAssistant:"
    assert render_response("4") == " 4"


# -----------------------------------------------------------------------------
# Collector and the split

def test_collector_counts_every_skip_reason(capsys):
    """Every bad example is counted under its reason and printed; good ones are kept stripped."""
    data = Collector(["sft", "comparisons", "prompts"], max_chars=20)
    assert data.add_sft("g", "  p  ", " r \n", "f:1")
    assert not data.add_sft("g", " ", "r", "f:2")
    assert not data.add_sft("g", "p", "", "f:3")
    assert not data.add_sft("g", "p", "x" * 30, "f:4")
    assert not data.add_sft("g", "p", "r", "f:5")
    assert not data.add_comparison("g", "p", ["a"], "f:6")
    assert not data.add_comparison("g", "p", ["a", "b", "a"], "f:7")
    assert not data.add_comparison("g", "p", ["a", " "], "f:8")
    assert data.field({"x": 1}, "chosen", "f:9") is None
    assert data.records["sft"] == [("g", {"prompt": "p", "response": "r"})]
    assert data.skipped == {"sft: empty prompt": 1, "sft: empty response": 1,
                            "sft: longer than --max_chars=20": 1, "sft: exact duplicate": 1,
                            "comparisons: fewer than K=2 responses": 1,
                            "comparisons: duplicate responses in a ranking": 1,
                            "comparisons: empty response in a ranking": 1,
                            "input: field 'chosen' is missing": 1}
    data.report_skips()
    out = capsys.readouterr().out
    assert "skipped      1: sft: empty prompt (first at f:2)" in out
    assert len(out.splitlines()) == len(data.skipped)


def test_collector_refuses_to_write_nothing(tmp_path):
    """When every example was skipped, write() raises a DataError instead of writing empty files."""
    data = Collector(["prompts"], max_chars=10)
    data.add_prompt("g", "")
    with pytest.raises(DataError, match="no examples left"):
        data.write(tmp_path, 0.1)
    assert list(tmp_path.iterdir()) == []


def test_choose_val_is_deterministic_and_sized():
    """The val groups depend only on the groups and the seed, and are round(fraction * n) of them."""
    groups = [f"g{i}" for i in range(100)]
    val = choose_val([groups], 0.1, seed=0)
    assert len(val) == 10 and val == choose_val([list(reversed(groups))], 0.1, seed=0)
    assert val != choose_val([groups], 0.1, seed=1)
    assert len(choose_val([["a", "b"]], 0.1)) == 1  # tiny data still gets one val group


def test_choose_val_gives_rare_kind_its_share():
    """A kind present in few groups still gets about val_fraction of them in val."""
    common, rare = [f"g{i}" for i in range(1000)], [f"g{i}" for i in range(0, 1000, 50)]
    val = choose_val([common, rare], 0.1)
    assert len(val & set(rare)) == 2 and 100 <= len(val) <= 102


def test_collector_write_keeps_groups_together(tmp_path):
    """Every example of a group lands in the same split in every kind, and nothing is lost."""
    data = Collector(["sft", "prompts"], max_chars=100)
    for i in range(30):
        data.add_sft(f"g{i}", f"prompt {i}", f"response {i}")
        data.add_prompt(f"g{i}", f"prompt {i}")
    counts = data.write(tmp_path, 0.2, seed=3)
    assert counts == {"sft_train.jsonl": 24, "sft_val.jsonl": 6,
                      "prompts_train.jsonl": 24, "prompts_val.jsonl": 6}
    for split in ("train", "val"):
        sft = {r["prompt"] for r in read_jsonl(tmp_path / f"sft_{split}.jsonl", FORMATS["sft"])}
        prompts = {r["prompt"] for r in read_jsonl(tmp_path / f"prompts_{split}.jsonl", FORMATS["prompts"])}
        assert sft == prompts


# -----------------------------------------------------------------------------
# fetch (file:// URLs stand in for the network)

def test_fetch_skips_lfs_pointers_and_failures_then_caches(tmp_path):
    """fetch takes the first URL that gives real content (not a Git LFS pointer) and reuses its cache."""
    pointer, real = tmp_path / "pointer", tmp_path / "real"
    pointer.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    real.write_bytes(b"data")
    urls = [(tmp_path / "missing").as_uri(), pointer.as_uri(), real.as_uri()]
    cache = tmp_path / "downloads" / "file"
    assert fetch(urls, cache) == cache and cache.read_bytes() == b"data"
    real.write_bytes(b"changed")
    assert fetch(urls, cache).read_bytes() == b"data"


def test_fetch_failure_is_one_clear_error(tmp_path):
    """When no URL works, fetch raises a DataError that says to pass --src, and creates nothing."""
    with pytest.raises(DataError, match="download failed.*--src"):
        fetch([(tmp_path / "missing").as_uri()], tmp_path / "downloads" / "file")
    assert not (tmp_path / "downloads").exists()


# -----------------------------------------------------------------------------
# the judge a prepare script leaves (data.load_judge)


def test_load_judge_finds_the_synthetic_judge_and_refuses_others(tmp_path):
    """judge.json naming the synthetic world's judge gives a Judge; none gives None; one naming no module
    under data/, no module at all or a module without a Judge is a DataError that names the file."""
    from data import load_judge
    assert load_judge(tmp_path) is None
    write_jsonl(tmp_path / "judge.json", [{"module": "data.synthetic.judge"}])
    assert hasattr(load_judge(tmp_path), "win_rate")
    for bad in ("os", "data.nowhere.judge", "data.formats"):
        write_jsonl(tmp_path / "judge.json", [{"module": bad}])
        with pytest.raises(DataError, match="judge.json"):
            load_judge(tmp_path)
    (tmp_path / "judge.json").write_text("{not json\n")
    with pytest.raises(DataError, match="judge.json:1: malformed JSON"):
        load_judge(tmp_path)
