"""
Step 3 of InstructGPT (section 3.5): optimise the SFT policy against the reward model with PPO, a
per-token KL penalty against the SFT model, and (PPO-ptx) the pretraining log-likelihood mixed into
every update. The objective, InstructGPT eq. 2:

    maximise  E_(x,y)~pi_RL [ r(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x)) ]
              + gamma_ptx * E_x~D_pretrain [ log pi_RL(x) ]

A bandit environment: a prompt comes, the policy samples a response, the reward model scores it at its
EOS token. The KL term is paid at every response token, the score at the last one; GAE turns these
rewards into advantages for the clipped PPO surrogate (Schulman et al. 2017). The policy and the frozen
reference start from the SFT checkpoint; the value model starts from the reward model, as the paper's does.

Tiny run on a CPU (after `python sft.py` and `python reward.py` on the synthetic default):

    python ppo.py                                   # PPO-ptx -> out/ppo_ptx/ppo.pt, out/ppo_ptx/metrics.jsonl
    python ppo.py --ptx_coef=0 --out_dir=out/ppo    # plain PPO
    python ppo.py --init_from=resume                # continue an interrupted run from out/ppo_ptx/resume.pt
    python ppo.py --oracle_scale=6 --out_dir=out/ppo_oracle  # the judge's gold score as the reward

On GPUs (bf16, fused attention; each rank samples its share of every batch):

    python ppo.py --init_from=out/sft/sft.pt --reward_model=out/reward/reward.pt --data_dir=data/hh_rlhf
    torchrun --standalone --nproc_per_node=8 ppo.py --data_dir=data/hh_rlhf --batch_size=512 --minibatch_size=64
"""

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from common import (
    ConfigError,
    Interrupt,
    MetricsLog,
    check_finite,
    check_ranges,
    configure_optimizer,
    load_lm,
    load_resume,
    optimizer_step,
    parse_config,
    ranged,
    run,
    save_resume,
    set_lr,
    setup_runtime,
    vocabulary_of,
)
from data import load_judge
from data.formats import read_split
from data.loader import (
    encode_prompt,
    fitting,
    generate_responses,
    load_split,
    random_windows,
)
from model import (
    CheckpointError,
    generate,
    load_checkpoint,
    load_model,
    response_logprobs,
    save_checkpoint,
    score_sequences,
)


