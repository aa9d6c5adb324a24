"""
Step 3 of InstructGPT: optimise the SFT policy against the reward model with PPO, a per-token KL penalty
against the SFT model, and (PPO-ptx) the pretraining log-likelihood mixed into every update.

    maximise  E_(x,y)~pi_RL [ r(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x)) ]
              + gamma_ptx * E_x~D_pretrain [ log pi_RL(x) ]                       (InstructGPT eq. 2)

A bandit environment: a prompt comes, the policy samples a response, the reward model scores it at its
EOS token. The KL term is paid at every response token, the score at the last one; GAE turns these
rewards into advantages for the clipped PPO surrogate. The policy and the frozen reference start from
the SFT checkpoint; the value model starts from the reward model (as the paper does) and keeps training.

Tiny run on a CPU (after `python sft.py` and `python reward.py` on the synthetic default):

    python ppo.py                       # PPO-ptx -> out/ppo/ppo.pt, out/ppo/metrics.jsonl
    python ppo.py --ptx_coef=0          # plain PPO (no pretraining data needed)
    python ppo.py --eval_only           # win rate of out/ppo/ppo.pt against the SFT model
    python ppo.py --resume              # continue from out/ppo/resume.pt

On a GPU (bf16, fused attention), and on 8 GPUs (each rank its own rollouts):

    python ppo.py --sft=out/sft/sft.pt --reward_model=out/reward/reward.pt --data_dir=data/hh_rlhf
    torchrun --nproc_per_node=8 ppo.py --sft=... --reward_model=... --data_dir=data/hh_rlhf

Every option: `python ppo.py --help`. Read ../shared/RLHF_NOTES.md for the details PPO on a language
model depends on; the comments below cite them as "notes N".
"""

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from data.formats import FORMATS, read_jsonl
from data.loader import load_split, pad_left
from model import (append_jsonl, configure_optimizer, entropy_from_logits, load_checkpoint, load_model,
                   logprobs_from_logits, parse_config, save_checkpoint, setup_runtime, unwrap)

REPO = Path(__file__).resolve().parent


@dataclass
class PPOConfig:
    """PPO with the per-token KL penalty and the pretraining mix (InstructGPT step 3)."""
    # models and data
    sft: str = "out/sft/sft.pt"  # the policy and the frozen reference start from this SFT checkpoint
    reward_model: str = "out/reward/reward.pt"  # the frozen reward model; the value model starts as a copy
    data_dir: str = "data/synthetic"  # prompts_train.jsonl (rollouts), pretrain_train.jsonl (ptx)
    out_dir: str = "out/ppo"  # ppo.pt (the policy), resume.pt, metrics.jsonl
    resume: bool = False  # continue from out_dir/resume.pt (policy, value model, optimizers, RNG, beta)
    eval_only: bool = False  # evaluate out_dir/ppo.pt against the SFT model, then exit
    # rollouts
    iterations: int = 100  # PPO iterations; each samples batch_size episodes per rank, then updates
    batch_size: int = 64  # episodes (prompt + sampled response) per iteration and rank (paper: 512)
    max_new_tokens: int = 48  # response length limit
    temperature: float = 1.0  # rollout sampling temperature; pure sampling, never top-k (notes 5, 6)
    no_eos_penalty: float | None = -1.0  # score of a response cut off without EOS (notes 8); None: RM score
    # rewards
    # beta. The paper's 0.02 is for 1.3B-175B policies and a 6B RM. The tiny default RM is trained on a few
    # thousand comparisons and its errors are easy to find, so a larger beta keeps the policy nearer the SFT
    # distribution, where the RM was trained, for longer (the gold score peaks later; Gao et al. 2022).
    kl_coef: float = 0.05  # beta, the per-token KL penalty against the SFT model (initial value if adaptive)
    adaptive_kl: bool = False  # Ziegler et al. 2019's controller steers the KL to kl_target (notes 12)
    kl_target: float = 6.0  # target KL per response (nats), adaptive_kl only
    kl_horizon: int = 10000  # episodes over which the controller moves beta, adaptive_kl only
    # PPO
    gamma: float = 1.0  # discount; 1 in the paper (no discount inside one response)
    lam: float = 0.95  # GAE lambda
    ppo_epochs: int = 2  # passes over each rollout batch (paper: 1 with batch 512; more reuse helps on CPU)
    minibatch_size: int = 16  # episodes per optimizer step (paper: 64)
    clip_eps: float = 0.2  # PPO ratio clip
    vf_clip_eps: float = 0.2  # value clip around the rollout's values (same units as the RM score)
    lr: float = 1e-5  # policy learning rate, constant after warmup (paper: constant, 10-iteration warmup)
    value_lr: float = 5e-5  # value model learning rate (its own optimizer, see main)
    warmup_iters: int = 10  # linear learning-rate warmup, in iterations
    weight_decay: float = 0.0  # AdamW decay; none, so nothing pulls the policy away from SFT but the KL
    grad_clip: float = 1.0  # gradient norm clip, policy and value model each
    # PPO-ptx (InstructGPT eq. 2's gamma term); 0 = plain PPO
    # The paper: gamma_ptx = 27.8 with 8 pretraining examples per episode, for a per-token LM loss that is
    # tiny next to a 175B model's PPO gradient. The tiny model's whitened-advantage surrogate and its LM loss
    # have gradients of similar size, so a coefficient near 1 holds its pretraining loss while PPO still
    # moves the reward; 27.8 would drown the policy gradient.
    ptx_coef: float = 1.0  # gamma_ptx: weight of the pretraining LM loss in each policy update
    ptx_batch_size: int = 8  # pretraining windows per minibatch (paper: 8 per episode; scaled down for CPU)
    ptx_seq_len: int = 128  # tokens per pretraining window; 0: the model's block_size
    # evaluation and logging
    eval_prompts: int = 200  # held-out prompts for the final win rate (prompts_test, else _val); 0: no eval
    eval_temperature: float = 1.0  # evaluation sampling temperature (0: greedy); 1 is what PPO optimised
    sample_interval: int = 10  # print a few decoded rollouts every this many iterations
    ckpt_interval: int = 20  # write ppo.pt and resume.pt every this many iterations
    # engine
    device: str = "auto"  # cuda > mps > cpu
    dtype: str = "auto"  # bfloat16 on CUDA where supported, float16 with a grad scaler, float32 elsewhere
    seed: int = 1337  # each rank adds its rank


