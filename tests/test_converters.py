"""Tests of the real-data converters (data/*/prepare.py) on tiny hand-written samples, run in-process."""

import gzip
import hashlib
import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `import data`
from common import ConfigError, run  # noqa: E402
from data.formats import FORMATS, DataError, read_jsonl, render_prompt, render_response  # noqa: E402

hh = importlib.import_module("data.hh_rlhf.prepare")
oasst = importlib.import_module("data.oasst.prepare")
alpaca = importlib.import_module("data.alpaca.prepare")
plain = importlib.import_module("data.text.prepare")


def write_jsonl_lines(path, records, compress=False):
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def read_all(out, kind):
    """Train and val records of one kind, checked against the format."""
    return [r for split in ("train", "val") for r in read_jsonl(out / f"{kind}_{split}.jsonl", FORMATS[kind])]


# -----------------------------------------------------------------------------
# HH-RLHF

def hh_pair(prompt_turns, chosen, rejected):
    head = "".join(f"\n\n{role}: {text}" for role, text in prompt_turns)
    return {"chosen": f"{head}\n\nAssistant: {chosen}", "rejected": f"{head}\n\nAssistant: {rejected}"}


def test_hh_splits_prompt_and_response_exactly(tmp_path):
    """HH pairs become K=2 comparisons and chosen-side SFT pairs whose rendering gives the transcript back."""
    pairs = [hh_pair([("Human", "Hi"), ("Assistant", "Hello."), ("Human", "A fruit?")], "A pear.", "No."),
             hh_pair([("Human", "Say yes")], "Yes.", "Never!")]
    src = write_jsonl_lines(tmp_path / "train.jsonl.gz", pairs, compress=True)
    hh.main([f"--src={src}", f"--out_dir={tmp_path / 'out'}", "--val_fraction=0.5"])
    comparisons = {r["prompt"]: r["responses"] for r in read_all(tmp_path / "out", "comparisons")}
    assert comparisons == {"Hi\n\nAssistant: Hello.\n\nHuman: A fruit?": ["A pear.", "No."],
                           "Say yes": ["Yes.", "Never!"]}
    sft = read_all(tmp_path / "out", "sft")
    assert {"\n\n" + render_prompt(r["prompt"]) + render_response(r["response"]) for r in sft} == \
        {p["chosen"] for p in pairs}
    assert {r["prompt"] for r in read_all(tmp_path / "out", "prompts")} == set(comparisons)


def test_hh_skips_bad_pairs_with_counted_reasons(tmp_path, capsys):
    """Identical pairs, pairs that branch early, missing fields and Human-final transcripts are counted."""
    good = hh_pair([("Human", "Q")], "good", "bad")
    early = {"chosen": "\n\nHuman: A\n\nAssistant: x\n\nHuman: B\n\nAssistant: y",
             "rejected": "\n\nHuman: A\n\nAssistant: z\n\nHuman: B\n\nAssistant: w"}
    records = [good, hh_pair([("Human", "Q2")], "same", "same"), early, {"chosen": "\n\nHuman: Q3"},
               {"chosen": "\n\nHuman: Q\n\nAssistant: a\n\nHuman: more", "rejected": good["rejected"]}]
    src = write_jsonl_lines(tmp_path / "hh.jsonl", records)
    hh.main([f"--src={src}", f"--out_dir={tmp_path / 'out'}"])
    out = capsys.readouterr().out
    assert f"skipped      1: pairs: chosen == rejected (first at {src}:2)" in out
    assert "skipped      1: pairs: chosen and rejected differ before the last Assistant turn" in out
    assert f"skipped      1: pairs: field 'rejected' is missing (first at {src}:4)" in out
    assert "skipped      1: pairs: transcript ends on a Human turn" in out
    assert [r["responses"] for r in read_all(tmp_path / "out", "comparisons")] == [["good", "bad"]]


