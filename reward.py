"""
Step 2 of InstructGPT: the reward model (RM), trained on rankings with the K-choose-2 loss (eq. 1).

The SFT model loses its unembedding and gains a scalar head; the reward of a response is the head's output
at the response's final (EOS) token. Labelers ranked K responses per prompt, and, as in the paper, all
C(K, 2) pairs of one prompt form a single batch element: the K responses are forwarded once, every pair
(i better than j) adds -log sigmoid(r_i - r_j), and the pair losses are averaged per prompt. After training
the head's bias is set so the labelers' demonstrations (the SFT data) get mean reward 0.

Tiny CPU run on the synthetic world (after `python data/synthetic/prepare.py` and `python sft.py`):

    python reward.py                                   # -> out/reward/reward.pt, out/reward/metrics.jsonl

GPU, on Anthropic HH-RLHF (K = 2) from a GPT-2 SFT model:

    python reward.py --init_from=out/sft/sft.pt --data_dir=data/hh_rlhf --out_dir=out/reward_hh \
        --batch_size=64 --lr=9e-6 --eval_interval=200
    torchrun --nproc_per_node=8 reward.py --init_from=out/sft/sft.pt --data_dir=data/hh_rlhf \
        --out_dir=out/reward_hh --batch_size=8 --lr=9e-6     # 8 x 8 = 64 prompts per step

Resume an interrupted run (Ctrl-C saves out_dir/resume.pt): add --init_from=resume. `--help` lists options.
Importable losses and helpers (used by ppo.py and the tests): ranking_loss, rewards_at_last_token,
score_sequences.
"""

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import model as M
from data.formats import read_split
from data.loader import length_bucketed_batches, load_split, pad_right

REPO = Path(__file__).resolve().parent


@dataclass
class RewardConfig:
    """Train a reward model on ranked comparisons (InstructGPT step 2, eq. 1)."""
    init_from: str = "out/sft/sft.pt"  # 'pretrain' or 'sft' checkpoint to start from, or 'resume'
    data_dir: str = "data/synthetic"  # comparisons_{train,val}.jsonl; sft_train.jsonl for the bias
    out_dir: str = "out/reward"  # reward.pt, resume.pt and metrics.jsonl go here
    epochs: float = 1.0  # passes over the training prompts (the paper: 1; more epochs overfit)
    max_steps: int = 0  # if > 0, train this many steps instead (the lr schedule spans them)
    batch_size: int = 32  # prompts per step (per rank), each with all K responses (the paper: 64)
    micro_batch_size: int = 0  # prompts per forward/backward pass; 0 = the whole batch. Same gradient
    lr: float = 1e-3  # peak lr (the paper: 9e-6 for a 6B RM; the tiny model needs far more)
    final_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak (the paper: 10%)
    warmup_steps: int = 0  # linear warmup steps (the paper: none)
    weight_decay: float = 0.1  # AdamW weight decay on matrices
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas (the paper: 0.9, 0.95)
    grad_clip: float = 1.0  # clip the gradient norm to this (0: no clipping)
    dropout: float = 0.0  # dropout while training the RM
    eval_interval: int = 50  # steps between validation passes (there is always one at the end)
    eval_prompts: int = 500  # validation prompts per intermediate pass (the final pass uses all)
    eval_batch_size: int = 64  # prompts per forward pass when evaluating and scoring demonstrations
    log_interval: int = 10  # steps between metrics.jsonl lines
    ckpt_interval: int = 200  # steps between resume.pt saves (0: only on Ctrl-C)
    norm_demos: int = 0  # demonstrations scored for the bias; 0 = all of sft_train.jsonl
    judge: bool = True  # on the synthetic world: agreement with its programmatic labelers at the end
    device: str = "auto"  # auto | cpu | cuda | mps
    dtype: str = "auto"  # auto (bf16 on CUDA) | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model (CUDA)
    seed: int = 1337  # torch seed and data order


# -----------------------------------------------------------------------------
# The loss (InstructGPT eq. 1) and reading rewards


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


def rewards_at_last_token(scores, lengths):
    """scores (B, T) of right-padded sequences, lengths (B,) -> (B,) the score at index lengths - 1: the
    EOS that closes each response (RLHF_NOTES detail 1), whatever padding follows it."""
    lengths = torch.as_tensor(lengths, device=scores.device).long()
    if bool((lengths < 1).any()) or bool((lengths > scores.size(1)).any()):
        raise ValueError(f"lengths must be in [1, {scores.size(1)}], got {lengths.tolist()}")
    return scores.gather(1, (lengths - 1)[:, None]).squeeze(1)


