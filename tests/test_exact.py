"""Exactness of the run harness: a SIGKILLed and resumed CPU run of every stage ends bitwise where an
uninterrupted one does, and N gloo processes train as one process does on the same global batch."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import ppo
import reward
import sft
from conftest import ddp_env, exit_worker, free_port
from data.formats import write_jsonl
from data.loader import load_split
from data.tokenizer import Tokenizer, dataset_tokenizer
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORDS = "red blue green cat dog fish one two three four five six".split()
TIMING = ("tokens_per_s", "seconds", "mfu")  # the only metrics that may differ between two exact runs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data dir with every file the stages read (over a few-word compact vocabulary), a random tiny
    'SFT' GPT and a random tiny 'reward' GPT (scalar head) in the formats the stages save."""
    root = tmp_path_factory.mktemp("exact")
    data = root / "data"
    rng = np.random.default_rng(0)

    def phrase(lo=1, hi=4):
        return " ".join(rng.choice(WORDS, size=rng.integers(lo, hi)))

    for split, n in (("train", 64), ("val", 8)):
        write_jsonl(data / f"pretrain_{split}.jsonl",
                    [{"text": " ".join(np.roll(WORDS, -rng.integers(len(WORDS)))[:8]) + "."} for _ in range(4 * n)])
        sft_recs = []
        for _ in range(n):
            w = phrase()
            sft_recs.append({"prompt": f"repeat: {w}", "response": w})
        write_jsonl(data / f"sft_{split}.jsonl", sft_recs)
        comparisons = []
        for _ in range(n // 2):  # K = 2..4 distinct responses, best first
            w, k = phrase(), int(rng.integers(2, 5))
            responses = [w] + [f"{w} {x}" for x in rng.choice(WORDS, size=k - 1, replace=False)]
            comparisons.append({"prompt": f"repeat: {w}", "responses": responses})
        write_jsonl(data / f"comparisons_{split}.jsonl", comparisons)
        write_jsonl(data / f"prompts_{split}.jsonl", [{"prompt": f"repeat: {phrase()}"} for _ in range(n // 4)])
    tok = dataset_tokenizer(str(data))  # data/vocab.json, as sft.py --init_from=scratch builds it
    config = dict(block_size=64, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32, dropout=0.0)
    torch.manual_seed(0)
    save_checkpoint(str(root / "sft.pt"), stage="sft", model=GPT(GPTConfig(**config)), run_config={}, tokenizer=tok)
    rm = GPT(GPTConfig(**config, scalar_head=True))
    torch.nn.init.normal_(rm.score_head.weight, std=0.5)  # a fresh head scores everything 0: give it opinions
    save_checkpoint(str(root / "reward.pt"), stage="reward", model=rm, run_config={}, tokenizer=tok)
    return root


# -----------------------------------------------------------------------------
# SIGKILL and resume


def start(script, args, out_dir, log):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")  # TIKTOKEN_CACHE_DIR passes through
    return subprocess.Popen([sys.executable, script, *args, f"--out_dir={out_dir}"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def metrics(out_dir):
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def finish(proc, log, timeout=60):
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = "a timeout"
    assert rc == 0, f"{' '.join(map(str, proc.args))} ended with {rc}:\n{Path(log.name).read_text()[-3000:]}"


def kill_past(proc, out_dir, step, timeout=60):
    """SIGKILL proc as soon as its metrics.jsonl shows a step > step; its exit code (-SIGKILL if it was still
    running when the signal landed, 0 if it had finished first)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(r.get("step", 0) > step for r in metrics(out_dir)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    return proc.wait(timeout)


def kill_and_resume(tmp_path, script, args, length, ckpt_interval):
    """
    Run `script args length(n)` twice at once: a reference run to the end, and one SIGKILLed after resume.pt
    was rewritten past its first save, then resumed with --init_from=resume to the end. A kill that comes
    too late (the run had finished) retries with 4x the steps. Returns (reference out_dir, resumed out_dir).
    """
    procs = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [(p.kill(), p.wait()) for p in procs if p.poll() is None])  # none outlives the test
        for attempt, n in enumerate((1, 4, 16)):
            a, b = tmp_path / f"ref{attempt}", tmp_path / f"killed{attempt}"
            la, lb = (stack.enter_context(open(tmp_path / f"{x}{attempt}.log", "w")) for x in ("ref", "killed"))
            run_args = [*args, *length(n), f"--ckpt_interval={ckpt_interval}", "--device=cpu", "--dtype=float32"]
            procs += [start(script, run_args, a, la), start(script, run_args, b, lb)]
            rc = kill_past(procs[-1], b, 2 * ckpt_interval)
            if rc == 0:  # it finished before the kill: nothing was tested
                finish(procs[-2], la)
                continue
            assert rc == -signal.SIGKILL, f"{script} ended with {rc} before the kill:\n{Path(lb.name).read_text()}"
            saved = load_checkpoint(str(b / "resume.pt"))["step"]  # where the resumed run starts
            assert saved >= 2 * ckpt_interval
            procs.append(start(script, [*run_args, "--init_from=resume"], b, lb))
            finish(procs[-3], la)
            finish(procs[-1], lb)
            assert "resumed from" in Path(lb.name).read_text()
            end = load_checkpoint(str(a / "resume.pt"))["step"]
            assert saved < end == load_checkpoint(str(b / "resume.pt"))["step"]
            return a, b
    pytest.fail(f"{script}: the run always finished before the kill; give it more steps")


def assert_same_weights(a, b, key="model"):
    assert a[key].keys() == b[key].keys()
    for k in a[key]:
        assert torch.equal(a[key][k], b[key][k]), f"{key}.{k} differs"


def assert_same_metrics(a, b):
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(a)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in metrics(b)]


def assert_same_run(a, b, final):
    """The killed-and-resumed run b ended as the uninterrupted run a: final model, resume.pt, metrics."""
    for name in (final, "resume.pt"):
        assert_same_weights(load_checkpoint(str(a / name)), load_checkpoint(str(b / name)))
    assert_same_metrics(a, b)


def test_sigkill_resume_pretrain_is_bitwise_exact(world, tmp_path):
    """Pretraining SIGKILLed mid-run and resumed ends with bitwise the weights and metrics of an uninterrupted run."""
    args = ["--mode=pretrain", f"--data_dir={world / 'data'}", "--init_from=scratch", "--n_layer=1", "--n_head=2",
            "--n_embd=32", "--block_size=32", "--batch_size=4", "--dropout=0.1", "--warmup_steps=5",
            "--eval_interval=25", "--eval_batches=1", "--num_samples=0", "--log_interval=1"]
    a, b = kill_and_resume(tmp_path, "sft.py", args, lambda n: [f"--epochs={2 * n}"], 3)
    assert_same_run(a, b, "pretrain.pt")


def test_sigkill_resume_sft_is_bitwise_exact(world, tmp_path):
    """SFT (dropout on, several epochs) SIGKILLed mid-run and resumed ends bitwise where an uninterrupted run does."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", "--batch_size=4", "--dropout=0.2",
            "--eval_interval=10", "--eval_batches=1", "--num_samples=0", "--log_interval=1"]
    a, b = kill_and_resume(tmp_path, "sft.py", args, lambda n: [f"--epochs={2 * n}"], 3)
    assert_same_run(a, b, "sft.pt")


def test_sigkill_resume_reward_is_bitwise_exact(world, tmp_path):
    """Reward-model training SIGKILLed mid-run and resumed ends bitwise where an uninterrupted run does."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", "--batch_size=4", "--dropout=0.1",
            "--eval_interval=10", "--eval_prompts=4", "--log_interval=1"]
    a, b = kill_and_resume(tmp_path, "reward.py", args, lambda n: [f"--max_steps={24 * n}"], 3)
    assert_same_run(a, b, "reward.pt")


def test_sigkill_resume_ppo_is_bitwise_exact(world, tmp_path):
    """PPO-ptx SIGKILLed mid-run and resumed ends with bitwise the policy and value model of an uninterrupted run."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'reward.pt'}",
            "--batch_size=4", "--minibatch_size=2", "--max_new_tokens=6", "--ptx_coef=1", "--ptx_batch_size=2",
            "--ptx_seq_len=16", "--lr=3e-4", "--value_lr=3e-4", "--warmup_iters=2", "--eval_prompts=2",
            "--sample_interval=0"]
    a, b = kill_and_resume(tmp_path, "ppo.py", args, lambda n: [f"--iterations={16 * n}"], 2)
    assert_same_weights(load_checkpoint(str(a / "ppo.pt")), load_checkpoint(str(b / "ppo.pt")))
    ra, rb = load_checkpoint(str(a / "resume.pt")), load_checkpoint(str(b / "resume.pt"))
    assert_same_weights(ra, rb, "value_model")
    assert ra["kl_coef"] == rb["kl_coef"]
    assert_same_metrics(a, b)


# -----------------------------------------------------------------------------
# DDP: N gloo processes == one process on the same global batch


def ddp_worker(rank, world_size, port, stage, args):
    ddp_env(rank, world_size, port)
    {"reward": reward, "ppo": ppo}[stage].main(args)
    exit_worker()


def single_and_ddp(stage, args, tmp_path):
    """Out dirs of the same flags run by one process (here, while the workers start) and by two gloo processes."""
    ddp = mp.start_processes(ddp_worker, args=(2, free_port(), stage, [*args, f"--out_dir={tmp_path / 'ddp'}"]),
                             nprocs=2, join=False, start_method="spawn")
    try:
        {"reward": reward, "ppo": ppo}[stage].main([*args, f"--out_dir={tmp_path / 'single'}"])
        deadline = time.time() + 120
        while not ddp.join(timeout=max(1.0, deadline - time.time())):  # True once both exited cleanly
            assert time.time() < deadline, "the DDP workers did not finish"
    finally:
        for p in ddp.processes:
            if p.is_alive():
                p.kill()
    return tmp_path / "single", tmp_path / "ddp"


def assert_close_weights(a, b, start=None, key="model"):
    assert a[key].keys() == b[key].keys()
    for k in a[key]:
        torch.testing.assert_close(a[key][k], b[key][k], atol=1e-5, rtol=1e-4, msg=lambda m: f"{key}.{k}: {m}")
    if start is not None:  # the run moved the weights: the comparison is not of two untouched copies
        assert any(not torch.equal(a[key][k], start[k]) for k in start if k in a[key])


def assert_close_metrics(a, b, keys):
    """The logged global quantities agree too (Adam hides a gradient that is off by a constant factor)."""
    ra, rb = metrics(a), metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        for k in keys & x.keys():
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), (x["step"], k)


def test_reward_ddp_equals_single_process(world, tmp_path):
    """reward.py on 2 gloo processes trains the same weights as 1 process with the same global batch_size."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", "--batch_size=8", "--max_steps=4",
            "--eval_interval=0", "--eval_prompts=4", "--log_interval=1", "--device=cpu", "--dtype=float32"]
    a, b = single_and_ddp("reward", args, tmp_path)
    start = load_checkpoint(str(world / "sft.pt"))["model"]
    for name in ("resume.pt", "reward.pt"):
        assert_close_weights(load_checkpoint(str(a / name)), load_checkpoint(str(b / name)), start)
    assert_close_metrics(a, b, {"loss", "acc", "grad_norm", "val/loss", "val/acc", "reward_bias"})


def test_ppo_ddp_equals_single_process(world, tmp_path):
    """ppo.py (PPO-ptx) on 2 gloo processes ends with the policy and value model of 1 process on the same
    global batch, minibatch and ptx batch."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'reward.pt'}",
            "--iterations=3", "--batch_size=8", "--minibatch_size=8", "--ppo_epochs=2", "--max_new_tokens=6",
            "--ptx_coef=1", "--ptx_batch_size=4", "--ptx_seq_len=16", "--lr=1e-3", "--value_lr=1e-3",
            "--warmup_iters=0", "--eval_prompts=0", "--sample_interval=0", "--device=cpu", "--dtype=float32"]
    a, b = single_and_ddp("ppo", args, tmp_path)
    assert_close_weights(load_checkpoint(str(a / "ppo.pt")), load_checkpoint(str(b / "ppo.pt")),
                         load_checkpoint(str(world / "sft.pt"))["model"])
    assert_close_weights(load_checkpoint(str(a / "resume.pt")), load_checkpoint(str(b / "resume.pt")),
                         load_checkpoint(str(world / "reward.pt"))["model"], key="value_model")
    assert_close_metrics(a, b, {"score", "rm_score", "kl", "pg_loss", "vf_loss", "ptx_loss", "response_length"})


# -----------------------------------------------------------------------------
# Known bugs: each test states the invariant and fails until the bug is fixed (then drop its marker)


class Killed(BaseException):
    """Stands for a SIGKILL in an in-process run: nothing after the raise runs, nothing is saved."""


def test_ppo_resume_of_a_resumed_run_is_bitwise_exact(world, tmp_path):
    """PPO stopped, resumed, stopped again and resumed again ends bitwise where an uninterrupted run does."""
    args = [f"--data_dir={world / 'data'}", f"--init_from={world / 'sft.pt'}", f"--reward_model={world / 'reward.pt'}",
            "--batch_size=4", "--minibatch_size=2", "--max_new_tokens=6", "--ptx_batch_size=2", "--ptx_seq_len=16",
            "--lr=3e-4", "--value_lr=3e-4", "--eval_prompts=0", "--sample_interval=0", "--device=cpu",
            "--dtype=float32"]
    ppo.main([*args, "--iterations=3", f"--out_dir={tmp_path / 'a'}"])
    ppo.main([*args, "--iterations=1", f"--out_dir={tmp_path / 'b'}"])  # stopped after iteration 1
    for n in (2, 3):  # resumed, stopped after iteration 2, resumed again
        ppo.main([*args, f"--iterations={n}", f"--out_dir={tmp_path / 'b'}", "--init_from=resume"])
    assert_same_weights(load_checkpoint(str(tmp_path / "a/ppo.pt")), load_checkpoint(str(tmp_path / "b/ppo.pt")))


def test_sft_killed_after_an_evaluation_logs_it_once(world, tmp_path, monkeypatch):
    """Killed right after evaluating at a checkpoint step and resumed, a run writes the uninterrupted metrics.jsonl."""
    args = ["--mode=pretrain", f"--data_dir={world / 'data'}", "--init_from=scratch", "--n_layer=1", "--n_head=2",
            "--n_embd=32", "--block_size=32", "--batch_size=4", "--epochs=1", "--eval_interval=3", "--eval_batches=1",
            "--ckpt_interval=3", "--num_samples=0", "--log_interval=1", "--device=cpu", "--dtype=float32"]
    sft.main([*args, f"--out_dir={tmp_path / 'a'}"])
    evaluations = []

    def killed_after_third_evaluation(*a, **k):  # called right after an evaluation is logged
        evaluations.append(1)
        if len(evaluations) == 3:  # steps 0, 3, 6: after step 6's evaluation, before step 6's save
            raise Killed

    monkeypatch.setattr(sft, "print_samples", killed_after_third_evaluation)
    with pytest.raises(Killed):
        sft.main([*args, f"--out_dir={tmp_path / 'b'}"])
    monkeypatch.undo()
    assert load_checkpoint(str(tmp_path / "b/resume.pt"))["step"] == 3
    sft.main([*args, f"--out_dir={tmp_path / 'b'}", "--init_from=resume"])
    assert_same_weights(load_checkpoint(str(tmp_path / "a/resume.pt")), load_checkpoint(str(tmp_path / "b/resume.pt")))
    assert_same_metrics(tmp_path / "a", tmp_path / "b")


def test_sft_ddp_ranks_get_equal_shares_of_every_global_batch(world, tmp_path):
    """With 65 SFT examples and 2 ranks of batch_size 4, every micro-batch of every rank holds 4 examples."""
    data = tmp_path / "data"
    write_jsonl(data / "sft_train.jsonl", [{"prompt": f"repeat: {w}", "response": w}
                                           for w in (" ".join(WORDS[i % 12:i % 12 + 1 + i % 3]) for i in range(65))])
    tok = Tokenizer.from_state(load_checkpoint(str(world / "sft.pt"))["tokenizer"])
    split = load_split(str(data), "sft", "train", tok)
    cfg = sft.SFTConfig(batch_size=4)
    ranks = [sft.Batches(cfg, split, 64, rank, 2) for rank in range(2)]
    for k in range(4 * ranks[0].per_epoch):
        for rank, batches in enumerate(ranks):
            assert batches(k)[0].size(0) == cfg.batch_size, (k, rank)
