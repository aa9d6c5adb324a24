"""Invariants of sft.py: the SFT loss mask, overfitting, resume, DDP equivalence and a tiny run."""

import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import sft
from conftest import ddp_env, exit_worker, free_port
from data.formats import render_prompt, render_response
from data.loader import load_split
from data.tokenizer import Tokenizer
from model import GPT, GPTConfig, load_checkpoint

WORDS = "red blue green cat dog fish one two three four five six".split()


def write_dataset(d, n_sft=64, seed=0):
    """A tiny dataset: 'repeat: X Y' -> 'X Y', and plain sentences for pretraining."""
    rng = np.random.default_rng(seed)
    os.makedirs(d, exist_ok=True)
    for split, n in (("train", n_sft), ("val", 16)):
        with open(os.path.join(d, f"sft_{split}.jsonl"), "w") as f:
            for _ in range(n):
                words = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
                f.write(json.dumps({"prompt": f"repeat: {words}", "response": words}) + "\n")
        with open(os.path.join(d, f"pretrain_{split}.jsonl"), "w") as f:
            for _ in range(n * 4):  # learnable text: runs of the word list from a random start
                start = rng.integers(0, len(WORDS))
                f.write(json.dumps({"text": " ".join(np.roll(WORDS, -start)[:8]) + "."}) + "\n")
    return str(d)


TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=64", "--batch_size=8", "--eval_batches=2",
        "--num_samples=0", "--device=cpu", "--dtype=float32", "--log_interval=1"]


def test_sft_mask_zero_gradient_and_hand_computed_loss(tmp_path):
    """Prompt and padding positions get exactly zero gradient; the loss is the CE over response tokens."""
    d = write_dataset(tmp_path / "data")
    tok = Tokenizer.build_compact([render_prompt(f"repeat: {w}") + render_response(w) for w in WORDS])
    split = load_split(d, "sft", "train", tok)
    x, y = sft.sft_batch(split, [0, 1, 2, 3])
    logits = torch.randn(*x.shape, tok.vocab_size, requires_grad=True)
    n = int((y != -1).sum())
    (sft.lm_loss_sum(logits, y) / n).backward()
    assert torch.all(logits.grad[y == -1] == 0) and torch.all(logits.grad[y != -1].abs().sum(-1) > 0)
    # by hand: -log softmax at each response target; the targets are the response tokens and EOS exactly
    total, count = 0.0, 0
    for b, i in enumerate([0, 1, 2, 3]):
        prompt, response = split.prompts[i], split.responses[i]
        assert [t for t in y[b].tolist() if t != -1] == list(response) and response[-1] == tok.eos_id
        for t in range(len(prompt) - 1, len(prompt) + len(response) - 1):
            z = logits[b, t].detach().double()
            total += -(z[y[b, t]] - torch.logsumexp(z, 0)).item()
            count += 1
    assert count == n
    assert (sft.lm_loss_sum(logits, y) / n).item() == pytest.approx(total / count, rel=1e-5)


def test_tiny_model_overfits_a_handful_of_examples(tmp_path):
    """A small model trained long enough drives the SFT loss on 8 examples near zero."""
    d = write_dataset(tmp_path / "data", n_sft=8)
    tok = Tokenizer.build_compact([render_prompt(f"repeat: {w}") + render_response(w) for w in WORDS] + ["."])
    split = load_split(d, "sft", "train", tok)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = sft.sft_batch(split, list(range(8)))
    n = int((y != -1).sum())
    for _ in range(150):
        logits, _ = model(x)
        loss = sft.lm_loss_sum(logits, y) / n
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_tiny_run_val_loss_falls(tmp_path):
    """Pretraining then SFT on a tiny config complete, and each lowers its validation loss."""
    d = write_dataset(tmp_path / "data")
    pre, out = str(tmp_path / "pre"), str(tmp_path / "sft")
    sft.main(["--mode=pretrain", f"--data_dir={d}", f"--out_dir={pre}", "--epochs=4", "--eval_interval=20",
              "--warmup_steps=5", "--lr=3e-3", *TINY])
    sft.main([f"--data_dir={d}", f"--out_dir={out}", f"--init_from={pre}/pretrain.pt", "--epochs=6", "--lr=3e-3",
              "--eval_interval=10", *TINY])
    for path in (f"{pre}/metrics.jsonl", f"{out}/metrics.jsonl"):
        vals = [r["val_loss"] for r in map(json.loads, open(path)) if "val_loss" in r]
        assert len(vals) >= 2 and vals[-1] < 0.8 * vals[0], (path, vals)
    assert load_checkpoint(f"{out}/sft.pt", stages=("sft",))["tokenizer"]["vocab"] is not None