# -----------------------------------------------------------------------------
# The PPO math: importable, each function tested against hand-made or brute-force values


def masked_mean(x, mask):
    """Mean of x over positions where mask is 1 (a token mean, not a mean of per-sequence means)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, eps=1e-8):
    """
    (x - mean) / std over the real tokens (mask 1) of the batch, 0 elsewhere (notes 10). Under DDP the
    mean and variance are those of every rank's tokens together, so all ranks scale their advantages alike.
    x, mask: (B, T). The variance is the population variance.
    """
    mask = mask.to(x.dtype)
    distributed = dist.is_available() and dist.is_initialized()
    moments = torch.stack([(x * mask).sum(), mask.sum()])
    if distributed:
        dist.all_reduce(moments)
    mean = moments[0] / moments[1].clamp(min=1)
    sq = ((x - mean) ** 2 * mask).sum()
    if distributed:
        dist.all_reduce(sq)
    var = sq / moments[1].clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    """
    Per-token rewards (B, T) of InstructGPT eq. 2 (notes 4): -kl_coef * (logp - ref_logp) at every real
    response token, plus the score (B,) at each row's last real token. 0 where mask is 0.
    logprobs / ref_logprobs: log-probabilities of the sampled tokens under the policy and the SFT model.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)  # index of each row's last real token (masks are prefixes)
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """
    Generalised advantage estimation over response tokens (notes 9). rewards, values, mask: (B, T), mask 1
    on the real response tokens (a prefix of each row). The value after the last real token is 0 (the
    episode ends there). Returns (advantages, returns), (B, T), 0 where mask is 0; returns = advantages +
    values on real tokens: the value model's regression target.
    One reverse loop over T, vectorised over the batch.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        # whether t + 1 is still inside the episode: else the next value and the carried advantage are 0
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        next_value = values[:, t + 1] * alive if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * alive * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
    """
    PPO's clipped surrogate (notes 11), as a loss to minimise: the masked token mean of
    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)), ratio = exp(logp - old_logp). All inputs (B, T).
    Returns the scalar loss; policy_stats gives approx_kl and clipfrac of the same inputs.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return masked_mean(torch.max(pg_loss1, pg_loss2), mask)