def sequence_rewards(model, seqs, device, autocast=None):
    """(B,) float32 rewards of token sequences (prompt + response + EOS), one right-padded forward pass.
    Right padding is exact without a mask: a causal row never attends to the pads after it."""
    seqs = [s.cpu() if torch.is_tensor(s) else s for s in seqs]
    idx, lengths = pad_right(seqs)
    with autocast() if autocast else contextlib.nullcontext():
        scores, _ = model(idx.to(device))  # (B, T)
    return rewards_at_last_token(scores.float(), lengths.to(device))


@torch.no_grad()
def score_sequences(model, seqs, device, autocast=None):
    """
    Rewards of prompt+response token sequences under a scalar-head model: (B,) float32 tensor on device.
    seqs: lists / arrays / tensors of token ids, each ending with the response's EOS, at most block_size.
    One forward pass, no gradient; the model's train/eval mode is left as it is (use eval() for a frozen RM).
    autocast: a callable giving a context manager, e.g. Runtime.autocast.
    """
    return sequence_rewards(model, seqs, device, autocast)


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
        self.ids = np.nonzero(longest <= block_size)[0]  # kept prompts, as indices into the split
        self.longest = longest[self.ids]
        self.k = np.diff(group)[self.ids]
        skipped = len(longest) - len(self.ids)
        if master:
            note = (f"; skipped {skipped} prompts with a prompt + response longer than block_size "
                    f"{block_size}" if skipped else "")
            print(f"{self.data.name}: {len(self.ids)} prompts, K = {self.k.min()}..{self.k.max()}, "
                  f"{int(self.k.sum())} responses{note}")
        if len(self.ids) == 0:
            raise ValueError(f"{self.data.name}: no prompt fits block_size {block_size}")

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


def synthetic_judge(cfg, master=True):
    """The synthetic world's labelers (compare, TRAIN_LABELERS, HELDOUT_LABELERS) when data_dir is that world
    and its judge API is importable; None otherwise."""
    if not cfg.judge or Path(cfg.data_dir).resolve() != (REPO / "data" / "synthetic").resolve():
        return None
    try:
        from data.synthetic import HELDOUT_LABELERS, TRAIN_LABELERS, compare
    except ImportError as e:
        if master:
            print(f"warning: the synthetic judge API is not importable ({e}); no labeler-agreement metrics")
        return None
    return compare, TRAIN_LABELERS, HELDOUT_LABELERS