def test_hh_prompt_holding_the_chat_template_is_skipped_and_counted(tmp_path, capsys):
    """A transcript whose human turn starts with "Human:" again would give a prompt that holds the chat template,
    which every stage refuses: the converter counts it out instead of writing a file the stages cannot read."""
    records = [hh_pair([("Human", "Q")], "good", "bad"), hh_pair([("Human", "Human: Q2")], "good", "bad")]
    hh.main([f"--src={write_jsonl_lines(tmp_path / 'hh.jsonl', records)}", f"--out_dir={tmp_path / 'out'}"])
    assert "skipped      1: comparisons: prompt holds the chat template" in capsys.readouterr().out
    assert [r["prompt"] for r in read_all(tmp_path / "out", "comparisons")] == ["Q"]


def comparison_prompts(out):
    """{split: [prompt, ...]} of the comparisons files a converter wrote into out."""
    return {split: [r["prompt"] for r in read_jsonl(out / f"comparisons_{split}.jsonl")]
            for split in ("train", "val", "judge") if (out / f"comparisons_{split}.jsonl").exists()}


def test_judge_split_is_a_seeded_hash_of_the_training_prompts(tmp_path):
    """comparisons_judge.jsonl holds the comparisons of round(judge_fraction * n) of the n training prompts: those
    first by sha256(seed:judge:prompt), for every seed and whatever the input's order, none of them in
    comparisons_train or _val, which hold the rest; another seed picks others."""
    pairs = [hh_pair([("Human", f"Question {i}?")], f"Answer {i}.", f"No {i}.") for i in range(40)]
    judged = []
    for seed in range(5):
        runs = []
        for name, records in (("a", pairs), ("reversed", pairs[::-1])):
            src = write_jsonl_lines(tmp_path / f"{name}.jsonl", records)
            out = tmp_path / f"{name}{seed}"
            hh.main([f"--src={src}", f"--out_dir={out}", f"--seed={seed}", "--judge_fraction=0.25"])
            runs.append({k: set(v) for k, v in comparison_prompts(out).items()})
        train, val, judge = (runs[0][s] for s in ("train", "val", "judge"))
        assert not (train & val or train & judge or val & judge)
        assert train | val | judge == {f"Question {i}?" for i in range(40)}
        first = sorted(train | judge, key=lambda g: hashlib.sha256(f"{seed}:judge:{g}".encode()).hexdigest())
        assert judge == set(first[:round(0.25 * len(train | judge))]), seed
        assert runs[1] == runs[0], seed
        judged.append(judge)
    assert judged[1] != judged[0]


def test_judge_split_leaves_demonstrations_and_prompts_alone(tmp_path):
    """--judge_fraction moves comparisons only: sft_* and prompts_* are the same files as without it, and
    --judge_fraction=0 writes no comparisons_judge.jsonl and keeps every training comparison in train."""
    pairs = [hh_pair([("Human", f"Question {i}?")], f"Answer {i}.", f"No {i}.") for i in range(30)]
    src = write_jsonl_lines(tmp_path / "hh.jsonl", pairs)
    for name, fraction in (("none", 0), ("judge", 0.2)):
        hh.main([f"--src={src}", f"--out_dir={tmp_path / name}", f"--judge_fraction={fraction}"])
    for kind in ("sft", "prompts"):
        for split in ("train", "val"):
            name = f"{kind}_{split}.jsonl"
            assert (tmp_path / "none" / name).read_text() == (tmp_path / "judge" / name).read_text(), name
    none, judged = comparison_prompts(tmp_path / "none"), comparison_prompts(tmp_path / "judge")
    assert "judge" not in none and len(judged["judge"]) == round(0.2 * len(none["train"]))
    assert sorted(judged["train"] + judged["judge"]) == sorted(none["train"]) and judged["val"] == none["val"]


# -----------------------------------------------------------------------------
# OpenAssistant

def msg(text, role, rank=None, replies=(), lang="en", **extra):
    return {"text": text, "role": role, "rank": rank, "lang": lang, "replies": list(replies), **extra}


