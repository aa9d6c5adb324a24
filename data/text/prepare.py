"""
Any plain-text files -> pretraining text (pretrain_{train,val}.jsonl), in data/text/: a base model's corpus,
PPO-ptx's pretraining mix (ppo.py --ptx_data_dir=data/text) and the held-out text of the alignment tax
(evaluate.py --text_dir=data/text). Without --src it downloads tiny Shakespeare.

The text is cut at blank lines into paragraphs (speeches, for Shakespeare), and consecutive paragraphs are
packed into records of at most --max_chars characters; a paragraph longer than that is cut at line ends,
and a line longer than that at --max_chars. Whole records then go to train or val (--val_fraction of them,
picked by a seeded hash, so the split is the same on every run). Nothing is dropped except whitespace
and exact duplicate records (counted).

    python data/text/prepare.py --src=book1.txt,book2.txt.gz
    python data/text/prepare.py --src=../shared/data/tinyshakespeare.txt
    python data/text/prepare.py      # downloads char-rnn's tinyshakespeare input.txt, ~1 MB
    python data/text/prepare.py --help
"""

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from common import parse_config, ranged, run  # noqa: E402
from data.formats import Collector, convert_files, fetch, read_lines  # noqa: E402


@dataclass
class TextConfig:
    """Any plain-text files (tiny Shakespeare by default) -> pretraining text records."""
    src: tuple[str, ...] = ()  # input files, comma-separated (plain or gzip); empty: download tinyshakespeare
    out_dir: str = "data/text"  # where the JSONL files go
    val_fraction: float = ranged(0.1, "[0, 1)")  # fraction of the records that go to val
    seed: int = ranged(0, "[0, 2**32)")  # seed of the hash that picks the val records
    max_chars: int = ranged(1000, ">= 1")  # the most characters in a record (paragraphs packed up to it, cut beyond it)


HERE = Path(__file__).resolve().parent
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph cut into parts of at most max_chars: at line ends, and inside over-long lines."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    lines = []
    for line in paragraph.split("\n"):
        lines += [line[i:i + max_chars] for i in range(0, len(line), max_chars)] or [""]
    return pack(lines, "\n", max_chars)


def pack(parts: list[str], sep: str, max_chars: int) -> list[str]:
    """Greedily join consecutive parts (each <= max_chars) with sep into chunks of <= max_chars."""
    chunks, current = [], ""
    for part in parts:
        if current and len(current) + len(sep) + len(part) > max_chars:
            chunks.append(current)
            current = part
        else:
            current = current + sep + part if current else part
    return chunks + [current] if current else chunks


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Paragraphs (split at blank lines) packed into chunks of at most max_chars characters."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return pack([piece for p in paragraphs for piece in pieces(p, max_chars)], "\n\n", max_chars)


def convert(src, data: Collector) -> int:
    """Feed the chunks of one text file to data; returns the number of characters read."""
    text = "".join(line for _, line in read_lines(src))
    for i, chunk in enumerate(chunk_text(text, data.max_chars)):
        data.add_text(f"{src}#{i}", chunk, f"{src}: chunk {i}")
    return len(text)


def main(argv=None) -> dict:
    """Convert, write out_dir/pretrain_{train,val}.jsonl; returns {file: count}."""
    cfg = parse_config(TextConfig, argv)
    srcs = cfg.src or [fetch([URL], HERE / "downloads" / "input.txt")]
    return convert_files(cfg, ["pretrain"], srcs, convert, "characters")


if __name__ == "__main__":
    run(main)
