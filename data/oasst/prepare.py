"""
OpenAssistant message trees (oasst1/oasst2 "*.trees.jsonl(.gz)") -> K-way comparisons, SFT pairs, prompts.

One tree per line: {"message_tree_id", "prompt": message}, a message being {"text", "role" ("prompter" or
"assistant"), "lang", "rank", "replies": [message, ...]}. Walking every tree from the root:
  - every prompter message gives a prompt: the whole conversation path up to it, stored as
    "turn\\n\\nAssistant: reply\\n\\nHuman: turn" (data/formats.py join_turns);
  - the assistant replies to it that carry a human "rank" (0 = best) give one comparison, best first
    (needs >= 2 ranked replies); unranked replies are left out of comparisons (counted);
  - the best-ranked (rank 0) reply gives an SFT pair.
All examples of one tree share a group, so a tree lands wholly in train or in val. The comparisons of
--judge_fraction of the training trees go to comparisons_judge.jsonl instead of comparisons_train.jsonl: the data
of a held-out judge reward model (reward.py --train_split=judge) that evaluate.py judges the policies with.

    python data/oasst/prepare.py --src=../shared/data/oasst2-trees-sample.jsonl.gz --lang=en
    python data/oasst/prepare.py --lang=en    # downloads oasst1 2023-04-12_oasst_ready.trees.jsonl.gz, ~10 MB
    python data/oasst/prepare.py --help

Skipped, with a count per reason: trees of another language (--lang), deleted messages (and what hangs
below them), messages missing "text"/"role", unranked replies, rankings with K < 2 or duplicate texts,
empty or over-long parts, exact duplicates.
"""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common import parse_config, ranged, run  # noqa: E402
from data.formats import Collector, convert_files, fetch, iter_json, join_turns  # noqa: E402


@dataclass
class OASSTConfig:
    """OpenAssistant message trees -> K-way comparisons, SFT pairs and prompts."""
    src: tuple[str, ...] = ()  # input files, comma-separated (plain or gzip); empty: download oasst1
    out_dir: str = "data/oasst"  # where the JSONL files go
    val_fraction: float = ranged(0.1, "[0, 1)")  # fraction of the trees whose examples go to val
    seed: int = ranged(0, "[0, 2**32)")  # seed of the hash that picks the val trees
    max_chars: int = ranged(4000, ">= 1")  # skip examples longer than this many characters
    judge_fraction: float = ranged(0.2, "[0, 1)")  # fraction of the training trees kept for comparisons_judge.jsonl
    lang: str = ""  # keep only trees whose first message has this language (e.g. en); empty: all


HERE = Path(__file__).resolve().parent
URL = ("https://huggingface.co/datasets/OpenAssistant/oasst1/resolve/main/"
       "2023-04-12_oasst_ready.trees.jsonl.gz")


def messages(parent, role: str, data: Collector, where: str) -> list[tuple[dict, str]]:
    """The usable replies of parent with this role, as (message, stripped text)."""
    replies = parent.get("replies") or []
    if not isinstance(replies, list):
        data.skip("trees: 'replies' is not a list", where)
        return []
    usable = []
    for message in replies:
        text = data.field(message, "text", where, kind="messages")
        if text is None:
            continue
        if message.get("deleted"):
            data.skip("messages: deleted", where)
            continue
        if message.get("role") != role:
            data.skip(f"messages: role is not '{role}' under a {parent.get('role')} message", where)
            continue
        usable.append((message, text.strip()))
    return usable


def visit_prompter(message, text: str, path: list[str], group: str, data: Collector, where: str):
    """Add the examples rooted at one prompter message; path = the turns before it."""
    turns = path + [text]
    prompt = join_turns(turns)
    data.add_prompt(group, prompt, where)
    replies = messages(message, "assistant", data, where)
    ranked = [(m, t) for m, t in replies if isinstance(m.get("rank"), int)]
    ranked.sort(key=lambda mt: mt[0]["rank"])  # rank 0 = best
    for _ in range(len(replies) - len(ranked)):
        data.skip("comparisons: unranked reply left out", where)
    if ranked:
        data.add_comparison(group, prompt, [t for _, t in ranked], where)
        data.add_sft(group, prompt, ranked[0][1], where)
    for reply, reply_text in replies:  # unranked replies still lead to prompts and rankings further down
        for child, child_text in messages(reply, "prompter", data, where):
            visit_prompter(child, child_text, turns + [reply_text], group, data, where)


def convert(src, data: Collector, lang: str | None = None) -> int:
    """Feed the trees of one file to data; returns the number of trees read."""
    n = 0
    for where, tree in iter_json(src):
        n += 1
        if not isinstance(tree, dict) or not isinstance(tree.get("prompt"), dict):
            data.skip("trees: field 'prompt' is missing or not an object", where)
            continue
        root = tree["prompt"]
        if lang and root.get("lang") != lang:
            data.skip(f"trees: language is not '{lang}'", where)
            continue
        group = str(tree.get("message_tree_id") or root.get("message_id") or where)
        # the root is the only message without a parent; wrap it so that messages() checks it like the rest
        for message, text in messages({"role": None, "replies": [root]}, "prompter", data, where):
            visit_prompter(message, text, [], group, data, where)
    return n


def main(argv=None) -> dict:
    """Convert, write out_dir/{comparisons,sft,prompts}_{train,val}.jsonl and comparisons_judge.jsonl; returns
    {file: count}."""
    cfg = parse_config(OASSTConfig, argv)
    srcs = cfg.src or [fetch([URL], HERE / "downloads" / URL.rsplit("/", 1)[1])]
    return convert_files(cfg, ["comparisons", "sft", "prompts"], srcs,
                         lambda src, data: convert(src, data, cfg.lang), "trees")


if __name__ == "__main__":
    run(main)
