"""
The GPT that every stage stands on, and everything that reads it.

    GPTConfig, GPT        a nanoGPT-style GPT-2 with GPT-2's parameter names, fused attention through
                          scaled_dot_product_attention, exact padded batches, a KV cache and a scalar head
    pad_left, pad_right   the two batch layouts: left for generation, right for scoring and training
    generate              the one sampling routine: prompts in, token ids, masks and `ended` out
    response_logprobs     log p (and entropy) of the response tokens of prompt + response sequences
    score_sequences       a scalar-head model read at each sequence's last token (the reward)
    from_pretrained       OpenAI's GPT-2 weights, read without transformers and without unpickling
    save_checkpoint, load_checkpoint, load_model   one checkpoint file per stage, written atomically

References: nanoGPT's model.py (Karpathy), GPT-2 (Radford et al. 2019), InstructGPT (Ouyang et al. 2022).
"""

import contextlib
import dataclasses
import json
import math
import os
import shutil
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

from data.formats import atomic_write

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
        y = attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


def attention(q, k, v, attn_mask=None, dropout_p=0.0):
    """
    softmax(q k^T / sqrt(hs)) v over q (B, nh, T, hs) and k, v (B, nh, S, hs). attn_mask (B, 1, T, S) bool,
    True where a query may look, or None for plain causal attention (T == S: unpadded or right-padded rows).
    The rule: on a CPU in bf16, for T x S under 512 x 512, with a mask or with gradients, explicit_attention;
    everywhere else F.scaled_dot_product_attention, whose fused kernels never write out the (T, S) matrix (on
    CUDA: flash without a mask, memory-efficient with one). Why: at these short lengths a CPU's fused bf16
    kernels are slower than the three plain ops in training and under a mask, which is what the pipeline's CPU
    runs are made of; for long sequences and in fp32 SDPA is as fast or faster (measured: docs/benchmarks.md).
    Both compute the same function (tests compare them), so the choice changes speed and rounding only.
    """
    explicit = (q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(-2) * k.size(-2) < 512 * 512
                and (attn_mask is not None or torch.is_grad_enabled()))
    if explicit:
        return explicit_attention(q, k, v, attn_mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None,
                                          dropout_p=dropout_p)


