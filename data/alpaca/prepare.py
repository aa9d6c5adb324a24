"""
Alpaca-style instruction data -> SFT pairs and prompts, in data/alpaca/.

Two layouts, as a JSON list or as JSONL:
  - alpaca_data.json:  {"instruction", "input", "output"}           ("input" may be empty or absent)
  - seed_tasks.jsonl:  {"instruction", "instances": [{"input", "output"}, ...]}
The prompt is the instruction, plus "\\n\\n" + input when the input is not empty; the response is the output.
All instances of one instruction share a group, so an instruction lands wholly in train or in val.

    python data/alpaca/prepare.py --src ../shared/data/alpaca-seed-tasks.jsonl
    python data/alpaca/prepare.py      # downloads tatsu-lab/stanford_alpaca alpaca_data.json, ~22 MB

Skipped, with a count per reason: records without "instruction" or "output" (or "instances" that is not
a list), fields that are not strings, empty or over-long parts, exact duplicates.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from data.formats import Collector, converter_args, fetch, iter_json, reports_errors  # noqa: E402

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


@reports_errors
def main(argv=None) -> int:
    args = converter_args(__doc__, HERE, max_chars=4000).parse_args(argv)
    srcs = args.src or [fetch([URL], HERE / "downloads" / "alpaca_data.json")]
    data = Collector(["sft", "prompts"], args.max_chars)
    for src in srcs:
        print(f"read {convert(src, data)} records from {src}")
    data.write(args.out, args.val_fraction, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
