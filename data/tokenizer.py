"""
The tokenizer: tiktoken's GPT-2 BPE, optionally remapped to the compact vocabulary of one dataset.

A model keeps the vocabulary it was born with (its checkpoint stores `Tokenizer.state()`): only a model
trained from scratch gets a new one, from `dataset_tokenizer(data_dir)`.
"""

import json
from pathlib import Path

import tiktoken

from data.formats import DataError, atomic_write, iter_json, render_prompt, render_response


class VocabularyError(DataError):
    """Text that a compact vocabulary cannot encode: the model and the data do not belong together."""


class Tokenizer:
    """
    tiktoken's GPT-2 BPE with <|endoftext|> as EOS. With vocab (a list of GPT-2 ids) the ids are
    remapped to a compact vocabulary, compact id i <-> GPT-2 id vocab[i]: a tiny model then spends its
    compute on the few thousand tokens a dataset uses instead of a 50,257-way softmax, which would dominate
    its cost (measured: docs/benchmarks.md).
    """

    GPT2_EOS = 50256

    def __init__(self, vocab=None):
        self.enc = tiktoken.get_encoding("gpt2")
        self.vocab = None if vocab is None else [int(t) for t in vocab]
        if self.vocab is None:
            self.eos_id, self.vocab_size = self.GPT2_EOS, self.enc.n_vocab
        else:
            if self.vocab[0] != self.GPT2_EOS:
                raise ValueError("a compact vocabulary must start with <|endoftext|> (GPT-2 id 50256)")
            self.to_compact = {g: i for i, g in enumerate(self.vocab)}
            self.eos_id, self.vocab_size = 0, len(self.vocab)

    @classmethod
    def build_compact(cls, texts):
        """The compact vocabulary of every GPT-2 token that occurs in texts, EOS first."""
        used = set()
        for ids in tiktoken.get_encoding("gpt2").encode_ordinary_batch(list(texts)):
            used.update(ids)
        used.discard(cls.GPT2_EOS)
        return cls([cls.GPT2_EOS] + sorted(used))

    def encode(self, text):
        ids = self.enc.encode_ordinary(text)
        if self.vocab is None:
            return ids
        try:
            return [self.to_compact[t] for t in ids]
        except KeyError as e:
            piece = self.enc.decode([e.args[0]])
            raise VocabularyError(f"token {piece!r} of {text[:60]!r} is not in the compact vocabulary "
                                  f"({self.vocab_size} tokens)") from None

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if self.vocab is not None:
            ids = [self.vocab[i] for i in ids if 0 <= i < self.vocab_size]
        return self.enc.decode(ids)

    def state(self):
        return {"encoding": "gpt2", "vocab": self.vocab}

    @classmethod
    def from_state(cls, state):
        if state.get("encoding") != "gpt2":
            raise ValueError(f"unknown tokenizer state {state.get('encoding')!r}")
        return cls(state["vocab"])


def dataset_tokenizer(data_dir, vocab="compact"):
    """
    The tokenizer of a model trained from scratch on data_dir: "gpt2" (all 50,257 tokens) or "compact"
    (the GPT-2 tokens that data_dir's JSONL files use, built once into data_dir/vocab.json and rebuilt
    whenever those files change, so a regenerated dataset never meets a stale vocabulary).
    """
    if vocab == "gpt2":
        return Tokenizer()
    if vocab != "compact":
        raise DataError(f"vocab must be 'compact' or 'gpt2', got {vocab!r}")
    files = sorted(Path(data_dir).glob("*.jsonl"))
    if not files:
        raise DataError(f"{data_dir}: no *.jsonl files to build a vocabulary from (run its prepare.py)")
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
    with atomic_write(path) as out:
        json.dump({**tok.state(), "files": fingerprint}, out)
    print(f"{path}: compact vocabulary of {tok.vocab_size} tokens from {len(files)} files")
    return tok
