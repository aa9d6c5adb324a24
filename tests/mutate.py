"""
Mutation testing, by hand (not in CI): plant one plausible bug at a time and check that the suite catches it.

    python tests/mutate.py                 # every mutant: killed / survived, and the kill rate
    python tests/mutate.py --only=ppo.py   # the mutants of files whose path contains this
    python tests/mutate.py --list          # the mutants, without running anything

Each mutant is an exact replacement (old -> new, old occurring once in its file) with the test files that should
catch it. The tree is copied to a temporary folder first (the files git tracks, plus untracked ones it does not
ignore), so the working tree is never touched and a stopped run leaves nothing behind. A mutant whose code
behaves exactly as the original is listed with "equivalent" and the reason, and is not run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MUTANTS = [
    # ppo.py: the loss math
    dict(file="ppo.py", old="rewards = -kl_coef * (logprobs - ref_logprobs) * mask",
         new="rewards = kl_coef * (logprobs - ref_logprobs) * mask", tests="tests/test_ppo.py",
         why="the KL penalty's sign flipped: a bonus for leaving SFT"),
    dict(file="ppo.py", old="last = (mask.sum(1).long() - 1).clamp(min=0)",
         new="last = mask.sum(1).long().clamp(min=0, max=mask.size(1) - 1)", tests="tests/test_ppo.py",
         why="the score one token past the response's last"),
    dict(file="ppo.py", old="last_gae = delta + gamma * lam * alive * last_gae",
         new="last_gae = delta + gamma * alive * last_gae", tests="tests/test_ppo.py", why="GAE without lambda"),
    dict(file="ppo.py", old="delta = rewards[:, t] + gamma * next_value - values[:, t]",
         new="delta = rewards[:, t] + next_value - values[:, t]", tests="tests/test_ppo.py",
         why="the discount dropped from the TD error"),
    dict(file="ppo.py", old="return advantages, (advantages + values) * mask",
         new="return advantages, advantages * mask", tests="tests/test_ppo.py",
         why="returns without the values: the value model regresses on advantages"),
    dict(file="ppo.py", old="pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)",
         new="pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + 2 * clip_eps)",
         tests="tests/test_ppo.py", why="an asymmetric clip"),
    dict(file="ppo.py", old="return masked_mean(torch.max(pg_loss1, pg_loss2), mask, n_tokens)",
         new="return masked_mean(torch.min(pg_loss1, pg_loss2), mask, n_tokens)", tests="tests/test_ppo.py",
         why="the optimistic bound instead of the pessimistic one"),
    dict(file="ppo.py", old="ratio = torch.exp(logprobs - old_logprobs)\n    pg_loss1",
         new="ratio = torch.exp(old_logprobs - logprobs)\n    pg_loss1", tests="tests/test_ppo.py",
         why="the probability ratio inverted"),
    dict(file="ppo.py", old="vf_loss2 = (old_values + torch.clamp(values - old_values, -clip_eps, clip_eps) - returns) ** 2",
         new="vf_loss2 = (torch.clamp(values, -clip_eps, clip_eps) - returns) ** 2", tests="tests/test_ppo.py",
         why="the value clipped around 0, not around the rollout's value"),
    dict(file="ppo.py", old="return 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask, n_tokens)",
         new="return 0.5 * masked_mean(torch.min(vf_loss1, vf_loss2), mask, n_tokens)", tests="tests/test_ppo.py",
         why="the clipped value loss's min instead of max"),
    dict(file="ppo.py", old="return (x * mask).sum() / (mask.sum().clamp(min=1) if n_tokens is None else n_tokens)",
         new="return ((x * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()", tests="tests/test_ppo.py",
         why="a mean of per-row means instead of the token mean"),
    dict(file="ppo.py", old="return (x - mean) * torch.rsqrt(sq / moments[1].clamp(min=1) + eps) * mask",
         new="return (x - mean) * torch.rsqrt(sq / moments[1].clamp(min=1) + eps)", tests="tests/test_ppo.py",
         why="whitened padding leaks non-zero advantages"),
    dict(file="ppo.py", old="self.value *= 1 + min(max(current_kl / self.target - 1, -0.2), 0.2) * n_steps / self.horizon",
         new="self.value *= 1 + min(max(current_kl / self.target - 1, -0.2), 0.2)", tests="tests/test_ppo.py",
         why="the adaptive KL controller without its horizon"),
    dict(file="ppo.py", old="return scores[:, prompt_len - 1:-1].float()", new="return scores[:, prompt_len:].float()",
         tests="tests/test_ppo.py", why="the value of a token sees the token itself"),
    dict(file="ppo.py", old="scale(cfg.ptx_coef * lm_loss).backward()", new="scale(lm_loss).backward()",
         tests="tests/test_ppo.py", why="the ptx term without gamma_ptx"),
    dict(file="ppo.py", old="return {\"approx_kl\": masked_mean((ratio - 1) - logratio, mask).item(),",
         new="return {\"approx_kl\": masked_mean(logratio, mask).item(),", tests="tests/test_ppo.py",
         why="approx_kl as the k1 estimator, which can go negative"),
    # ppo.py: what main wires together
    dict(file="ppo.py", old="rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)",
         new="rewards = kl_shaped_rewards(scores, logprobs, logprobs, mask, kl_coef)", tests="tests/test_ppo.py",
         why="PPO without its KL penalty: the rollout's own logprobs as the reference"),
    dict(file="ppo.py", old="return whiten(advantages, mask), returns", new="return advantages, returns",
         tests="tests/test_ppo.py", why="the advantages never whitened"),
    dict(file="ppo.py", old="scores[~batch[\"ended\"]] = cfg.no_eos_penalty", new="pass",
         tests="tests/test_ppo.py", why="responses that never stop go unpunished"),
    dict(file="ppo.py", old="reward_fn = reward_fn or reward_model_fn(reward_model, rt.autocast)",
         new="reward_fn = reward_fn or reward_model_fn(value_model, rt.autocast)", tests="tests/test_ppo.py",
         why="PPO scored by the value model, which moves, instead of the frozen RM"),
    dict(file="ppo.py", old="ref_logprobs = in_chunks(lambda s, a: response_logprobs(ref_policy, s, a, P, cfg.temperature), batch, chunk)",
         new="ref_logprobs = in_chunks(lambda s, a: response_logprobs(policy, s, a, P, cfg.temperature), batch, chunk)",
         tests="tests/test_ppo.py", why="the KL measured against the current policy"),
    dict(file="ppo.py", old="ptx_stream = load_split(ptx_dir, \"pretrain\", \"train\", tok).stream",
         new="ptx_stream = load_split(ptx_dir, \"pretrain\", \"val\", tok).stream", tests="tests/test_ppo.py",
         why="the ptx term trained on the held-out text it is measured on"),
    dict(file="ppo.py", old="ptx_dir = cfg.ptx_data_dir or cfg.data_dir", new="ptx_dir = cfg.data_dir",
         tests="tests/test_ppo.py", why="--ptx_data_dir ignored: the ptx text read from the preference folder"),
    dict(file="ppo.py", old="P, chunk = batch[\"prompt_len\"], cfg.minibatch_size // rt.world_size\n    with rt.autocast():\n"
         "        logprobs, entropy = in_chunks(lambda s, a: response_logprobs(policy, s, a, P, cfg.temperature, True),",
         new="P, chunk = batch[\"prompt_len\"], cfg.minibatch_size // rt.world_size\n    with rt.autocast():\n"
         "        logprobs, entropy = in_chunks(lambda s, a: response_logprobs(policy, s, a, P, 1.0, True),",
         tests="tests/test_ppo.py", why="rollout logprobs at temperature 1 whatever the sampling temperature"),
    dict(file="ppo.py", old="order = torch.randperm(B, generator=torch.Generator().manual_seed(seed_of(cfg.seed, it, epoch, rt.rank)))",
         new="order = torch.randperm(B, generator=torch.Generator().manual_seed(seed_of(cfg.seed, it, rt.rank)))",
         tests="tests/test_ppo.py", why="the same minibatches every epoch: no reshuffle"),
    dict(file="ppo.py", old="start, kl_ctl.value = load_resume(resume, \"ppo\", rt, optimizers)[\"step\"], resume[\"kl_coef\"]",
         new="start = load_resume(resume, \"ppo\", rt, optimizers)[\"step\"]", tests="tests/test_ppo.py",
         why="a resumed adaptive run forgets its beta"),
    dict(file="ppo.py", old="optimizer_step(value_model, optimizers[\"value\"], scaler, cfg.grad_clip, where)",
         new="optimizers[\"value\"].zero_grad(set_to_none=True)", tests="tests/test_ppo.py",
         why="the value model never steps"),
]


def copy_tree(dst):
    """The files git tracks and the untracked ones it does not ignore, copied under dst."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def run_mutant(tree, mutant, timeout):
    """Apply the mutant in tree, run its tests, restore the file. Returns (killed, seconds)."""
    path = tree / mutant["file"]
    original = path.read_text()
    if original.count(mutant["old"]) != 1:
        raise SystemExit(f"error: {mutant['file']}: the mutant's old text occurs {original.count(mutant['old'])} "
                         f"times, not once: {mutant['old'][:70]!r}")
    path.write_text(original.replace(mutant["old"], mutant["new"]))
    t0 = time.time()
    try:
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *mutant["tests"].split()]
        result = subprocess.run(cmd, cwd=tree, capture_output=True, timeout=timeout,
                                env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"})
        killed = result.returncode != 0
    except subprocess.TimeoutExpired:
        killed = True  # a mutant that hangs the suite is caught, if slowly
    finally:
        path.write_text(original)
    return killed, time.time() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutants of files whose path contains this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only in m["file"]]
    if args.list:
        for i, m in enumerate(mutants):
            tag = " (equivalent)" if "equivalent" in m else ""
            print(f"{i:3d} {m['file']}: {m['why']}{tag}")
        return
    killed = survived = 0
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for i, m in enumerate(mutants):
            if "equivalent" in m:
                print(f"{i:3d} equivalent {m['file']}: {m['why']} ({m['equivalent']})")
                continue
            caught, seconds = run_mutant(tree, m, args.timeout)
            killed, survived = killed + caught, survived + (not caught)
            print(f"{i:3d} {'killed  ' if caught else 'SURVIVED'} {m['file']}: {m['why']} ({seconds:.0f} s)",
                  flush=True)
    total = killed + survived
    print(f"{killed} of {total} killed ({killed / max(total, 1):.0%}), {survived} survived; "
          f"{sum('equivalent' in m for m in mutants)} equivalent, not run")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
