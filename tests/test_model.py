"""Invariants of model.py: the GPT and its two attention paths, the KV cache, sampling, GPT-2 weight loading
(by path through common.load_lm too) and checkpoints."""

import math
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import common as C
import model as M
from hf_gpt2 import write_hf_gpt2
from model import GPT, GPTConfig


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=32, vocab_size=61, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_causality():
    """Changing a token never changes the logits at earlier positions."""
    m = tiny()
    x = torch.randint(0, 61, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 61
    a, _ = m(x)
    b, _ = m(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_invariance(side):
    """A padded row with its attention mask gives, at its real positions, the logits of the row alone."""
    m = tiny()
    seqs = [torch.randint(0, 61, (n,)) for n in (5, 9, 12)]
    T = 12
    idx = torch.full((3, T), 7)  # any pad id: the mask decides, not the value
    mask = torch.zeros(3, T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        idx[i, sl], mask[i, sl] = s, True
    logits, _ = m(idx, attention_mask=mask)
    for i, s in enumerate(seqs):
        alone, _ = m(s[None])
        torch.testing.assert_close(logits[i][mask[i]], alone[0], atol=1e-5, rtol=1e-5)


def test_left_padding_is_exact_on_the_explicit_attention_path():
    """Under bf16 autocast on a CPU (explicit attention, where a query that sees no key would be NaN), a
    left-padded row's logits at its real positions are those of the row alone, to bf16's precision."""
    m = tiny()
    seqs = [torch.randint(0, 61, (n,)) for n in (4, 12)]
    idx, mask = M.pad_left(seqs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = m(idx, attention_mask=mask)
        for i, s in enumerate(seqs):
            alone, _ = m(s[None], attention_mask=torch.ones(1, len(s), dtype=torch.bool))
            torch.testing.assert_close(logits[i][mask[i]].float(), alone[0].float(), atol=2e-2, rtol=2e-2)


def test_scalar_head_padding_invariance():
    """The scalar head gives the same per-position scores to a left-padded row as to the row alone."""
    m = tiny(scalar_head=True)
    torch.nn.init.normal_(m.score_head.weight)
    s = torch.randint(0, 61, (6,))
    idx = torch.cat([torch.zeros(4, dtype=torch.long), s])[None]
    mask = (torch.arange(10) >= 4)[None]
    scores, _ = m(idx, attention_mask=mask)
    alone, _ = m(s[None])
    assert scores.shape == (1, 10)
    torch.testing.assert_close(scores[0, 4:], alone[0], atol=1e-5, rtol=1e-5)


def ragged_prompts(n, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 61, (k,), generator=g).tolist() for k in lengths[:n]]


def test_kv_cache_equals_full_recomputation():
    """Cached decoding of left-padded prompts gives the same tokens (greedy) and logits as recomputing."""
    m = tiny()
    prompts = ragged_prompts(3, [3, 5, 6])  # prompts of different lengths, left-padded
    a = M.generate(m, prompts, 10, temperature=0, use_cache=True)
    b = M.generate(m, prompts, 10, temperature=0, use_cache=False)
    assert torch.equal(a["seqs"], b["seqs"])
    # logits: a prefill, a chunk of 3 after it, then one step at a time through the cache (which attends
    # over its whole 16-position buffer) vs one full pass over the final sequence
    seqs, full_mask = a["seqs"], torch.cat([a["attention_mask"][:, :6], torch.ones(3, 10, dtype=torch.bool)], 1)
    full, _ = m(seqs, attention_mask=full_mask)
    cache = M.KVCache(m.config.n_layer, 16)
    pieces = [m(seqs[:, :5], attention_mask=full_mask[:, :5], kv_cache=cache)[0],
              m(seqs[:, 5:8], attention_mask=full_mask[:, :8], kv_cache=cache)[0]]
    for t in range(8, 16):
        step, _ = m(seqs[:, t:t + 1], attention_mask=full_mask[:, :t + 1], kv_cache=cache)
        pieces.append(step)
    cached = torch.cat(pieces, 1)
    assert cache.length == 16
    torch.testing.assert_close(cached[full_mask], full[full_mask], atol=1e-5, rtol=1e-5)


def test_sampled_generation_same_with_and_without_cache():
    """With the same seed, temperature-1 sampling draws the same tokens with and without the cache."""
    m = tiny()
    prompts = ragged_prompts(4, [5, 5, 5, 5])
    torch.manual_seed(3)
    a = M.generate(m, prompts, 12)
    torch.manual_seed(3)
    b = M.generate(m, prompts, 12, use_cache=False)
    assert torch.equal(a["seqs"], b["seqs"])


def test_seeded_sample_depends_on_its_seed_alone():
    """With per-row seeds a row samples the same response alone or inside any batch (DDP, resume)."""
    m = tiny()
    prompts = ragged_prompts(4, [2, 6, 3, 5], seed=1)
    together = M.generate(m, prompts, 12, seeds=[11, 12, 13, 14])["response_lists"]
    for i, p in enumerate(prompts):
        alone = M.generate(m, [p], 12, seeds=[11 + i])["response_lists"][0]
        assert alone == together[i]
    assert M.generate(m, prompts[:1], 12, seeds=[99])["response_lists"][0] != together[0]


def test_gumbel_sampling_matches_softmax():
    """sample_next draws token i with probability softmax(logits / temperature)_i (chi-square-level check)."""
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]]).repeat(40000, 1)
    for temperature in (1.0, 0.5):
        counts = torch.bincount(M.sample_next(logits, temperature), minlength=4).float() / len(logits)
        torch.testing.assert_close(counts, torch.softmax(logits[0] / temperature, -1), atol=0.01, rtol=0)