@dataclass
class PPOConfig:
    """PPO with the per-token KL penalty and the pretraining mix (InstructGPT step 3, eq. 2)."""
    # models and data
    init_from: str = "out/sft/sft.pt"  # SFT checkpoint: the policy and the frozen reference | resume
    reward_model: str = "out/reward/reward.pt"  # the frozen reward model; the value model starts as a copy
    # The oracle (diagnosis, on data with a judge): the data's noiseless gold score in [0, 1] as the reward, the
    # "gold RM" of Gao et al. 2022, to measure what the RM's blind spots cost PPO. gold - 1 puts a perfect answer
    # at 0, near where the normalised RM puts SFT's samples, so the value model (the RM's copy) needs no large
    # offset; the scale brings gold's spread to the RM's unit std, so that beta means the same. The judge scores
    # a response that does not stop itself, so no_eos_penalty does not apply; the log's rm_score is the oracle's.
    oracle_scale: float = ranged(0.0, ">= 0")  # > 0: score with oracle_scale * (gold - 1) instead of the reward model
    data_dir: str = "data/synthetic"  # prompts_{train,val}.jsonl (rollouts, evaluation); judge.json where there is one
    ptx_data_dir: str = ""  # pretrain_train.jsonl of the ptx term, any plain-text folder; "": data_dir's
    out_dir: str = "out/ppo_ptx"  # ppo.pt (the policy), resume.pt, metrics.jsonl (plain PPO: pass out/ppo)
    # rollouts
    iterations: int = ranged(60, ">= 1")  # PPO iterations; each samples batch_size episodes, then updates
    batch_size: int = ranged(64, ">= 1")  # episodes (prompt + sampled response) per iteration, all ranks (paper: 512)
    max_new_tokens: int = ranged(48, ">= 1")  # response length limit
    temperature: float = ranged(1.0, "> 0")  # rollout temperature; pure sampling, never top-k (its KL is biased)
    no_eos_penalty: float | None = -1.0  # score of a response cut off without EOS; None: the RM's score
    # rewards. The paper's beta 0.02 is for 1.3B-175B policies and a 6B RM; a tiny RM's errors are easy to
    # find, so a larger beta keeps the policy near the SFT distribution, where the RM was trained, longer.
    kl_coef: float = ranged(0.05, ">= 0")  # beta: the per-token KL penalty against SFT (initial value if adaptive)
    adaptive_kl: bool = False  # Ziegler et al. 2019's controller steers the KL to kl_target
    kl_target: float = ranged(6.0, "> 0")  # target KL per response (nats), adaptive_kl only
    kl_horizon: int = ranged(10000, ">= 1")  # episodes over which the controller moves beta, adaptive_kl only
    # PPO
    gamma: float = ranged(1.0, "[0, 1]")  # discount; 1 in the paper (no discount inside one response)
    lam: float = ranged(0.95, "[0, 1]")  # GAE lambda
    ppo_epochs: int = ranged(2, ">= 1")  # passes over each rollout (paper: 1 at batch 512; more reuse helps on CPU)
    minibatch_size: int = ranged(16, ">= 1")  # episodes per optimizer step, all ranks (paper: 64)
    clip_eps: float = ranged(0.2, "> 0")  # PPO ratio clip
    vf_clip_eps: float = ranged(0.2, "> 0")  # value clip around the rollout's values (same units as the RM score)
    lr: float = ranged(1e-5, ">= 0")  # policy lr, constant after warmup (paper: constant, 10-iteration warmup)
    value_lr: float = ranged(5e-5, ">= 0")  # value model learning rate (its own network, so its own optimizer)
    warmup_iters: int = ranged(10, ">= 0")  # linear learning-rate warmup, in iterations
    weight_decay: float = ranged(0.0, ">= 0")  # AdamW decay; none, so that nothing but the KL pulls the policy anywhere
    grad_clip: float = ranged(1.0, ">= 0")  # gradient norm clip, policy and value model each
    # PPO-ptx, eq. 2's gamma term; 0 = plain PPO. The paper's 27.8 is for a 175B model's PPO gradient. Here SFT
    # has forgotten most of the pretraining text, so the ptx gradient starts large and a large coefficient swamps
    # the PPO step (watch ptx_grad_ratio in metrics.jsonl; the trials: docs/experiments.md).
    ptx_coef: float = ranged(0.2, ">= 0")  # gamma_ptx: weight of the pretraining LM loss in each policy update
    ptx_batch_size: int = ranged(8, ">= 1")  # pretraining windows per minibatch, all ranks (paper: 8 per episode)
    ptx_seq_len: int = ranged(128, ">= 0")  # tokens per pretraining window; 0: the model's block_size
    # evaluation and logging
    eval_prompts: int = ranged(200, ">= 0")  # validation prompts for the final comparison with SFT (0: none)
    eval_temperature: float = ranged(1.0, ">= 0")  # evaluation temperature (0: greedy); 1 is what PPO optimised
    sample_interval: int = ranged(10, ">= 0")  # print a few decoded rollouts every this many iterations
    ckpt_interval: int = ranged(20, ">= 0")  # write ppo.pt and resume.pt every this many iterations
    # system
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (bf16 on CUDA or a native-bf16 CPU, fp16 on older GPUs, else fp32) | float32 | bfloat16
    seed: int = ranged(1337, "[0, 2**32)")  # prompts, samples and ptx windows are functions of (seed, iteration)


# -----------------------------------------------------------------------------
# The PPO math: importable, each function tested against hand-made or brute-force values


