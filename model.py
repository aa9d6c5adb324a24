"""
The GPT that every stage of the pipeline stands on, and the hand-offs the stages share.

    GPTConfig, GPT        a nanoGPT-style GPT-2 with GPT-2's parameter names, fused attention through
                          scaled_dot_product_attention, exact padded batches, a KV cache and a scalar head
    logprobs_from_logits  log p(token) of given tokens, and entropy_from_logits
    Tokenizer             tiktoken's GPT-2 BPE, optionally remapped to a compact vocabulary
    save_checkpoint, load_checkpoint, load_model   one checkpoint file per stage, written atomically
    parse_config          `--key=value` overrides for a stage's @dataclass config
    setup_runtime         device / dtype / autocast / DDP choices made once, the same way in every stage
    configure_optimizer, cosine_lr                  AdamW with the paper's betas and its cosine schedule

References: nanoGPT's model.py (Karpathy), GPT-2 (Radford et al. 2019), InstructGPT (Ouyang et al. 2022).
"""

import contextlib
import dataclasses
import inspect
import json
import math
import os
import sys
import types
import typing
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

# -----------------------------------------------------------------------------
# The model


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence (prompt + response) the model sees
    vocab_size: int = 50257  # GPT-2's 50,257 tokens, or the size of a compact vocabulary
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0  # residual, attention and embedding dropout (the paper: 0.2 for SFT)
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them
    scalar_head: bool = False  # unembedding replaced by a d -> 1 linear layer: reward and value models


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x, attn_mask=None, kv_cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)  # (B, nh, past + T, hs)
        # attn_mask None means plain causal attention over unpadded (or right-padded) rows: that is the
        # case SDPA can hand to the flash kernel on CUDA. A mask costs the memory-efficient kernel instead.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 was trained with the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


