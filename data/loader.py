"""
Tokenised datasets and batches, shared by sft.py, reward.py and ppo.py.

A stage asks for a split (`load_split(data_dir, "sft", "train", tok)`); the first time, its JSONL is
read, checked (data/formats.py), rendered with the chat template, tokenised, and written next to it
as .npy arrays (np.load(mmap_mode="r")-able) under data/NAME/tokens/, keyed by the tokenizer and the
JSONL's size and mtime so that a regenerated file or another vocabulary is tokenised afresh.

Ragged collections of sequences are stored flat: `tokens` (all sequences concatenated) and `offsets`
(N + 1), sequence i = tokens[offsets[i]:offsets[i + 1]].
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from data.formats import DataError, atomic_write, read_split, render_prompt, render_response
from data.tokenizer import VocabularyError
from model import generate


class Ragged:
    """N variable-length int sequences stored as one flat array and N + 1 offsets."""

    def __init__(self, tokens, offsets):
        self.tokens, self.offsets = tokens, offsets

    @classmethod
    def from_lists(cls, seqs):
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        tokens = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(tokens, offsets)

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self):
        return np.diff(self.offsets)


# -----------------------------------------------------------------------------
# tokenised splits, cached as .npy


def encode_prompt(tok, prompt):
    return tok.encode(render_prompt(prompt))


def encode_response(tok, response):
    """Response tokens and the closing EOS: the target of SFT, the text a reward model scores."""
    return tok.encode(render_response(response)) + [tok.eos_id]


def tokenize(records, kind, tok):
    """{name: array} for a list of JSONL records of one kind."""
    if kind == "pretrain":  # one stream, documents separated by EOS (GPT-2's convention)
        stream = []
        for r in records:
            stream += tok.encode(r["text"]) + [tok.eos_id]
        return {"stream": np.array(stream, dtype=np.int32)}
    prompts = Ragged.from_lists([encode_prompt(tok, r["prompt"]) for r in records])  # prompts, sft, comparisons
    out = {"prompt_tokens": prompts.tokens, "prompt_offsets": prompts.offsets}
    if kind == "sft":
        responses = Ragged.from_lists([encode_response(tok, r["response"]) for r in records])
        out.update(response_tokens=responses.tokens, response_offsets=responses.offsets)
    elif kind == "comparisons":
        # all responses of all prompts in one ragged array; prompt i owns responses group[i]:group[i + 1]
        responses = Ragged.from_lists([encode_response(tok, x) for r in records for x in r["responses"]])
        group = np.zeros(len(records) + 1, dtype=np.int64)
        group[1:] = np.cumsum([len(r["responses"]) for r in records])
        out.update(response_tokens=responses.tokens, response_offsets=responses.offsets, group=group)
    return out


class Split:
    """A tokenised split: .prompts / .responses (Ragged), .group (comparisons), .stream (pretrain)."""

    def __init__(self, arrays, name):
        self.name = name
        self.stream = arrays.get("stream")
        self.prompts = Ragged(arrays["prompt_tokens"], arrays["prompt_offsets"]) if "prompt_tokens" in arrays else None
        self.responses = (Ragged(arrays["response_tokens"], arrays["response_offsets"])
                          if "response_tokens" in arrays else None)
        self.group = arrays.get("group")

    def __len__(self):
        return len(self.stream) if self.stream is not None else len(self.prompts)


def load_split(data_dir, kind, split, tok):
    """The tokenised `kind_split.jsonl` of data_dir, from the .npy cache when it is current."""
    src = Path(data_dir) / f"{kind}_{split}.jsonl"
    if not src.exists():
        raise FileNotFoundError(f"{src}: not found (prepare the dataset first, see data/README.md)")
    st = src.stat()
    key = hashlib.sha1(json.dumps([tok.state()["vocab"], st.st_size, st.st_mtime_ns]).encode()).hexdigest()[:12]
    cache = Path(data_dir) / "tokens" / f"{kind}_{split}.{key}"
    names = {"pretrain": ["stream"], "sft": ["prompt_tokens", "prompt_offsets", "response_tokens", "response_offsets"],
             "comparisons": ["prompt_tokens", "prompt_offsets", "response_tokens", "response_offsets", "group"],
             "prompts": ["prompt_tokens", "prompt_offsets"]}[kind]
    if not all((cache / f"{n}.npy").exists() for n in names):
        try:
            arrays = tokenize(read_split(data_dir, kind, split), kind, tok)
        except VocabularyError as e:
            raise VocabularyError(f"{src}: {e}") from None
        for n, a in arrays.items():
            with atomic_write(cache / f"{n}.npy", "wb") as f:
                np.save(f, a)
    return Split({n: np.load(cache / f"{n}.npy", mmap_mode="r") for n in names}, f"{src}")


# -----------------------------------------------------------------------------
# batches


def length_bucketed_batches(lengths, batch_size, seed, bucket=64):
    """
    One epoch of index batches whose members have similar lengths, so little compute goes to padding:
    shuffle, sort within windows of bucket * batch_size, cut into batches, shuffle the batches.
    Deterministic in seed, so a resumed run sees the same order.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    window = bucket * batch_size
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(np.asarray(lengths)[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_windows(stream, n, seq_len, seed):
    """n random windows of a token stream as (inputs, next-token targets), (n, seq_len) each: nanoGPT's
    packed pretraining batch. A pure function of seed (an int or a tuple such as (seed, step, rank)), so a
    resumed run draws the same windows."""
    starts = np.random.default_rng(seed).integers(0, len(stream) - seq_len - 1, size=n)
    chunk = torch.from_numpy(np.stack([np.asarray(stream[s:s + seq_len + 1], dtype=np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]


def fitting(lengths, limit, what, master=True):
    """Indices of the sequences with length <= limit; the others are dropped, and counted aloud."""
    keep = np.nonzero(np.asarray(lengths) <= limit)[0]
    if len(keep) < len(lengths) and master:
        print(f"{what}: skipping {len(lengths) - len(keep)} of {len(lengths)} longer than {limit} tokens")
    if len(keep) == 0:
        shortest = f" (the shortest has {int(np.min(lengths))})" if len(lengths) else ""
        raise DataError(f"{what}: nothing fits in {limit} tokens{shortest}: shorten the examples (the converter's "
                        f"--max_chars), or leave them room (a model with a longer block_size; where the stage "
                        f"generates, a lower --max_new_tokens)")
    return keep


def answerable(tok, prompts, block_size, max_new_tokens, what, master=True):
    """The text prompts that leave max_new_tokens of room in the block; the others dropped, and counted aloud."""
    keep = fitting([len(encode_prompt(tok, p)) for p in prompts], block_size - max_new_tokens, what, master)
    return [prompts[i] for i in keep]


# -----------------------------------------------------------------------------
# sampling responses to text prompts


def generate_responses(model, tok, prompts, max_new_tokens=64, temperature=1.0, batch_size=64, prefix="",
                       seed=None, autocast=None):
    """
    model.generate over text prompts through the chat template (after `prefix`, e.g. few-shot
    demonstrations). Returns (texts, ended, tokens): the decoded responses without their EOS, whether each
    ended with EOS (False: it hit max_new_tokens), and the sampled ids with the EOS when there is one:
    score those, not a re-encoding of the text, which need not give the same tokens. seed: row i samples
    with seed + i, so a response does not depend on the batch size.
    """
    texts, ended, tokens = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = [tok.encode(prefix + render_prompt(p)) for p in prompts[start:start + batch_size]]
        seeds = None if seed is None else [seed + start + i for i in range(len(chunk))]
        out = generate(model, chunk, max_new_tokens, temperature, eos_id=tok.eos_id, seeds=seeds,
                       autocast=autocast)
        tokens += out["response_lists"]
        ended += out["ended"].tolist()
    texts = [tok.decode([t for t in r if t != tok.eos_id]).strip() for r in tokens]
    return texts, ended, tokens