def masked_mean(x, mask, n_tokens=None):
    """Mean of x over the positions where mask is 1: a token mean, not a mean of per-sequence means.
    n_tokens replaces mask.sum() as the divisor (DDP: the global count / world_size, so that averaging the
    ranks' gradients gives the token mean of the whole global batch)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / (mask.sum().clamp(min=1) if n_tokens is None else n_tokens)


def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the real tokens (mask 1) of the batch, 0 elsewhere. Under DDP the moments are
    those of every rank's tokens together. x, mask: (B, T); the population variance."""
    mask = mask.to(x.dtype)
    distributed = dist.is_available() and dist.is_initialized()
    moments = torch.stack([(x * mask).sum(), mask.sum()])
    if distributed:
        dist.all_reduce(moments)
    mean = moments[0] / moments[1].clamp(min=1)
    sq = ((x - mean) ** 2 * mask).sum()
    if distributed:
        dist.all_reduce(sq)
    return (x - mean) * torch.rsqrt(sq / moments[1].clamp(min=1) + eps) * mask


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """
    Per-token rewards (B, T) of eq. 2: -kl_coef * (logp - ref_logp) at every real response token, plus the
    score (B,) at each row's last real token; 0 where mask is 0. logprobs / ref_logprobs are those of the
    sampled tokens under the policy and under the frozen SFT reference (not the old policy: that KL is
    PPO's trust region, this one is the paper's penalty).
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)  # index of each row's last real token (masks are prefixes)
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """
    Generalised advantage estimation (Schulman et al. 2016) over response tokens. rewards, values, mask:
    (B, T), mask 1 on the real response tokens (a prefix of each row); the value after the last real token
    is 0 (the episode ends there). Returns (advantages, returns), (B, T), 0 where mask is 0; returns =
    advantages + values: the value model's regression target. One reverse loop over T.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.size(1))):
        # whether t + 1 is still inside the episode: else the next value and the carried advantage are 0
        alive = mask[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last_gae)
        next_value = values[:, t + 1] * alive if t + 1 < rewards.size(1) else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * alive * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2, n_tokens=None):
    """PPO's clipped surrogate as a loss: the masked token mean of max(-A * ratio, -A * clip(ratio, 1 - eps,
    1 + eps)), ratio = exp(logp - old_logp). All inputs (B, T); n_tokens as in masked_mean."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return masked_mean(torch.max(pg_loss1, pg_loss2), mask, n_tokens)


@torch.no_grad()
def policy_stats(logprobs, old_logprobs, mask, clip_eps=0.2):
    """approx_kl (the k3 estimator (ratio - 1) - log ratio of KL(old || new)) and clipfrac (fraction of real
    tokens whose ratio left [1 - eps, 1 + eps]), as floats."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    return {"approx_kl": masked_mean((ratio - 1) - logratio, mask).item(),
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask).item()}


def value_loss(values, old_values, returns, mask, clip_eps=0.2, n_tokens=None):
    """Clipped value loss: 0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).
    values: the value model now; old_values: at rollout time; returns: GAE's targets. All (B, T)."""
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (old_values + torch.clamp(values - old_values, -clip_eps, clip_eps) - returns) ** 2
    return 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask, n_tokens)


class KLController:
    """beta: constant (target None), or Ziegler et al. 2019's adaptive controller, which steers the KL to
    target: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon, with current_kl the mean KL
    per response of the last batch and n_steps its episodes (all ranks)."""

    def __init__(self, kl_coef, target=None, horizon=10000):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl, n_steps):
        if self.target is not None:
            self.value *= 1 + min(max(current_kl / self.target - 1, -0.2), 0.2) * n_steps / self.horizon


def response_values(value_model, seqs, attention_mask, prompt_len):
    """V(prompt + response[:t]) for each response token t, (B, T): the scalar head read at the token
    before t, the same columns as the logits that predict t (the value of t may not see t itself)."""
    scores, _ = value_model(seqs, attention_mask=attention_mask)
    return scores[:, prompt_len - 1:-1].float()


@torch.no_grad()
def in_chunks(fn, batch, size):
    """fn(seqs, attention_mask) over a rollout in chunks of size rows, concatenated: bounds its memory."""
    outs = [fn(batch["seqs"][i:i + size], batch["attention_mask"][i:i + size])
            for i in range(0, batch["seqs"].size(0), size)]
    return tuple(torch.cat(p) for p in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs)