@torch.no_grad()
def policy_stats(logprobs, old_logprobs, mask, clip_eps=0.2):
    """approx_kl (the k3 estimator (ratio - 1) - log ratio of KL(old || new)) and clipfrac (fraction of real
    tokens whose ratio left [1 - eps, 1 + eps]), as floats."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    approx_kl = masked_mean((ratio - 1) - logratio, mask)
    clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)
    return {"approx_kl": approx_kl.item(), "clipfrac": clipfrac.item()}


def value_loss(values, old_values, returns, mask, clip_eps=0.2):
    """
    Clipped value loss (notes 11):
    0.5 * masked mean of max((V - R)^2, (clip(V, V_old - eps, V_old + eps) - R)^2).
    values: the value model now; old_values: at rollout time; returns: GAE's targets. All (B, T).
    """
    vf_loss1 = (values - returns) ** 2
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    vf_loss2 = (values_clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)


class FixedKLController:
    """A constant beta."""

    def __init__(self, kl_coef):
        self.value = kl_coef

    def update(self, current_kl, n_steps):
        pass

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """
    Ziegler et al. 2019 (notes 12): beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon.
    current_kl: the mean KL per response of the last batch; n_steps: episodes in it (all ranks).
    """

    def __init__(self, kl_coef, target, horizon):
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl, n_steps):
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


# -----------------------------------------------------------------------------
# Rollouts: sampling, and the one forward pass that both rollouts and training use


@torch.no_grad()
def sample_responses(model, prompts, max_new_tokens, temperature, eos_id, autocast=None):
    """
    Sample one response per prompt (lists of token ids) with the KV cache, stopping at EOS.
    Returns a dict of tensors on the model's device:
      seqs (B, P + T)            left-padded prompts, then the sampled tokens
      attention_mask (B, P + T)  1 on real prompt tokens and on response tokens up to and including the
                                 first EOS; 0 on prompt padding and on the EOS filler after it
      prompt_len                 P, the padded prompt width: response token t sits at column P + t
      responses (B, T)           sampled tokens; response_mask (B, T) float, 1 up to and including EOS
      ended (B,) bool            whether the response emitted EOS before max_new_tokens
    and response_lists: the real response tokens of each row (with the EOS when it ended).
    """
    device = next(model.parameters()).device
    idx, prompt_mask = pad_left(prompts)
    idx, prompt_mask = idx.to(device), prompt_mask.to(device)
    P = idx.size(1)
    max_new = min(max_new_tokens, model.config.block_size - P)
    if max_new < 1:
        raise ValueError(f"a prompt of {P} tokens leaves no room to answer in block_size "
                         f"{model.config.block_size}")
    with autocast() if autocast else contextlib.nullcontext():
        out = model.generate(idx, max_new, temperature=temperature, top_k=None, attention_mask=prompt_mask,
                             eos_id=eos_id)
    responses = out[:, P:]
    is_eos = (responses == eos_id).long()
    response_mask = (is_eos.cumsum(1) - is_eos) == 0  # no EOS strictly before t: a real token (EOS included)
    lengths = response_mask.sum(1).tolist()
    return {
        "seqs": out,
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
        "prompt_len": P,
        "responses": responses,
        "response_mask": response_mask.float(),
        "ended": is_eos.bool().any(1),
        "response_lists": [row[:n] for row, n in zip(responses.tolist(), lengths)],
    }


def response_logprobs(model, seqs, attention_mask, prompt_len, temperature=1.0, with_entropy=False):
    """
    log p of each response token under model, (B, T) float32, from one forward over prompt + response with
    the attention mask (left pads masked, positions counted over real tokens; notes 3). The rollout and
    every PPO minibatch call this same function on the same (B, P + T) layout, so at the first minibatch
    the ratio is exactly 1. Logits are divided by the sampling temperature (notes 6).
    """
    logits, _ = model(seqs, attention_mask=attention_mask)
    logits = logits[:, prompt_len - 1:-1].float() / temperature  # the logits that predict response tokens
    logprobs = logprobs_from_logits(logits, seqs[:, prompt_len:])
    return (logprobs, entropy_from_logits(logits)) if with_entropy else logprobs


def response_values(value_model, seqs, attention_mask, prompt_len):
    """
    V(prompt + response[:t]) for each response token t, (B, T): the scalar head read at the token before
    t, i.e. at the same columns as the logits that predict t.
    """
    scores, _ = value_model(seqs, attention_mask=attention_mask)
    return scores[:, prompt_len - 1:-1].float()


@torch.no_grad()
def in_chunks(fn, batch, size, *keys):
    """fn over batch[keys] in chunks of size rows, concatenated: bounds the memory of a rollout forward."""
    B = batch[keys[0]].size(0)
    outs = [fn(*(batch[k][i:i + size] for k in keys)) for i in range(0, B, size)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


def reward_model_fn(reward_model, device, autocast=None):
    """reward_fn(prompts, responses) -> (B,) scores: the frozen RM read at each sequence's EOS (notes 1)."""
    from reward import score_sequences  # imported here so the PPO math needs no reward.py

    def reward_fn(prompts, responses):
        seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
        return score_sequences(reward_model, seqs, device, autocast)
    return reward_fn