# -----------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, val, rows, rt, batch_size, judge=None, texts=None, show=0):
    """
    Validation metrics over val's prompts `rows` (split among the ranks and reduced): loss (eq. 1),
    pairwise accuracy overall and by K, mean reward per rank position, and, with judge and texts (the raw
    records of the split), how often the RM's pairwise preference agrees with the training and held-out
    labelers' own judgments. show: print that many prompts with their rewards.
    """
    was_training = model.training
    model.eval()
    ks, k_max = sorted(set(val.k.tolist())), int(val.k.max())
    sums = {"loss": 0.0, "prompts": 0.0, "correct": 0.0, "pairs": 0.0}
    sums.update({f"{n}_k{k}": 0.0 for k in ks for n in ("correct", "pairs")})
    sums.update({f"{n}_rank{r}": 0.0 for r in range(k_max) for n in ("reward", "count")})
    if judge:
        sums.update({f"{n}_{who}": 0.0 for who in ("train", "heldout") for n in ("agree", "judged")})
    mine = rows[rt.rank::rt.world_size]  # each rank a strided slice
    order = mine[np.argsort(val.longest[mine], kind="stable")]  # similar lengths together: less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        seqs, num_responses = val.batch(chunk)
        rewards = pad_rewards(sequence_rewards(model, seqs, rt.device, rt.autocast), num_responses)  # (B, K)
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
            real = num_responses > r
            sums[f"reward_rank{r}"] += rewards[real, r].sum().item()
            sums[f"count_rank{r}"] += real.sum().item()
        rewards = rewards.cpu().tolist()
        if judge:
            compare, train_labelers, heldout_labelers = judge
            for b, i in enumerate(val.ids[chunk]):
                rec = texts[i]
                K = len(rec["responses"])
                for x in range(K):
                    for y in range(x + 1, K):
                        d = rewards[b][x] - rewards[b][y]
                        pref = (d > 0) - (d < 0)  # the RM's judgment of the pair: +1 prefers x, -1 prefers y
                        for who, labelers in (("train", train_labelers), ("heldout", heldout_labelers)):
                            for lab in labelers:
                                c = compare(rec["prompt"], rec["responses"][x], rec["responses"][y], lab)
                                if c != 0:  # a labeler's tie (identical scores) says nothing
                                    sums[f"agree_{who}"] += 1.0 if pref == c else 0.5 if pref == 0 else 0.0
                                    sums[f"judged_{who}"] += 1
        if rt.master and start == 0 and show and texts is not None:
            for b, i in enumerate(val.ids[chunk[:show]]):
                rec = texts[i]
                print(f"  prompt: {rec['prompt'][:100]!r}")
                for x, resp in enumerate(rec["responses"]):
                    print(f"    rank {x}  reward {rewards[b][x]:+.3f}  {resp[:80]!r}")
    sums = {k: rt.all_reduce_mean(v) for k, v in sums.items()}  # mean of sums: the ratios below are exact
    out = {"val/loss": sums["loss"] / sums["prompts"], "val/acc": sums["correct"] / sums["pairs"]}
    out.update({f"val/acc_k{k}": sums[f"correct_k{k}"] / sums[f"pairs_k{k}"]
                for k in ks if sums[f"pairs_k{k}"]})
    out.update({f"val/reward_rank{r}": sums[f"reward_rank{r}"] / sums[f"count_rank{r}"]
                for r in range(k_max) if sums[f"count_rank{r}"]})
    if judge:
        for who in ("train", "heldout"):
            if sums[f"judged_{who}"]:
                out[f"val/judge_acc_{who}"] = sums[f"agree_{who}"] / sums[f"judged_{who}"]
    model.train(was_training)
    return out


@torch.no_grad()
def demonstration_mean_reward(model, data_dir, tok, rt, batch_size, limit=0):
    """(mean reward, count) of the labelers' demonstrations, sft_train.jsonl's prompt + response, or None
    when data_dir has none. The normalisation InstructGPT applies after training the RM."""
    if not (Path(data_dir) / "sft_train.jsonl").exists():
        return None
    was_training = model.training
    model.eval()
    sft = load_split(data_dir, "sft", "train", tok)
    lengths = sft.prompts.lengths + sft.responses.lengths
    fits = np.nonzero(lengths <= model.config.block_size)[0]
    if limit:
        fits = fits[:limit]
    mine = fits[rt.rank::rt.world_size]
    mine = mine[np.argsort(lengths[mine], kind="stable")]
    total, count = 0.0, 0
    for start in range(0, len(mine), batch_size):
        seqs = [np.concatenate([sft.prompts[i], sft.responses[i]]) for i in mine[start:start + batch_size]]
        total += score_sequences(model, seqs, rt.device, rt.autocast).double().sum().item()
        count += len(seqs)
    model.train(was_training)
    total, count = rt.all_reduce_mean(total), rt.all_reduce_mean(count)
    if count == 0:
        return None
    return total / count, round(count * rt.world_size)


# -----------------------------------------------------------------------------
# Checkpoints