def policy_backward(policy, mb, cfg, n_tokens=None, ptx_batch=None, autocast=None, scaler=None, where=""):
    """
    One minibatch's policy gradient, accumulated into .grad (eq. 2): the clipped surrogate on the episodes,
    then, in a second forward/backward pass as in the paper, ptx_coef times the LM loss on ptx_batch =
    (x, y) pretraining windows. Under DDP the first pass skips the all-reduce (no_sync) and the second
    reduces the sum. Returns (pg_loss, lm_loss or None, new_logprobs, ptx_grad_ratio or None): the last is
    |ptx gradient| / |PPO gradient| on this rank, the check that the ptx term does not swamp the PPO step.
    """
    scale = scaler.scale if scaler is not None else (lambda t: t)
    use_ptx = cfg.ptx_coef > 0 and ptx_batch is not None
    with policy.no_sync() if use_ptx and hasattr(policy, "no_sync") else contextlib.nullcontext():
        with autocast() if autocast else contextlib.nullcontext():
            new_logprobs = response_logprobs(policy, mb["seqs"], mb["attention_mask"], mb["prompt_len"],
                                             cfg.temperature)
        pg_loss = policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["response_mask"], cfg.clip_eps,
                              n_tokens)
        check_finite(pg_loss, "the policy loss", where)
        scale(pg_loss).backward()
    lm_loss = ratio = None
    if use_ptx:
        params = [p for p in policy.parameters() if p.grad is not None]
        pg_grads = [p.grad.detach().clone() for p in params]
        with autocast() if autocast else contextlib.nullcontext():
            _, lm_loss = policy(ptx_batch[0], targets=ptx_batch[1])
        check_finite(lm_loss, "the ptx LM loss", where)
        scale(cfg.ptx_coef * lm_loss).backward()
        pg_norm = torch.sqrt(sum((g.float() ** 2).sum() for g in pg_grads))
        ptx_norm = torch.sqrt(sum(((p.grad.float() - g.float()) ** 2).sum() for p, g in zip(params, pg_grads)))
        ratio = (ptx_norm / pg_norm.clamp_min(1e-12)).item()
    return pg_loss.detach(), None if lm_loss is None else lm_loss.detach(), new_logprobs.detach(), ratio


def explained_variance(values, returns, mask):
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect value model, 0 a constant."""
    m = mask.bool()
    var_y = returns[m].var(unbiased=False)
    return float("nan") if var_y == 0 else (1 - (returns[m] - values[m]).var(unbiased=False) / var_y).item()


# -----------------------------------------------------------------------------
# Setup and evaluation


def seed_of(*parts):
    """A 32-bit seed that is a function of parts alone (a sample's, a shuffle's)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def reward_model_fn(reward_model, autocast=None):
    """reward_fn(prompts, responses) -> (B,) scores: the frozen RM read at each sequence's EOS."""
    def reward_fn(prompts, responses):
        return score_sequences(reward_model, [list(p) + list(r) for p, r in zip(prompts, responses)], autocast)
    return reward_fn


def load_models(cfg, rt, resume=None):
    """(policy, frozen reference, value model, frozen reward model, tokenizer). Dropout is off in all four,
    so that train and eval mode compute the same function."""
    sft_path, rm_path = cfg.init_from, cfg.reward_model
    ref_policy, tok, sft_ckpt = load_lm(sft_path, rt.device, stages=("sft",), dropout=0.0,
                                        default=sft_path == PPOConfig.init_from and not resume)
    policy, _ = load_model(resume or sft_ckpt, rt.device, dropout=0.0)
    rm_ckpt = load_checkpoint(rm_path, stages=("reward",))
    if rm_ckpt["tokenizer"] != sft_ckpt["tokenizer"]:
        raise CheckpointError(f"{rm_path} and {sft_path} use different vocabularies: train the reward model "
                              f"from this SFT checkpoint (python reward.py --init_from={sft_path})")
    reward_model, _ = load_model(rm_ckpt, rt.device, dropout=0.0)  # its head holds the normalised bias
    value_model, _ = load_model(rm_ckpt, rt.device, dropout=0.0)  # value init from the RM (the paper)
    if resume:
        value_model.load_state_dict(resume["value_model"])
    for frozen in (ref_policy, reward_model):
        frozen.eval().requires_grad_(False)
    return policy.eval(), ref_policy, value_model.eval(), reward_model, tok


@torch.no_grad()
def evaluate(policy, ref_policy, tok, cfg, reward_fn, judge, autocast=None):
    """The policy against the SFT model on the first eval_prompts validation prompts, both sampled at
    eval_temperature: mean reward, EOS rate and, where the data has a judge, the training labelers' win
    rate of the policy with its 95% CI and both gold scores."""
    prompts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", "val")[:cfg.eval_prompts]]
    encoded = [encode_prompt(tok, p) for p in prompts]
    keep = fitting([len(e) for e in encoded], policy.config.block_size - cfg.max_new_tokens, "eval prompts")
    prompts, encoded = [prompts[i] for i in keep], [encoded[i] for i in keep]
    out, answers = {"eval_n": len(prompts)}, {}
    for name, model in (("policy", policy), ("sft", ref_policy)):
        texts, ended, tokens = generate_responses(model, tok, prompts, cfg.max_new_tokens, cfg.eval_temperature,
                                                  cfg.minibatch_size * 4, seed=cfg.seed, autocast=autocast)
        answers[name] = (texts, ended)
        out[f"eval_{name}_rm_score"] = torch.as_tensor(reward_fn(encoded, tokens)).float().mean().item()
        out[f"eval_{name}_ended"] = sum(ended) / len(ended)
        if judge:
            out.update({f"eval_{name}_{k}": v for k, v in judge.score(prompts, texts, ended).items()})
    if judge:
        (pt, pe), (st, se) = answers["policy"], answers["sft"]
        out["eval_win_rate"], out["eval_win_rate_ci95"] = judge.win_rate(prompts, pt, st, pe, se)
    return out


