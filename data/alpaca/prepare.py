"""
Alpaca-style instruction data -> SFT pairs and prompts, in data/alpaca/.

Two layouts, as a JSON list or as JSONL:
  - alpaca_data.json:  {"instruction", "input", "output"}           ("input" may be empty or absent)
  - seed_tasks.jsonl:  {"instruction", "instances": [{"input", "output"}, ...]}
The prompt is the instruction, plus "\\n\\n" + input when the input is not empty; the response is the output.
All instances of one instruction share a group, so an instruction lands wholly in train or in val.

    python data/alpaca/prepare.py --src=../shared/data/alpaca-seed-tasks.jsonl
    python data/alpaca/prepare.py      # downloads tatsu-lab/stanford_alpaca alpaca_data.json, ~22 MB
    python data/alpaca/prepare.py --help

Skipped, with a count per reason: records without "instruction" or "output" (or "instances" that is not
a list), fields that are not strings, empty or over-long parts, exact duplicates.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common import parse_config, ranged, run  # noqa: E402
from data.formats import Collector, convert_files, fetch, iter_json  # noqa: E402


@dataclass
class AlpacaConfig:
    """Alpaca-style instruction data (alpaca_data.json or seed_tasks.jsonl) -> SFT pairs and prompts."""
    src: tuple[str, ...] = ()  # input files, comma-separated (JSON list or JSONL, plain or gzip); empty: download
    out_dir: str = "data/alpaca"  # where the JSONL files go
    val_fraction: float = ranged(0.1, "[0, 1)")  # fraction of the instructions whose examples go to val
    seed: int = ranged(0, "[0, 2**32)")  # seed of the hash that picks the val instructions
    max_chars: int = ranged(4000, ">= 1")  # skip examples longer than this many characters


HERE = Path(__file__).resolve().parent
URL = "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"


def convert(src, data: Collector) -> int:
    """Feed the instructions of one file to data; returns the number of records read."""
    n = 0
    for where, record in iter_json(src):
        n += 1
        instruction = data.field(record, "instruction", where, kind="instructions")
        if instruction is None:
            continue
        instances = record.get("instances", [record])  # the flat layout is a task with one instance
        if not isinstance(instances, list):
            data.skip("instructions: field 'instances' is not a list", where)
            continue
        for instance in instances:
            output = data.field(instance, "output", where, kind="instructions")
            if output is None:
                continue
            extra = instance.get("input") or ""  # absent, null and "" all mean "no input"
            if not isinstance(extra, str):
                data.skip("instructions: field 'input' is not a string", where)
                continue
            prompt = instruction.strip() + ("\n\n" + extra.strip() if extra.strip() else "")
            data.add_sft(instruction, prompt, output, where)
            data.add_prompt(instruction, prompt, where)
    return n


def main(argv=None) -> dict:
    """Convert, write out_dir/{sft,prompts}_{train,val}.jsonl; returns {file: count}."""
    cfg = parse_config(AlpacaConfig, argv)
    srcs = cfg.src or [fetch([URL], HERE / "downloads" / "alpaca_data.json")]
    return convert_files(cfg, ["sft", "prompts"], srcs, convert, "records")


if __name__ == "__main__":
    run(main)
