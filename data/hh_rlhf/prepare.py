"""
Anthropic HH-RLHF -> comparisons (K = 2), SFT pairs (the chosen side) and prompts, in data/hh_rlhf/.

Each input line is {"chosen": transcript, "rejected": transcript}; a transcript is
"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: ..." and the two differ in the last
Assistant turn. Everything before the last "\\n\\nAssistant:" is the prompt (earlier turns kept inside it,
see data/formats.py), what follows it is the response, so "\\n\\n" + render_prompt(prompt) +
render_response(response) gives the transcript back. The comparisons of --judge_fraction of the training
prompts go to comparisons_judge.jsonl instead of comparisons_train.jsonl: the data of a held-out judge reward
model (reward.py --train_split=judge) that evaluate.py judges the policies with.

    python data/hh_rlhf/prepare.py --src=../shared/data/hh-rlhf-harmless-base-test.jsonl.gz
    python data/hh_rlhf/prepare.py      # downloads harmless-base + helpful-base (train and test), ~40 MB
    python data/hh_rlhf/prepare.py --help

Skipped, with a count per reason: transcripts without an "Assistant:" turn or not starting with "Human:",
transcripts ending on a Human turn, pairs whose prompts differ (they branch before the last Assistant
turn), chosen == rejected, empty or over-long parts, exact duplicates.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common import parse_config, ranged, run  # noqa: E402
from data.formats import Collector, convert_files, fetch, iter_json  # noqa: E402


@dataclass
class HHConfig:
    """Anthropic HH-RLHF chosen/rejected pairs -> comparisons (K = 2), SFT pairs and prompts."""
    src: tuple[str, ...] = ()  # input files, comma-separated (plain or gzip); empty: download the public ones
    out_dir: str = "data/hh_rlhf"  # where the JSONL files go
    val_fraction: float = ranged(0.1, "[0, 1)")  # fraction of the prompts whose examples go to val
    seed: int = ranged(0, "[0, 2**32)")  # seed of the hash that picks the val prompts
    max_chars: int = ranged(4000, ">= 1")  # skip examples longer than this many characters
    judge_fraction: float = ranged(0.2, "[0, 1)")  # fraction of the training prompts kept for comparisons_judge.jsonl


HERE = Path(__file__).resolve().parent
# helpful-* files are Git LFS objects on GitHub (served from media.githubusercontent.com), harmless-base
# ones are plain git blobs (raw.githubusercontent.com); fetch() tries both hosts for each file.
SUBSETS = [(subset, split) for subset in ("harmless-base", "helpful-base") for split in ("train", "test")]
HOSTS = ["https://media.githubusercontent.com/media/anthropics/hh-rlhf/master",
         "https://raw.githubusercontent.com/anthropics/hh-rlhf/master"]


def split_transcript(transcript: str):
    """Transcript -> (prompt, response) at the last "\\n\\nAssistant:", or a reason string if it can't."""
    cut = transcript.rfind("\n\nAssistant:")
    if cut < 0:
        return "transcript has no 'Assistant:' turn"
    head, response = transcript[:cut].lstrip(), transcript[cut + len("\n\nAssistant:"):]
    if not head.startswith("Human:"):
        return "transcript does not start with 'Human:'"
    if "\n\nHuman:" in response:
        return "transcript ends on a Human turn"
    return head[len("Human:"):].strip(), response.strip()


def convert(src, data: Collector) -> int:
    """Feed the pairs of one HH-RLHF file to data; returns the number of lines read."""
    n = 0
    for where, record in iter_json(src):
        n += 1
        chosen = data.field(record, "chosen", where, kind="pairs")
        rejected = data.field(record, "rejected", where, kind="pairs")
        if chosen is None or rejected is None:
            continue
        if chosen.strip() == rejected.strip():
            data.skip("pairs: chosen == rejected", where)
            continue
        best, worst = split_transcript(chosen), split_transcript(rejected)
        if isinstance(best, str) or isinstance(worst, str):
            data.skip(f"pairs: {best if isinstance(best, str) else worst}", where)
            continue
        if best[0] != worst[0]:
            data.skip("pairs: chosen and rejected differ before the last Assistant turn", where)
            continue
        prompt = best[0]
        data.add_comparison(prompt, prompt, [best[1], worst[1]], where)
        data.add_sft(prompt, prompt, best[1], where)
        data.add_prompt(prompt, prompt, where)
    return n


def main(argv=None) -> dict:
    """Convert, write out_dir/{comparisons,sft,prompts}_{train,val}.jsonl and comparisons_judge.jsonl; returns
    {file: count}."""
    cfg = parse_config(HHConfig, argv)
    srcs = cfg.src or [fetch([f"{host}/{subset}/{split}.jsonl.gz" for host in HOSTS],
                             HERE / "downloads" / f"{subset}-{split}.jsonl.gz") for subset, split in SUBSETS]
    return convert_files(cfg, ["comparisons", "sft", "prompts"], srcs, convert, "pairs")


if __name__ == "__main__":
    run(main)