def score_responses(reward_fn, prompts, responses, ended, no_eos_penalty):
    """(scores, rm_scores), (B,) float32: the reward function's scores, with no_eos_penalty in place of the
    score for responses that did not end (None: keep it)."""
    rm_scores = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float32).detach().cpu().reshape(-1)
    scores = rm_scores.clone()
    if no_eos_penalty is not None:
        scores[~ended.cpu()] = no_eos_penalty
    return scores.to(ended.device), rm_scores


def check_finite(loss, what, where):
    if not torch.isfinite(loss).all():
        raise FloatingPointError(f"{what} is {loss.detach().float().cpu().tolist()} {where}: stopped before "
                                 f"the optimizer step; the last good checkpoint is untouched")


def policy_backward(policy, mb, clip_eps, temperature, ptx_coef=0.0, ptx_batch=None, autocast=None,
                    scaler=None, where=""):
    """
    One minibatch's policy gradient, accumulated into .grad (InstructGPT eq. 2): the clipped surrogate on
    the minibatch's episodes, then, in a second forward/backward pass (as the paper does), ptx_coef times
    the LM loss on ptx_batch = (x, y) pretraining windows. Under DDP the first pass skips the gradient
    all-reduce (no_sync) and the second reduces the sum. mb holds the mb_ tensors of main's minibatch.
    Returns (pg_loss, lm_loss or None, new_logprobs).
    """
    ctx = autocast if autocast else contextlib.nullcontext
    scale = scaler.scale if scaler is not None else (lambda t: t)
    use_ptx = ptx_coef > 0 and ptx_batch is not None
    with policy.no_sync() if use_ptx and hasattr(policy, "no_sync") else contextlib.nullcontext():
        with ctx():
            new_logprobs = response_logprobs(policy, mb["seqs"], mb["attention_mask"], mb["prompt_len"],
                                             temperature)
        pg_loss = policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["response_mask"], clip_eps)
        check_finite(pg_loss, "the policy loss", where)
        scale(pg_loss).backward()
    lm_loss = None
    if use_ptx:
        with ctx():
            _, lm_loss = policy(ptx_batch[0], targets=ptx_batch[1])
        check_finite(lm_loss, "the ptx LM loss", where)
        scale(ptx_coef * lm_loss).backward()
    return pg_loss.detach(), None if lm_loss is None else lm_loss.detach(), new_logprobs.detach()


def ptx_windows(stream, n, seq_len, device):
    """n random windows of the pretraining token stream: inputs (n, seq_len) and next-token targets."""
    starts = torch.randint(len(stream) - seq_len - 1, (n,)).tolist()
    chunk = np.stack([np.asarray(stream[s:s + seq_len + 1], dtype=np.int64) for s in starts])
    chunk = torch.from_numpy(chunk).to(device)
    return chunk[:, :-1], chunk[:, 1:]


def explained_variance(values, returns, mask):
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect value model, 0 a constant."""
    m = mask.bool()
    y, v = returns[m], values[m]
    var_y = y.var(unbiased=False)
    return float("nan") if var_y == 0 else (1 - (y - v).var(unbiased=False) / var_y).item()


# -----------------------------------------------------------------------------
# Evaluation


def decode_response(tok, response):
    """Response text without its EOS, stripped, as data.loader.generate_responses gives it to the labelers."""
    return tok.decode([t for t in response if t != tok.eos_id]).strip()


def mean_gold(prompts, texts, ended):
    """The synthetic world's noiseless gold score, averaged."""
    from data.synthetic import gold_score
    return float(np.mean([gold_score(p, r, e) for p, r, e in zip(prompts, texts, ended)]))


def is_synthetic(data_dir):
    return Path(data_dir).resolve() == (REPO / "data" / "synthetic").resolve()


def eval_prompt_texts(data_dir, n):
    """The first n held-out prompts: prompts_test.jsonl (synthetic) if present, else prompts_val.jsonl."""
    for split in ("test", "val"):
        path = Path(data_dir) / f"prompts_{split}.jsonl"
        if path.exists():
            return [r["prompt"] for r in read_jsonl(path, FORMATS["prompts"])][:n], path
    return [], None


