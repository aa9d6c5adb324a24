"""bench.py at a tiny size: every own-side measurement runs and out/bench.json has its schema; the peers
(transformers, TRL) where installed."""

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