def test_ctrl_c_saves_at_the_step_boundary_and_resume_is_exact(tmp_path, monkeypatch):
    """Ctrl-C finishes the current step, saves resume.pt and exits 130; resumed, the run ends with the same
    weights as an uninterrupted one."""
    d = write_dataset(tmp_path / "data")
    args = [f"--data_dir={d}", "--mode=pretrain", "--epochs=3", "--dropout=0.1", "--eval_interval=3",
            "--ckpt_interval=100", *TINY]
    sft.main(args + [f"--out_dir={tmp_path}/a"])
    real_lr = sft.cosine_lr

    def ctrl_c_at_4(step, *a, **k):
        if step == 4:
            signal.raise_signal(signal.SIGINT)
        return real_lr(step, *a, **k)

    monkeypatch.setattr(sft, "cosine_lr", ctrl_c_at_4)
    with pytest.raises(SystemExit) as stop:
        sft.main(args + [f"--out_dir={tmp_path}/b"])
    monkeypatch.setattr(sft, "cosine_lr", real_lr)
    assert stop.value.code == 130 and load_checkpoint(f"{tmp_path}/b/resume.pt")["step"] == 5
    sft.main(args + [f"--out_dir={tmp_path}/b", "--init_from=resume"])
    a, b = load_checkpoint(f"{tmp_path}/a/resume.pt"), load_checkpoint(f"{tmp_path}/b/resume.pt")
    assert a["step"] == b["step"] > 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    steps = [r["step"] for r in map(json.loads, open(f"{tmp_path}/b/metrics.jsonl")) if "loss" in r]
    assert steps == sorted(set(steps))  # the log reads as one run


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss stops the run with a clear error before the optimizer step; the saved model stays finite."""
    d = write_dataset(tmp_path / "data")
    real = sft.lm_loss_sum
    calls = {"n": 0}

    def nan_after_3(logits, y):
        calls["n"] += 1
        return real(logits, y) * (float("nan") if calls["n"] > 3 else 1.0)

    monkeypatch.setattr(sft, "lm_loss_sum", nan_after_3)
    with pytest.raises(FloatingPointError, match="is nan at step 3"):
        sft.main([f"--data_dir={d}", "--mode=pretrain", "--epochs=1", f"--out_dir={tmp_path}/o",
                  "--eval_interval=2", *TINY])
    ckpt = load_checkpoint(f"{tmp_path}/o/pretrain.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def ddp_worker(rank, world, port, args):
    ddp_env(rank, world, port)
    sft.main(args)
    exit_worker()


def test_ddp_step_equals_single_process_step(tmp_path):
    """Two gloo processes with batch B each take the same optimizer step as one process with batch 2B."""
    d = write_dataset(tmp_path / "data")
    pre = str(tmp_path / "pre")
    sft.main(["--mode=pretrain", f"--data_dir={d}", f"--out_dir={pre}", "--epochs=0.2", *TINY])
    common = [f"--data_dir={d}", f"--init_from={pre}/pretrain.pt", "--dropout=0", "--epochs=0.25",
              "--eval_interval=1000", *[a for a in TINY if not a.startswith("--batch_size")]]
    sft.main(common + ["--batch_size=16", f"--out_dir={tmp_path}/single"])
    mp.spawn(ddp_worker, args=(2, free_port(), common + ["--batch_size=8", f"--out_dir={tmp_path}/ddp"]), nprocs=2)
    a, b = load_checkpoint(f"{tmp_path}/single/resume.pt"), load_checkpoint(f"{tmp_path}/ddp/resume.pt")
    assert a["step"] == b["step"] == 1
    start = load_checkpoint(f"{pre}/pretrain.pt")["model"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a["model"][k], start[k]) for k in start)  # the step did move the weights