# -----------------------------------------------------------------------------
# One PPO iteration, step by step (the numbers are main's)


def rollout(policy, split, keep, cfg, rt, it, eos_id):
    """1. This rank's share of a global batch of prompts, one pure sample each (temperature 1, no top-k).
    Prompts and samples are functions of (seed, iteration, row) alone, so a resumed run and N ranks draw
    exactly what one uninterrupted process does. Returns generate's batch plus the prompts and their ids."""
    rows = np.arange(rt.rank, cfg.batch_size, rt.world_size)
    prompt_ids = keep[np.random.default_rng([cfg.seed, it]).integers(len(keep), size=cfg.batch_size)[rows]]
    prompts = [split.prompts[i].tolist() for i in prompt_ids]
    batch = generate(policy, prompts, cfg.max_new_tokens, cfg.temperature, eos_id=eos_id,
                     seeds=[seed_of(cfg.seed, it, r) for r in rows], autocast=rt.autocast)
    return batch | {"prompt_ids": prompt_ids, "prompts": prompts}


def score_rollouts(batch, texts, cfg, reward_fn, judge=None, prompt_texts=None):
    """2. Score each response: the RM reads prompt + response at its EOS, and a response cut off without EOS
    gets the fixed no_eos_penalty instead (the RM never saw such answers). Or the oracle: the judge's gold
    score of the text, cut-off answers included, since it scores those itself. Returns (rm_scores, scores),
    (B,) each: what the RM (or oracle) said, and what PPO optimises."""
    device = batch["response_mask"].device
    if cfg.oracle_scale > 0:
        gold = judge.gold([prompt_texts[i] for i in batch["prompt_ids"]], texts, batch["ended"].tolist())
        rm_scores = cfg.oracle_scale * (torch.tensor(gold, dtype=torch.float32, device=device) - 1)
    else:
        rm_scores = torch.as_tensor(reward_fn(batch["prompts"], batch["response_lists"])).float().to(device)
    scores = rm_scores.clone()
    if cfg.no_eos_penalty is not None and cfg.oracle_scale == 0:
        scores[~batch["ended"]] = cfg.no_eos_penalty
    return rm_scores, scores


@torch.no_grad()
def rollout_logprobs(policy, ref_policy, value_model, batch, cfg, rt):
    """3. Logprobs of the sampled tokens under the policy and the frozen SFT reference, the policy's entropy,
    and the values: one forward each over prompt + response, with exactly the masks and positions that
    training uses. Returns (logprobs, entropy, ref_logprobs, values), each (B, T)."""
    P, chunk = batch["prompt_len"], cfg.minibatch_size // rt.world_size
    with rt.autocast():
        logprobs, entropy = in_chunks(lambda s, a: response_logprobs(policy, s, a, P, cfg.temperature, True),
                                      batch, chunk)
        ref_logprobs = in_chunks(lambda s, a: response_logprobs(ref_policy, s, a, P, cfg.temperature), batch, chunk)
        values = in_chunks(lambda s, a: response_values(value_model, s, a, P), batch, chunk)
    return logprobs, entropy, ref_logprobs, values * batch["response_mask"]


def compute_advantages(scores, logprobs, ref_logprobs, values, mask, kl_coef, gamma=1.0, lam=0.95):
    """4.-6. The KL-shaped per-token rewards of eq. 2 (against the frozen reference), GAE over the response
    tokens, and the advantages whitened over every real token of the global batch. (B,) scores and (B, T)
    tensors in; (advantages, returns) out, (B, T) each."""
    rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    return whiten(advantages, mask), returns


