"""
Step 2 of InstructGPT (section 3.5): the reward model (RM), trained on rankings with the K-choose-2 loss.

The SFT model loses its unembedding and gains a scalar head; the reward of a response is the head's output
at the response's final (EOS) token. Labelers ranked K responses per prompt, and, as in the paper, all
C(K, 2) pairs of one prompt form a single batch element (eq. 1): the K responses are forwarded once, every
pair (i better than j) adds -log sigmoid(r_i - r_j), and the pair losses are averaged per prompt. After
training, the head's bias is set so that the labelers' demonstrations (the SFT data) get mean reward 0 (the
paper), and the head is scaled so that the rewards of the SFT model's own samples have std 1: a reward unit,
hence PPO's beta, then means the same whatever the reward model.

Tiny CPU run on the synthetic world (after `python data/synthetic/prepare.py` and `python sft.py`):

    python reward.py                                   # -> out/reward/reward.pt, out/reward/metrics.jsonl
    python reward.py --init_from=resume                # continue an interrupted run from out/reward/resume.pt

GPU, on Anthropic HH-RLHF (K = 2) from a GPT-2 SFT model, and on 8 GPUs (64 prompts per step in all):

    python reward.py --data_dir=data/hh_rlhf --out_dir=out/reward_hh --batch_size=64 --lr=9e-6
    torchrun --standalone --nproc_per_node=8 reward.py --data_dir=data/hh_rlhf --batch_size=64 --lr=9e-6

The held-out judge of real data, on the comparisons the converters set aside for it (evaluate.py --judge_model):

    python reward.py --data_dir=data/hh_rlhf --train_split=judge --out_dir=out/judge_rm
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (
    ConfigError,
    Interrupt,
    MetricsLog,
    check_finite,
    check_ranges,
    configure_optimizer,
    cosine_lr,
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
from data.loader import encode_prompt, fitting, generate_responses, length_bucketed_batches, load_split
from model import last_token_scores, save_checkpoint, score_sequences


@dataclass
class RewardConfig:
    """Train a reward model on ranked comparisons (InstructGPT step 2, eq. 1)."""
    init_from: str = "out/sft/sft.pt"  # SFT (or pretrain) checkpoint whose transformer it takes | gpt2 | DIR | resume
    data_dir: str = "data/synthetic"  # comparisons_{train,val}.jsonl; sft_train.jsonl for the bias
    train_split: str = "train"  # comparisons_SPLIT.jsonl it trains on: train | judge (real data's held-out judge)
    out_dir: str = "out/reward"  # reward.pt, resume.pt and metrics.jsonl go here
    epochs: float = ranged(1.0, "(0, 10000]")  # passes over the training prompts (the paper: 1; more epochs overfit)
    max_steps: int = ranged(0, ">= 0")  # if > 0, train this many steps instead (the lr schedule spans them)
    batch_size: int = ranged(32, ">= 1")  # prompts per step, all ranks, each with all K responses (the paper: 64)
    micro_batch_size: int = ranged(0, ">= 0")  # prompts per forward/backward pass and rank (0: all); the same gradient
    lr: float = ranged(1e-3, "> 0")  # peak lr (the paper: 9e-6 for a 6B RM; the tiny model needs far more)
    final_lr_ratio: float = ranged(0.1, "[0, 1]")  # cosine decay to this fraction of the peak (the paper: 10%)
    warmup_steps: int = ranged(0, ">= 0")  # linear warmup steps (the paper: none)
    weight_decay: float = ranged(0.1, ">= 0")  # AdamW weight decay on matrices
    betas: tuple[float, float] = ranged((0.9, 0.95), "[0, 1)")  # AdamW betas (the paper: 0.9, 0.95)
    grad_clip: float = ranged(1.0, ">= 0")  # clip the gradient norm to this (0: no clipping)
    dropout: float = ranged(0.0, "[0, 1)")  # dropout while training the RM
    eval_interval: int = ranged(50, ">= 0")  # steps between validation passes (there is always one at the end)
    eval_prompts: int = ranged(500, ">= 0")  # validation prompts per intermediate pass (the final pass uses all)
    eval_batch_size: int = ranged(64, ">= 1")  # prompts per forward pass when evaluating and scoring demonstrations
    log_interval: int = ranged(10, ">= 1")  # steps between metrics.jsonl lines
    ckpt_interval: int = ranged(200, ">= 0")  # steps between resume.pt saves (Ctrl-C saves too)
    norm_demos: int = ranged(0, ">= 0")  # demonstrations scored for the bias; 0 = all of sft_train.jsonl
    norm_policy: str = ""  # the policy whose samples set the reward scale (std 1); "" = init_from | none
    norm_samples: int = ranged(512, ">= 0")  # its samples (T=1, on training comparison prompts) for the scale
    norm_max_tokens: int = ranged(48, ">= 1")  # their length limit (PPO's max_new_tokens)
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (native bf16 on GPU or CPU, fp16 on older GPUs, else fp32) | float32 | bfloat16
    seed: int = ranged(1337, "[0, 2**32)")  # data order (and dropout)


# -----------------------------------------------------------------------------
# The loss (InstructGPT eq. 1)


def pair_mask(num_responses, k_max):
    """(B, K, K) bool: True at (b, i, j) when i < j < K_b, i.e. response i was ranked above response j."""
    idx = torch.arange(k_max, device=num_responses.device)
    upper = idx[:, None] < idx[None, :]  # (K, K) strictly upper triangular: i before j in the ranking
    real_j = idx[None, None, :] < num_responses[:, None, None]  # (B, 1, K); j < K_b implies i < K_b
    return upper[None] & real_j


def ranking_loss(rewards, num_responses=None):
    """
    InstructGPT eq. 1, all C(K, 2) pairs of a prompt as one batch element:
        loss = mean over prompts b of  1 / C(K_b, 2) * sum_{i < j < K_b} -log sigmoid(r_bi - r_bj)
    rewards (B, K_max) float: each prompt's responses in the labelers' order, best first.
    num_responses (B,) int: K_b; columns >= K_b are padding and have no effect on the loss or its
    gradient (whatever they hold, even inf or NaN). None means every column is real.
    Returns a scalar tensor. All pairs at once: a (B, K, K) difference table under a triangular mask.
    """
    B, K = rewards.shape
    if num_responses is None:
        num_responses = torch.full((B,), K, device=rewards.device)
    num_responses = torch.as_tensor(num_responses, device=rewards.device)
    if bool((num_responses < 2).any()) or bool((num_responses > K).any()):
        raise ValueError(f"num_responses must be in [2, {K}], got {num_responses.tolist()}")
    real = torch.arange(K, device=rewards.device)[None, :] < num_responses[:, None]  # (B, K)
    # Zero the padding first (not after the pair table): a NaN there would otherwise leak through the
    # backward pass of the masked-out pairs (0 * NaN = NaN).
    r = rewards.float().masked_fill(~real, 0.0)
    diff = r[:, :, None] - r[:, None, :]  # (B, K, K): r_i - r_j
    mask = pair_mask(num_responses, K)
    nll = torch.where(mask, -F.logsigmoid(diff), 0.0)
    n_pairs = num_responses * (num_responses - 1) / 2  # C(K_b, 2)
    return (nll.sum(dim=(1, 2)) / n_pairs).mean()


def pair_accuracy(rewards, num_responses):
    """(correct (B,), pairs (B,)): how many of each prompt's C(K_b, 2) pairs the RM orders as the labelers
    did (a tie counts half, so a constant RM scores 0.5), and how many pairs there are."""
    K = rewards.size(1)
    mask = pair_mask(num_responses, K)
    diff = rewards[:, :, None] - rewards[:, None, :]
    right = (diff > 0).float() + 0.5 * (diff == 0).float()
    return (right * mask).sum(dim=(1, 2)), mask.sum(dim=(1, 2)).float()


def pad_rewards(flat, num_responses):
    """(sum K,) rewards of prompts laid end to end -> (B, K_max), zero beyond each prompt's K."""
    num_responses = num_responses.to(flat.device)
    B, K = len(num_responses), int(num_responses.max())
    row = torch.repeat_interleave(torch.arange(B, device=flat.device), num_responses)
    start = torch.cumsum(num_responses, 0) - num_responses
    col = torch.arange(len(flat), device=flat.device) - start[row]
    return flat.new_zeros(B, K).index_put((row, col), flat)


