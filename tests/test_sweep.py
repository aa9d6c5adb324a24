"""Invariants of data/synthetic/sweep.py: best-of-n's estimator and KL, smoothing, the CSV, a tiny sweep."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
import torch

from data.formats import read_jsonl, read_split, render_prompt, render_response
from data.synthetic import prepare, sweep
from data.tokenizer import Tokenizer
from model import GPT, GPTConfig, save_checkpoint

# -----------------------------------------------------------------------------
# best-of-n


def test_best_of_n_equals_the_mean_over_every_subset():
    """The order-statistics weights give exactly the mean, over all C(N, n) subsets, of the values of the
    sample the proxy ranks highest in the subset (brute force over itertools.combinations)."""
    rng = np.random.default_rng(0)
    N = 7
    proxy, values = rng.permutation(N) + rng.random(N), rng.random((N, 2))
    for n in range(1, N + 1):
        subsets = list(itertools.combinations(range(N), n))
        brute = np.mean([values[max(s, key=lambda i: proxy[i])] for s in subsets], axis=0)
        np.testing.assert_allclose(sweep.best_of_n(proxy, values, n), brute, rtol=1e-12)


def test_best_of_n_ends_are_the_mean_and_the_argmax():
    """n = 1 picks a random sample (the mean); n = N always the proxy's argmax."""
    proxy, gold = [0.3, -1.0, 2.0, 0.5], [0.1, 0.9, 0.2, 0.4]
    assert sweep.best_of_n(proxy, gold, 1) == pytest.approx(0.4)
    assert sweep.best_of_n(proxy, gold, 4) == pytest.approx(0.2)
    # n = 2 by hand: the 6 pairs pick index 0, 2, 3, 2, 1->3, 2 -> gold 0.1, 0.2, 0.4, 0.2, 0.4, 0.2
    assert sweep.best_of_n(proxy, gold, 2) == pytest.approx((0.1 + 0.2 + 0.4 + 0.2 + 0.4 + 0.2) / 6)
    with pytest.raises(ValueError):
        sweep.best_of_n(proxy, gold, 5)


def test_bon_kl_values():
    """KL = log n - (n - 1) / n: 0 at n = 1, log 2 - 1/2 at n = 2, increasing."""
    assert sweep.bon_kl(1) == 0.0
    assert sweep.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert sweep.bon_kl(64) == pytest.approx(math.log(64) - 63 / 64)
    assert all(sweep.bon_kl(2 ** (k + 1)) > sweep.bon_kl(2 ** k) for k in range(6))


def test_bon_kl_is_the_exact_kl_of_best_of_n_for_a_fine_proxy():
    """Best-of-n over M equally likely outcomes ranked by the proxy picks the i-th with probability
    (i/M)^n - ((i-1)/M)^n; its KL to the uniform base tends to the formula as M grows."""
    M = 100_000
    i = np.arange(1, M + 1)
    for n in (2, 8, 64):
        p = (i / M) ** n - ((i - 1) / M) ** n
        kl = np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300) * M), 0.0))
        assert kl == pytest.approx(sweep.bon_kl(n), abs=1e-3)


def test_bon_rows_average_over_prompts():
    """bon_rows: per n the prompts' best-of-n figures averaged, the analytic KL and its square root; the RM
    picks by `score` (the proxy with the no-EOS penalty), not by rm_score."""
    a = {"score": np.array([1.0, 0.0]), "rm_score": np.array([1.0, 5.0]), "gold": np.array([0.2, 0.8]),
         "labelers_score": np.array([0.3, 0.7]), "response_length": np.array([4.0, 48.0]),
         "ended": np.array([1.0, 0.0])}
    b = {k: v[::-1].copy() for k, v in a.items()}
    one, two = sweep.bon_rows([a, b], [1, 2])
    assert one["method"] == "bon" and one["iteration_or_n"] == 1 and one["kl"] == 0.0
    assert one["gold"] == pytest.approx(0.5) and one["score"] == pytest.approx(0.5)
    assert two["gold"] == pytest.approx(0.2) and two["rm_score"] == pytest.approx(1.0)
    assert two["ended"] == pytest.approx(1.0) and two["response_length"] == pytest.approx(4.0)
    assert two["sqrt_kl"] == pytest.approx(math.sqrt(math.log(2) - 0.5))