class KVCache:
    """Keys and values of every layer for the positions decoded so far, preallocated for max_len positions."""

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len, self.length, self.k, self.v = n_layer, max_len, 0, None, None

    def update(self, layer, k, v):
        B, nh, T, hs = k.shape
        if self.k is None:  # allocated on first use so it takes the dtype autocast gives k and v
            self.k = k.new_empty(self.n_layer, B, nh, self.max_len, hs)
            self.v = v.new_empty(self.n_layer, B, nh, self.max_len, hs)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        if config.scalar_head:
            # Reward and value models: InstructGPT removes the unembedding and reads one number per position.
            self.score_head = nn.Linear(config.n_embd, 1, bias=True)
        else:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.scalar_head:
            torch.nn.init.zeros_(self.score_head.weight)  # a fresh head scores everything 0: no initial bias
            torch.nn.init.zeros_(self.score_head.bias)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=True):
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, attention_mask=None, position_ids=None, kv_cache=None):
        """
        idx (B, T) token ids. Returns (logits (B, T, V), loss) or, with a scalar head, (scores (B, T), None).
        targets (B, T): next-token targets with -1 where no loss is taken; loss is their mean cross-entropy.
        attention_mask (B, past + T): 1 for real tokens, 0 for padding, covering the cached positions too.
            Needed for left padding; right padding is exact without it (causal rows never see later pads).
        position_ids (B, T): default counts real tokens only, so a left-padded row gets the positions it
            would have alone (RLHF_NOTES detail 3).
        kv_cache: a KVCache; this call appends its T positions after the cached ones.
        """
        B, T = idx.size()
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        attn_mask = None
        if attention_mask is not None or past > 0:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
            keys = attention_mask.bool()  # (B, S) with S = past + T
            causal = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(diagonal=past)
            attn_mask = causal[None] & keys[:, None, :]  # (B, T, S)
            # A padding query would see no key at all (left padding) and SDPA would return NaN for it;
            # letting each query see itself keeps it finite and changes nothing for real tokens.
            positions = torch.arange(past + T, device=idx.device)
            attn_mask = attn_mask | (positions[past:, None] == positions[None, :])[None]
            attn_mask = attn_mask[:, None]  # (B, 1, T, S), broadcast over heads
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device)[None]
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(position_ids))
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, kv_cache, i)
        x = self.transformer.ln_f(x)
        if kv_cache is not None:
            kv_cache.length += T
        if self.config.scalar_head:
            return self.score_head(x).squeeze(-1), None  # (B, T)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, attention_mask=None, eos_id=None,
                 use_cache=True):
        """
        nanoGPT's generate, extended for RLHF. idx (B, T): prompts; prompts of different lengths are
        left-padded, with attention_mask (B, T) marking their real tokens. Samples up to max_new_tokens
        per row from softmax(logits / temperature), top_k-truncated if asked (temperature 0: greedy).
        A row that emits eos_id is done: its later tokens are eos_id, and generation stops when every
        row is done. Returns (B, T + n) tokens, n <= max_new_tokens.
        use_cache=False recomputes the whole sequence every step (the reference the KV cache is tested on).
        """
        B, T = idx.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(idx, dtype=torch.bool)
        attention_mask = attention_mask.bool()
        max_len = min(T + max_new_tokens, self.config.block_size)
        cache = KVCache(self.config.n_layer, max_len) if use_cache else None
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        step_input = idx
        for _ in range(max_len - T):
            if use_cache:
                logits, _ = self(step_input, attention_mask=attention_mask, kv_cache=cache)
            else:
                logits, _ = self(idx, attention_mask=attention_mask)
            next_token = sample_next(logits[:, -1, :].float(), temperature, top_k)  # (B,)
            if eos_id is not None:
                next_token = torch.where(done, torch.full_like(next_token, eos_id), next_token)
                done |= next_token == eos_id
            idx = torch.cat([idx, next_token[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(done)[:, None]], dim=1)
            step_input = next_token[:, None]
            if eos_id is not None and bool(done.all()):
                break
        return idx

    @classmethod
    def from_pretrained(cls, name_or_path, dropout=0.0):
        """
        OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl), from a local directory in the
        Hugging Face layout (config.json + model.safetensors or pytorch_model.bin) or downloaded by name
        into $RLHF_CACHE (default ~/.cache/rlhf). Nothing is unpickled: safetensors are parsed here and
        .bin files go through torch.load(weights_only=True).
        """
        directory = name_or_path if os.path.isdir(name_or_path) else download_gpt2(name_or_path)
        with open(os.path.join(directory, "config.json")) as f:
            hf = json.load(f)
        config = GPTConfig(block_size=hf.get("n_positions", 1024), vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           dropout=dropout, bias=True)
        weights = read_hf_weights(directory)
        model = cls(config)
        sd = model.state_dict()
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        loaded = set()
        for key, tensor in weights.items():
            key = key.removeprefix("transformer.")
            if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
                continue  # causal-mask buffers of the HF implementation, and the tied unembedding
            ours = key if key.startswith("lm_head") else "transformer." + key
            if ours not in sd:
                raise ValueError(f"{directory}: unexpected GPT-2 weight {key!r}")
            if key.endswith(transposed):
                tensor = tensor.t()  # HF's GPT-2 uses Conv1D, which stores Linear weights as (in, out)
            if tensor.shape != sd[ours].shape:
                raise ValueError(f"{directory}: {key} has shape {tuple(tensor.shape)}, expected {tuple(sd[ours].shape)}")
            with torch.no_grad():
                sd[ours].copy_(tensor)
            loaded.add(ours)
        missing = [k for k in sd if k not in loaded and k != "lm_head.weight"]
        if missing:
            raise ValueError(f"{directory}: weights missing for {missing[:5]}{'...' if len(missing) > 5 else ''}")
        return model


def sample_next(logits, temperature=1.0, top_k=None):
    """One token per row from (B, V) logits. RLHF rollouts use temperature 1 and no top-k (RLHF_NOTES 5)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(-1)


def logprobs_from_logits(logits, tokens):
    """
    log p(tokens) under logits: (B, T, V), (B, T) -> (B, T) float32.
    logit[token] - logsumexp(logits) gathers one number per position instead of writing out a full
    (B, T, V) log_softmax; it equals -F.cross_entropy(..., reduction="none").
    """
    logits = logits.float()
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits):
    """Entropy of softmax(logits): (B, T, V) -> (B, T). H = logsumexp(z) - sum softmax(z) * z."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


# -----------------------------------------------------------------------------
# GPT-2 weights in the Hugging Face layout, read without transformers and without unpickling

GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"


def cache_dir():
    return os.environ.get("RLHF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rlhf"))


