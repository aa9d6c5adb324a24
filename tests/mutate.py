"""
Mutation testing, by hand (not in CI): plant one plausible bug at a time and check that the suite catches it.

    python tests/mutate.py                 # every mutant: killed / survived, and the kill rate
    python tests/mutate.py --only=ppo.py   # the mutants of files whose path contains this
    python tests/mutate.py --list          # the mutants, without running anything
    python tests/mutate.py --start=90      # from mutant 90 on (the numbers --list shows)

Each mutant is an exact replacement (old -> new, old occurring once in its file) with the test files that should
catch it. The tree is copied to a temporary folder first (the files git tracks, plus untracked ones it does not
ignore), so the working tree is never touched and a stopped run leaves nothing behind. A mutant whose code
behaves exactly as the original is listed with "equivalent" and the reason, and is not run.
"""

import argparse
import ast
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
    # sft.py and reward.py: the SFT mask, eq. 1, the normalisation and what their mains feed them
    dict(file='sft.py',
         old='y[~((positions + 1 >= prompt_lens) & (positions + 1 < lengths[:, None]))] = -1',
         new='y[~(positions + 1 < lengths[:, None])] = -1',
         tests='tests/test_sft.py',
         why='prompt mask dropped: prompt tokens become SFT targets'),
    dict(file='sft.py',
         old='(positions + 1 < lengths[:, None])',
         new='(positions + 2 < lengths[:, None])',
         tests='tests/test_sft.py',
         why='the closing EOS is no target (the model never learns to stop)'),
    dict(file='sft.py',
         old='(positions + 1 >= prompt_lens)',
         new='(positions >= prompt_lens)',
         tests='tests/test_sft.py',
         why='mask off by one: the first response token is no target'),
    dict(file='reward.py',
         old='for j in range(lo, hi)]',
         new='for j in reversed(range(lo, hi))]',
         tests='tests/test_reward.py',
         why="each prompt's responses reach the ranking loss worst first"),
    dict(file='reward.py',
         old='+ 0.5 * (diff == 0).float()',
         new='+ 0.0 * (diff == 0).float()',
         tests='tests/test_reward.py',
         why='pair_accuracy counts a tie as wrong (a fresh RM would log 0)'),
    dict(file='reward.py',
         old='right = (diff > 0).float() + 0.5 * (diff == 0).float()',
         new='right = (diff >= 0).float()',
         tests='tests/test_reward.py',
         why='pair_accuracy counts a tie as right (a fresh RM would log 1)'),
    dict(file='reward.py',
         old='model.score_head.bias -= demos[0]',
         new='model.score_head.bias += demos[0]',
         tests='tests/test_reward.py',
         why='normalisation bias sign flipped: demonstrations score 2x their mean'),
    dict(file='reward.py',
         old='model.score_head.weight /= std',
         new='model.score_head.weight /= 1.0',
         tests='tests/test_reward.py',
         why='the reward scale is logged but not put in the head PPO reads'),
    dict(file='reward.py',
         old='loss * len(chunk) * rt.world_size / len(rows)',
         new='loss * rt.world_size / n_chunks',
         tests='tests/test_reward.py',
         why='micro-batches of unequal size weighted equally, not by their prompts'),
    dict(file='sft.py',
         old='ignore_index=-1, reduction="sum")',
         new='ignore_index=-1, reduction="mean")',
         tests='tests/test_sft.py',
         why='per-micro-batch mean, then divided by the global target count again'),
    dict(file='sft.py',
         old='for _, y in micro_batches))',
         new='for _, y in micro_batches[:1]))',
         tests='tests/test_sft.py',
         why="the loss normalised by the first micro-batch's targets only"),
    dict(file='sft.py',
         old='lr = cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)',
         new='lr = cosine_lr(step, total_steps, cfg.lr, cfg.final_lr_ratio, cfg.warmup_steps)',
         tests='tests/test_sft.py',
         why='lr schedule arguments swapped (warmup and final ratio)'),
    dict(file='sft.py',
         old='math.ceil(cfg.epochs * train.per_epoch / cfg.grad_accum)',
         new='math.ceil(cfg.epochs * train.per_epoch)',
         tests='tests/test_sft.py',
         why='total steps ignore grad_accum: twice the epochs, schedule stretched'),
    dict(file='sft.py',
         old='train(step * cfg.grad_accum + m)',
         new='train(step + m)',
         tests='tests/test_sft.py',
         why='consecutive steps share micro-batches: half the data is never seen'),
    dict(file='sft.py',
         old='criterion > self.best',
         new='criterion < self.best',
         tests='tests/test_sft.py',
         why='model selection keeps the worst model'),
    dict(file='sft.py',
         old='torch.random.fork_rng(devices=[rt.device] if rt.device_type == "cuda" else [])',
         new='nullcontext()',
         tests='tests/test_sft.py',
         why="evaluation's sampling draws from training's RNG stream: dropout depends on eval_interval"),
    dict(file='reward.py',
         old='nll = torch.where(mask, -F.logsigmoid(diff), 0.0)',
         new='nll = torch.where(mask, -F.logsigmoid(-diff), 0.0)',
         tests='tests/test_reward.py',
         why='sigmoid sign flipped: the RM learns to prefer the worse response'),
    dict(file='reward.py',
         old='upper = idx[:, None] < idx[None, :]',
         new='upper = idx[:, None] <= idx[None, :]',
         tests='tests/test_reward.py',
         why='a response is paired with itself (diagonal in the pair mask)'),
    dict(file='reward.py',
         old='n_pairs = num_responses * (num_responses - 1) / 2',
         new='n_pairs = num_responses * (num_responses - 1)',
         tests='tests/test_reward.py',
         why='the pair count is not C(K, 2)'),
    dict(file='reward.py',
         old='return (nll.sum(dim=(1, 2)) / n_pairs).mean()',
         new='return nll.sum(dim=(1, 2)).mean() / n_pairs.mean()',
         tests='tests/test_reward.py',
         why='mean over all pairs of the batch, not per prompt then over prompts'),
    dict(file='reward.py',
         old='real_j = idx[None, None, :] < num_responses[:, None, None]',
         new='real_j = idx[None, None, :] <= num_responses[:, None, None]',
         tests='tests/test_reward.py',
         why='mask off by one: a padding column is paired as if it were a response'),
    dict(file='reward.py',
         old='r = rewards.float().masked_fill(~real, 0.0)',
         new='r = rewards.float()',
         tests='tests/test_reward.py',
         why='padding not zeroed: an inf or NaN there leaks into the gradient'),
    dict(file='reward.py',
         old='            model.score_head.bias /= std\n',
         new='',
         tests='tests/test_reward.py',
         why="the head's weight is scaled but not its bias: demonstrations no longer score 0"),
    dict(file='reward.py',
         old='model.score_head.bias.requires_grad_(False)',
         new='model.score_head.bias.requires_grad_(True)',
         tests='tests/test_reward.py',
         why='the bias trains on rounding noise that Adam blows up to lr-sized steps'),
    dict(file='reward.py',
         old='lr = cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)',
         new='lr = cosine_lr(step, total_steps, cfg.lr, cfg.final_lr_ratio, cfg.warmup_steps)',
         tests='tests/test_reward.py',
         why='lr schedule arguments swapped (warmup and final ratio)'),
    dict(file='reward.py',
         old='    set_lr(optimizer, lr)\n',
         new='    set_lr(optimizer, cfg.lr)\n',
         tests='tests/test_reward.py',
         why='the schedule is logged but the optimizer keeps the peak lr'),
    # model.py and common.py: the network, sampling, checkpoints and the harness
    dict(file="model.py", old="causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)",
         new="causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past + 1)",
         tests="tests/test_model.py", why="the causal mask lets each query see the next token"),
    dict(file="model.py", old="attn_mask = ((causal[None] & keys[:, None, :]) | itself[None])[:, None]",
         new="attn_mask = (causal[None] & keys[:, None, :])[:, None]",
         tests="tests/test_model.py",
         why="a left-padding query sees no key: SDPA's NaN for it reaches real tokens through 0 * NaN"),
    dict(file="model.py", old="position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]",
         new="position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, :T]",
         tests="tests/test_model.py", why="a cached step takes the positions of the first T tokens, not its own"),
    dict(file="model.py", old="position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]",
         new="position_ids = torch.arange(past, past + T, device=idx.device)[None].expand(B, T)",
         tests="tests/test_model.py", why="positions count pads: a left-padded row is shifted"),
    dict(file="model.py", old="            kv_cache.length += T",
         new="            kv_cache.length += 1",
         tests="tests/test_model.py", why="the cache offset assumes one token per call: a prefill is overwritten"),
    dict(file="model.py", old="keys = F.pad(attention_mask.bool(), (0, S - past - T))",
         new="keys = F.pad(attention_mask.bool(), (S - past - T, 0))",
         tests="tests/test_model.py", why="the cache's key mask padded on the wrong side: keys misaligned"),
    dict(file="model.py", old="att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))",
         new="att = (q @ k.transpose(-2, -1)) * (1.0 / q.size(-1))",
         tests="tests/test_model.py", why="explicit attention scaled by 1/hs instead of 1/sqrt(hs)"),
    dict(file="model.py", old="attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()",
         new="attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril(1)",
         tests="tests/test_model.py", why="explicit attention's default causal mask sees one token ahead"),
    dict(file="model.py", old="q.size(-2) * k.size(-2) < 512 * 512",
         new="q.size(-2) * k.size(-2) <= 512 * 512",
         tests="tests/test_model.py", why="the dispatch takes the explicit path at 512 x 512, where SDPA is the rule"),
    dict(file="model.py", old="logits = logits[:, prompt_len - 1:-1].float() / temperature",
         new="logits = logits[:, prompt_len - 1:-1].float()",
         tests="tests/test_ppo.py", why="logprobs ignore the sampling temperature"),
    dict(file="model.py", old="logprobs = logprobs_from_logits(logits, seqs[:, prompt_len:])",
         new="logprobs = logprobs_from_logits(logits, seqs[:, prompt_len - 1:-1])",
         tests="tests/test_ppo.py", why="each logit scores the token it was fed, not the one it predicts"),
    dict(file="model.py", old="return scores.gather(1, (lengths - 1)[:, None]).squeeze(1)",
         new="return scores[:, -1]",
         tests="tests/test_reward.py", why="the reward read at the last column, a pad for all but the longest"),
    dict(file="model.py", old="z = logits.float() / temperature",
         new="z = logits.float() * temperature",
         tests="tests/test_model.py", why="temperature multiplies the logits"),
    dict(file="model.py", old='z = z.masked_fill(z < kth, float("-inf"))',
         new='z = z.masked_fill(z <= kth, float("-inf"))',
         tests="tests/test_model.py", why="top_k keeps k - 1 tokens"),
    dict(file="model.py", old="response_mask = (is_eos.cumsum(1) - is_eos) == 0",
         new="response_mask = is_eos.cumsum(1) == 0",
         tests="tests/test_model.py", why="the closing EOS left out of the response mask"),
    dict(file="model.py", old='    with atomic_write(path, "wb") as f:\n        torch.save(ckpt, f)',
         new='    with open(path, "wb") as f:\n        torch.save(ckpt, f)',
         tests="tests/test_model.py", why="a checkpoint written in place: an interrupted save destroys the last one"),
    dict(file="model.py", old="ignore_index=-1)", new="ignore_index=-100)",
         tests="tests/test_model.py", why="the -1 targets (prompt, padding) are not ignored"),
    dict(file="model.py",
         old='transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")',
         new='transposed = ("attn.c_attn.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")',
         tests="tests/test_model.py", why="GPT-2's square attention projection loaded untransposed"),
    dict(file="model.py",
         old="return torch.empty_like(scores).index_copy_(0, torch.tensor(order, device=scores.device), scores)",
         new="return scores", tests="tests/test_reward.py", why="scores returned in the length-sorted order"),
    dict(file="common.py", old="return peak_lr * (step + 1) / warmup_steps",
         new="return peak_lr * step / warmup_steps",
         tests="tests/test_common.py", why="warmup starts at lr 0 and never reaches the peak"),
    dict(file="common.py", old="progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))",
         new="progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)",
         tests="tests/test_common.py", why="past the last step the cosine rises again"),
    dict(file="common.py", old='grad_clip if grad_clip > 0 else float("inf")',
         new='grad_clip if grad_clip >= 0 else float("inf")',
         tests="tests/test_common.py", why="grad_clip = 0 (off) clips every gradient to nothing"),
    dict(file="common.py", old="    if not scaler.is_enabled():  # fp16's scaler skips steps with inf gradients itself",
         new="    if scaler.is_enabled():  # fp16's scaler skips steps with inf gradients itself",
         tests="tests/test_common.py", why="the finite check skipped in bf16/fp32: a NaN gradient reaches the weights"),
    dict(file="common.py", old="    optimizer.zero_grad(set_to_none=True)\n", new="",
         tests="tests/test_common.py", why="gradients never cleared: every step accumulates all earlier ones"),
    dict(file="common.py", old='{"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}',
         new='{"params": [p for p in params if p.dim() < 2], "weight_decay": weight_decay}',
         tests="tests/test_common.py", why="biases and LayerNorm gains decayed"),
    dict(file="common.py", old='kept = [line for line in f if json.loads(line).get("step", 0) <= resume_step]',
         new='kept = [line for line in f if json.loads(line).get("step", 0) < resume_step]',
         tests="tests/test_common.py", why="the resume step's own metrics line dropped"),
    dict(file="common.py", old="return source in GPT2_SIZES or os.path.isdir(source)",
         new='return source.startswith("gpt2")',
         tests="tests/test_model.py", why="a GPT-2 directory whose path does not start with gpt2 read as a checkpoint"),
    dict(file="common.py",
         old="model = GPT.from_pretrained(source, dropout=0.0 if dropout is None else dropout, scalar_head=bool(scalar_head))",
         new="model = GPT.from_pretrained(source, dropout=0.0 if dropout is None else dropout)",
         tests="tests/test_model.py", why="a reward model started from GPT-2 keeps the unembedding"),
    dict(file="common.py", old='    if stages is not None and "pretrain" not in stages:\n',
         new='    if False:\n', tests="tests/test_model.py",
         why="GPT-2 accepted where a stage needs an SFT checkpoint"),
    # data/synthetic/evaluate.py: what the evaluation reports
    dict(file='data/synthetic/evaluate.py',
         old='labelers, suffix = (HELDOUT_LABELERS, "") if args.split == "test" else (TRAIN_LABELERS, "_val")',
         new='labelers, suffix = (TRAIN_LABELERS, "") if args.split == "test" else (TRAIN_LABELERS, "_val")',
         tests='tests/test_pipeline.py',
         why='the test measurement judged by the training labelers, whose preferences the RM was trained on'),
    dict(file='data/synthetic/evaluate.py',
         old='rate, ci = win_rate(prompts, s["texts"], b["texts"], labelers, s["ended"], b["ended"])',
         new='rate, ci = win_rate(prompts, b["texts"], s["texts"], labelers, b["ended"], s["ended"])',
         tests='tests/test_pipeline.py',
         why='the win rate of SFT against the model (1 - rate): a better policy reads as worse'),
    dict(file='data/synthetic/evaluate.py',
         old='results[name]["win" + tag], results[name]["win_ci95" + tag] = rate, ci',
         new='results[name]["win" + tag], results[name]["win_ci95"] = rate, ci',
         tests='tests/test_pipeline.py',
         why="the T=1 pass's CI overwrites the greedy win rate's CI (and win_ci95_t1 is never written)"),
    dict(file='data/synthetic/evaluate.py',
         old='return (logprob_sums(model, own, tokens) - logprob_sums(ref, bare, tokens)).mean().item()',
         new='return (logprob_sums(ref, bare, tokens) - logprob_sums(model, own, tokens)).mean().item()',
         tests='tests/test_pipeline.py',
         why="KL's sign flipped: KL(model || SFT) negative on the model's own samples"),
    dict(file='data/synthetic/evaluate.py',
         old='return (logprob_sums(model, own, tokens) - logprob_sums(ref, bare, tokens)).mean().item()',
         new='return (logprob_sums(model, own, tokens) - logprob_sums(ref, own, tokens)).mean().item()',
         tests='tests/test_pipeline.py',
         why="SFT scored with the model's few-shot prefix, a context it is never asked in"),
    dict(file='data/synthetic/evaluate.py',
         old='LABELER_SETS = {"train_labelers": TRAIN_LABELERS, "heldout_labelers": HELDOUT_LABELERS}',
         new='LABELER_SETS = {"train_labelers": HELDOUT_LABELERS, "heldout_labelers": TRAIN_LABELERS}',
         tests='tests/test_pipeline.py',
         why="the RM's accuracy on its own training labelers reported as the held-out labelers' (looks better)"),
    dict(file='data/synthetic/evaluate.py',
         old='agree += 0.5 if dr == 0 else float((dr > 0) == (d > 0))',
         new='agree += float((dr > 0) == (d > 0))',
         tests='tests/test_pipeline.py',
         why='a reward tie counted as a vote for the second response instead of half'),
    dict(file='data/synthetic/evaluate.py',
         old='truth = "ppo_ptx" if run_config["ptx_coef"] > 0 else "ppo"',
         new='truth = "ppo_ptx" if run_config["ptx_coef"] >= 0 else "ppo"',
         tests='tests/test_pipeline.py',
         why='every PPO checkpoint, plain PPO included, relabelled as PPO-ptx'),
    # evaluate.py and the converters: the real-data evaluation and the judge split
    dict(file='evaluate.py',
         old='outcomes = [0.5 if s or a == b else float(a > b) for a, b, s in zip(scores, baseline_scores, same)]',
         new='outcomes = [float(a > b) for a, b, s in zip(scores, baseline_scores, same)]',
         tests='tests/test_realdata.py',
         why='ties and identical answers count as losses: SFT wins 0 against itself'),
    dict(file='evaluate.py',
         old='outcomes = [0.5 if s or a == b else float(a > b) for a, b, s in zip(scores, baseline_scores, same)]',
         new='outcomes = [0.5 if s or a == b else float(a < b) for a, b, s in zip(scores, baseline_scores, same)]',
         tests='tests/test_realdata.py',
         why='the win rate of SFT against the model: a better policy reads as worse'),
    dict(file='evaluate.py',
         old='out["kl_to_sft"] = 0.0 if ref is None else kl_to_reference(model, ref, tok, prompts, "", tokens)',
         new='out["kl_to_sft"] = 0.0 if ref is None else kl_to_reference(ref, model, tok, prompts, "", tokens)',
         tests='tests/test_realdata.py',
         why="KL's sign flipped: log p_SFT - log p_model on the model's own samples"),
    dict(file='evaluate.py',
         old='        split = "val"\n',
         new='        split = "train"\n',
         tests='tests/test_realdata.py',
         why='data without a test split judged on the prompts PPO trained on'),
    dict(file='data/formats.py',
         old='train_groups = [g for g, _ in self.records["comparisons"] if g not in val_groups]',
         new='train_groups = [g for g, _ in self.records["comparisons"]]',
         tests='tests/test_converters.py',
         why='the judge drawn from val groups too: fewer judge prompts than --judge_fraction of the training ones'),
    dict(file='data/formats.py',
         old='return "judge" if kind == "comparisons" and group in judge_groups else "train"',
         new='return "judge" if group in judge_groups else "train"',
         tests='tests/test_converters.py',
         why="the judge prompts' demonstrations and PPO prompts vanish (no sft_judge or prompts_judge is written)"),
    dict(file='reward.py',
         old='train = Comparisons(cfg.data_dir, cfg.train_split, tok, model.config.block_size, rt.master)',
         new='train = Comparisons(cfg.data_dir, "train", tok, model.config.block_size, rt.master)',
         tests='tests/test_realdata.py',
         why="the judge RM trained on the policy RM's comparisons while its run config says judge"),
    dict(file='data/formats.py',
         old='return prompt.lstrip().startswith("Human:") or prompt.rstrip().endswith("Assistant:")',
         new='return prompt.lstrip().startswith("Human:") and prompt.rstrip().endswith("Assistant:")',
         tests='tests/test_converters.py',
         why='a prompt that starts "Human:" passes: the model reads the template twice'),
    # the flags: ranges beside the defaults, read by common.parse_config
    dict(file='common.py',
         old='return cls(text, lo=bound, lo_closed=op == ">=")',
         new='return cls(text, lo=bound, lo_closed=op[0] == ">")',
         tests='tests/test_common.py',
         why="'> 0' read as '>= 0': --lr=0 and --clip_eps=0 pass"),
    dict(file='common.py',
         old='interval[1] == "[", interval[4] == "]")',
         new='interval[1] == "[", interval[4] == ")")',
         tests='tests/test_common.py',
         why="an interval's upper end closed where open and open where closed: --dropout=1 passes, --gamma=1 is refused"),
    dict(file='common.py',
         old='bad = [v for v in values if v is not None and v not in valid] if valid else []',
         new='bad = [v for v in values[:1] if v is not None and v not in valid] if valid else []',
         tests='tests/test_common.py',
         why="only a tuple's first value checked: --betas=0.9,1 passes"),
    dict(file='common.py',
         old='return field.metadata.get("range") or (FINITE if scalar_type(tp) is float else None)',
         new='return field.metadata.get("range")',
         tests='tests/test_common.py',
         why='a float without a declared range takes nan and inf (--no_eos_penalty=nan)'),
    dict(file='ppo.py',
         old='minibatch_size: int = ranged(16, ">= 1")',
         new='minibatch_size: int = ranged(16, ">= 0")',
         tests='tests/test_flags.py',
         why='range off by one: --minibatch_size=0 reaches batch_size % 0 (ZeroDivisionError)'),
    dict(file='sft.py',
         old='improved = step > 0 and (self.best is None or criterion > self.best)',
         new='improved = step >= 0 and (self.best is None or criterion > self.best)',
         tests='tests/test_flags.py',
         why='the untrained starting model saved as sft.pt and reported as selected when no step beats it'),
    dict(file='ppo.py',
         old='iterations: int = ranged(60, ">= 1")',
         new='iterations: int = ranged(60, ">= 0")',
         tests='tests/test_flags.py',
         why='--iterations=0 runs no PPO step yet evaluates and logs the SFT policy as the result'),
    dict(file='ppo.py',
         old='    check_ranges(cfg)\n    if cfg.batch_size % cfg.minibatch_size:',
         new='    if cfg.batch_size % cfg.minibatch_size:',
         tests='tests/test_ppo.py',
         why='a PPOConfig made in code (bench.py, tests) skips the ranges: --oracle_scale=-1 runs'),
    # model sizes: run.sh's presets and scaling mode, data/synthetic/scaling.py
    dict(file='data/synthetic/scaling.py',
         old='return (win - 0.5) / (ideal - 0.5) if ideal > 0.5 else None',
         new='return win / ideal if ideal > 0.5 else None',
         tests='tests/test_scaling.py',
         why="the headroom as a ratio of win rates: SFT itself would capture 73% of the ideal's"),
    dict(file='data/synthetic/scaling.py',
         old='name = max(params, key=params.get)',
         new='name = list(params)[-1]',
         tests='tests/test_scaling.py',
         why='the largest SFT taken as the last size named, not the one with the most parameters'),
    dict(file='data/synthetic/scaling.py',
         old='"win_rate_vs_own_sft": {m: own["win_rate_vs_sft"][m] for m in METHODS},',
         new='"win_rate_vs_own_sft": {m: joint["win_rate_vs_sft"][f"{name}_{m}"] for m in METHODS},',
         tests='tests/test_scaling.py',
         why='the win rate against its own SFT read from the joint evaluation (against the largest SFT)'),
    dict(file='run.sh',
         old='--out_dir=$OUT/pretrain \\\n    $P_PRE $PRETRAIN_FLAGS',
         new='--out_dir=$OUT/pretrain \\\n    $PRETRAIN_FLAGS $P_PRE',
         tests='tests/test_scaling.py',
         why="the size's preset after the user's flags: PRETRAIN_FLAGS=--lr=... is silently overridden"),
    dict(file='run.sh',
         old='SIZE=$size OUT_DIR=$DIR/$size DATA_DIR=$DIR/$size/data bash "$0"\n        fi',
         new='OUT_DIR=$DIR/$size DATA_DIR=$DIR/$size/data bash "$0"\n        fi',
         tests='tests/test_scaling.py',
         why='every size of the scaling run trained at the default size'),
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


