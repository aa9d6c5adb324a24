"""
The record formats, the chat template and the one cleaning/writing path shared by every dataset.

Every stage reads the JSONL files described here with read_jsonl (checked against FORMATS); every converter
(data/*/prepare.py) cleans its examples through `Collector` and everything is written by `write_jsonl`, so
there is one set of checks and one writer. The formats (see data/README.md for the long version):

    pretrain_{train,val}.jsonl     {"text": str}
    sft_{train,val}.jsonl          {"prompt": str, "response": str}
    comparisons_{train,val}.jsonl  {"prompt": str, "responses": [best, ..., worst]}   K >= 2, distinct
    comparisons_judge.jsonl        the same, for a held-out judge reward model (real preference data)
    prompts_{train,val}.jsonl      {"prompt": str}

The chat template, identical in SFT, RM and PPO:

    render_prompt(prompt)     == "Human: " + prompt + "\\n\\nAssistant:"
    render_response(response) == " " + response

and the tokenizer code appends the EOS token id after the response (never the text "<|endoftext|>").
A multi-turn conversation lives inside the prompt as "turn\\n\\nAssistant: reply\\n\\nHuman: turn", so an
Anthropic HH-RLHF transcript is exactly "\\n\\n" + render_prompt(prompt) + render_response(response).
"""

import contextlib
import gzip
import hashlib
import json
import os
import tempfile
import typing
import urllib.error
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

# -----------------------------------------------------------------------------
# formats

# field -> type of each record kind; read_jsonl checks these, Collector produces them
FORMATS = {
    "pretrain": {"text": str},
    "sft": {"prompt": str, "response": str},
    "comparisons": {"prompt": str, "responses": list[str]},
    "prompts": {"prompt": str},
}
SPLITS = ("train", "val")  # the synthetic world adds "test" for prompts, the preference converters "judge"


class DataError(ValueError):
    """Bad input. The message names the file, the line (when there is one) and the field."""


# -----------------------------------------------------------------------------
# the chat template

def render_prompt(prompt: str) -> str:
    """Model input for a prompt; generation (and the response) starts right after "Assistant:"."""
    return "Human: " + prompt + "\n\nAssistant:"


def render_response(response: str) -> str:
    """Target text for a response. The tokenizer code appends the EOS token id after it."""
    return " " + response


def holds_template(prompt: str) -> bool:
    """Does a prompt carry the chat template itself (a raw "Human: ... Assistant:" transcript)? The stages add
    it, so a model would read it twice. A multi-turn prompt holds "Assistant:" turns inside, never at its ends."""
    return prompt.lstrip().startswith("Human:") or prompt.rstrip().endswith("Assistant:")


def join_turns(turns: list[str]) -> str:
    """Store a conversation [human, assistant, human, ...] (ending on a human turn) as one prompt."""
    assert len(turns) % 2 == 1, "a prompt ends on a human turn"
    parts = [turns[0]]
    for i in range(1, len(turns), 2):
        parts.append("\n\nAssistant: " + turns[i] + "\n\nHuman: " + turns[i + 1])
    return "".join(parts)


# -----------------------------------------------------------------------------
# reading

