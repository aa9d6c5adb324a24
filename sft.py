"""
Step 1 of InstructGPT: the base model's pretraining and supervised fine-tuning (SFT) on demonstrations.
Both are the same next-token loop; `--mode` picks the loss mask:
    pretrain  every token of plain text is a target (random windows of the pretraining stream, packed)
    sft       only the response tokens and the closing EOS are targets; prompt and padding tokens are -1

The embedded CPU default (after `python data/synthetic/prepare.py`):
    python sft.py --mode=pretrain          # the base model: a small GPT on the synthetic world's "internet"
    python sft.py                          # SFT of out/pretrain/pretrain.pt on the labelers' demonstrations
GPT-2 on a GPU, and on several GPUs:
    python sft.py --init_from=gpt2 --data_dir=data/hh_rlhf --batch_size=16 --block_size=1024 --lr=1e-5
    torchrun --standalone --nproc_per_node=8 sft.py --init_from=gpt2-medium --data_dir=data/oasst

The final model (out_dir/MODE.pt) is the one chosen on validation: by validation loss by default, or, as the
paper does for SFT, by the reward model's mean score on validation prompts with --select_rm=out/reward/reward.pt.
out_dir/resume.pt holds the latest state (optimizer, step, RNG) for --init_from=resume; Ctrl-C writes it.
"""

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data.formats import read_split
from data.loader import dataset_tokenizer, generate_responses, length_bucketed_batches, load_split, pad_right
from model import (GPT, GPTConfig, Tokenizer, append_jsonl, configure_optimizer, cosine_lr, estimate_mfu,
                   load_checkpoint, load_model, parse_config, save_checkpoint, setup_runtime)


@dataclass
class SFTConfig:
    """Pretraining (--mode=pretrain) or supervised fine-tuning (--mode=sft) of a GPT."""
    mode: str = "sft"  # pretrain: every token is a target | sft: response tokens and EOS only
    data_dir: str = "data/synthetic"  # a dataset folder in the formats of data/README.md
    out_dir: str = ""  # where checkpoints and metrics go; default out/MODE
    init_from: str = ""  # scratch | gpt2[-medium|-large|-xl] | PATH.pt | resume; default: scratch for
    #                       pretrain, out/pretrain/pretrain.pt for sft
    vocab: str = "compact"  # init_from=scratch: compact (the tokens the dataset uses) | gpt2 (all 50,257)
    # the model, for init_from=scratch (the CPU default: 4 layers, 128 wide, ~0.8M non-embedding parameters)
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    n_embd: int = 128  # width
    block_size: int = 256  # context length
    bias: bool = True  # biases in Linear and LayerNorm
    dropout: float = -1.0  # residual dropout; -1: 0.0 for pretrain, 0.2 for sft (the paper's value)
    # optimisation (the paper: AdamW betas (0.9, 0.95), cosine decay to 10%, no warmup for SFT)
    epochs: float = -1.0  # passes over the training tokens (pretrain) or examples (sft); -1: 3 pretrain, 8 sft
    batch_size: int = 32  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = -1.0  # peak learning rate; -1: 1e-3 pretrain, 3e-4 sft (tiny model from scratch)
    final_lr_ratio: float = 0.1  # cosine decay to this fraction of the peak
    warmup_steps: int = -1  # linear warmup; -1: 100 pretrain, 0 sft
    weight_decay: float = 0.1  # AdamW, on matrices only
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float = 1.0  # clip the gradient norm to this (0: off)
    # evaluation, selection, logging
    eval_interval: int = 200  # optimizer steps between evaluations (and at the end)
    eval_batches: int = 20  # validation micro-batches per evaluation
    select_rm: str = ""  # sft: choose the final model by this reward model's mean score on val prompts
    select_prompts: int = 128  # val prompts sampled for --select_rm
    max_new_tokens: int = 64  # response length for samples and --select_rm
    num_samples: int = 3  # decoded samples printed at each evaluation
    log_interval: int = 10  # steps between metrics lines
    ckpt_interval: int = 200  # steps between resume.pt saves
    # system
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:1 | mps
    dtype: str = "auto"  # auto (bf16 on CUDA where supported, else fp16; fp32 elsewhere) | float32 | bfloat16 | float16
    compile: bool = False  # torch.compile the model (CUDA)
    seed: int = 1337  # model init, data order, dropout