def test_top_k_samples_only_the_k_largest():
    """sample_next with top_k=k draws every one of the k largest logits and nothing else."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.5, 0.0]]).repeat(2000, 1)
    assert set(M.sample_next(logits, 1.0, top_k=2).tolist()) == {1, 3}
    assert set(M.sample_next(logits, 1.0, top_k=1).tolist()) == {1}


def test_loss_is_mean_cross_entropy_over_targets_not_minus_one():
    """forward's loss is the mean cross-entropy of the positions whose target is not -1 (prompt and padding)."""
    m = tiny()
    idx, targets = torch.randint(0, 61, (2, 8)), torch.randint(0, 61, (2, 8))
    targets[0, :3] = targets[1, 6:] = -1
    logits, loss = m(idx, targets=targets)
    keep = targets != -1
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], targets[keep]))


def test_generate_stops_each_row_at_eos_and_masks_after_it():
    """After a row emits EOS its later tokens are EOS filler outside the response mask; ended says which
    rows stopped; generation ends when all rows have."""
    m = tiny()
    with torch.no_grad():  # make token 0 (EOS) likely so rows stop at different steps
        m.lm_head.weight[0] += 0.3 * m.lm_head.weight[1:].mean(0)
    torch.manual_seed(0)
    out = M.generate(m, ragged_prompts(8, [3] * 8), 25, eos_id=0)
    for row, mask, ended, lst in zip(out["responses"], out["response_mask"], out["ended"], out["response_lists"]):
        hits = (row == 0).nonzero()
        assert bool(ended) == (len(hits) > 0)
        n = hits[0, 0].item() + 1 if len(hits) else len(row)
        assert (row[n:] == 0).all() and mask[:n].all() and not mask[n:].any() and lst == row[:n].tolist()
    assert out["responses"].size(1) == 25 or out["ended"].all()


def test_logprob_helper_equals_cross_entropy():
    """logprobs_from_logits equals -cross_entropy per token, entropy_from_logits the explicit sum."""
    logits = torch.randn(3, 7, 50) * 3
    tokens = torch.randint(0, 50, (3, 7))
    ce = F.cross_entropy(logits.view(-1, 50), tokens.view(-1), reduction="none").view(3, 7)
    torch.testing.assert_close(M.logprobs_from_logits(logits, tokens), -ce)
    p = F.softmax(logits, -1)
    torch.testing.assert_close(M.entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-5, rtol=1e-5)