def oasst_tree(tree_id="t1", lang="en"):
    """A question with 3 ranked replies (out of order), 1 unranked, and a follow-up under the best."""
    follow_up = msg("And pears?", "prompter", lang=lang, replies=[
        msg("Pears too.", "assistant", rank=1, lang=lang),
        msg("Pears are great.", "assistant", rank=0, lang=lang)])
    root = msg("Are apples healthy?", "prompter", lang=lang, replies=[
        msg("Meh.", "assistant", rank=2, lang=lang),
        msg("Yes, very.", "assistant", rank=0, lang=lang, replies=[follow_up]),
        msg("Unranked answer.", "assistant", rank=None, lang=lang),
        msg("Somewhat.", "assistant", rank=1, lang=lang)])
    return {"message_tree_id": tree_id, "prompt": root}


def test_oasst_kway_order_by_rank_and_unranked_skipped(tmp_path, capsys):
    """Ranked siblings make one comparison ordered by rank, best first; unranked ones are counted out."""
    src = write_jsonl_lines(tmp_path / "trees.jsonl", [oasst_tree()])
    data = oasst.Collector(["comparisons", "sft", "prompts"], max_chars=1000)
    assert oasst.convert(src, data) == 1
    follow_prompt = "Are apples healthy?\n\nAssistant: Yes, very.\n\nHuman: And pears?"
    assert [r for _, r in data.records["comparisons"]] == [
        {"prompt": "Are apples healthy?", "responses": ["Yes, very.", "Somewhat.", "Meh."]},
        {"prompt": follow_prompt, "responses": ["Pears are great.", "Pears too."]}]
    assert [r for _, r in data.records["sft"]] == [
        {"prompt": "Are apples healthy?", "response": "Yes, very."},
        {"prompt": follow_prompt, "response": "Pears are great."}]
    assert [r["prompt"] for _, r in data.records["prompts"]] == ["Are apples healthy?", follow_prompt]
    assert data.skipped == {"comparisons: unranked reply left out": 1}
    assert {g for kind in data.records.values() for g, _ in kind} == {"t1"}  # one tree, one group