def resolve_defaults(cfg):
    """The -1 / empty defaults that depend on the mode, made explicit and stored in the checkpoint."""
    pre = cfg.mode == "pretrain"
    if cfg.mode not in ("pretrain", "sft"):
        raise SystemExit(f"--mode must be pretrain or sft, got {cfg.mode!r}")
    cfg.out_dir = cfg.out_dir or f"out/{cfg.mode}"
    cfg.init_from = cfg.init_from or ("scratch" if pre else "out/pretrain/pretrain.pt")
    cfg.dropout = (0.0 if pre else 0.2) if cfg.dropout < 0 else cfg.dropout
    cfg.epochs = (3.0 if pre else 8.0) if cfg.epochs < 0 else cfg.epochs
    cfg.lr = (1e-3 if pre else 3e-4) if cfg.lr < 0 else cfg.lr
    cfg.warmup_steps = (100 if pre else 0) if cfg.warmup_steps < 0 else cfg.warmup_steps
    return cfg


# -----------------------------------------------------------------------------
# batches: (x, y) with y = -1 wherever no loss is taken


def pretrain_batch(stream, batch_size, block_size, seed):
    """Random windows of the token stream: every token is a target (nanoGPT's packing)."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - block_size - 1, size=batch_size)
    chunk = torch.from_numpy(np.stack([np.asarray(stream[s:s + block_size + 1], dtype=np.int64) for s in starts]))
    return chunk[:, :-1], chunk[:, 1:]


def sft_example(split, i):
    """Prompt and response (with its EOS) of example i as one sequence, and the prompt's length."""
    prompt, response = split.prompts[i], split.responses[i]
    return np.concatenate([prompt, response]), len(prompt)


def sft_batch(split, indices):
    """Right-padded examples; targets are the next tokens of the response only (-1 on prompt and padding)."""
    seqs, prompt_lens = zip(*(sft_example(split, i) for i in indices))
    tokens, lengths = pad_right(seqs)
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    positions = torch.arange(y.size(1))[None]
    # y[t] is token t+1: a target iff token t+1 is part of the response (index >= prompt_len) and real
    is_response = (positions + 1 >= torch.tensor(prompt_lens)[:, None]) & (positions + 1 < lengths[:, None])
    y[~is_response] = -1
    return x, y


def lm_loss_sum(logits, targets):
    """Summed next-token cross-entropy over the targets that are not -1: (B, T, V), (B, T) -> scalar.
    The caller divides by the number of targets of the whole global batch."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum")


class Batches:
    """
    Micro-batch number k -> (x, y), a pure function of (seed, k, rank): a resumed run sees exactly the
    batches the uninterrupted run would have, and each DDP rank sees its own share of the global batch.
    """

    def __init__(self, cfg, split, rank=0, world_size=1, block_size=256):
        self.cfg, self.split, self.rank, self.world = cfg, split, rank, world_size
        self.block_size = block_size
        if cfg.mode == "sft":
            lengths = split.prompts.lengths + split.responses.lengths
            keep = np.nonzero(lengths <= block_size + 1)[0]  # x, y drop one token each
            if len(keep) < len(lengths):
                print(f"{split.name}: skipping {len(lengths) - len(keep)} examples longer than block_size + 1")
            self.keep, self.lengths = keep, lengths[keep]
            self.per_epoch = len(keep) // (cfg.batch_size * world_size)  # micro-batches per rank per epoch
            if self.per_epoch == 0:
                raise ValueError(f"{split.name}: {len(keep)} examples, fewer than one global batch")
        else:
            if len(split.stream) <= block_size + 1:
                raise ValueError(f"{split.name}: {len(split.stream)} tokens, fewer than one block")
            self.per_epoch = max(1, len(split.stream) // (cfg.batch_size * block_size * world_size))
        self._epoch, self._order = None, None

    def __call__(self, k):
        if self.cfg.mode == "pretrain":
            return pretrain_batch(self.split.stream, self.cfg.batch_size, self.block_size,
                                  seed=(self.cfg.seed, k, self.rank))
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = length_bucketed_batches(self.lengths, self.cfg.batch_size * self.world, self.cfg.seed + epoch)
        global_batch = self._order[j]
        mine = global_batch[self.rank::self.world]  # this rank's share of the global batch
        return sft_batch(self.split, self.keep[mine])


# -----------------------------------------------------------------------------


@torch.no_grad()
def evaluate_loss(model, batches, n, rt):
    """Mean validation loss over the first n validation micro-batches (the same ones every time)."""
    model.eval()
    losses = []
    for k in range(n):
        x, y = batches(k % (batches.per_epoch * 1000))
        with rt.autocast():
            _, loss = model(x.to(rt.device), y.to(rt.device))
        losses.append(loss.item())
    model.train()
    return rt.all_reduce_mean(sum(losses) / len(losses))


@torch.no_grad()
def rm_selection_score(model, tok, rm, prompts, cfg, rt):
    """The paper's SFT model selection: mean reward-model score of responses sampled for val prompts."""
    from reward import score_sequences  # reward.py builds on this file's outputs, so import it lazily
    from data.loader import encode_prompt
    _, _, tokens = generate_responses(model, tok, prompts, cfg.max_new_tokens, device=rt.device,
                                      autocast=rt.autocast, return_tokens=True)
    seqs = [encode_prompt(tok, p) + ids for p, ids in zip(prompts, tokens)]
    return score_sequences(rm, seqs, rt.device, rt.autocast).mean().item()