def open_text(path):
    """Open a text file for reading, gunzipping it when it is gzip (by suffix or by magic bytes)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b" or path.suffix == ".gz":
            return gzip.open(path, "rt", encoding="utf-8")
        return open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:  # a directory, no permission, ...
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_lines(path):
    """Yield (line number, line) of a text file, turning decoding problems into a DataError."""
    lineno = 0
    with open_text(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                yield lineno, line
        except UnicodeDecodeError:
            raise DataError(f"{path}:{lineno + 1}: not valid UTF-8 text") from None
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: corrupt or truncated gzip file ({e})") from None


def iter_json(path):
    """Yield (where, value) for each record of a JSONL file or of a JSON list; where = "file:line".

    Blank lines are allowed; a line that is not JSON stops everything with a DataError naming it,
    because a broken file is better repaired than silently half-used."""
    lines = read_lines(path)
    first = True
    for lineno, line in lines:
        if not line.strip():
            continue
        if first and line.lstrip().startswith("["):  # a JSON list (e.g. alpaca_data.json)
            # pad with the lines before it so that JSON error line numbers are the file's
            yield from _iter_json_list(path, "\n" * (lineno - 1) + line + "".join(r for _, r in lines))
            return
        first = False
        try:
            yield f"{path}:{lineno}", json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def _iter_json_list(path, text):
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}:1: expected a JSON list or one JSON object per line")
    for i, item in enumerate(items):
        yield f"{path}:item {i}", item


def _type_name(t) -> str:
    return getattr(t, "__name__", str(t)) if typing.get_origin(t) is None else str(t)


def check_record(record, fields: dict, where: str) -> dict:
    """Check one parsed record against {field: type}; raise DataError naming where and the field.

    Strings must be non-empty after stripping; a "responses" field is a ranking, so it also needs
    K >= 2 distinct responses."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name, t in fields.items():
        if name not in record:
            raise DataError(f"{where}: field '{name}' is missing")
        value = record[name]
        origin = typing.get_origin(t)
        if origin is list:
            (item_type,) = typing.get_args(t)
            ok = isinstance(value, list) and all(isinstance(v, item_type) for v in value)
        else:
            ok = isinstance(value, t)
        if not ok:
            got = json.dumps(value)[:60]
            raise DataError(f"{where}: field '{name}' should be {_type_name(t)}, got {got}")
        if isinstance(value, str) and not value.strip():
            raise DataError(f"{where}: field '{name}' is empty")
        if name == "prompt" and holds_template(value):
            raise DataError(f"{where}: field 'prompt' holds the chat template ({value[:40]!r}): store the bare "
                            f"prompt, the stages add 'Human: ... Assistant:' themselves (data/README.md; "
                            f"data/hh_rlhf/prepare.py converts HH transcripts)")
        if name == "responses":
            if len(value) < 2:
                raise DataError(f"{where}: field 'responses' needs K >= 2 responses, got {len(value)}")
            if any(not v.strip() for v in value):
                raise DataError(f"{where}: field 'responses' contains an empty response")
            if len(set(value)) < len(value):
                raise DataError(f"{where}: field 'responses' contains duplicate responses")
    return record


def read_jsonl(path, fields: dict | None = None) -> list[dict]:
    """Read a JSONL file (plain or gzip) and check every record against {field: type} (see FORMATS).

    Raises DataError "FILE:LINE: field 'x' is missing" (or malformed JSON, wrong type, empty, K < 2)."""
    records = []
    for where, record in iter_json(path):
        records.append(check_record(record, fields or {}, where))
    return records


def read_split(data_dir, kind: str, split: str) -> list[dict]:
    """Read data_dir/{kind}_{split}.jsonl checked against FORMATS[kind]."""
    return read_jsonl(Path(data_dir) / f"{kind}_{split}.jsonl", FORMATS[kind])


# -----------------------------------------------------------------------------
# writing