def ppo_update(b, nets, optimizers, scaler, cfg, rt, it, ptx_stream=None, ptx_len=0):
    """
    7. PPO epochs over reshuffled minibatches of the rollout b: the clipped surrogate (with 8., the ptx
    term) and the clipped value loss, each network its own optimizer step. Token means are over the global
    minibatch, so N ranks step exactly as one process would on the whole batch. nets: (policy, its DDP
    wrapper, value model, its DDP wrapper). Returns each statistic's values over the minibatches.
    """
    policy, train_policy, value_model, train_value = nets
    B, mbs, W, P = b["seqs"].size(0), cfg.minibatch_size // rt.world_size, rt.world_size, b["prompt_len"]
    where = f"at iteration {it}"
    tensors = ("seqs", "attention_mask", "response_mask", "logprobs", "values", "advantages", "returns")
    stats = {k: [] for k in ("pg_loss", "vf_loss", "ptx_loss", "ptx_grad_ratio", "approx_kl", "clipfrac")}
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=torch.Generator().manual_seed(seed_of(cfg.seed, it, epoch, rt.rank)))
        for mb_index, first in enumerate(range(0, B, mbs)):
            mb = {k: b[k][order[first:first + mbs].to(b[k].device)] for k in tensors} | {"prompt_len": P}
            n_tokens = rt.sum(mb["response_mask"].sum().item()) / W
            # 8. ptx: gamma_ptx * the LM loss on this rank's share of fresh pretraining windows
            ptx = None
            if ptx_stream is not None:
                x, y = random_windows(ptx_stream, cfg.ptx_batch_size, ptx_len, [cfg.seed, it, epoch, mb_index])
                ptx = (x[rt.rank::W].to(rt.device), y[rt.rank::W].to(rt.device))
            pg_loss, lm_loss, new_logprobs, ptx_ratio = policy_backward(train_policy, mb, cfg, n_tokens, ptx,
                                                                        rt.autocast, scaler, where)
            optimizer_step(policy, optimizers["policy"], scaler, cfg.grad_clip, where)
            with rt.autocast():
                new_values = response_values(train_value, mb["seqs"], mb["attention_mask"], P)
            vf_loss = value_loss(new_values, mb["values"], mb["returns"], mb["response_mask"], cfg.vf_clip_eps,
                                 n_tokens)
            check_finite(vf_loss, "the value loss", where)
            scaler.scale(vf_loss).backward()
            optimizer_step(value_model, optimizers["value"], scaler, cfg.grad_clip, where)
            for k, v in (("pg_loss", pg_loss), ("vf_loss", vf_loss.detach()), ("ptx_loss", lm_loss),
                         ("ptx_grad_ratio", ptx_ratio),
                         *policy_stats(new_logprobs, mb["logprobs"], mb["response_mask"], cfg.clip_eps).items()):
                if v is not None:
                    stats[k].append(float(v))
    return stats


def save_run(cfg, rt, iteration, policy, value_model, tok, optimizers, kl_coef):
    """resume.pt (every rank's state) and, on the master, ppo.pt: the policy as a language model."""
    save_resume(str(Path(cfg.out_dir) / "resume.pt"), rt, model=policy, run_config=cfg, tokenizer=tok, of="ppo",
                step=iteration, optimizers=optimizers, value_model=value_model.state_dict(), kl_coef=kl_coef)
    if rt.master:
        save_checkpoint(str(Path(cfg.out_dir) / "ppo.pt"), stage="ppo", model=policy, run_config=cfg,
                        tokenizer=tok, step=iteration, kl_coef=kl_coef)


def check_config(cfg, world_size=1):
    """Each field in its range (a config made in code skips parse_config) and the settings that contradict
    each other or the run's world_size processes, refused before anything loads."""
    check_ranges(cfg)
    if cfg.batch_size % cfg.minibatch_size:
        raise ConfigError(f"--batch_size={cfg.batch_size} must be a multiple of --minibatch_size={cfg.minibatch_size}")
    if any(n % world_size for n in (cfg.batch_size, cfg.minibatch_size, cfg.ptx_batch_size)):
        raise ConfigError(f"batch_size, minibatch_size and ptx_batch_size must divide among {world_size} ranks")
    if cfg.adaptive_kl and cfg.kl_coef == 0:
        raise ConfigError("--adaptive_kl scales beta up and down by factors, which leave 0 at 0: set --kl_coef > 0")