# -----------------------------------------------------------------------------
# Data: prompts with their ranked responses


class Comparisons:
    """A tokenised comparisons split, minus the prompts with a prompt + response longer than block_size."""

    def __init__(self, data_dir, split, tok, block_size, master=True):
        self.data = load_split(data_dir, "comparisons", split, tok)
        group = np.asarray(self.data.group)
        owner = np.repeat(np.arange(len(group) - 1), np.diff(group))  # prompt of each response
        total = self.data.responses.lengths + self.data.prompts.lengths[owner]
        longest = np.maximum.reduceat(total, group[:-1])  # per prompt: its longest prompt + response
        self.ids = fitting(longest, block_size, f"{self.data.name}: prompts", master)  # indices into the split
        self.longest, self.k = longest[self.ids], np.diff(group)[self.ids]
        if master:
            print(f"{self.data.name}: {len(self.ids)} prompts, K = {self.k.min()}..{self.k.max()}, "
                  f"{int(self.k.sum())} responses")

    def __len__(self):
        return len(self.ids)

    def batch(self, rows):
        """Rows (positions among the kept prompts) -> (sequences flattened prompt by prompt, best first;
        num_responses (B,))."""
        seqs, num_responses = [], []
        for i in self.ids[rows]:
            lo, hi = int(self.data.group[i]), int(self.data.group[i + 1])
            prompt = np.asarray(self.data.prompts[i])
            seqs += [np.concatenate([prompt, self.data.responses[j]]) for j in range(lo, hi)]
            num_responses.append(hi - lo)
        return seqs, torch.tensor(num_responses)