# -----------------------------------------------------------------------------
# smoothing, CSV, metrics


def test_moving_average():
    """Centred, narrower at the ends, same length; window 1 is the identity; a line stays a line inside."""
    x = [0.0, 1.0, 2.0, 3.0, 10.0]
    np.testing.assert_allclose(sweep.moving_average(x, 3), [0.5, 1.0, 2.0, 5.0, 6.5])
    np.testing.assert_allclose(sweep.moving_average(x, 1), x)
    line = np.arange(20.0)
    np.testing.assert_allclose(sweep.moving_average(line, 5)[2:-2], line[2:-2])
    assert sweep.moving_average(line, 4).shape == line.shape  # an even window counts as the next odd one


def test_csv_round_trip(tmp_path):
    """write_csv then read_csv gives the rows back, the header is COLUMNS, a missing value reads as None."""
    rows = [{"method": "ppo_beta=0.01", "beta": 0.01, "iteration_or_n": 3, "kl": 0.25, "sqrt_kl": 0.5,
             "score": -0.1, "rm_score": 0.2, "gold": 0.7, "labelers_score": 0.65, "response_length": 7.5,
             "ended": 1.0, "not_a_column": 1},
            {"method": "bon", "beta": None, "iteration_or_n": 64, "kl": sweep.bon_kl(64),
             "sqrt_kl": math.sqrt(sweep.bon_kl(64)), "score": 1.0, "rm_score": 1.0, "gold": 0.6}]
    sweep.write_csv(tmp_path / "o.csv", rows)
    assert (tmp_path / "o.csv").read_text().splitlines()[0] == ",".join(sweep.COLUMNS)
    back = sweep.read_csv(tmp_path / "o.csv")
    for row, got in zip(rows, back):
        assert got == {k: row.get(k) for k in sweep.COLUMNS}


def test_ppo_rows_read_training_iterations_only(tmp_path):
    """ppo_rows keeps the per-iteration lines of ppo.py's metrics.jsonl, not its final eval line, and a
    small negative KL estimate gives sqrt_kl 0."""
    lines = [{"step": 1, "score": -1.0, "rm_score": 0.5, "kl": -0.01, "gold_score": 0.7, "labelers_score": 0.6,
              "response_length": 9.0, "ended": 0.5},
             {"step": 2, "score": 0.1, "rm_score": 0.1, "kl": 4.0, "gold_score": 0.8, "labelers_score": 0.7,
              "response_length": 8.0, "ended": 1.0},
             {"step": 2, "eval_n": 10, "eval_policy_rm_score": 0.3}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    rows = sweep.ppo_rows(tmp_path / "metrics.jsonl", 0.03)
    assert [r["iteration_or_n"] for r in rows] == [1, 2]
    assert rows[0]["sqrt_kl"] == 0.0 and rows[1]["sqrt_kl"] == 2.0
    assert rows[1]["method"] == "ppo_beta=0.03" and rows[1]["gold"] == 0.8 and rows[0]["score"] == -1.0


def test_curves_smooth_ppo_but_not_best_of_n():
    rows = [{"method": "ppo_beta=0", "iteration_or_n": i, **{k: float(v) for k in sweep.COLUMNS[3:]}}
            for i, v in ((1, 0), (2, 3), (3, 0))]
    rows += [{"method": "bon", "iteration_or_n": n, **{k: float(v) for k in sweep.COLUMNS[3:]}}
             for n, v in ((1, 0), (2, 3), (4, 0))]
    c = sweep.curves(rows, 3)
    np.testing.assert_allclose(c["ppo_beta=0"]["gold"], [1.5, 1.0, 1.5])
    np.testing.assert_allclose(c["bon"]["gold"], [0.0, 3.0, 0.0])
    assert "peak gold" in sweep.summary(rows, 3)


def test_plot_is_optional(tmp_path, monkeypatch):
    """Without matplotlib plot() says so (False) and writes nothing; with it, a PNG."""
    rows = [{"method": m, "iteration_or_n": i, **{k: float(i) for k in sweep.COLUMNS[3:]}}
            for m in ("ppo_beta=0", "bon") for i in (1, 2, 4)]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
        assert sweep.plot(tmp_path / "a.png", rows, 3) is False
    assert not (tmp_path / "a.png").exists()
    pytest.importorskip("matplotlib")
    assert sweep.plot(tmp_path / "b.png", rows, 3) is True
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -----------------------------------------------------------------------------
# a tiny sweep end to end: ppo.py in its own process, two betas, best-of-n over 4 samples


def tiny_gpt(vocab_size, seed, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=96, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16, dropout=0.0, **kw))