def explicit_attention(attn, x):
    """Causal softmax attention written out: softmax(q k^T / sqrt(hs) + causal mask) v."""
    B, T, C = x.shape
    nh = attn.n_head
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    att = q @ k.transpose(-2, -1) / math.sqrt(C // nh)
    att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
    return attn.c_proj(y)


def test_sdpa_equals_explicit_attention():
    """The scaled_dot_product_attention path equals explicit softmax attention math."""
    m = tiny()
    x = torch.randn(2, 9, 16)
    attn = m.transformer.h[0].attn
    torch.testing.assert_close(attn(x), explicit_attention(attn, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["causal", "padded", "decode", "chunk"])
def test_explicit_attention_equals_sdpa(dtype, case):
    """model.explicit_attention (which model.attention takes on a CPU in bf16 for short sequences) computes
    what SDPA computes, values and gradients: causal (no mask), a left-padded batch, a decoding step (one query
    over a cache of S keys) and a chunk of 3 queries after 4 cached positions (T < S, a shifted causal mask)."""
    torch.manual_seed(0)
    B, nh, S, hs = 3, 2, 7, 8
    T = {"causal": S, "padded": S, "decode": 1, "chunk": 3}[case]
    q = torch.randn(B, nh, T, hs, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(B, nh, S, hs, dtype=dtype, requires_grad=True) for _ in range(2))
    mask = None
    if case != "causal":
        past = S - T
        keys = torch.ones(B, S, dtype=torch.bool)
        keys[0, :3] = False  # a left-padded row
        causal = torch.ones(T, S, dtype=torch.bool).tril(diagonal=past)
        itself = torch.arange(past, S)[:, None] == torch.arange(S)[None, :]
        mask = ((causal[None] & keys[:, None, :]) | itself[None])[:, None]  # (B, 1, T, S), as GPT.forward builds it
    y = M.explicit_attention(q, k, v, mask)
    g = torch.autograd.grad(y.float().sum(), (q, k, v))
    y_ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
    g_ref = torch.autograd.grad(y_ref.float().sum(), (q, k, v))
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, y_ref, **tol)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype,T,masked,grad,explicit", [
    (torch.bfloat16, 64, False, True, True),     # bf16 training, short: explicit
    (torch.bfloat16, 64, True, False, True),     # bf16 with a mask (a padded forward, a decode step): explicit
    (torch.bfloat16, 64, False, False, False),   # bf16 inference without a mask: SDPA
    (torch.bfloat16, 512, False, True, False),   # T x S = 512 x 512: SDPA
    (torch.bfloat16, 512, True, False, False),   # ... with a mask too
    (torch.float32, 64, True, True, False),      # fp32: SDPA, mask or not
    (torch.float32, 64, False, True, False),
])
def test_attention_follows_its_dispatch_rule_on_a_cpu(dtype, T, masked, grad, explicit):
    """model.attention's choice between the explicit path and SDPA, seen in its output: bitwise one or the other."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, T, 8, dtype=dtype) for _ in range(3))
    mask = torch.ones(1, 1, T, T, dtype=torch.bool).tril() if masked else None
    with torch.set_grad_enabled(grad):
        y = M.attention(q, k, v, mask)
        want = M.explicit_attention(q, k, v, mask) if explicit else torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None)
        other = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None) \
            if explicit else M.explicit_attention(q, k, v, mask)
    assert torch.equal(y, want)
    assert not torch.equal(y, other)  # the two paths differ in their last bits, so the choice shows


# -----------------------------------------------------------------------------
# GPT-2 weights in the Hugging Face layout, written by the test itself (tests/hf_gpt2.py)


def reference_gpt2_forward(w, idx, n_layer=2, n_head=2):
    """GPT-2's forward pass written directly on the HF tensors (Conv1D: x @ W + b), explicit attention."""
    x = w["transformer.wte.weight"][idx] + w["transformer.wpe.weight"][torch.arange(idx.size(1))]
    B, T, C = x.shape
    ln = lambda x, p: F.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"], eps=1e-5)  # noqa: E731
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        h = ln(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in h.split(C, 2))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(C // n_head)
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))  # GPT-2's gelu
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    return ln(x, "transformer.ln_f") @ w["lm_head.weight"].t()


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_matches_independent_forward(tmp_path, fmt):
    """A GPT-2 checkpoint in the HF layout loads and reproduces a forward pass computed independently."""
    w = write_hf_gpt2(str(tmp_path), fmt)
    m = GPT.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, 61, (2, 10))
    logits, _ = m(idx)
    torch.testing.assert_close(logits, reference_gpt2_forward(w, idx), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_load_lm_takes_a_gpt2_directory(tmp_path, fmt):
    """--init_from=DIR: common.load_lm, which every stage loads a language model with, takes a GPT-2 directory
    in the HF layout by its path: a 'pretrain' model with GPT-2's tokenizer and the logits of the weights
    written, and its in-memory checkpoint loads back to the same model."""
    w = write_hf_gpt2(str(tmp_path / "tiny"), fmt, vocab=50257)  # a path that does not start with "gpt2"
    model, tok, ckpt = C.load_lm(str(tmp_path / "tiny"), stages=("pretrain", "sft"))
    assert ckpt["stage"] == "pretrain" and tok.vocab_size == 50257 and tok.state() == ckpt["tokenizer"]
    idx = torch.randint(0, 50257, (2, 10))
    torch.testing.assert_close(model.eval()(idx)[0], reference_gpt2_forward(w, idx), atol=1e-4, rtol=1e-4)
    again, _ = M.load_model(ckpt)
    torch.testing.assert_close(again.eval()(idx)[0], model(idx)[0], atol=0, rtol=0)


def test_load_lm_gpt2_directory_as_reward_model_start(tmp_path):
    """scalar_head=True on a GPT-2 directory (reward.py --init_from=DIR) gives its transformer under a zero
    scalar head: every score 0, the transformer's weights those of the file."""
    w = write_hf_gpt2(str(tmp_path), "safetensors", vocab=50257)
    rm, _, ckpt = C.load_lm(str(tmp_path), scalar_head=True, dropout=0.1)
    assert rm.config.scalar_head and rm.config.dropout == 0.1 and ckpt["model_config"]["scalar_head"]
    assert torch.equal(rm.transformer.h[1].attn.c_attn.weight, w["transformer.h.1.attn.c_attn.weight"].t())
    assert torch.equal(rm.transformer.wte.weight, w["transformer.wte.weight"])
    scores, _ = rm.eval()(torch.randint(0, 50257, (2, 5)))
    assert scores.shape == (2, 5) and torch.all(scores == 0)


def test_load_lm_refuses_what_a_gpt2_directory_cannot_be(tmp_path):
    """A directory that is not in the HF layout is refused in one message naming what it lacks; a GPT-2
    where a stage wants a later stage's checkpoint, or one whose vocabulary GPT-2's tokenizer overflows, too."""
    with pytest.raises(M.CheckpointError, match=r"no config.json and no model.safetensors or pytorch_model.bin"):
        C.load_lm(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(M.CheckpointError, match=r"\(no model.safetensors or pytorch_model.bin\)"):
        C.load_lm(str(tmp_path), stages=("sft",))
    torch.save({}, tmp_path / "pytorch_model.bin")
    with pytest.raises(M.CheckpointError, match=r"not a GPT-2 config \(no integer vocab_size, n_layer"):
        C.load_lm(str(tmp_path))
    write_hf_gpt2(str(tmp_path / "full"), "bin", vocab=50257)
    with pytest.raises(M.CheckpointError, match="GPT-2's pretrained weights; expected a sft checkpoint"):
        C.load_lm(str(tmp_path / "full"), stages=("sft",))
    write_hf_gpt2(str(tmp_path / "small"), "bin")
    with pytest.raises(M.CheckpointError, match="vocabulary of 61 tokens is smaller than the 50257"):
        C.load_lm(str(tmp_path / "small"))
    with pytest.raises(M.CheckpointError, match="is a directory, not a checkpoint file"):
        M.load_checkpoint(str(tmp_path))


def test_from_pretrained_refuses_unknown_name(tmp_path):
    """A name that is neither a directory nor a GPT-2 size is a clear error, not a download attempt."""
    with pytest.raises(ValueError, match="neither a directory"):
        GPT.from_pretrained(str(tmp_path / "nope"))


# -----------------------------------------------------------------------------
# Checkpoints


class FakeTokenizer:
    def state(self):
        return {"encoding": "gpt2", "vocab": [50256, 11, 12]}


@dataclass
class RunCfg:
    lr: float = 1e-3
    name: str = "x"


def test_checkpoint_round_trip(tmp_path):
    """A saved checkpoint loads back to the same weights, configs, tokenizer and extra plain data."""
    m = tiny()
    path = str(tmp_path / "sft.pt")
    M.save_checkpoint(path, stage="sft", model=m, run_config=RunCfg(), tokenizer=FakeTokenizer(), step=7)
    m2, ckpt = M.load_model(path, stages=("sft",))
    assert ckpt["step"] == 7 and ckpt["run_config"] == {"lr": 1e-3, "name": "x"}
    assert ckpt["tokenizer"]["vocab"] == [50256, 11, 12]
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randint(0, 61, (1, 5))
    torch.testing.assert_close(m(x)[0], m2.eval()(x)[0])


def test_checkpoint_saves_uncompiled_module(tmp_path):
    """A wrapped model (DDP .module / torch.compile ._orig_mod) is saved without the wrapper's key prefix."""
    m = tiny()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    path = str(tmp_path / "a.pt")
    M.save_checkpoint(path, stage="sft", model=Wrapper(m), run_config=RunCfg(), tokenizer=FakeTokenizer())
    assert all(not k.startswith("_orig_mod") for k in M.load_checkpoint(path)["model"])


def test_checkpoint_errors(tmp_path):
    """Not a checkpoint, the wrong stage and a config mismatch each give a clear CheckpointError."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(M.CheckpointError, match="not a checkpoint"):
        M.load_checkpoint(str(junk))
    torch.save({"some": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(M.CheckpointError, match="not a checkpoint"):
        M.load_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(M.CheckpointError, match="no such"):
        M.load_checkpoint(str(tmp_path / "missing.pt"))
    path = str(tmp_path / "rm.pt")
    M.save_checkpoint(path, stage="reward", model=tiny(), run_config=RunCfg(), tokenizer=FakeTokenizer())
    with pytest.raises(M.CheckpointError, match="'reward' checkpoint; expected sft"):
        M.load_checkpoint(path, stages=("sft",))
    ckpt = M.load_checkpoint(path)
    ckpt["model_config"]["n_embd"] = 32
    with pytest.raises(M.CheckpointError, match="does not match the model config"):
        M.load_model(ckpt)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A save interrupted midway leaves the previous checkpoint intact and no partial file behind."""
    path = str(tmp_path / "sft.pt")
    M.save_checkpoint(path, stage="sft", model=tiny(), run_config=RunCfg(), tokenizer=FakeTokenizer(), step=1)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(M.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        M.save_checkpoint(path, stage="sft", model=tiny(), run_config=RunCfg(), tokenizer=FakeTokenizer(), step=2)
    monkeypatch.undo()
    assert M.load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["sft.pt"]


def test_scalar_head_from_language_model(tmp_path):
    """An LM checkpoint loads as a scalar-head model: same transformer, fresh zero head, (B, T) scores."""
    m = tiny()
    path = str(tmp_path / "sft.pt")
    M.save_checkpoint(path, stage="sft", model=m, run_config=RunCfg(), tokenizer=FakeTokenizer())
    rm, _ = M.load_model(path, scalar_head=True)
    assert torch.equal(rm.transformer.h[0].attn.c_attn.weight, m.transformer.h[0].attn.c_attn.weight)
    scores, _ = rm(torch.randint(0, 61, (2, 5)))
    assert scores.shape == (2, 5) and torch.all(scores == 0)
    M.save_checkpoint(path, stage="reward", model=rm, run_config=RunCfg(), tokenizer=FakeTokenizer())
    with pytest.raises(M.CheckpointError, match="scalar head"):
        M.load_model(path, scalar_head=False)