def save_resume(path, model, optimizer, cfg, tok, step):
    """Everything needed to continue the run exactly: weights, optimizer state, step, RNG state."""
    extra = {"optimizer": optimizer.state_dict(), "step": step, "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state()
    M.save_checkpoint(path, stage="reward", model=model, run_config=cfg, tokenizer=tok, resume=True, **extra)


def load_start(cfg, rt):
    """(model, tokenizer, resume checkpoint or None): the SFT model with a fresh scalar head, or the run
    saved in out_dir/resume.pt."""
    if cfg.init_from == "resume":
        path = os.path.join(cfg.out_dir, "resume.pt")
        ckpt = M.load_checkpoint(path, stages=("reward",))
        if not ckpt.get("resume"):
            raise M.CheckpointError(f"{path}: a finished reward model, not a resume file (no optimizer)")
        model, tok, ckpt = M.load_model(ckpt, rt.device, scalar_head=True, dropout=cfg.dropout)
        return model, tok, ckpt
    # A language model's transformer with a fresh (zero) scalar head; a reward or PPO checkpoint is refused.
    model, tok, _ = M.load_model(cfg.init_from, rt.device, stages=("pretrain", "sft"), scalar_head=True,
                                 dropout=cfg.dropout)
    return model, tok, None


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = M.parse_config(RewardConfig, argv)
    rt = M.setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    if rt.master:
        os.makedirs(cfg.out_dir, exist_ok=True)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")

    # 1. the model: SFT transformer + scalar head (or the interrupted run)
    model, tok, resume = load_start(cfg, rt)
    raw_model = model
    block_size = model.config.block_size
    if rt.master:
        print(f"init from {cfg.init_from}: {model.num_params() / 1e6:.2f}M parameters, "
              f"block_size {block_size}, vocab {tok.vocab_size}, device {rt.device}, dtype {rt.dtype}, "
              f"world size {rt.world_size}")

    # 2. data: prompts with their K ranked responses; too-long prompts skipped (counted)
    train = Comparisons(cfg.data_dir, "train", tok, block_size, rt.master)
    val = Comparisons(cfg.data_dir, "val", tok, block_size, rt.master)
    val_texts = read_split(cfg.data_dir, "comparisons", "val")  # raw text: the judge and printed samples
    judge = synthetic_judge(cfg, rt.master)
    rng = np.random.default_rng(cfg.seed)
    eval_rows = np.arange(len(val))  # intermediate evaluations: a fixed random subset
    if cfg.eval_prompts:
        eval_rows = np.sort(rng.permutation(len(val))[:cfg.eval_prompts])

    # Each rank takes a strided slice of every epoch's batches, cut to the same count on every rank.
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size) // rt.world_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train)} training prompts do not fill one batch per rank")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    epoch_batches = {}

    def batch_for(step):
        epoch = step // steps_per_epoch
        if epoch not in epoch_batches:  # deterministic in (seed, epoch): a resumed run sees the same order
            batches = length_bucketed_batches(train.longest, cfg.batch_size, cfg.seed + epoch)
            epoch_batches.clear()
            epoch_batches[epoch] = batches[rt.rank::rt.world_size][:steps_per_epoch]
        return epoch_batches[epoch][step % steps_per_epoch]

    # 3. optimizer (AdamW, betas 0.9/0.95), resumed state, wrappers.
    # Eq. 1 sees only reward differences, so the head's bias gets a zero gradient, except for rounding
    # noise that Adam would scale up to lr-sized steps. Freeze it: step 5 sets it once training is done.
    raw_model.score_head.bias.requires_grad_(False)
    optimizer = M.configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas,
                                      rt.device_type)
    step = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step = int(resume["step"])
        torch.set_rng_state(resume["rng"])
        if "cuda_rng" in resume and rt.device_type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"])
        if rt.master:
            print(f"resumed at step {step} of {total_steps}")
        del resume
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        device_ids = [rt.device] if rt.device_type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    scaler = rt.grad_scaler()
    resume_path = os.path.join(cfg.out_dir, "resume.pt")
    if rt.master:
        print(f"{total_steps} steps of {cfg.batch_size} prompts x {rt.world_size} ranks "
              f"({steps_per_epoch} steps per epoch)")

    # 4. training: each step, B prompts, all their responses in one padded batch, eq. 1 over all pairs
    bar = tqdm(total=total_steps, initial=step, disable=not rt.master, dynamic_ncols=True)
    model.train()
    t0, tokens_seen = time.time(), 0
    try:
        while step < total_steps:
            lr = M.cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = batch_for(step)
            micro = cfg.micro_batch_size or len(rows)
            chunks = [rows[i:i + micro] for i in range(0, len(rows), micro)]
            loss_sum, correct_sum, pairs_sum = 0.0, 0.0, 0.0
            for c, chunk in enumerate(chunks):
                seqs, num_responses = train.batch(chunk)
                tokens_seen += sum(len(s) for s in seqs)
                # DDP averages gradients only on the last micro-batch's backward
                sync = not rt.ddp or c == len(chunks) - 1
                with contextlib.nullcontext() if sync else model.no_sync():
                    flat = sequence_rewards(model, seqs, rt.device, rt.autocast)  # (sum K,)
                    rewards = pad_rewards(flat, num_responses)  # (B, K_max)
                    num_responses = num_responses.to(rewards.device)
                    loss = ranking_loss(rewards, num_responses)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"step {step}: the ranking loss is {loss.item()}; stopping before the optimizer "
                            f"step. The last good state is {resume_path} (if saved); try a lower "
                            f"lr.")
                    # the batch loss is a mean over prompts, so each chunk counts by its share of prompts
                    scaler.scale(loss * len(chunk) / len(rows)).backward()
                loss_sum += loss.item() * len(chunk)
                correct, pairs = pair_accuracy(rewards.detach(), num_responses)
                correct_sum, pairs_sum = correct_sum + correct.sum().item(), pairs_sum + pairs.sum().item()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            if not torch.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips inf steps
                raise FloatingPointError(f"step {step}: gradient norm is {grad_norm.item()}; stopping before "
                                         f"the optimizer step. The last good state is {resume_path} "
                                         f"(if saved).")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_b, acc_b = loss_sum / len(rows), correct_sum / pairs_sum
            bar.update(1)
            bar.set_postfix(loss=f"{loss_b:.4f}", acc=f"{acc_b:.3f}", lr=f"{lr:.2e}")

            if step % cfg.log_interval == 0 or step == total_steps:
                dt = time.time() - t0
                tps = rt.all_reduce_mean(tokens_seen / dt) * rt.world_size
                record = {"step": step, "epoch": step / steps_per_epoch, "lr": lr,
                          "loss": rt.all_reduce_mean(loss_b), "acc": rt.all_reduce_mean(acc_b),
                          "grad_norm": grad_norm.item(), "tokens_per_s": tps}
                mfu = M.estimate_mfu(raw_model, tps / rt.world_size, rt.device)
                if mfu is not None:
                    record["mfu"] = mfu
                if rt.master:
                    M.append_jsonl(metrics_path, record)
                t0, tokens_seen = time.time(), 0
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step < total_steps:
                metrics = evaluate(raw_model, val, eval_rows, rt, cfg.eval_batch_size, texts=val_texts,
                                   show=1 if rt.master else 0)
                if rt.master:
                    M.append_jsonl(metrics_path, {"step": step, **metrics})
                    bar.write(f"step {step}: val loss {metrics['val/loss']:.4f}, "
                              f"val acc {metrics['val/acc']:.3f}")
            if cfg.ckpt_interval and step % cfg.ckpt_interval == 0 and step < total_steps and rt.master:
                save_resume(resume_path, raw_model, optimizer, cfg, tok, step)
    except KeyboardInterrupt:
        bar.close()
        if rt.master:
            save_resume(resume_path, raw_model, optimizer, cfg, tok, step)
            print(f"\ninterrupted at step {step}: saved {resume_path}; continue with --init_from=resume")
        raise SystemExit(130)
    bar.close()

    # 5. normalisation: a bias so the demonstrations' mean reward is 0 (the paper). Pairwise differences,
    # hence the loss and every accuracy, do not change; PPO's rewards become centred on the SFT behaviour.
    demos = demonstration_mean_reward(raw_model, cfg.data_dir, tok, rt, cfg.eval_batch_size, cfg.norm_demos)
    extra = {}
    if demos is None:
        if rt.master:
            print(f"warning: {cfg.data_dir} has no sft_train.jsonl (or no demonstration fits block_size): "
                  f"the reward bias is left as trained, not normalised")
    else:
        mean, n = demos
        with torch.no_grad():
            raw_model.score_head.bias -= mean
        extra.update(demo_mean_reward_before=mean, demos_scored=n)
        if rt.master:
            print(f"demonstrations: mean reward {mean:+.4f} over {n}; head bias set to "
                  f"{raw_model.score_head.bias.item():+.4f} so that their mean is 0")
    extra["reward_bias"] = raw_model.score_head.bias.item()

    # 6. final validation over every val prompt (and the synthetic labelers' judgments), then the checkpoint
    if rt.master:
        print("final validation:")
    metrics = evaluate(raw_model, val, np.arange(len(val)), rt, cfg.eval_batch_size, judge=judge,
                       texts=val_texts, show=2 if rt.master else 0)
    if rt.master:
        M.append_jsonl(metrics_path, {"step": step, "final": True, **metrics, **extra})
        for k, v in metrics.items():
            print(f"  {k:24s} {v:.4f}")
        path = os.path.join(cfg.out_dir, "reward.pt")
        M.save_checkpoint(path, stage="reward", model=raw_model, run_config=cfg, tokenizer=tok, step=step,
                          metrics=metrics, **extra)
        print(f"saved {path}")
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return {**metrics, **extra}


if __name__ == "__main__":
    main()