def test_tiny_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    """Random tiny SFT and RM on a tiny synthetic world: the CSV has every PPO iteration of every beta and
    every n of best-of-n (n = 1: the mean gold of the samples); a second call reuses the finished runs,
    and a run with other flags starts afresh (its metrics.jsonl is not appended to)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "data"
    prepare.main(["--scale=0.005", "--quiet", f"--out_dir={data}"])
    texts = [render_prompt(r["prompt"]) for s in ("train", "val") for r in read_split(data, "prompts", s)]
    tok = Tokenizer.build_compact(texts + [render_response("I don't know. 1, 2, 3 yes no")])
    save_checkpoint(str(tmp_path / "sft.pt"), stage="sft", model=tiny_gpt(tok.vocab_size, 0), run_config={},
                    tokenizer=tok)
    save_checkpoint(str(tmp_path / "rm.pt"), stage="reward", model=tiny_gpt(tok.vocab_size, 1, scalar_head=True),
                    run_config={}, tokenizer=tok)
    flags = [f"--sft={tmp_path / 'sft.pt'}", f"--reward_model={tmp_path / 'rm.pt'}", f"--data_dir={data}",
             f"--out_dir={tmp_path / 'sweep'}", "--betas=0,0.1", "--iterations=2", "--bon_prompts=3",
             "--bon_samples=4", "--max_new_tokens=8", "--smooth=1", "--device=cpu", "--dtype=float32",
             "--ppo_args=batch_size=4,minibatch_size=4,sample_interval=0,warmup_iters=0"]
    rows = sweep.main(flags)

    csv_rows = sweep.read_csv(tmp_path / "sweep" / "overoptimisation.csv")
    assert [(r["method"], r["iteration_or_n"]) for r in csv_rows] == \
        [("ppo_beta=0", 1), ("ppo_beta=0", 2), ("ppo_beta=0.1", 1), ("ppo_beta=0.1", 2),
         ("bon", 1), ("bon", 2), ("bon", 4)]
    assert all(r["gold"] is not None and r["kl"] is not None for r in csv_rows)
    samples = read_jsonl(tmp_path / "sweep" / "bon_samples.jsonl")
    assert len(samples) == 4 * min(3, len(read_split(data, "prompts", "val")))
    assert csv_rows[4]["gold"] == pytest.approx(np.mean([s["gold"] for s in samples]))
    assert csv_rows[4]["kl"] == 0.0 and csv_rows[5]["kl"] == pytest.approx(math.log(2) - 0.5)
    assert len(rows) == len(csv_rows)

    capsys.readouterr()
    sweep.main(flags)
    assert capsys.readouterr().out.count("reusing the finished run") == 2

    sweep.main([f for f in flags if not f.startswith("--betas")] + ["--betas=0.1", "--iterations=1"])
    assert [m["step"] for m in read_jsonl(tmp_path / "sweep" / "ppo_beta0.1" / "metrics.jsonl")] == [1]