def explicit_attention(q, k, v, attn_mask=None, dropout_p=0.0):
    """What SDPA computes, written out (the reference SDPA is tested against): the (B, nh, T, S) scores,
    masked, softmax, times v."""
    if attn_mask is None:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    att = F.softmax(att.masked_fill(~attn_mask, float("-inf")), dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, dropout_p)
    return att @ v


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
    """
    Keys and values of every layer, preallocated for max_len positions. Attention reads the whole buffer,
    not the part written so far: the mask hides the positions still to come (the buffer starts at zero, so
    they are finite), and a contiguous (B, nh, max_len, hs) block is multiplied as it is, where a slice
    of it would be copied at every step, a large part of a decode step's cost (measured: docs/benchmarks.md).
    """

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len, self.length, self.k, self.v = n_layer, max_len, 0, None, None

    def update(self, layer, k, v):
        B, nh, T, hs = k.shape
        if self.k is None:  # allocated on first use so it takes the dtype autocast gives k and v
            self.k = k.new_zeros(self.n_layer, B, nh, self.max_len, hs)
            self.v = v.new_zeros(self.n_layer, B, nh, self.max_len, hs)
        end = self.length + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer], self.v[layer]  # (B, nh, max_len, hs)


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
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def num_params(self):
        """Parameters without the position embeddings (nanoGPT's count for FLOPs)."""
        return sum(p.numel() for p in self.parameters()) - self.transformer.wpe.weight.numel()

    def forward(self, idx, targets=None, attention_mask=None, kv_cache=None):
        """
        idx (B, T) token ids. Returns (logits (B, T, V), loss) or, with a scalar head, (scores (B, T), None).
        targets (B, T): next-token targets with -1 where no loss is taken; loss is their mean cross-entropy.
        attention_mask (B, past + T): 1 for real tokens, 0 for padding, covering the cached positions too.
            Needed for left padding; right padding is exact without it (causal rows never see later pads).
        Positions count real tokens only, so a left-padded row gets the positions it would have alone.
        kv_cache: a KVCache; this call appends its T positions after the cached ones.
        """
        B, T = idx.size()
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        attn_mask, position_ids = None, torch.arange(past, past + T, device=idx.device)[None]
        if attention_mask is not None or kv_cache is not None:
            if attention_mask is None:
                attention_mask = torch.ones(B, past + T, dtype=torch.bool, device=idx.device)
            S = kv_cache.max_len if kv_cache is not None else past + T  # keys: the cache's whole buffer
            keys = F.pad(attention_mask.bool(), (0, S - past - T))  # (B, S), False on positions to come
            # A padding query would see no key at all (left padding): a softmax over nothing is NaN in the
            # explicit path (and in some SDPA kernels), which the next layer spreads to real tokens (0 * NaN).
            # Letting each query see itself keeps it finite and changes nothing for real tokens.
            if T == 1:  # a decoding step: every key so far is in the past, so the mask is the keys' alone
                keys[:, past] = True
                attn_mask = keys[:, None, None, :]  # (B, 1, 1, S)
            else:
                causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)
                positions = torch.arange(S, device=idx.device)
                itself = positions[past:past + T, None] == positions[None, :]
                attn_mask = ((causal[None] & keys[:, None, :]) | itself[None])[:, None]  # (B, 1, T, S), over heads
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
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

    @classmethod
    def from_pretrained(cls, name_or_path, dropout=0.0, scalar_head=False):
        """
        OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl), from a local directory in the
        Hugging Face layout (config.json + model.safetensors or pytorch_model.bin) or downloaded by name
        into $RLHF_CACHE (default ~/.cache/rlhf). Nothing is unpickled: safetensors are parsed here and
        .bin files go through torch.load(weights_only=True). scalar_head=True: the same transformer with a
        fresh zero scalar head in place of the unembedding (a reward model's starting point).
        """
        directory = name_or_path if os.path.isdir(name_or_path) else download_gpt2(name_or_path)
        hf = read_hf_config(directory)
        config = GPTConfig(block_size=hf.get("n_positions", 1024), vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           dropout=dropout, bias=True, scalar_head=scalar_head)
        weights = read_hf_weights(directory)
        model = cls(config)
        sd = model.state_dict()
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        loaded = set()
        for key, tensor in weights.items():
            key = key.removeprefix("transformer.")
            if key.endswith((".attn.bias", ".attn.masked_bias")) or key == "lm_head.weight":
                continue  # causal-mask buffers of the HF implementation, and the tied unembedding
            ours = "transformer." + key
            if ours not in sd:
                raise CheckpointError(f"{directory}: unexpected GPT-2 weight {key!r}")
            if key.endswith(transposed):
                tensor = tensor.t()  # HF's GPT-2 uses Conv1D, which stores Linear weights as (in, out)
            if tensor.shape != sd[ours].shape:
                raise CheckpointError(f"{directory}: {key} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(sd[ours].shape)}")
            with torch.no_grad():
                sd[ours].copy_(tensor)
            loaded.add(ours)
        missing = [k for k in sd if k not in loaded and not k.startswith(("lm_head.", "score_head."))]
        if missing:
            raise CheckpointError(f"{directory}: weights missing for {missing[:5]}"
                                  f"{'...' if len(missing) > 5 else ''}")
        return model


# -----------------------------------------------------------------------------
# Batches: left padding for generation, right padding for scoring and training