@torch.no_grad()
def evaluate(policy, sft_model, tok, prompt_texts, cfg, reward_fn=None, autocast=None, synthetic=False):
    """
    Policy against the SFT model on held-out prompts, both sampled at cfg.eval_temperature (0: greedy).
    On the synthetic world: the held-out labelers' win rate of the policy (ties count half) with its 95% CI,
    their mean scores, and the gold score. With a reward_fn: the mean reward of each. Returns a dict.
    """
    from data.loader import encode_prompt
    prompts = [encode_prompt(tok, p) for p in prompt_texts]
    room = policy.config.block_size - cfg.max_new_tokens
    keep = [i for i, p in enumerate(prompts) if len(p) <= room]
    prompts, prompt_texts = [prompts[i] for i in keep], [prompt_texts[i] for i in keep]
    out = {"eval_n": len(prompts), "eval_temperature": cfg.eval_temperature}
    answers = {}
    for name, model in (("policy", policy), ("sft", sft_model)):
        was_training = model.training
        model.eval()
        responses, ended = [], []
        for i in range(0, len(prompts), cfg.batch_size):
            b = sample_responses(model, prompts[i:i + cfg.batch_size], cfg.max_new_tokens,
                                 cfg.eval_temperature, tok.eos_id, autocast)
            responses += b["response_lists"]
            ended += b["ended"].tolist()
        model.train(was_training)
        texts = [decode_response(tok, r) for r in responses]
        answers[name] = (texts, ended)
        if reward_fn is not None:
            scores = torch.as_tensor(reward_fn(prompts, responses), dtype=torch.float32)
            out[f"eval_{name}_rm_score"] = scores.mean().item()
        out[f"eval_{name}_ended"] = sum(ended) / max(len(ended), 1)
    if synthetic and prompts:
        from data.synthetic import HELDOUT_LABELERS, judge_mean, win_rate
        (pt, pe), (st, se) = answers["policy"], answers["sft"]
        rate, ci = win_rate(prompt_texts, pt, st, HELDOUT_LABELERS, pe, se)
        out.update(eval_win_rate=rate, eval_win_rate_ci95=ci,
                   eval_policy_judge=judge_mean(prompt_texts, pt, HELDOUT_LABELERS, pe),
                   eval_sft_judge=judge_mean(prompt_texts, st, HELDOUT_LABELERS, se),
                   eval_policy_gold=mean_gold(prompt_texts, pt, pe),
                   eval_sft_gold=mean_gold(prompt_texts, st, se))
    out["samples"] = [{"prompt": p, "policy": a, "sft": b}
                      for p, a, b in zip(prompt_texts[:3], answers["policy"][0], answers["sft"][0])]
    return out


def print_eval(ev):
    if "eval_win_rate" in ev:
        print(f"win rate of the policy against SFT (held-out labelers, {ev['eval_n']} prompts, "
              f"temperature {ev['eval_temperature']}): "
              f"{ev['eval_win_rate']:.3f} +- {ev['eval_win_rate_ci95']:.3f}"
              f" | judge {ev['eval_policy_judge']:.3f} vs {ev['eval_sft_judge']:.3f}"
              f" | gold {ev['eval_policy_gold']:.3f} vs {ev['eval_sft_gold']:.3f}")
    if "eval_policy_rm_score" in ev:
        print(f"reward of the policy {ev['eval_policy_rm_score']:.3f} vs SFT {ev['eval_sft_rm_score']:.3f} "
              f"({ev['eval_n']} held-out prompts)")
    for s in ev.get("samples", []):
        print(f"  prompt: {s['prompt']!r}\n    policy: {s['policy']!r}\n    sft:    {s['sft']!r}")


# -----------------------------------------------------------------------------
# Training


