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
import os
from pathlib import Path

import numpy as np
import torch

from data.formats import DataError, iter_json, read_split, render_prompt, render_response
from model import Tokenizer


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
# tokenizer of a dataset


def dataset_tokenizer(data_dir, vocab="compact"):
    """
    The tokenizer a model trained from scratch on data_dir uses: "gpt2" (all 50,257 tokens) or "compact"
    (the GPT-2 tokens that data_dir's JSONL files use, built once into data_dir/vocab.json). Stages that
    start from a checkpoint use the checkpoint's tokenizer instead, so a model never changes vocabulary.
    """
    if vocab == "gpt2":
        return Tokenizer()
    if vocab != "compact":
        raise ValueError(f"vocab must be 'compact' or 'gpt2', got {vocab!r}")
    files = sorted(Path(data_dir).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no *.jsonl files to build a vocabulary from (run its prepare.py)")
    # rebuilt whenever the JSONL files change, so a regenerated dataset never meets a stale vocabulary
    fingerprint = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    path = Path(data_dir) / "vocab.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("files") == fingerprint:
            return Tokenizer.from_state(saved)
    texts = []
    for f in files:
        for _, rec in iter_json(f):
            # the rendered template pieces, so that every token the stages will encode is in the vocabulary
            texts += [rec["text"]] if "text" in rec else [render_prompt(rec["prompt"])]
            texts += [render_response(r) for r in rec.get("responses", [])]
            texts += [render_response(rec["response"])] if "response" in rec else []
            texts += [rec["answer"]] if isinstance(rec.get("answer"), str) else []
    tok = Tokenizer.build_compact(texts)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**tok.state(), "files": fingerprint}))
    os.replace(tmp, path)
    print(f"{path}: compact vocabulary of {tok.vocab_size} tokens from {len(files)} files")
    return tok


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
        except ValueError as e:  # text outside a compact vocabulary
            if isinstance(e, DataError):
                raise
            raise DataError(f"{src}: {e}") from None
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        for n, a in arrays.items():
            np.save(tmp / f"{n}.npy", a)
        if cache.exists():  # another process finished first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        else:
            os.replace(tmp, cache)
    return Split({n: np.load(cache / f"{n}.npy", mmap_mode="r") for n in names}, f"{src}")


# -----------------------------------------------------------------------------
# batches


def pad_right(seqs, pad=0):
    """(B, T) tensor of right-padded sequences and their lengths (B,). Causal attention makes right
    padding exact without a mask: no real position ever attends to a later pad."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out, lengths


def pad_left(seqs, pad=0):
    """(B, T) left-padded sequences and their attention mask: prompts end together, so generation
    appends to every row at the same column."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, T - len(s):] = torch.as_tensor(np.asarray(s, dtype=np.int64))
            mask[i, T - len(s):] = True
    return out, mask


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


# -----------------------------------------------------------------------------
# sampling responses to text prompts


@torch.no_grad()
def generate_responses(model, tok, prompts, max_new_tokens=64, temperature=1.0, top_k=None, batch_size=64,
                       device="cpu", autocast=None, prefix="", return_tokens=False):
    """
    Sample one response per text prompt through the chat template (after `prefix`, e.g. few-shot
    demonstrations). Returns (texts, ended): the decoded responses without their EOS, and whether each
    ended with EOS (False: it hit max_new_tokens). return_tokens=True adds the sampled token ids (with the
    EOS when there is one): score those, not a re-encoding of the text, which need not give the same tokens.
    """
    was_training = model.training
    model.eval()
    texts, ended, tokens = [], [], []
    for start in range(0, len(prompts), batch_size):
        chunk = [tok.encode(prefix + render_prompt(p)) for p in prompts[start:start + batch_size]]
        idx, mask = pad_left(chunk)
        max_new = min(max_new_tokens, model.config.block_size - idx.size(1))
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out = model.generate(idx.to(device), max_new, temperature=temperature, top_k=top_k,
                                 attention_mask=mask.to(device), eos_id=tok.eos_id)
        for row in out[:, idx.size(1):].tolist():
            stop = row.index(tok.eos_id) if tok.eos_id in row else len(row)
            texts.append(tok.decode(row[:stop]).strip())
            ended.append(stop < len(row))
            tokens.append(row[:stop + 1])
    model.train(was_training)
    return (texts, ended, tokens) if return_tokens else (texts, ended)