def test_oasst_judge_split_keeps_a_tree_together(tmp_path):
    """The judge split picks whole trees: a tree's two rankings (its question and the follow-up) land in
    comparisons_judge.jsonl together or not at all."""
    trees = [json.loads(json.dumps(oasst_tree(f"t{i}")).replace("apples", f"apples{i}")) for i in range(10)]
    src = write_jsonl_lines(tmp_path / "trees.jsonl", trees)
    oasst.main([f"--src={src}", f"--out_dir={tmp_path / 'out'}", "--judge_fraction=0.3"])
    split = comparison_prompts(tmp_path / "out")
    judged = {p.split("?")[0] for p in split["judge"]}  # "Are apples3 healthy" for both rankings of tree 3
    assert len(split["judge"]) == 2 * len(judged) == 2 * round(0.3 * (10 - len(split["val"]) // 2))
    assert not judged & {p.split("?")[0] for p in split["train"] + split["val"]}


def test_oasst_language_filter(tmp_path, capsys):
    """--lang keeps only trees whose root message has that language and counts the others."""
    src = write_jsonl_lines(tmp_path / "trees.jsonl.gz", [oasst_tree("t1", "en"), oasst_tree("t2", "de"),
                                                          oasst_tree("t3", "en")], compress=True)
    out = tmp_path / "out"
    oasst.main([f"--src={src}", f"--out_dir={out}", "--lang=de", "--val_fraction=0"])
    assert "skipped      2: trees: language is not 'de'" in capsys.readouterr().out
    assert len(read_all(out, "comparisons")) == 2 and read_jsonl(out / "comparisons_val.jsonl") == []


def test_oasst_k_below_two_and_duplicates(tmp_path):
    """A single ranked reply (K < 2) and a ranking with duplicate texts give no comparison but are counted."""
    root = msg("Q", "prompter", replies=[msg("only", "assistant", rank=0)])
    dup = msg("Q2", "prompter", replies=[msg("same", "assistant", rank=0), msg("same ", "assistant", rank=1)])
    src = write_jsonl_lines(tmp_path / "trees.jsonl", [{"message_tree_id": "a", "prompt": root},
                                                       {"message_tree_id": "b", "prompt": dup}])
    data = oasst.Collector(["comparisons", "sft", "prompts"], max_chars=1000)
    oasst.convert(src, data)
    assert data.records["comparisons"] == []
    assert data.skipped == {"comparisons: fewer than K=2 responses": 1,
                            "comparisons: duplicate responses in a ranking": 1}
    assert len(data.records["sft"]) == 2  # the best reply is still a fine demonstration


def test_oasst_malformed_message_is_counted_not_a_traceback(tmp_path):
    """A message without text, a deleted reply and a tree without "prompt" are counted, not crashes."""
    root = msg("Q", "prompter", replies=[{"role": "assistant", "rank": 0}, msg("gone", "assistant", rank=1,
                                                                                deleted=True)])
    src = write_jsonl_lines(tmp_path / "trees.jsonl", [{"message_tree_id": "a", "prompt": root}, {"x": 1}])
    data = oasst.Collector(["comparisons", "sft", "prompts"], max_chars=1000)
    oasst.convert(src, data)
    assert data.skipped == {"messages: field 'text' is missing": 1, "messages: deleted": 1,
                            "trees: field 'prompt' is missing or not an object": 1}


# -----------------------------------------------------------------------------
# Alpaca

def test_alpaca_both_layouts_and_input_appended(tmp_path):
    """Flat JSON-list records and seed-task instances become SFT pairs; a non-empty input follows "\\n\\n"."""
    flat = tmp_path / "alpaca_data.json"
    flat.write_text(json.dumps([{"instruction": "Add.", "input": "2 + 2", "output": "4"},
                                {"instruction": "Greet.", "input": "", "output": "Hello."}], indent=2))
    seed = write_jsonl_lines(tmp_path / "seed_tasks.jsonl", [
        {"instruction": "Negate.",
         "instances": [{"input": "yes", "output": "no"}, {"input": "up", "output": "down"}]}])
    out = tmp_path / "out"
    counts = alpaca.main([f"--src={flat},{seed}", f"--out_dir={out}"])
    pairs = {r["prompt"]: r["response"] for r in read_all(out, "sft")}
    assert pairs == {"Add.\n\n2 + 2": "4", "Greet.": "Hello.",
                     "Negate.\n\nyes": "no", "Negate.\n\nup": "down"}
    assert {r["prompt"] for r in read_all(out, "prompts")} == set(pairs)
    assert counts["sft_train.jsonl"] + counts["sft_val.jsonl"] == 4  # main() returns {file: records written}
    val = {r["prompt"] for r in read_jsonl(out / "sft_val.jsonl")}
    negate = {"Negate.\n\nyes", "Negate.\n\nup"}
    assert negate <= val or not negate & val  # the instances of one task stay in one split


def test_alpaca_missing_and_empty_fields_counted(tmp_path, capsys):
    """Missing output, empty output, empty instruction and over-long examples are each counted."""
    src = write_jsonl_lines(tmp_path / "a.jsonl", [
        {"instruction": "ok", "output": "fine"}, {"instruction": "no output"},
        {"instruction": "x", "output": " "},
        {"instruction": " ", "output": "y"}, {"instruction": "long", "output": "z" * 100}])
    alpaca.main([f"--src={src}", f"--out_dir={tmp_path / 'out'}", "--max_chars=50"])
    out = capsys.readouterr().out
    for reason in ["instructions: field 'output' is missing", "sft: empty response", "sft: empty prompt",
                   "sft: longer than --max_chars=50"]:
        assert f"skipped      1: {reason}" in out
    assert read_all(tmp_path / "out", "sft") == [{"prompt": "ok", "response": "fine"}]


# -----------------------------------------------------------------------------
# plain text

def test_text_split_covers_all_text(tmp_path):
    """Train + val chunks hold every word of the text exactly once, in bounded chunks, the same every run."""
    paragraphs = [f"SPEAKER {i}:\n" + " ".join(f"word{i}_{j}" for j in range(i % 7 + 1)) for i in range(60)]
    paragraphs.append("LONG:\n" + "\n".join(f"line {k} " + "x" * 40 for k in range(10)))  # > max_chars alone
    src = tmp_path / "input.txt"
    src.write_text("\n\n".join(paragraphs) + "\n")
    out1, out2 = tmp_path / "a", tmp_path / "b"
    for out in (out1, out2):
        plain.main([f"--src={src}", f"--out_dir={out}", "--max_chars=120"])
    chunks = read_all(out1, "pretrain")
    assert Counter(w for r in chunks for w in r["text"].split()) == Counter(src.read_text().split())
    assert max(len(r["text"]) for r in chunks) <= 120
    assert len(read_jsonl(out1 / "pretrain_val.jsonl")) == round(0.1 * len(chunks))
    for split in ("train", "val"):
        name = f"pretrain_{split}.jsonl"
        assert (out1 / name).read_text() == (out2 / name).read_text()


# -----------------------------------------------------------------------------
# mistakes a user can make: one line "error: ..." on stderr and exit code 1, as every script of the project

def run_as_script(module, args, monkeypatch):
    """Run module.main the way `python data/NAME/prepare.py ARGS` does (common.run); returns the exit code."""
    monkeypatch.setattr(sys, "argv", [module.__file__, *args])
    monkeypatch.delenv("RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(module.main)
    return exit_info.value.code


@pytest.mark.parametrize("module", [hh, oasst, alpaca])
def test_malformed_json_line_is_one_line_error(tmp_path, capsys, monkeypatch, module):
    """A malformed JSON line: exit code 1 and one stderr line "error: FILE:LINE: malformed JSON", no output."""
    src = write_jsonl_lines(tmp_path / "bad.jsonl", ['{"instruction": "a", "output": "b"}', '{"chosen": '])
    assert run_as_script(module, [f"--src={src}", f"--out_dir={tmp_path / 'out'}"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}:2: malformed JSON") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", [hh, oasst, alpaca, plain])
def test_missing_src_is_one_line_error(tmp_path, capsys, monkeypatch, module):
    """A nonexistent --src: exit code 1 with "error: FILE: no such file", not a traceback."""
    missing = tmp_path / "nope.jsonl"
    assert run_as_script(module, [f"--src={missing}", f"--out_dir={tmp_path / 'out'}"], monkeypatch) == 1
    assert capsys.readouterr().err == f"error: {missing}: no such file\n"


def test_truncated_gzip_is_one_line_error(tmp_path, capsys, monkeypatch):
    """A corrupt gzip file is reported as one error line naming the file."""
    src = tmp_path / "hh.jsonl.gz"
    src.write_bytes(gzip.compress(b'{"chosen": "a", "rejected": "b"}\n' * 100)[:40])
    assert run_as_script(hh, [f"--src={src}", f"--out_dir={tmp_path / 'out'}"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}: corrupt or truncated gzip file") and err.count("\n") == 1


@pytest.mark.parametrize("module", [hh, oasst, alpaca, plain])
def test_unknown_flag_is_one_line_error(tmp_path, capsys, monkeypatch, module):
    """The old --out (now --out_dir) is an unknown flag: one line naming it, exit code 1, nothing written."""
    src = write_jsonl_lines(tmp_path / "ok.jsonl", [hh_pair([("Human", "Q")], "good", "bad")])
    assert run_as_script(module, [f"--src={src}", f"--out={tmp_path / 'out'}"], monkeypatch) == 1
    assert capsys.readouterr().err == "error: unknown option --out (see --help)\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--val_fraction=1.5", "--max_chars=0", "--seed=x"])
def test_bad_flag_value_is_refused(tmp_path, flag):
    """A value out of range or of the wrong type stops main() with a one-line error before anything is read."""
    with pytest.raises((ConfigError, DataError), match=flag.split("=")[0]):
        plain.main([f"--src={tmp_path / 'nope.txt'}", f"--out_dir={tmp_path / 'out'}", flag])
    assert not (tmp_path / "out").exists()


def test_help_lists_every_flag_with_default(capsys):
    """--help prints each field with its default and comment, then exits 0 (before reading anything)."""
    with pytest.raises(SystemExit) as exit_info:
        oasst.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ["--src=()", "--out_dir='data/oasst'", "--val_fraction=0.1", "--seed=0", "--max_chars=4000",
                 "--lang=''"]:
        assert flag in out