def global_batch(train, step, batch_size, seed):
    """The rows of train that make up the global batch of this step: batch_size prompts of similar lengths,
    full batches only, in an order that is a function of (seed, epoch) so that a resumed run sees the batches
    an uninterrupted one would."""
    epoch, j = divmod(step, len(train) // batch_size)
    batches = length_bucketed_batches(train.longest, batch_size, seed + epoch)
    return [b for b in batches if len(b) == batch_size][j]


# -----------------------------------------------------------------------------
# One training step's gradient


def accumulate_gradients(train_model, train, rows, micro_batch_size, scaler, rt, step):
    """
    The backward passes of eq. 1 for one global batch of prompts (rows of train): each rank takes every
    W-th prompt, micro_batch_size prompts per pass (0: all), each prompt's K responses in one padded forward.
    The gradient is that of the mean loss over all the batch's prompts, whatever the micro-batches and ranks.
    Returns this rank's sums: (loss over its prompts, pairs in the labelers' order, pairs, tokens forwarded).
    """
    mine = rows[rt.rank::rt.world_size]
    n_chunks = math.ceil(len(mine) / (micro_batch_size or len(mine)))
    loss_sum = correct_sum = pairs_sum = 0.0
    n_tokens = 0
    for c, chunk in enumerate(np.array_split(mine, n_chunks)):
        seqs, num_responses = train.batch(chunk)
        n_tokens += sum(len(s) for s in seqs)
        with train_model.no_sync() if rt.ddp and c < n_chunks - 1 else contextlib.nullcontext():
            rewards = pad_rewards(last_token_scores(train_model, seqs, rt.autocast), num_responses)
            loss = ranking_loss(rewards, num_responses.to(rewards.device))  # (B, K) -> mean over prompts
            check_finite(loss, "the ranking loss", f"at step {step}")
            # weighted by the chunk's share of the global batch (DDP averages the ranks' gradients)
            scaler.scale(loss * len(chunk) * rt.world_size / len(rows)).backward()
        correct, pairs = pair_accuracy(rewards.detach(), num_responses.to(rewards.device))
        loss_sum, correct_sum = loss_sum + loss.item() * len(chunk), correct_sum + correct.sum().item()
        pairs_sum += pairs.sum().item()
    return loss_sum, correct_sum, pairs_sum, n_tokens


# -----------------------------------------------------------------------------
# Evaluation and the normalisation


@torch.no_grad()
def evaluate(model, val, rows, rt, batch_size, judge=None, texts=None, show=0):
    """
    Validation over val's prompts `rows` (split among the ranks, reduced): loss (eq. 1), pairwise accuracy
    overall and by K, mean reward per rank position and, where the data has a judge, how often the RM's
    preference in a pair agrees with the training and the held-out labelers' own verdicts.
    show: print that many prompts with their rewards.
    """
    was_training = model.training
    model.eval()
    ks, k_max = sorted(set(val.k.tolist())), int(val.k.max())
    sums = {"loss": 0.0, "prompts": 0.0, "correct": 0.0, "pairs": 0.0}
    sums.update({f"{n}_k{k}": 0.0 for k in ks for n in ("correct", "pairs")})
    sums.update({f"{n}_rank{r}": 0.0 for r in range(k_max) for n in ("reward", "count")})
    if judge:
        sums.update({f"{n}_{who}": 0.0 for who in ("train", "heldout") for n in ("agree", "judged")})
    mine = rows[rt.rank::rt.world_size]
    order = mine[np.argsort(val.longest[mine], kind="stable")]  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs, num_responses = val.batch(chunk)
        rewards = pad_rewards(last_token_scores(model, seqs, rt.autocast), num_responses)  # (B, K)
        num_responses = num_responses.to(rewards.device)
        correct, pairs = pair_accuracy(rewards, num_responses)
        sums["loss"] += ranking_loss(rewards, num_responses).item() * len(chunk)
        sums["prompts"] += len(chunk)
        sums["correct"] += correct.sum().item()
        sums["pairs"] += pairs.sum().item()
        for k in num_responses.unique().tolist():
            sums[f"correct_k{k}"] += correct[num_responses == k].sum().item()
            sums[f"pairs_k{k}"] += pairs[num_responses == k].sum().item()
        for r in range(rewards.size(1)):
            sums[f"reward_rank{r}"] += rewards[num_responses > r, r].sum().item()
            sums[f"count_rank{r}"] += (num_responses > r).sum().item()
        rewards = rewards.cpu().tolist()
        records = [texts[i] for i in val.ids[chunk]] if texts is not None else []
        for rec, rw in zip(records if judge else [], rewards):
            for who, (agree, judged) in judge.agreement(rec["prompt"], rec["responses"], rw).items():
                sums[f"agree_{who}"] += agree
                sums[f"judged_{who}"] += judged
        for rec, rw in zip(records[:show] if rt.master and start == 0 else [], rewards):
            print(f"  prompt: {rec['prompt'][:100]!r}")
            for x, resp in enumerate(rec["responses"]):
                print(f"    rank {x}  reward {rw[x]:+.3f}  {resp[:80]!r}")
    sums = {k: rt.sum(v) for k, v in sums.items()}
    out = {"val/loss": sums["loss"] / sums["prompts"], "val/acc": sums["correct"] / sums["pairs"]}
    out.update({f"val/acc_k{k}": sums[f"correct_k{k}"] / sums[f"pairs_k{k}"]
                for k in ks if sums[f"pairs_k{k}"]})
    out.update({f"val/reward_rank{r}": sums[f"reward_rank{r}"] / sums[f"count_rank{r}"]
                for r in range(k_max) if sums[f"count_rank{r}"]})
    out.update({f"val/judge_acc_{who}": sums[f"agree_{who}"] / sums[f"judged_{who}"]
                for who in ("train", "heldout") if sums.get(f"judged_{who}")})
    model.train(was_training)
    return out


@torch.no_grad()
def demonstration_mean_reward(model, data_dir, tok, rt, batch_size, limit=0):
    """(mean reward, count) of the labelers' demonstrations (sft_train.jsonl's prompt + response), or None
    when data_dir has none: the normalisation InstructGPT applies after training the RM."""
    if not os.path.exists(os.path.join(data_dir, "sft_train.jsonl")):
        return None
    was_training = model.training
    model.eval()
    sft = load_split(data_dir, "sft", "train", tok)
    lengths = sft.prompts.lengths + sft.responses.lengths
    fits = fitting(lengths, model.config.block_size, "demonstrations", rt.master)[:limit or None]
    mine = fits[rt.rank::rt.world_size]
    seqs = [np.concatenate([sft.prompts[i], sft.responses[i]]) for i in mine]
    total = score_sequences(model, seqs, rt.autocast, batch_size).double().sum().item() if seqs else 0.0
    model.train(was_training)
    return rt.sum(total) / len(fits), len(fits)


@torch.no_grad()
def policy_reward_std(model, policy_path, tok, prompts, cfg, rt):
    """(std, count) of the rewards of the policy's T=1 samples on those prompts that leave room for
    norm_max_tokens. Every rank draws the same seeded samples, so all ranks agree on the scale."""
    policy, policy_tok, _ = load_lm(policy_path, rt.device, stages=("pretrain", "sft", "ppo"))
    if policy_tok.state() != tok.state():
        raise ConfigError(f"--norm_policy={policy_path} has another vocabulary than the reward model")
    room = model.config.block_size - cfg.norm_max_tokens
    prompts = [p for p in prompts if len(encode_prompt(tok, p)) <= room]
    if len(prompts) < 2:
        raise ConfigError(f"only {len(prompts)} prompts leave room for --norm_max_tokens={cfg.norm_max_tokens} "
                          f"in the context of {model.config.block_size}: lower it, or --norm_policy=none")
    was_training = model.training
    model.eval()
    _, _, tokens = generate_responses(policy.eval(), tok, prompts, cfg.norm_max_tokens, 1.0,
                                      cfg.eval_batch_size, seed=cfg.seed, autocast=rt.autocast)
    rewards = score_sequences(model, [encode_prompt(tok, p) + t for p, t in zip(prompts, tokens)], rt.autocast,
                              cfg.eval_batch_size).double()
    model.train(was_training)
    if rewards.std() <= 0:
        raise ConfigError(f"the samples of {policy_path} all get the same reward: use --norm_policy=none")
    return rewards.std().item(), len(prompts)


def normalise(model, policy, tok, cfg, rt):
    """
    Bias and scale of the scalar head, in place, after training: the bias so that the demonstrations' mean
    reward is 0 (the paper), then the scale so that the rewards of policy's samples have std 1 (unless policy
    is none). Pairwise differences keep their sign, hence the loss's minimiser and every accuracy; PPO's
    rewards become centred on SFT behaviour, in units that make beta mean the same for any RM.
    Returns what was measured, for the checkpoint and the log.
    """
    extra = {}
    demos = demonstration_mean_reward(model, cfg.data_dir, tok, rt, cfg.eval_batch_size, cfg.norm_demos)
    if demos is not None:
        with torch.no_grad():
            model.score_head.bias -= demos[0]
        extra.update(demo_mean_reward_before=demos[0], demos_scored=demos[1])
        if rt.master:
            print(f"demonstrations: mean reward {demos[0]:+.4f} over {demos[1]}; bias set so that it is 0")
    elif rt.master:
        print(f"warning: {cfg.data_dir} has no sft_train.jsonl: the reward bias is left as trained")
    if policy and policy not in ("none", "resume") and cfg.norm_samples:
        prompts = [r["prompt"] for r in read_split(cfg.data_dir, "comparisons", cfg.train_split)[:cfg.norm_samples]]
        std, n = policy_reward_std(model, policy, tok, prompts, cfg, rt)
        with torch.no_grad():
            model.score_head.weight /= std
            model.score_head.bias /= std
        extra.update(reward_scale=1.0 / std, scale_samples=n)
        if rt.master:
            print(f"{policy} samples: reward std {std:.4f} over {n}; head scaled so that it is 1")
    extra["reward_bias"] = model.score_head.bias.item()
    return extra


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = argv if isinstance(argv, RewardConfig) else parse_config(RewardConfig, argv)
    check_ranges(cfg)  # a config made in code skips parse_config
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    resume_path = os.path.join(cfg.out_dir, "resume.pt")

    # 1. the model: the SFT transformer with a fresh (zero) scalar head in place of the unembedding
    source = resume_path if cfg.init_from == "resume" else cfg.init_from
    stages = ("resume",) if source == resume_path else ("pretrain", "sft")
    model, tok, ckpt = load_lm(source, rt.device, stages=stages, scalar_head=True, dropout=cfg.dropout,
                               default=cfg.init_from == RewardConfig.init_from)
    resume = ckpt["stage"] == "resume"

    # 2. data: prompts with their K ranked responses, best first; prompts whose longest one does not fit dropped
    if cfg.train_split not in ("train", "judge"):
        raise ConfigError(f"--train_split must be train or judge (val is what the RM is validated on), got "
                          f"{cfg.train_split!r}")
    with vocabulary_of(source, cfg.data_dir):
        train = Comparisons(cfg.data_dir, cfg.train_split, tok, model.config.block_size, rt.master)
        val = Comparisons(cfg.data_dir, "val", tok, model.config.block_size, rt.master)
    val_texts, judge = read_split(cfg.data_dir, "comparisons", "val"), load_judge(cfg.data_dir)
    eval_rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(val))[:cfg.eval_prompts or None])
    # each rank takes every W-th prompt of a global batch, so N ranks see exactly the batch one process would
    if cfg.batch_size % rt.world_size or len(train) < cfg.batch_size:
        raise ConfigError(f"--batch_size={cfg.batch_size} must divide among {rt.world_size} ranks and not "
                          f"exceed the {len(train)} training prompts")
    batches_per_epoch = len(train) // cfg.batch_size
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches_per_epoch))

    # 3. optimizer. Eq. 1 sees only reward differences, so the head's bias gets no gradient but rounding
    #    noise that Adam would blow up to lr-sized steps: it is frozen, and step 5 sets it.
    model.score_head.bias.requires_grad_(False)
    optimizer = configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, rt.device_type)
    step = load_resume(resume_path, "reward", rt, {"rm": optimizer})["step"] if resume else 0
    train_model, scaler = rt.wrap(model), rt.grad_scaler()
    log = MetricsLog(cfg.out_dir, rt.master, step if resume else None)

    # 4. training: each step, eq. 1 over all the pairs of each prompt of a global batch
    bar = tqdm(total=total_steps, initial=step, disable=not rt.master, desc="reward", dynamic_ncols=True)
    t0, tokens_seen = time.time(), 0
    with Interrupt(rt) as interrupt:
        while step < total_steps:
            lr = cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
            set_lr(optimizer, lr)
            rows = global_batch(train, step, cfg.batch_size, cfg.seed)
            loss_sum, correct_sum, pairs_sum, n_tokens = accumulate_gradients(
                train_model, train, rows, cfg.micro_batch_size, scaler, rt, step)
            grad_norm = optimizer_step(train_model, optimizer, scaler, cfg.grad_clip, f"at step {step}")
            step += 1
            loss, acc = rt.sum(loss_sum) / len(rows), rt.sum(correct_sum) / rt.sum(pairs_sum)
            tokens_seen += n_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", lr=f"{lr:.2e}")
            if step % cfg.log_interval == 0 or step == total_steps:
                log({"step": step, "epoch": step / batches_per_epoch, "lr": lr, "loss": loss, "acc": acc,
                     "grad_norm": grad_norm, "tokens_per_s": rt.sum(tokens_seen) / (time.time() - t0)})
                t0, tokens_seen = time.time(), 0
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step < total_steps:
                metrics = evaluate(model, val, eval_rows, rt, cfg.eval_batch_size, texts=val_texts,
                                   show=1 if rt.master else 0)
                log({"step": step, **metrics})
                bar.write(f"step {step}: val loss {metrics['val/loss']:.4f}, val acc {metrics['val/acc']:.3f}")
            if (cfg.ckpt_interval and step % cfg.ckpt_interval == 0) or interrupt.requested():
                save_resume(resume_path, rt, model=model, run_config=cfg, tokenizer=tok, of="reward", step=step,
                            optimizers={"rm": optimizer})
                if interrupt.requested() and step < total_steps:
                    print(f"interrupted: saved {resume_path}; continue with --init_from=resume")
                    raise SystemExit(130)
    bar.close()
    # resume.pt keeps the trained head before step 5, so that a resumed run normalises it afresh
    save_resume(resume_path, rt, model=model, run_config=cfg, tokenizer=tok, of="reward", step=step,
                optimizers={"rm": optimizer})

    # 5. normalisation of the head, from demonstrations and the policy's samples (the rewards PPO will read)
    trained_from = ckpt.get("run_config", {}).get("init_from") if cfg.init_from == "resume" else cfg.init_from
    extra = normalise(model, cfg.norm_policy or trained_from, tok, cfg, rt)

    # 6. final validation over every val prompt (with the labelers' agreement where the data has a judge)
    metrics = evaluate(model, val, np.arange(len(val)), rt, cfg.eval_batch_size, judge, val_texts,
                       show=2 if rt.master else 0)
    log({"step": step, "final": True, **metrics, **extra})
    if rt.master:
        print("final validation:\n" + "\n".join(f"  {k:24s} {v:.4f}" for k, v in metrics.items()))
        path = os.path.join(cfg.out_dir, "reward.pt")
        save_checkpoint(path, stage="reward", model=model, run_config=cfg, tokenizer=tok, step=step,
                        metrics=metrics, **extra)
        print(f"saved {path}")
    rt.close()
    return {**metrics, **extra}


if __name__ == "__main__":
    run(main)