def pad_right(seqs, pad=0):
    """(B, T) right-padded sequences and their lengths (B,). Exact without a mask: causal attention never
    lets a real position see a later pad."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.full((len(seqs), int(lengths.max())), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out, lengths


def pad_left(seqs, pad=0):
    """(B, T) left-padded sequences and their attention mask (B, T): prompts end in the same column, so
    generation appends to every row at once."""
    T = max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, T - len(s):] = torch.as_tensor(np.asarray(s, dtype=np.int64))
            mask[i, T - len(s):] = True
    return out, mask


# -----------------------------------------------------------------------------
# Sampling: the one routine behind rollouts, evaluation, comparison collection and printed samples


def sample_next(logits, temperature=1.0, top_k=None, generators=None):
    """
    One token per row of (B, V) logits from softmax(logits / temperature) (temperature 0: greedy; top_k:
    truncated, never for RLHF rollouts, whose KL estimate it would bias). Gumbel-max: argmax(z + G) with
    G = -log(-log U) is an exact sample of softmax(z). With generators (one per row) each row draws U
    from its own generator, so its sample depends on that row alone, not on the batch it shares.
    """
    if temperature == 0:
        return logits.float().argmax(-1)  # the same token; a CPU's argmax is faster over float32 than bf16
    z = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(z, min(top_k, z.size(-1))).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if generators is None:
        u = torch.rand_like(z)
    else:
        u = torch.stack([torch.rand(z.size(-1), generator=g, device=z.device) for g in generators])
    return (z - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, eos_id=None, seeds=None,
             use_cache=True, autocast=None):
    """
    Sample a response to each prompt (lists of token ids, left-padded into one batch) with the KV cache.
    A row that emits eos_id is done (later columns are eos_id filler); sampling stops when all are done.
    seeds (one int per row) make each row's sample a function of its seed alone (exact resume, DDP ==
    one process); use_cache=False recomputes the sequence each step (the reference the cache is tested on).
    Returns a dict of tensors on the model's device:
      seqs (B, P + T)            left-padded prompts, then the sampled tokens
      attention_mask (B, P + T)  1 on real prompt tokens and on response tokens up to and including the
                                 first EOS; 0 on prompt padding and on the filler after EOS
      prompt_len                 P, the padded prompt width: response token t sits in column P + t
      responses (B, T), response_mask (B, T) float (1 up to and including EOS), ended (B,) bool
    and response_lists: each row's real response tokens (with its EOS when it ended).
    """
    device = next(model.parameters()).device
    idx, prompt_mask = (t.to(device) for t in pad_left(prompts))
    B, P = idx.shape
    max_new = min(max_new_tokens, model.config.block_size - P)
    if max_new < 1:
        raise ValueError(f"a prompt of {P} tokens leaves no room to answer in block_size {model.config.block_size}")
    generators = None if seeds is None else [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    cache = KVCache(model.config.n_layer, P + max_new) if use_cache else None
    was_training = model.training
    model.eval()
    seqs, mask, step_input = idx, prompt_mask, idx
    done = torch.zeros(B, dtype=torch.bool, device=device)
    with autocast() if autocast else contextlib.nullcontext():
        for _ in range(max_new):
            logits, _ = model(step_input if use_cache else seqs, attention_mask=mask, kv_cache=cache)
            token = sample_next(logits[:, -1], temperature, top_k, generators)  # (B,)
            if eos_id is not None:
                token = torch.where(done, eos_id, token)
                done |= token == eos_id
            seqs = torch.cat([seqs, token[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(done)[:, None]], dim=1)
            step_input = token[:, None]
            if eos_id is not None and bool(done.all()):
                break
    model.train(was_training)
    responses = seqs[:, P:]
    is_eos = (responses == eos_id).long() if eos_id is not None else torch.zeros_like(responses)
    response_mask = (is_eos.cumsum(1) - is_eos) == 0  # no EOS strictly before t: a real token (EOS included)
    lengths = response_mask.sum(1).tolist()
    return {"seqs": seqs, "attention_mask": torch.cat([prompt_mask, response_mask], dim=1), "prompt_len": P,
            "responses": responses, "response_mask": response_mask.float(), "ended": is_eos.bool().any(1),
            "response_lists": [row[:n] for row, n in zip(responses.tolist(), lengths)]}


# -----------------------------------------------------------------------------
# Reading the model: log-probabilities, entropy, and the scalar head at the last token


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


def response_logprobs(model, seqs, attention_mask, prompt_len, temperature=1.0, with_entropy=False):
    """
    log p of each response token of (B, P + T) prompt + response sequences, (B, T) float32, from one
    forward with the attention mask (left pads masked, positions counted over real tokens). Logits are
    divided by the sampling temperature, so these are the logprobs of the distribution sampled from.
    """
    logits, _ = model(seqs, attention_mask=attention_mask)
    logits = logits[:, prompt_len - 1:-1].float() / temperature  # the logits that predict response tokens
    logprobs = logprobs_from_logits(logits, seqs[:, prompt_len:])
    return (logprobs, entropy_from_logits(logits)) if with_entropy else logprobs


def rewards_at_last_token(scores, lengths):
    """scores (B, T) of right-padded sequences, lengths (B,) -> (B,) the score at index lengths - 1: the
    EOS that closes each response, whatever padding follows it."""
    lengths = torch.as_tensor(lengths, device=scores.device).long()
    if bool((lengths < 1).any()) or bool((lengths > scores.size(1)).any()):
        raise ValueError(f"lengths must be in [1, {scores.size(1)}], got {lengths.tolist()}")
    return scores.gather(1, (lengths - 1)[:, None]).squeeze(1)


def last_token_scores(model, seqs, autocast=None):
    """(B,) float32 scores of token sequences (prompt + response + EOS) under a scalar-head model, from one
    right-padded forward; differentiable (the reward model trains through it)."""
    idx, lengths = pad_right([s.cpu() if torch.is_tensor(s) else s for s in seqs])
    device = next(model.parameters()).device
    with autocast() if autocast else contextlib.nullcontext():
        scores, _ = model(idx.to(device))  # (B, T)
    return rewards_at_last_token(scores.float(), lengths.to(device))


@torch.no_grad()
def score_sequences(model, seqs, autocast=None, batch_size=64):
    """Rewards (B,) of token sequences under a frozen scalar-head model, in their order. The forwards take
    batch_size sequences of similar length (a stable sort: little padding, a fixed batching for a given
    input). The model's train/eval mode is left as it is."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = torch.cat([last_token_scores(model, [seqs[j] for j in order[i:i + batch_size]], autocast)
                        for i in range(0, len(seqs), batch_size)])
    return torch.empty_like(scores).index_copy_(0, torch.tensor(order, device=scores.device), scores)