@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """A file object for writing path that replaces it only when the block succeeds (a temporary file in the
    same folder, fsync, os.replace); on any error the temporary file is removed. A crash mid-write leaves
    the old file (or none), never a truncated one. Every file this project writes goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a data file is ordinary
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_jsonl(path, records) -> int:
    """Write records as JSONL, atomically."""
    n = 0
    with atomic_write(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def choose_val(group_sets, val_fraction: float, seed: int = 0) -> set:
    """Pick the validation groups so that each kind gets about val_fraction of its groups in val.

    group_sets: one collection of groups per kind (HH: comparisons, sft, prompts). Groups are ranked by
    sha256(seed:group), which makes the split deterministic and independent of the input order. The kind
    with the fewest groups (often comparisons) picks first, the others top up with further groups, so a
    rare kind is not left with a handful of val examples by chance. Each kind gets round(fraction * n)
    val groups or a few more, at least 1 and at most n - 1 when it has >= 2 groups and 0 < fraction < 1."""
    def rank(g):
        return hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()
    val = set()
    for groups in sorted((set(gs) for gs in group_sets), key=len):
        n = len(groups)
        target = round(val_fraction * n)
        if 0 < val_fraction < 1 and n >= 2:
            target = min(max(target, 1), n - 1)
        missing = target - len(groups & val)
        val.update(sorted(groups - val, key=rank)[:max(missing, 0)])
    return val


class Collector:
    """The one cleaning path: converters add raw examples, bad ones are counted per reason, never dropped
    silently, and write() splits train/val and writes the JSONL files.

    Every example carries a `group` (an HH prompt, an OASST tree id, an Alpaca instruction, ...): a group
    goes wholly to train or to val in every kind, so no val prompt is ever seen in SFT or RM training."""

    def __init__(self, kinds, max_chars: int):
        self.kinds = tuple(kinds)
        self.max_chars = max_chars
        self.records = {kind: [] for kind in self.kinds}  # kind -> [(group, record)]
        self.seen = {kind: set() for kind in self.kinds}  # exact duplicates are counted and dropped
        self.skipped = Counter()  # reason -> count
        self.first_at = {}  # reason -> where it first happened, to help find it

    def skip(self, reason: str, where: str | None = None):
        self.skipped[reason] += 1
        self.first_at.setdefault(reason, where)

    def field(self, record, name: str, where: str | None = None, kind: str = "input"):
        """record[name] if it is a string, else None (counted as a missing/invalid field)."""
        if not isinstance(record, dict):
            self.skip(f"{kind}: record is not a JSON object", where)
            return None
        if name not in record or record[name] is None:
            self.skip(f"{kind}: field '{name}' is missing", where)
            return None
        if not isinstance(record[name], str):
            self.skip(f"{kind}: field '{name}' is not a string", where)
            return None
        return record[name]

    def _keep(self, kind, group, record, where, n_chars):
        if "prompt" in record and holds_template(record["prompt"]):  # read_jsonl would refuse the whole file
            self.skip(f"{kind}: prompt holds the chat template", where)
            return False
        if n_chars > self.max_chars:
            self.skip(f"{kind}: longer than --max_chars={self.max_chars}", where)
            return False
        key = json.dumps(record, sort_keys=True)
        if key in self.seen[kind]:
            self.skip(f"{kind}: exact duplicate", where)
            return False
        self.seen[kind].add(key)
        self.records[kind].append((str(group), record))
        return True

    def add_text(self, group, text: str, where=None) -> bool:
        text = text.strip()
        if not text:
            self.skip("pretrain: empty text", where)
            return False
        return self._keep("pretrain", group, {"text": text}, where, len(text))

    def add_sft(self, group, prompt: str, response: str, where=None) -> bool:
        prompt, response = prompt.strip(), response.strip()
        if not prompt:
            self.skip("sft: empty prompt", where)
            return False
        if not response:
            self.skip("sft: empty response", where)
            return False
        return self._keep("sft", group, {"prompt": prompt, "response": response}, where,
                          len(prompt) + len(response))

    def add_comparison(self, group, prompt: str, responses: list[str], where=None) -> bool:
        """responses are ordered best first."""
        prompt, responses = prompt.strip(), [r.strip() for r in responses]
        if not prompt:
            self.skip("comparisons: empty prompt", where)
            return False
        if any(not r for r in responses):
            self.skip("comparisons: empty response in a ranking", where)
            return False
        if len(responses) < 2:
            self.skip("comparisons: fewer than K=2 responses", where)
            return False
        if len(set(responses)) < len(responses):
            # a response ranked above itself says nothing; keep no part of a self-contradicting ranking
            self.skip("comparisons: duplicate responses in a ranking", where)
            return False
        return self._keep("comparisons", group, {"prompt": prompt, "responses": responses}, where,
                          len(prompt) + max(len(r) for r in responses))

    def add_prompt(self, group, prompt: str, where=None) -> bool:
        prompt = prompt.strip()
        if not prompt:
            self.skip("prompts: empty prompt", where)
            return False
        return self._keep("prompts", group, {"prompt": prompt}, where, len(prompt))

    def report_skips(self):
        for reason, n in sorted(self.skipped.items()):
            at = f" (first at {self.first_at[reason]})" if self.first_at[reason] else ""
            print(f"skipped {n:6d}: {reason}{at}")

    def write(self, out_dir, val_fraction: float, seed: int = 0, judge_fraction: float = 0.0) -> dict:
        """Print the skip counts, split by group, write {kind}_{train,val}.jsonl; returns {file: count}.

        judge_fraction > 0: that fraction of the training groups' comparisons goes to comparisons_judge.jsonl
        instead of comparisons_train.jsonl, the data of a held-out judge reward model that the policy's reward
        model never sees (reward.py --train_split=judge, evaluate.py); their demonstrations and prompts stay
        in train. The judge groups are ranked by a hash of their own (seed:judge:group), so that they do not
        depend on the val split's."""
        self.report_skips()
        if not any(self.records.values()):
            raise DataError("no examples left to write (see the skip counts above)")
        groups_per_kind = [[g for g, _ in pairs] for pairs in self.records.values()]
        val_groups = choose_val(groups_per_kind, val_fraction, seed)
        judge_groups = set()
        if judge_fraction > 0 and "comparisons" in self.kinds:
            train_groups = [g for g, _ in self.records["comparisons"] if g not in val_groups]
            judge_groups = choose_val([train_groups], judge_fraction, f"{seed}:judge")

        def split_of(kind, group):
            if group in val_groups:
                return "val"
            return "judge" if kind == "comparisons" and group in judge_groups else "train"

        counts = {}
        for kind in self.kinds:
            for split in SPLITS + (("judge",) if kind == "comparisons" and judge_fraction > 0 else ()):
                records = [r for g, r in self.records[kind] if split_of(kind, g) == split]
                path = Path(out_dir) / f"{kind}_{split}.jsonl"
                counts[path.name] = write_jsonl(path, records)
                print(f"wrote {counts[path.name]:6d} records to {path}")
        return counts


