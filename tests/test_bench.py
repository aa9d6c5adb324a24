"""bench.py at a tiny size: every own-side measurement runs and out/bench.json has its schema; the peers
(transformers, TRL) where installed. And the explicit attention path that bench.py made the CPU default
in some cases equals SDPA."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
import model as M  # noqa: E402

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=4, steps=2, warmup=1, repeats=1,
            matmul_size=128, extras=False, sample_prompts=4, sample_new_tokens=4, no_cache_lengths=(2, 4),
            ppo_iterations=1, ppo_batch_size=4, ppo_minibatch_size=2, ppo_epochs=1, ppo_new_tokens=4,
            world_scale=0.02, stage_steps=4, dtype="float32", device="cpu")
HAVE_PEERS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "trl", "datasets"))


pytestmark = pytest.mark.usefixtures("one_thread")


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_own_side_measurements_and_schema(tmp_path):
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"from_an_earlier_run": 1}))
    bench.main(bench.BenchConfig(out=str(out), work_dir=str(tmp_path / "work"), peers=False, **{**TINY, "repeats": 2}))
    res = json.loads(out.read_text())
    for stage in ("pretrain", "sft", "reward", "ppo"):  # each stage's second turn ran in its own folder
        assert (tmp_path / "work" / "stages" / f"{stage}_1").is_dir(), stage
    assert res["from_an_earlier_run"] == 1  # merged, not overwritten
    for key in ("train_vs_transformers", "matmul_peak_fraction", "sample_vs_transformers", "sample_vs_no_cache",
                "ppo_vs_trl", "stage_vs_bare", "device", "torch"):
        assert key in res, key
    assert res["torch"] == torch.__version__ and res["dtype"] == "float32"
    assert "gpt2_124m" not in res  # GPT-2 124M is a GPU's section unless asked for
    for key, ours in (("train_vs_transformers", "ours_tokens_per_s"), ("sample_vs_transformers", "ours_tokens_per_s"),
                      ("ppo_vs_trl", "ours_episodes_per_s")):
        assert positive(res[key][ours]), key
        assert res[key]["ratio"] is None and "skipped" in res[key], key  # peers off: said, not guessed
    mfu = res["matmul_peak_fraction"]
    assert positive(mfu["fraction"]) and positive(mfu["matmul_flops_per_s"]) and positive(mfu["flops_per_token"])
    assert mfu["fraction"] == pytest.approx(mfu["model_flops_per_s"] / mfu["matmul_flops_per_s"])
    ours = res["train_vs_transformers"]["ours_tokens_per_s"]
    assert mfu["flops_per_token"] == pytest.approx(mfu["model_flops_per_s"] / ours)
    no_cache = res["sample_vs_no_cache"]
    assert set(no_cache["by_length"]) == {"2", "4"}
    for e in no_cache["by_length"].values():
        assert e["ratio"] == pytest.approx(e["cache_tokens_per_s"] / e["no_cache_tokens_per_s"])
    assert no_cache["ratio"] == min(e["ratio"] for e in no_cache["by_length"].values())
    stages = res["stage_vs_bare"]
    assert set(stages) == {"pretrain", "sft", "reward", "ppo"}
    for stage, e in stages.items():
        script, bare = (e["script_tokens_per_s"], e["bare_tokens_per_s"]) if stage != "ppo" else \
            (e["script_episodes_per_s"], e["bare_episodes_per_s"])
        assert positive(script) and positive(bare) and e["fraction"] == pytest.approx(script / bare), stage


def test_gpt2_section_at_a_tiny_shape_and_the_vocabulary_override(tmp_path, monkeypatch):
    """The GPU recipe's section runs anywhere when asked (here its model shrunk): tokens/s, its fraction of the
    measured matmul (MFU needs a GPU's datasheet peak: None on a CPU); --vocab_size widens the other sections'
    model and refuses one narrower than the world's."""
    monkeypatch.setattr(bench, "GPT2_124M", dict(n_layer=1, n_head=2, n_embd=32, block_size=32))
    out = tmp_path / "bench.json"
    args = dict(TINY, out=str(out), work_dir=str(tmp_path / "work"), peers=False)
    res = bench.main(bench.BenchConfig(sections=("gpt2", "sample"), gpt2_batch_size=2, gpt2_steps=1,
                                       gpt2_vocab_size=96, gpt2_compile=False, vocab_size=4000, **args))
    g = res["gpt2_124m"]
    assert positive(g["ours_eager_tokens_per_s"]) and g["mfu"] is None and g["ratio"] is None and "skipped" in g
    assert g["shape"] == "1x32, vocab 96, batch 2x32"
    assert g["flops_per_token"] == 6 * (96 * 32 + 12 * 32 * 32 + 13 * 32 + 2 * 32) + 12 * 32 * 32  # 6N + 12LTd
    assert g["matmul_fraction"] == pytest.approx(g["flops_per_token"] * g["ours_eager_tokens_per_s"] /
                                                 g["matmul_flops_per_s"])
    assert positive(res["sample_vs_transformers"]["ours_tokens_per_s"])
    with pytest.raises(bench.ConfigError, match="--vocab_size=8 is below the world's vocabulary"):
        bench.main(bench.BenchConfig(sections=("sample",), vocab_size=8, **args))


@pytest.mark.skipif(not HAVE_PEERS, reason="transformers / trl not installed (optional peers)")
def test_peer_comparisons(tmp_path):
    out = tmp_path / "bench.json"
    bench.main(bench.BenchConfig(out=str(out), work_dir=str(tmp_path / "work"), sections=("train", "sample", "ppo"),
                                 **TINY))
    res = json.loads(out.read_text())
    assert positive(res["train_vs_transformers"]["ratio"]) and positive(res["sample_vs_transformers"]["ratio"])
    ppo = res["ppo_vs_trl"]
    assert positive(ppo["ratio"])
    assert ppo["ratio"] == pytest.approx(ppo["ours_episodes_per_s"] / ppo["trl_episodes_per_s"])


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
def test_attention_takes_the_measured_faster_path_on_a_cpu(dtype, T, masked, grad, explicit):
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