# -----------------------------------------------------------------------------
# GPT-2 weights in the Hugging Face layout, read without transformers and without unpickling

GPT2_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"


def download_gpt2(name):
    """config.json and model.safetensors of a GPT-2 size, downloaded once into $RLHF_CACHE/NAME."""
    if name not in GPT2_SIZES:
        raise CheckpointError(f"{name!r} is neither a directory nor one of {', '.join(GPT2_SIZES)}")
    directory = os.path.join(os.environ.get("RLHF_CACHE", os.path.expanduser("~/.cache/rlhf")), name)
    for file in ("config.json", "model.safetensors"):
        path = os.path.join(directory, file)
        if os.path.exists(path):
            continue
        url = HF_URL.format(name=name, file=file)
        print(f"downloading {url} -> {path}")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, atomic_write(path, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as e:
            raise CheckpointError(f"could not download {url} ({e}). Offline? Pass the path of a GPT-2 directory "
                                  f"(config.json + model.safetensors or pytorch_model.bin) instead, or copy "
                                  f"config.json and model.safetensors into {directory}") from None
    return directory


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


HF_CONFIG_KEYS = ("vocab_size", "n_layer", "n_head", "n_embd")


def hf_layout_problem(directory):
    """What a directory lacks to be a GPT-2 in the Hugging Face layout, or None when it has everything."""
    lacks = [] if os.path.exists(os.path.join(directory, "config.json")) else ["config.json"]
    if not any(os.path.exists(os.path.join(directory, f)) for f in ("model.safetensors", "pytorch_model.bin")):
        lacks.append("model.safetensors or pytorch_model.bin")
    if lacks:
        return (f"{directory}: not a GPT-2 directory in the Hugging Face layout (no {' and no '.join(lacks)}); "
                f"a checkpoint of this project is a file, such as out/sft/sft.pt")
    return None


def read_hf_config(directory):
    """The dict of directory/config.json, checked for what from_pretrained reads from it."""
    problem = hf_layout_problem(directory)
    if problem:
        raise CheckpointError(problem)
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable as JSON ({e})") from None
    lacks = [k for k in HF_CONFIG_KEYS if not isinstance(hf, dict) or not isinstance(hf.get(k), int)]
    if lacks:
        raise CheckpointError(f"{path}: not a GPT-2 config (no integer {', '.join(lacks)})")
    return hf


def read_hf_weights(directory):
    """{name: float32 tensor} of model.safetensors (8-byte little-endian header length, a JSON header, raw
    little-endian tensors: parsed here) or else pytorch_model.bin (torch.load with weights_only=True)."""
    path, bin_ = os.path.join(directory, "model.safetensors"), os.path.join(directory, "pytorch_model.bin")
    if not os.path.exists(path):
        if not os.path.exists(bin_):
            raise CheckpointError(f"{directory}: neither model.safetensors nor pytorch_model.bin found")
        return {k: v.float() for k, v in torch.load(bin_, map_location="cpu", weights_only=True).items()}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        raw = torch.from_numpy(np.array(data[start:end]))  # copy out of the memmap
        tensors[name] = raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"]).float()
    return tensors


# -----------------------------------------------------------------------------
# Checkpoints: one file per stage, plain data only, written atomically

CHECKPOINT_FORMAT = "rlhf-checkpoint-v1"


class CheckpointError(ValueError):
    pass


def unwrap(model):
    """The plain GPT inside DDP and torch.compile wrappers: checkpoints always hold its state."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def checkpoint_dict(*, stage, model, run_config, tokenizer, **extra):
    """{format, stage, model (state dict), model_config, run_config, tokenizer, **extra}: what a checkpoint
    file holds. extra holds plain data only (tensors, numbers, strings, lists, dicts), so that loading needs
    no unpickling of arbitrary objects."""
    model = unwrap(model)
    return {
        "format": CHECKPOINT_FORMAT,
        "stage": stage,
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.config),
        "run_config": dataclasses.asdict(run_config) if dataclasses.is_dataclass(run_config) else dict(run_config),
        "tokenizer": tokenizer.state(),
        **extra,
    }


def save_checkpoint(path, *, stage, model, run_config, tokenizer, **extra):
    """checkpoint_dict(...) written to path atomically: an interrupted save leaves the previous checkpoint."""
    ckpt = checkpoint_dict(stage=stage, model=model, run_config=run_config, tokenizer=tokenizer, **extra)
    with atomic_write(path, "wb") as f:
        torch.save(ckpt, f)


def load_checkpoint(path, stages=None):
    """Load a checkpoint of this project with weights_only=True; stages, if given, lists the accepted ones."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file of this project")
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
    (model, checkpoint) from a checkpoint path or dict. scalar_head=True on a language-model checkpoint
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
    expected = model.state_dict()
    fresh = ("score_head.",) if scalar_head else ()
    problems = [f"missing {k}" for k in expected if k not in state and not k.startswith(fresh)]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise CheckpointError(f"{name} does not match the model config: " + "; ".join(problems[:6]))
    model.load_state_dict(state, strict=False)
    return model.to(device), ckpt