# -----------------------------------------------------------------------------
# downloads for data/*/prepare.py

def fetch(urls: list[str], path) -> Path:
    """Download the first of urls that works to path (a cache: skipped when path exists); returns path.

    Several urls because GitHub serves Git LFS files from a different host than plain ones."""
    path = Path(path)
    if path.exists():
        print(f"using cached {path}")
        return path
    problems = []
    for url in urls:
        print(f"downloading {url} -> {path}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as e:
            problems.append(f"{url}: {getattr(e, 'reason', e)}")
            continue
        if data.startswith(b"version https://git-lfs"):  # a pointer to the file, not the file
            problems.append(f"{url}: got a Git LFS pointer")
            continue
        with atomic_write(path, "wb") as f:
            f.write(data)
        return path
    raise DataError(f"{path}: download failed ({'; '.join(problems)}). Offline? Fetch the file by hand "
                    f"and pass it with --src=FILE")


def convert_files(cfg, kinds, srcs, convert, unit):
    """What every converter's main does once its sources are known: feed each file to convert(src, Collector)
    (which returns how many units it read), then split and write the JSONL files; returns {file: count}."""
    from common import check_ranges  # common imports this module: a config made in code meets its ranges here
    check_ranges(cfg)
    judge_fraction = getattr(cfg, "judge_fraction", 0.0)  # the preference converters' held-out judge split
    data = Collector(kinds, cfg.max_chars)
    for src in srcs:
        print(f"read {convert(src, data)} {unit} from {src}")
    return data.write(cfg.out_dir, cfg.val_fraction, cfg.seed, judge_fraction)