def download_gpt2(name):
    if name not in GPT2_SIZES:
        raise ValueError(f"{name!r} is neither a directory nor one of {GPT2_SIZES}")
    directory = os.path.join(cache_dir(), name)
    os.makedirs(directory, exist_ok=True)
    for file in ("config.json", "model.safetensors"):
        path = os.path.join(directory, file)
        if os.path.exists(path):
            continue
        url = HF_URL.format(name=name, file=file)
        print(f"downloading {url} -> {path}")
        try:
            urllib.request.urlretrieve(url, path + ".tmp")
        except OSError as e:
            raise RuntimeError(f"could not download {url} ({e}). On an offline machine, copy a GPT-2 "
                               f"directory (config.json + model.safetensors) and pass its path instead.") from e
        os.replace(path + ".tmp", path)
    return directory


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_safetensors(path):
    """A safetensors file: 8-byte little-endian header length, a JSON header, then raw little-endian tensors."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        raw = torch.from_numpy(np.array(data[start:end]))  # copy out of the memmap
        tensors[name] = raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]).float()
    return tensors


def read_hf_weights(directory):
    st, bin_ = os.path.join(directory, "model.safetensors"), os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(st):
        return read_safetensors(st)
    if os.path.exists(bin_):
        return {k: v.float() for k, v in torch.load(bin_, map_location="cpu", weights_only=True).items()}
    raise FileNotFoundError(f"{directory}: neither model.safetensors nor pytorch_model.bin found")


# -----------------------------------------------------------------------------
# Tokenizer


class Tokenizer:
    """
    tiktoken's GPT-2 BPE with <|endoftext|> as EOS. With vocab (a list of GPT-2 ids) the ids are
    remapped to a compact vocabulary, compact id i <-> GPT-2 id vocab[i]: a tiny model then spends its
    compute on the few thousand tokens a dataset uses instead of a 50,257-way softmax (measured on a
    2-core CPU: ~14x more training tokens/s for a 4-layer 128-wide GPT with 2,048 tokens instead of 50,257).
    """

    GPT2_EOS = 50256

    def __init__(self, vocab=None):
        import tiktoken  # imported here so that model.py alone needs no tokenizer files
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
        import tiktoken
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
            raise ValueError(f"token {piece!r} of {text[:80]!r} is not in the compact vocabulary "
                             f"({self.vocab_size} tokens); rebuild the vocabulary with this data or "
                             f"use the full GPT-2 vocabulary") from None

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

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


# -----------------------------------------------------------------------------
# Checkpoints: one file per stage, plain data only, written atomically

CHECKPOINT_FORMAT = "rlhf-checkpoint-v1"


class CheckpointError(ValueError):
    pass


def unwrap(model):
    """The plain GPT inside DDP and torch.compile wrappers: checkpoints always hold its state."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(path, *, stage, model, run_config, tokenizer, **extra):
    """
    Write {format, stage, model (state dict), model_config, run_config, tokenizer, **extra} to path.
    A temporary file and a rename make the write atomic: an interrupted save leaves the previous checkpoint.
    extra holds plain data only (tensors, numbers, strings, lists, dicts): optimizer state, step, RNG state.
    """
    model = unwrap(model)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "stage": stage,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.config),
        "run_config": dataclasses.asdict(run_config) if dataclasses.is_dataclass(run_config) else dict(run_config),
        "tokenizer": tokenizer.state(),
        **extra,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, stages=None):
    """Load a checkpoint of this project with weights_only=True; stages, if given, lists the accepted ones."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a checkpoint of this project ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no '{CHECKPOINT_FORMAT}' marker)")
    if stages is not None and ckpt["stage"] not in stages:
        raise CheckpointError(f"{path}: is a '{ckpt['stage']}' checkpoint; expected {' or '.join(stages)}")
    return ckpt


def load_model(ckpt, device="cpu", stages=None, scalar_head=None, dropout=None):
    """
    (model, tokenizer, ckpt) from a checkpoint path or dict. scalar_head=True on a language-model checkpoint
    gives the reward model's starting point: the same transformer with a fresh scalar head; scalar_head=False
    on a reward checkpoint is refused (its unembedding is gone).
    """
    name = ckpt if isinstance(ckpt, str) else f"the '{ckpt['stage']}' checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt, stages)
    config = GPTConfig(**ckpt["model_config"])
    state = dict(ckpt["model"])
    if scalar_head is not None and scalar_head != config.scalar_head:
        if not scalar_head:
            raise CheckpointError(f"{name}: has a scalar head, so it cannot be loaded as a language model")
        config.scalar_head = True
        state.pop("lm_head.weight", None)  # tied to wte, which is kept
    if dropout is not None:
        config.dropout = dropout
    model = GPT(config)
    check_state(model, state, name, allow_missing=("score_head.",) if scalar_head else ())
    model.load_state_dict(state, strict=False)
    return model.to(device), Tokenizer.from_state(ckpt["tokenizer"]), ckpt


def check_state(model, state, name, allow_missing=()):
    """A clear error when a state dict does not fit the model (another config, another vocabulary)."""
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state and not k.startswith(allow_missing)]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise CheckpointError(f"{name} does not match the model config: " + "; ".join(problems[:6]))


# -----------------------------------------------------------------------------
# Configuration: a stage's @dataclass, overridden by --key=value


def field_comments(cls):
    """The trailing `# comment` of each field in the dataclass source: the --help text."""
    comments = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return comments
    for line in source.splitlines():
        head, _, comment = line.partition("  #")
        name = head.strip().split(":")[0]
        if comment and name.isidentifier():
            comments[name] = comment.strip()
    return comments


def parse_value(text, tp, name):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() == "none":
            return None
        return parse_value(text, args[0], name)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise SystemExit(f"--{name} takes true or false, got {text!r}")
    if origin is tuple:
        return tuple(parse_value(t, typing.get_args(tp)[0], name) for t in text.split(","))
    try:
        return tp(text)
    except ValueError:
        raise SystemExit(f"--{name} takes a {tp.__name__}, got {text!r}") from None


def parse_config(cls, argv=None):
    """
    An instance of the @dataclass cls with `--key=value` overrides from argv (default sys.argv[1:]).
    A bare `--flag` sets a bool field to true. `--help` lists every field, its default and its comment.
    """
    argv = sys.argv[1:] if argv is None else argv
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if any(a in ("-h", "--help") for a in argv):
        comments = field_comments(cls)
        print(f"{(cls.__doc__ or cls.__name__).strip()}\n\noptions (--key=value):")
        for name in fields:
            default = getattr(cls(), name)
            print(f"  --{name}={default!r:<12} {comments.get(name, '')}")
        raise SystemExit(0)
    overrides = {}
    for arg in argv:
        if not arg.startswith("--"):
            raise SystemExit(f"expected --key=value, got {arg!r} (see --help)")
        key, eq, value = arg[2:].partition("=")
        if key not in fields:
            raise SystemExit(f"unknown option --{key} (see --help)")
        if not eq:
            if hints[key] is not bool:
                raise SystemExit(f"--{key} needs a value: --{key}=...")
            value = "true"
        overrides[key] = parse_value(value, hints[key], key)
    return cls(**overrides)


# -----------------------------------------------------------------------------
# Runtime: device, precision and distributed setup, chosen once the same way in every stage


@dataclass
class Runtime:
    device: str
    device_type: str
    dtype: str  # float32 | bfloat16 | float16
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def master(self):
        return self.rank == 0

    @property
    def ddp(self):
        return self.world_size > 1

    def autocast(self):
        """Mixed precision on CUDA (bf16, or fp16 with a GradScaler); plain fp32 elsewhere."""
        if self.device_type == "cuda" and self.dtype != "float32":
            return torch.autocast("cuda", dtype=getattr(torch, self.dtype))
        return contextlib.nullcontext()

    def grad_scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.device_type == "cuda" and self.dtype == "float16")

    def all_reduce_sum(self, value):
        """Sum of a number over the ranks (identity in a single process)."""
        if not self.ddp:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item()

    def all_reduce_mean(self, value):
        """Mean of a number over the ranks (identity in a single process)."""
        return self.all_reduce_sum(value) / self.world_size


def setup_runtime(device="auto", dtype="auto", seed=1337):
    """
    Device cuda > mps > cpu unless named; dtype bf16 on CUDA where supported, else fp16, fp32 off CUDA.
    Under torchrun (RANK set) it joins the process group: nccl on CUDA, gloo on CPU, one device per rank.
    Each rank seeds with seed + rank so their rollouts and dropout masks differ.
    """
    rank, world_size, local_rank = 0, 1, 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    device_type = device.split(":")[0]
    if world_size > 1:
        if device_type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device_type == "cpu":
        # Tiny activations and gradients underflow to denormals, which this CPU handles in microcode:
        # measured 10-50x slower backward passes of a small GPT. Flushing them to zero costs nothing.
        torch.set_flush_denormal(True)
    torch.manual_seed(seed + rank)
    return Runtime(device, device_type, dtype, rank, world_size, local_rank)


# -----------------------------------------------------------------------------
# Optimisation


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu"):
    """AdamW with weight decay on matrices only (not biases, LayerNorms); fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device_type == "cuda")


def cosine_lr(step, total_steps, peak_lr, warmup_steps=0, final_ratio=0.1):
    """Linear warmup, then cosine decay from peak_lr to final_ratio * peak_lr at total_steps (InstructGPT: 10%)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def estimate_mfu(model, tokens_per_second, device):
    """Model FLOPs utilisation (PaLM appendix B: 6N + 12 L T d per token) against the GPU's bf16 peak."""
    if not str(device).startswith("cuda"):
        return None
    cfg = unwrap(model).config
    flops_per_token = 6 * unwrap(model).num_params() + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12,
                                "A10": 125e12, "4090": 165e12}.items() if k in name), None)
    return None if peak is None else flops_per_token * tokens_per_second / peak


def append_jsonl(path, record):
    """One line of metrics per logged step."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