def print_samples(model, tok, cfg, val, rt):
    """A few decoded generations: continuations of pretraining text, or responses to val prompts."""
    model.eval()
    if cfg.mode == "sft":
        prompts = [r["prompt"] for r in read_split(cfg.data_dir, "sft", "val")[:cfg.num_samples]]
        texts, _ = generate_responses(model, tok, prompts, cfg.max_new_tokens, device=rt.device,
                                      autocast=rt.autocast)
        for p, t in zip(prompts, texts):
            print(f"  [prompt] {p!r}\n  [model]  {t!r}")
    else:
        for k in range(cfg.num_samples):
            start = (k * 7919) % (len(val.stream) - 16)
            idx = torch.from_numpy(np.asarray(val.stream[start:start + 16], dtype=np.int64))[None].to(rt.device)
            out = model.generate(idx, 32, temperature=1.0, top_k=None)[0].tolist()
            print(f"  [text] {tok.decode(out[:16])!r} -> {tok.decode(out[16:])!r}")
    model.train()


def main(argv=None):
    cfg = resolve_defaults(parse_config(SFTConfig, argv))
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    resume_path = os.path.join(cfg.out_dir, "resume.pt")
    final_path = os.path.join(cfg.out_dir, f"{cfg.mode}.pt")

    # model and tokenizer: a model keeps the vocabulary it was born with, so only scratch builds one
    resume = None
    if cfg.init_from == "resume":
        resume = load_checkpoint(resume_path, stages=(cfg.mode,))
        model, tok, _ = load_model(resume, dropout=cfg.dropout)
    elif cfg.init_from == "scratch":
        tok = dataset_tokenizer(cfg.data_dir, cfg.vocab)
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
    elif cfg.init_from.startswith("gpt2"):
        model, tok = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout), Tokenizer()
    else:
        model, tok, _ = load_model(cfg.init_from, stages=("pretrain", "sft"), dropout=cfg.dropout)
    block_size = min(cfg.block_size, model.config.block_size)
    model.to(rt.device)
    if rt.master:
        print(f"{cfg.mode}: {model.num_params() / 1e6:.2f}M non-embedding parameters, vocabulary {tok.vocab_size}, "
              f"device {rt.device} {rt.dtype}, {rt.world_size} process(es)")

    # data
    kind = "pretrain" if cfg.mode == "pretrain" else "sft"
    train = Batches(cfg, load_split(cfg.data_dir, kind, "train", tok), rt.rank, rt.world_size, block_size)
    val = Batches(cfg, load_split(cfg.data_dir, kind, "val", tok), rt.rank, rt.world_size, block_size)
    total_steps = max(1, math.ceil(cfg.epochs * train.per_epoch / cfg.grad_accum))

    optimizer = configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, rt.device_type)
    scaler = rt.grad_scaler()
    step, best = 0, None
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        step, best = resume["step"], resume["best"]
        torch.set_rng_state(resume["rng"])
    select_rm = None
    if cfg.select_rm and cfg.mode == "sft":
        select_rm, _, _ = load_model(cfg.select_rm, rt.device, stages=("reward",))
        select_rm.eval()
        select_prompts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", "val")[:cfg.select_prompts]]
    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)

    def save(path, **extra):
        save_checkpoint(path, stage=cfg.mode, model=raw_model, run_config=cfg, tokenizer=tok, **extra)

    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")

    def evaluate_and_select():
        """Validation loss (and RM score with --select_rm); the best model so far becomes final_path."""
        nonlocal best
        record = {"step": step, "val_loss": evaluate_loss(model, val, cfg.eval_batches, rt)}
        criterion = -record["val_loss"]
        if select_rm is not None:
            record["val_rm_score"] = rm_selection_score(raw_model, tok, select_rm, select_prompts, cfg, rt)
            criterion = record["val_rm_score"]
        if rt.master:
            improved = best is None or criterion > best
            if improved:
                best = criterion
                save(final_path, step=step)
            append_jsonl(metrics_path, record)
            tqdm.write(f"step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")
                       + (" (best: saved)" if improved else ""))
            print_samples(raw_model, tok, cfg, val.split, rt)
    bar = tqdm(total=total_steps, initial=step, disable=not rt.master, desc=cfg.mode, dynamic_ncols=True)
    rng_state = torch.get_rng_state()
    t0, tokens_seen = time.time(), 0
    try:
        while True:
            # evaluate, choose the final model, show samples
            if step % cfg.eval_interval == 0 or step == total_steps:
                with torch.random.fork_rng(devices=[rt.device] if rt.device_type == "cuda" else []):
                    # evaluation draws its own random numbers: training's dropout stream stays the same
                    # whether or not (and however often) a run evaluates, so resumed runs stay exact
                    evaluate_and_select()
            if step >= total_steps:
                break


            # one optimizer step over grad_accum micro-batches. The loss is the mean over every target token
            # of the global batch (all micro-batches, all ranks), so DDP and accumulation change nothing.
            rng_state = torch.get_rng_state()  # what resume.pt stores, so a resumed run draws the same dropout
            lr = cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = [train(step * cfg.grad_accum + m) for m in range(cfg.grad_accum)]
            n_targets = rt.all_reduce_sum(sum(int((y != -1).sum()) for _, y in micro_batches))
            loss_sum = 0.0
            for m, (x, y) in enumerate(micro_batches):
                x, y = x.to(rt.device), y.to(rt.device)
                tokens_seen += x.numel()
                sync = m == cfg.grad_accum - 1 or not rt.ddp  # all-reduce gradients once per step
                with (nullcontext() if sync else model.no_sync()), rt.autocast():
                    logits, _ = model(x)
                    loss = lm_loss_sum(logits, y)
                # DDP averages gradients over ranks, hence the world_size
                scaler.scale(loss * rt.world_size / n_targets).backward()
                loss_sum += loss.item()
            loss_value = rt.all_reduce_sum(loss_sum) / n_targets
            if not math.isfinite(loss_value):  # before the step: the model and checkpoints stay good
                raise FloatingPointError(f"{cfg.mode}: loss is {loss_value} at step {step}; stopping. The last "
                                         f"good checkpoints are {final_path} and {resume_path}")
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            # log and checkpoint
            if rt.master:
                tps = tokens_seen * rt.world_size / max(time.time() - t0, 1e-9)  # tokens through the model
                postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tps:,.0f}"}
                mfu = estimate_mfu(raw_model, tps, rt.device)
                if mfu is not None:
                    postfix["mfu"] = f"{100 * mfu:.1f}%"
                bar.set_postfix(postfix)
                bar.update(1)
                if step % cfg.log_interval == 0:
                    append_jsonl(metrics_path, {"step": step, "loss": loss_value, "lr": lr, "tokens_per_s": tps,
                                                **({"mfu": mfu} if mfu is not None else {})})
                if step % cfg.ckpt_interval == 0:
                    save(resume_path, optimizer=optimizer.state_dict(), step=step, best=best, rng=torch.get_rng_state())
    except KeyboardInterrupt:
        if rt.master:
            save(resume_path, optimizer=optimizer.state_dict(), step=step, best=best, rng=rng_state)
            print(f"\ninterrupted at step {step}: saved {resume_path}; continue with --init_from=resume")
        raise
    finally:
        bar.close()
    if rt.master:
        save(resume_path, optimizer=optimizer.state_dict(), step=step, best=best, rng=torch.get_rng_state())
        print(f"done: {final_path} (selected by {'reward model score' if select_rm is not None else 'val loss'})")
    if rt.ddp:
        torch.distributed.destroy_process_group()
    return final_path


if __name__ == "__main__":
    main()