def load_rollout_data(cfg, tok, block_size, judge, master=True):
    """The training prompts (those that leave room to answer), their texts where the judge needs them, and
    the pretraining stream of the ptx term (None for plain PPO)."""
    if cfg.oracle_scale > 0 and not judge:
        raise ConfigError(f"--oracle_scale={cfg.oracle_scale} scores with the data's gold score, but {cfg.data_dir} "
                          f"has no judge (judge.json): use the reward model (--oracle_scale=0)")
    ptx_dir = cfg.ptx_data_dir or cfg.data_dir
    if cfg.ptx_coef > 0 and not (Path(ptx_dir) / "pretrain_train.jsonl").exists():
        raise ConfigError(f"--ptx_coef={cfg.ptx_coef} mixes in pretraining text, but {ptx_dir}/pretrain_train.jsonl "
                          f"does not exist: pass a folder that has it with --ptx_data_dir=DIR (python "
                          f"data/text/prepare.py --src=FILES writes one), or run plain PPO with --ptx_coef=0")
    with vocabulary_of(cfg.init_from, cfg.data_dir):
        split = load_split(cfg.data_dir, "prompts", "train", tok)
    with vocabulary_of(cfg.init_from, ptx_dir):
        ptx_stream = load_split(ptx_dir, "pretrain", "train", tok).stream if cfg.ptx_coef > 0 else None
    if cfg.max_new_tokens >= block_size:
        raise ConfigError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the policy's "
                          f"block_size of {block_size}")
    keep = fitting(split.prompts.lengths, block_size - cfg.max_new_tokens, split.name, master)
    prompt_texts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", "train")] if judge else None
    return split, keep, prompt_texts, ptx_stream