def main(cfg, reward_fn=None):
    """
    Run PPO as configured. reward_fn(prompts, responses) -> (B,) scores, both lists of token lists (the
    response with its EOS when it ended), replaces the reward model (tests use a known reward).
    Returns (the list of per-iteration metrics, the final evaluation dict).
    """
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    out_dir = Path(cfg.out_dir)
    policy_path, resume_path, metrics_path = (out_dir / n for n in ("ppo.pt", "resume.pt", "metrics.jsonl"))
    if rt.master:
        out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.temperature <= 0:
        raise ValueError("--temperature must be > 0: PPO needs the sampling distribution's logprobs")
    synthetic = is_synthetic(cfg.data_dir)

    # Models. Dropout is off in all four (notes 7), so train and eval mode compute the same function.
    policy, tok, sft_ckpt = load_model(cfg.sft, rt.device, stages=("sft",), dropout=0.0)
    ref_policy, _, _ = load_model(sft_ckpt, rt.device, dropout=0.0)
    ref_policy.eval().requires_grad_(False)
    rm_ckpt = load_checkpoint(cfg.reward_model, stages=("reward",))
    if rm_ckpt["tokenizer"] != sft_ckpt["tokenizer"]:
        raise ValueError(f"{cfg.reward_model} and {cfg.sft} use different tokenizers: train the reward model "
                         f"from this SFT checkpoint")
    value_model, _, _ = load_model(rm_ckpt, rt.device, dropout=0.0)  # value init from the RM (paper)
    if reward_fn is None:
        reward_model, _, _ = load_model(rm_ckpt, rt.device, dropout=0.0)  # its head holds the RM's bias
        reward_model.eval().requires_grad_(False)
        reward_fn = reward_model_fn(reward_model, rt.device, rt.autocast)
    policy.eval()
    value_model.eval()

    eval_texts, eval_path = eval_prompt_texts(cfg.data_dir, cfg.eval_prompts)
    if cfg.eval_only:
        policy, _, _ = load_model(str(policy_path), rt.device, dropout=0.0)
        ev = evaluate(policy, ref_policy, tok, eval_texts, cfg, reward_fn, rt.autocast, synthetic)
        print_eval(ev)
        return [], ev

    # Prompts for rollouts. Those too long to leave max_new_tokens of room are skipped, and counted.
    split = load_split(cfg.data_dir, "prompts", "train", tok)
    room = policy.config.block_size - cfg.max_new_tokens
    keep = [i for i in range(len(split)) if split.prompts.lengths[i] <= room]
    if not keep:
        raise ValueError(f"no prompt of {split.name} fits block_size {policy.config.block_size} with "
                         f"max_new_tokens {cfg.max_new_tokens}")
    if len(keep) < len(split) and rt.master:
        print(f"{split.name}: skipped {len(split) - len(keep)} prompts longer than {room} tokens")
    prompt_texts = None
    if synthetic:  # the labelers judge the text prompts, in the same order as the tokenised split
        prompt_texts = [r["prompt"] for r in read_jsonl(Path(split.name), FORMATS["prompts"])]
    ptx_stream = None
    if cfg.ptx_coef > 0:
        if not (Path(cfg.data_dir) / "pretrain_train.jsonl").exists():
            raise FileNotFoundError(f"--ptx_coef={cfg.ptx_coef} mixes pretraining text into PPO, but "
                                    f"{cfg.data_dir}/pretrain_train.jsonl does not exist: prepare it, or run "
                                    f"plain PPO with --ptx_coef=0")
        ptx_stream = load_split(cfg.data_dir, "pretrain", "train", tok).stream
    ptx_len = min(cfg.ptx_seq_len or policy.config.block_size, policy.config.block_size)
    if ptx_stream is not None and len(ptx_stream) <= ptx_len + 1:
        raise ValueError(f"{cfg.data_dir}/pretrain_train.jsonl has {len(ptx_stream)} tokens, fewer than one "
                         f"window of {ptx_len + 1}")

    # Two optimizers: the policy and the value model are separate networks with their own learning rates and
    # gradient clips. (With Adam a value-loss coefficient on a separate network would only act through a
    # shared clip, so there is none.)
    policy_opt = configure_optimizer(policy, cfg.lr, cfg.weight_decay, (0.9, 0.95), rt.device_type)
    value_opt = configure_optimizer(value_model, cfg.value_lr, cfg.weight_decay, (0.9, 0.95), rt.device_type)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    scaler = rt.grad_scaler()
    start_iter = 0
    if cfg.resume:
        ck = load_checkpoint(str(resume_path), stages=("ppo",))
        policy.load_state_dict(ck["model"])
        value_model.load_state_dict(ck["value_model"])
        policy_opt.load_state_dict(ck["policy_optimizer"])
        value_opt.load_state_dict(ck["value_optimizer"])
        kl_ctl.load_state_dict(ck["kl_controller"])
        start_iter = ck["iteration"]
        if rt.master:
            torch.set_rng_state(ck["rng"])
            if rt.device_type == "cuda" and "cuda_rng" in ck:
                torch.cuda.set_rng_state(ck["cuda_rng"])
        else:  # resume.pt holds rank 0's RNG; the other ranks take a fresh seed of their own
            torch.manual_seed(cfg.seed + rt.rank + 7919 * start_iter)
        print(f"resumed from {resume_path} at iteration {start_iter}")

    def save_resume(iteration):
        rng = {"rng": torch.get_rng_state()}
        if rt.device_type == "cuda":
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        save_checkpoint(str(resume_path), stage="ppo", model=policy, run_config=cfg, tokenizer=tok,
                        value_model=unwrap(value_model).state_dict(),
                        policy_optimizer=policy_opt.state_dict(),
                        value_optimizer=value_opt.state_dict(), kl_controller=kl_ctl.state_dict(),
                        iteration=iteration, **rng)

    def save_policy(iteration, **extra):
        save_checkpoint(str(policy_path), stage="ppo", model=policy, run_config=cfg, tokenizer=tok,
                        iteration=iteration, kl_coef=kl_ctl.value, **extra)

    # DDP wrappers all-reduce the gradients; rollouts and generation use the plain modules.
    train_policy, train_value = policy, value_model
    if rt.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [rt.local_rank] if rt.device_type == "cuda" else None
        train_policy, train_value = DDP(policy, device_ids=ids), DDP(value_model, device_ids=ids)

    history = []
    mbs = cfg.minibatch_size
    bar = tqdm(range(start_iter, cfg.iterations), initial=start_iter, total=cfg.iterations,
               disable=not rt.master)
    it = start_iter
    try:
        for it in bar:
            t0 = time.time()
            lr_scale = min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
            for opt, base in ((policy_opt, cfg.lr), (value_opt, cfg.value_lr)):
                for group in opt.param_groups:
                    group["lr"] = base * lr_scale

            # 1. rollout: a batch of prompts, one response each, pure sampling at cfg.temperature (notes 5)
            idx = torch.randint(len(keep), (cfg.batch_size,)).tolist()
            prompt_ids = [keep[i] for i in idx]
            prompts = [split.prompts[i].tolist() for i in prompt_ids]
            batch = sample_responses(policy, prompts, cfg.max_new_tokens, cfg.temperature, tok.eos_id,
                                     rt.autocast)
            P, response_mask = batch["prompt_len"], batch["response_mask"]

            # 2. score: the RM reads each prompt + response at its EOS; responses cut off without EOS get the
            #    fixed no_eos_penalty instead (notes 1, 8)
            scores, rm_scores = score_responses(reward_fn, prompts, batch["response_lists"], batch["ended"],
                                                cfg.no_eos_penalty)

            # 3. logprobs of the sampled tokens under the policy and the reference, and the values: one
            #    forward each over prompt + response, with exactly the masks and positions training uses
            #    (notes 3)
            with torch.no_grad(), rt.autocast():
                logprobs, entropy = in_chunks(
                    lambda s, a: response_logprobs(policy, s, a, P, cfg.temperature, with_entropy=True),
                    batch, mbs, "seqs", "attention_mask")
                ref_logprobs = in_chunks(lambda s, a: response_logprobs(ref_policy, s, a, P, cfg.temperature),
                                         batch, mbs, "seqs", "attention_mask")
                values = in_chunks(lambda s, a: response_values(value_model, s, a, P),
                                   batch, mbs, "seqs", "attention_mask")
            values = values * response_mask

            # 4. KL-shaped rewards: -beta * (logp - ref_logp) per token, the score added at the last token
            #    (notes 4). kl is the per-token log-ratio; its sum over a response estimates KL(pi || pi_SFT).
            kl = (logprobs - ref_logprobs) * response_mask
            rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, response_mask, kl_ctl.value)

            # 5. GAE over the response tokens, value 0 after the last one (notes 9)
            advantages, returns = gae(rewards, values, response_mask, cfg.gamma, cfg.lam)

            # 6. whiten the advantages over every real token of the batch, all ranks together (notes 10)
            advantages = whiten(advantages, response_mask)

            # 7. PPO epochs over reshuffled minibatches (notes 13): the clipped surrogate for the policy (with
            #    the ptx term, 8. below) and the clipped value loss, each model its own optimizer step
            b = {"seqs": batch["seqs"], "attention_mask": batch["attention_mask"], "prompt_len": P,
                 "response_mask": response_mask, "logprobs": logprobs, "values": values,
                 "advantages": advantages, "returns": returns}
            stats = {k: [] for k in ("pg_loss", "vf_loss", "ptx_loss", "approx_kl", "clipfrac")}
            B = cfg.batch_size
            for epoch in range(cfg.ppo_epochs):
                b_inds = torch.randperm(B)
                for start in range(0, B, mbs):
                    mb_inds = b_inds[start:start + mbs].to(rt.device)
                    mb = {k: (v if k == "prompt_len" else v[mb_inds]) for k, v in b.items()}
                    where = f"at iteration {it}, epoch {epoch}, minibatch {start // mbs}"
                    # 8. ptx: ptx_coef * the LM loss on pretraining windows, accumulated into the same step
                    ptx_batch = None
                    if ptx_stream is not None:
                        ptx_batch = ptx_windows(ptx_stream, cfg.ptx_batch_size, ptx_len, rt.device)
                    pg_loss, lm_loss, new_logprobs = policy_backward(
                        train_policy, mb, cfg.clip_eps, cfg.temperature, cfg.ptx_coef, ptx_batch, rt.autocast,
                        scaler, where)
                    scaler.unscale_(policy_opt)
                    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                    if not scaler.is_enabled():  # fp16: the scaler skips steps with inf gradients itself
                        check_finite(grad_norm, "the policy gradient norm", where)
                    scaler.step(policy_opt)
                    policy_opt.zero_grad(set_to_none=True)

                    with rt.autocast():
                        new_values = response_values(train_value, mb["seqs"], mb["attention_mask"], P)
                    vf_loss = value_loss(new_values, mb["values"], mb["returns"], mb["response_mask"],
                                         cfg.vf_clip_eps)
                    check_finite(vf_loss, "the value loss", where)
                    scaler.scale(vf_loss).backward()
                    scaler.unscale_(value_opt)
                    grad_norm = torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
                    if not scaler.is_enabled():
                        check_finite(grad_norm, "the value gradient norm", where)
                    scaler.step(value_opt)
                    value_opt.zero_grad(set_to_none=True)
                    scaler.update()

                    s = policy_stats(new_logprobs, mb["logprobs"], mb["response_mask"], cfg.clip_eps)
                    stats["pg_loss"].append(pg_loss.item())
                    stats["vf_loss"].append(vf_loss.item())
                    stats["approx_kl"].append(s["approx_kl"])
                    stats["clipfrac"].append(s["clipfrac"])
                    if lm_loss is not None:
                        stats["ptx_loss"].append(lm_loss.item())

            # 9. log: the figures of notes 13 and 15 (KL must stay >= 0 on average; length; stopping)
            kl_per_seq = kl.sum(1)
            non_score_reward = -kl_ctl.value * kl_per_seq
            m = {
                "iter": it + 1,
                "episodes": (it + 1) * B * rt.world_size,
                "score": scores.mean().item(),  # what PPO optimised: RM score, or the penalty if no EOS
                "rm_score": rm_scores.mean().item(),  # the reward function's raw score of every response
                "kl": kl_per_seq.mean().item(),
                "non_score_reward": non_score_reward.mean().item(),
                "total_reward": (scores + non_score_reward).mean().item(),
                "entropy": masked_mean(entropy, response_mask).item(),
                "explained_variance": explained_variance(values, returns, response_mask),
                "response_length": response_mask.sum(1).mean().item(),
                "ended": batch["ended"].float().mean().item(),
                "kl_coef": kl_ctl.value,
                "lr": cfg.lr * lr_scale,
                **{k: float(np.mean(v)) for k, v in stats.items() if v},
            }
            texts = None
            if synthetic:
                from data.synthetic import HELDOUT_LABELERS, judge_mean
                texts = [decode_response(tok, r) for r in batch["response_lists"]]
                ptexts, ended = [prompt_texts[i] for i in prompt_ids], batch["ended"].tolist()
                m["judge_score"] = judge_mean(ptexts, texts, HELDOUT_LABELERS, ended)
                m["gold_score"] = mean_gold(ptexts, texts, ended)
            m = {k: rt.all_reduce_mean(v) if isinstance(v, float) and k != "kl_coef" else v
                 for k, v in m.items()}
            m["seconds"] = time.time() - t0
            kl_ctl.update(m["kl"], B * rt.world_size)
            history.append(m)
            if rt.master:
                append_jsonl(metrics_path, m)
                bar.set_postfix(score=f"{m['score']:.3f}", kl=f"{m['kl']:.2f}",
                                len=f"{m['response_length']:.1f}", clip=f"{m.get('clipfrac', 0):.2f}")
                if cfg.sample_interval > 0 and (it + 1) % cfg.sample_interval == 0:
                    if texts is None:
                        texts = [decode_response(tok, r) for r in batch["response_lists"]]
                    for i in range(min(2, B)):
                        tqdm.write(f"[{it + 1}] {tok.decode(prompts[i])!r} -> {texts[i]!r} "
                                   f"(score {scores[i].item():.2f}, kl {kl_per_seq[i].item():.2f})")
                if cfg.ckpt_interval > 0 and (it + 1) % cfg.ckpt_interval == 0:
                    save_policy(it + 1)
                    save_resume(it + 1)
            it += 1
    except KeyboardInterrupt:
        if rt.master:
            # The weights may be part-way through iteration it's update; resuming repeats that iteration.
            save_resume(it)
            print(f"\ninterrupted: saved {resume_path} at iteration {it}; continue with --resume")
        raise SystemExit(130)

    ev = {}
    if rt.master:
        save_policy(cfg.iterations)
        save_resume(cfg.iterations)
        if eval_texts:
            ev = evaluate(policy, ref_policy, tok, eval_texts, cfg, reward_fn, rt.autocast, synthetic)
            print(f"evaluation on {eval_path}:")
            print_eval(ev)
            append_jsonl(metrics_path, {k: v for k, v in ev.items()})
            save_policy(cfg.iterations, evaluation={k: v for k, v in ev.items() if k != "samples"})
        print(f"saved the policy to {policy_path}")
    if rt.ddp:
        dist.barrier()
        dist.destroy_process_group()
    return history, ev


if __name__ == "__main__":
    main(parse_config(PPOConfig))
