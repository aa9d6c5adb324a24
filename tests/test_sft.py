"""Invariants of sft.py: the SFT loss mask, overfitting, resume, DDP equivalence and a tiny run."""

import copy
import json
import os
import signal

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import sft
from common import cosine_lr, setup_runtime
from conftest import ddp_env, exit_worker, free_port
from data.formats import read_jsonl, render_prompt, render_response
from data.loader import encode_prompt, encode_response, load_split
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


def demonstration_of(row, demonstrations):
    """The (prompt, response) token lists whose prompt + response, minus the last token, begin the input row
    (the longest such, so that a demonstration that is a prefix of another is not taken for it)."""
    fits = [(p, r) for p, r in demonstrations if row[:len(p) + len(r) - 1].tolist() == (p + r)[:-1]]
    return max(fits, key=lambda pr: len(pr[0]) + len(pr[1]))


def test_sft_step_gradient_is_that_of_the_response_tokens_and_eos(tmp_path):
    """The gradient a training step of main accumulates, over two padded micro-batches that main's data path
    builds, equals the gradient of the mean cross-entropy of exactly the response tokens and the closing EOS
    of those demonstrations, each forwarded alone from its text: prompt tokens and padding are no targets."""
    d = write_dataset(tmp_path / "data")
    cfg = sft.SFTConfig(data_dir=d, init_from="scratch", n_layer=1, n_head=2, n_embd=32, block_size=64,
                        batch_size=4, grad_accum=2)
    rt = setup_runtime("cpu", "float32", cfg.seed)
    model, tok, source = sft.init_model(cfg, resume_path=None)
    train, _ = sft.load_batches(cfg, tok, source, cfg.block_size, rt)
    reference = copy.deepcopy(model)
    micro_batches = [train(m) for m in range(cfg.grad_accum)]
    sft.accumulate_gradients(model, micro_batches, rt.grad_scaler(), rt)

    demonstrations = [(encode_prompt(tok, r["prompt"]), encode_response(tok, r["response"]))
                      for r in read_jsonl(f"{d}/sft_train.jsonl")]
    nll, n_targets, lengths = 0.0, 0, []
    for x, _ in micro_batches:
        for row in x:
            prompt, response = demonstration_of(row, demonstrations)
            seq = torch.tensor(prompt + response)
            logits = reference(seq[None, :-1])[0][0]  # position t predicts token t + 1
            nll = nll + F.cross_entropy(logits[len(prompt) - 1:], seq[len(prompt):], reduction="sum")
            n_targets, lengths = n_targets + len(response), lengths + [len(seq)]
    assert len(set(lengths)) > 1  # rows of several lengths: the micro-batches hold padding
    (nll / n_targets).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_optimizer_steps_follow_the_cosine_schedule(tmp_path, monkeypatch):
    """Every optimizer step of main uses the lr of cosine_lr (warmup, then decay to final_lr_ratio) in every
    parameter group, for as many steps as the epochs of global batches (micro-batches x grad_accum) make."""
    d = write_dataset(tmp_path / "data")
    seen = []
    real_step = sft.optimizer_step

    def recording_step(model, optimizer, *a, **k):
        seen.append({group["lr"] for group in optimizer.param_groups})
        return real_step(model, optimizer, *a, **k)

    monkeypatch.setattr(sft, "optimizer_step", recording_step)
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/o", "--init_from=scratch", "--epochs=2", "--grad_accum=2",
              "--warmup_steps=3", "--lr=2e-3", "--final_lr_ratio=0.2", "--eval_interval=1000", *TINY])
    total = 2 * (64 // 8) // 2  # 2 epochs of the 64 demonstrations, 8 per micro-batch, 2 micro-batches a step
    assert seen == [{cosine_lr(s, total, 2e-3, 3, 0.2)} for s in range(total)]


def test_one_epoch_of_steps_feeds_every_demonstration_once(tmp_path, monkeypatch):
    """The micro-batches that one epoch of main's optimizer steps (2 micro-batches each) hand the gradient
    step hold every training demonstration exactly once."""
    d = write_dataset(tmp_path / "data")
    fed = []
    real_accumulate = sft.accumulate_gradients

    def recording_accumulate(train_model, micro_batches, *a):
        fed.extend(x for x, _ in micro_batches)
        return real_accumulate(train_model, micro_batches, *a)

    monkeypatch.setattr(sft, "accumulate_gradients", recording_accumulate)
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/o", "--init_from=scratch", "--epochs=1", "--grad_accum=2",
              "--eval_interval=1000", *TINY])
    tok = Tokenizer.from_state(load_checkpoint(f"{tmp_path}/o/sft.pt")["tokenizer"])
    demonstrations = [(encode_prompt(tok, r["prompt"]), encode_response(tok, r["response"]))
                      for r in read_jsonl(f"{d}/sft_train.jsonl")]
    seen = [demonstration_of(row, demonstrations) for x in fed for row in x]
    assert sorted(seen) == sorted(demonstrations)


def test_final_model_is_the_one_of_the_lowest_validation_loss(tmp_path, monkeypatch):
    """MODE.pt holds the model of the evaluation with the lowest validation loss, wherever in the run it came
    (validation losses scripted: 3, 2, 2.5, 1.5, 1.8 at steps 0, 2, 4, 6, 8)."""
    d = write_dataset(tmp_path / "data", n_sft=64)
    scripted = iter([3.0, 2.0, 2.5, 1.5, 1.8])
    monkeypatch.setattr(sft, "evaluate_loss", lambda *a: next(scripted))
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/o", "--init_from=scratch", "--epochs=1",
              "--eval_interval=2", *TINY])
    assert load_checkpoint(f"{tmp_path}/o/sft.pt")["step"] == 6


def test_evaluation_leaves_the_training_run_unchanged(tmp_path):
    """A dropout run that evaluates and samples every step ends with bitwise the weights of one that evaluates
    only at its start and end: evaluation draws its random numbers from a stream of its own."""
    d = write_dataset(tmp_path / "data")
    args = [f"--data_dir={d}", "--mode=pretrain", "--epochs=1", "--dropout=0.1", *TINY, "--num_samples=2"]
    sft.main(args + [f"--out_dir={tmp_path}/every", "--eval_interval=1"])
    sft.main(args + [f"--out_dir={tmp_path}/ends", "--eval_interval=1000"])
    a, b = (load_checkpoint(f"{tmp_path}/{run}/resume.pt")["model"] for run in ("every", "ends"))
    for k in a:
        assert torch.equal(a[k], b[k]), k


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


def test_samples_of_prompts_without_room_to_answer_are_skipped(tmp_path, capsys):
    """SFT prints samples only for val prompts that leave max_new_tokens of room in the block: with none that do,
    training runs and prints none (it does not stop on them)."""
    d = write_dataset(tmp_path / "data")
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/p", "--mode=pretrain", "--init_from=scratch", "--epochs=0.2",
              "--num_samples=0", *TINY])
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/s", f"--init_from={tmp_path}/p/pretrain.pt", "--epochs=0.2",
              "--eval_interval=1000", *TINY, "--num_samples=3", "--max_new_tokens=60"])
    assert "[prompt]" not in capsys.readouterr().out
    sft.main([f"--data_dir={d}", f"--out_dir={tmp_path}/s2", f"--init_from={tmp_path}/p/pretrain.pt", "--epochs=0.2",
              "--eval_interval=1000", *TINY, "--num_samples=3", "--max_new_tokens=8"])
    assert "[prompt]" in capsys.readouterr().out