def main(argv=None, reward_fn=None):
    """
    Run PPO. argv: flags or a PPOConfig. reward_fn(prompts, responses) -> (B,) scores, both lists of token
    lists (the response with its EOS when it ended), replaces the reward model (tests use a known reward).
    Returns (the per-iteration metrics, the final evaluation).
    """
    cfg = argv if isinstance(argv, PPOConfig) else parse_config(PPOConfig, argv)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    resume = None
    if cfg.init_from == "resume":  # the run goes on with the models and the reward it started from
        resume = load_checkpoint(str(Path(cfg.out_dir) / "resume.pt"), ("resume",))
        cfg = dataclasses.replace(cfg, init_from=resume["run_config"]["init_from"],
                                  reward_model=resume["run_config"]["reward_model"],
                                  oracle_scale=resume["run_config"].get("oracle_scale", 0.0))
    check_config(cfg, rt.world_size)
    policy, ref_policy, value_model, reward_model, tok = load_models(cfg, rt, resume)
    reward_fn = reward_fn or reward_model_fn(reward_model, rt.autocast)
    judge = load_judge(cfg.data_dir)
    split, keep, prompt_texts, ptx_stream = load_rollout_data(cfg, tok, policy.config.block_size, judge, rt.master)
    ptx_len = min(cfg.ptx_seq_len or policy.config.block_size, policy.config.block_size)
    if ptx_stream is not None and len(ptx_stream) < ptx_len + 2:  # a window and its next-token target
        raise ConfigError(f"the ptx text has {len(ptx_stream)} tokens, too few for windows of {ptx_len} + 1: "
                          f"lower --ptx_seq_len")
    # Two networks, two optimizers: with Adam a value-loss coefficient would only act through a shared clip.
    optimizers = {"policy": configure_optimizer(policy, cfg.lr, cfg.weight_decay, (0.9, 0.95), rt.device_type),
                  "value": configure_optimizer(value_model, cfg.value_lr, cfg.weight_decay, (0.9, 0.95),
                                               rt.device_type)}
    kl_ctl = KLController(cfg.kl_coef, cfg.kl_target if cfg.adaptive_kl else None, cfg.kl_horizon)
    start = 0
    if resume:
        start, kl_ctl.value = load_resume(resume, "ppo", rt, optimizers)["step"], resume["kl_coef"]
        if start >= cfg.iterations and rt.master:
            print(f"resume.pt is at iteration {start}, the end of this run ({cfg.iterations}): nothing to train")
    nets, scaler = (policy, rt.wrap(policy), value_model, rt.wrap(value_model)), rt.grad_scaler()
    log = MetricsLog(cfg.out_dir, rt.master, start if resume else None)

    history = []
    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, disable=not rt.master, desc="ppo")
    with Interrupt(rt) as interrupt:
        for it in bar:
            t0 = time.time()
            for name, lr in (("policy", cfg.lr), ("value", cfg.value_lr)):
                set_lr(optimizers[name], lr * min(1.0, (it + 1) / max(cfg.warmup_iters, 1)))
            # 1. rollout: one pure sample per prompt
            batch = rollout(policy, split, keep, cfg, rt, it, tok.eos_id)
            mask = batch["response_mask"]
            texts = [tok.decode([t for t in r if t != tok.eos_id]).strip() for r in batch["response_lists"]]
            # 2. score: the RM at each response's EOS, no_eos_penalty for a response that never stopped
            rm_scores, scores = score_rollouts(batch, texts, cfg, reward_fn, judge, prompt_texts)
            # 3. logprobs under the policy and the SFT reference, and the values, as training computes them
            logprobs, entropy, ref_logprobs, values = rollout_logprobs(policy, ref_policy, value_model, batch, cfg, rt)
            # 4.-6. KL-shaped rewards, GAE, whitened advantages; the summed log-ratio of a response estimates
            #    KL(pi_RL || pi_SFT)
            advantages, returns = compute_advantages(scores, logprobs, ref_logprobs, values, mask, kl_ctl.value,
                                                     cfg.gamma, cfg.lam)
            kl = (logprobs - ref_logprobs) * mask
            # 7.-8. PPO epochs x minibatches: clipped surrogate + ptx, clipped value loss
            b = {k: batch[k] for k in ("seqs", "attention_mask", "response_mask", "prompt_len")}
            stats = ppo_update(b | {"logprobs": logprobs, "values": values, "advantages": advantages,
                                    "returns": returns}, nets, optimizers, scaler, cfg, rt, it, ptx_stream, ptx_len)

            # 9. log what PPO users watch: score and KL (>= 0 on average), response length and EOS rate
            #    (reward hacking shows there first), and the truth where the data has a judge
            metrics = {"step": it + 1, "episodes": (it + 1) * cfg.batch_size, "score": scores.mean().item(),
                       "rm_score": rm_scores.mean().item(), "kl": kl.sum(1).mean().item(),
                       "non_score_reward": (-kl_ctl.value * kl.sum(1)).mean().item(),
                       "entropy": masked_mean(entropy, mask).item(), "response_length": mask.sum(1).mean().item(),
                       "ended": batch["ended"].float().mean().item(),
                       "explained_variance": explained_variance(values, returns, mask),
                       **{k: float(np.mean(v)) for k, v in stats.items() if v}}
            if judge:
                metrics |= judge.score([prompt_texts[i] for i in batch["prompt_ids"]], texts, batch["ended"].tolist())
            metrics = {k: v if k in ("step", "episodes") else rt.mean(v) for k, v in metrics.items()}
            metrics |= {"kl_coef": kl_ctl.value, "seconds": time.time() - t0}
            kl_ctl.update(metrics["kl"], cfg.batch_size)
            history.append(metrics)
            log(metrics)
            bar.set_postfix(score=f"{metrics['score']:.3f}", kl=f"{metrics['kl']:.2f}",
                            len=f"{metrics['response_length']:.1f}")
            if rt.master and cfg.sample_interval and (it + 1) % cfg.sample_interval == 0:
                for i in range(min(2, len(texts))):
                    tqdm.write(f"[{it + 1}] {tok.decode(batch['prompts'][i])!r} -> {texts[i]!r} "
                               f"(score {scores[i]:.2f})")
            if ((cfg.ckpt_interval and (it + 1) % cfg.ckpt_interval == 0) or it + 1 == cfg.iterations
                    or interrupt.requested()):
                save_run(cfg, rt, it + 1, policy, value_model, tok, optimizers, kl_ctl.value)
                if interrupt.requested() and it + 1 < cfg.iterations:
                    print(f"interrupted: saved {cfg.out_dir}/resume.pt; continue with --init_from=resume")
                    raise SystemExit(130)
    bar.close()
    ev = {}
    if rt.master and cfg.eval_prompts:
        ev = evaluate(policy, ref_policy, tok, cfg, reward_fn, judge, rt.autocast)
        print("evaluation on validation prompts: " + " | ".join(f"{k} {v:.3f}" for k, v in ev.items()))
        log({"step": cfg.iterations, **ev})
    rt.close()
    return history, ev


if __name__ == "__main__":
    run(main)