def problems(mutant, root=ROOT):
    """Why a mutant is not a runnable bug of today's code (its old text must occur once, the mutated file must
    still parse, so that a kill is the tests' doing and not a SyntaxError's); [] when it is."""
    path = root / mutant["file"]
    if not path.is_file():
        return [f"{mutant['file']}: no such file"]
    text = path.read_text()
    found = [f"{mutant['file']}: the old text occurs {text.count(mutant['old'])} times, not once: "
             f"{mutant['old'][:70]!r}"] if text.count(mutant["old"]) != 1 else []
    mutated = text.replace(mutant["old"], mutant["new"])
    if path.suffix == ".sh":  # bash -n: the syntax only, nothing run
        proc = subprocess.run(["bash", "-n"], input=mutated, capture_output=True, text=True)
        if proc.returncode:
            found.append(f"{mutant['file']}: the mutant does not parse ({proc.stderr.strip()}): {mutant['new'][:70]!r}")
    else:
        try:
            ast.parse(mutated)
        except SyntaxError as e:
            found.append(f"{mutant['file']}: the mutant does not parse ({e.msg}): {mutant['new'][:70]!r}")
    found += [f"{t}: no such test file" for t in mutant["tests"].split() if not (root / t).is_file()]
    return found


def run_mutant(tree, mutant, timeout):
    """Apply the mutant in tree, run its tests, restore the file. Returns (killed, seconds)."""
    path = tree / mutant["file"]
    original = path.read_text()
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
    parser.add_argument("--start", type=int, default=0, help="skip the mutants numbered below this")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.only in m["file"]]
    broken = [p for m in mutants for p in problems(m)]
    if broken:
        raise SystemExit("error: " + "\nerror: ".join(broken))
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
            if i < args.start:
                continue
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
