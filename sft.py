"""
Step 1 of InstructGPT (section 3.5): the base model's pretraining and supervised fine-tuning (SFT) on
demonstrations. Both are the same next-token loop; `--mode` picks the loss mask:
    pretrain  every token of plain text is a target (random windows of the pretraining stream, packed)
    sft       only the response tokens and the closing EOS are targets; prompt and padding tokens are -1

The embedded CPU default (after `python data/synthetic/prepare.py`):
    python sft.py --mode=pretrain          # the base model: a small GPT on the synthetic world's "internet"
    python sft.py                          # SFT of out/pretrain/pretrain.pt on the labelers' demonstrations
    python sft.py --init_from=resume       # continue an interrupted run from out/sft/resume.pt
GPT-2 on a GPU, and on several GPUs:
    python sft.py --init_from=gpt2 --data_dir=data/hh_rlhf --batch_size=16 --lr=1e-5
    torchrun --standalone --nproc_per_node=8 sft.py --init_from=gpt2-medium --data_dir=data/oasst

The final model (out_dir/MODE.pt) is the one chosen on validation among those it trained: by validation loss,
or, as the paper does for SFT, by a reward model's mean score on validation prompts with
--select_rm=out/reward/reward.pt.
"""

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import (
    ConfigError,
    Interrupt,
    MetricsLog,
    check_ranges,
    configure_optimizer,
    cosine_lr,
    estimate_mfu,
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
from data.formats import read_split
from data.loader import (
    answerable,
    encode_prompt,
    fitting,
    generate_responses,
    length_bucketed_batches,
    load_split,
    random_windows,
)
from data.tokenizer import dataset_tokenizer
from model import GPT, GPTConfig, generate, load_model, pad_right, save_checkpoint, score_sequences


@dataclass
class SFTConfig:
    """Pretraining (--mode=pretrain) or supervised fine-tuning (--mode=sft) of a GPT."""
    mode: str = "sft"  # pretrain: every token is a target | sft: response tokens and EOS only
    data_dir: str = "data/synthetic"  # a dataset folder in the formats of data/README.md
    out_dir: str = "out/sft"  # where MODE.pt, resume.pt and metrics.jsonl go
    init_from: str = "out/pretrain/pretrain.pt"  # scratch | gpt2[-medium|-large|-xl] | GPT-2 DIR | PATH.pt | resume
    vocab: str = "compact"  # init_from=scratch: compact (the tokens the dataset uses) | gpt2 (all 50,257)
    # the model, for init_from=scratch (the CPU default: 4 layers, 128 wide, ~0.8M non-embedding parameters)
    n_layer: int = ranged(4, ">= 1")  # transformer blocks
    n_head: int = ranged(4, ">= 1")  # attention heads
    n_embd: int = ranged(128, ">= 1")  # width
    block_size: int = ranged(256, ">= 1")  # context length
    bias: bool = True  # biases in Linear and LayerNorm
    dropout: float = ranged(0.0, "[0, 1)")  # residual dropout (the paper: 0.2 for 175B; a tiny model needs every unit)
    # optimisation (the paper: AdamW betas (0.9, 0.95), cosine decay to 10%, no warmup for SFT)
    epochs: float = ranged(6.0, "(0, 10000]")  # passes over the training examples (sft) or tokens (pretrain)
    batch_size: int = ranged(32, ">= 1")  # sequences per micro-batch per process
    grad_accum: int = ranged(1, ">= 1")  # micro-batches per optimizer step
    lr: float = ranged(1e-3, "> 0")  # peak learning rate (a tiny model needs far more than the paper's 9.65e-6)
    final_lr_ratio: float = ranged(0.1, "[0, 1]")  # cosine decay to this fraction of the peak
    warmup_steps: int = ranged(0, ">= 0")  # linear warmup
    weight_decay: float = ranged(0.1, ">= 0")  # AdamW, on matrices only
    betas: tuple[float, float] = ranged((0.9, 0.95), "[0, 1)")  # AdamW betas
    grad_clip: float = ranged(1.0, ">= 0")  # clip the gradient norm to this (0: off)
    # evaluation, selection, logging
    eval_interval: int = ranged(200, ">= 1")  # optimizer steps between evaluations (and at the end)
    eval_batches: int = ranged(20, ">= 1")  # validation micro-batches per evaluation
    select_rm: str = ""  # sft: choose the final model by this reward model's mean score on val prompts
    select_prompts: int = ranged(128, ">= 1")  # val prompts sampled for --select_rm
    max_new_tokens: int = ranged(64, ">= 1")  # response length for samples and --select_rm
    num_samples: int = ranged(3, ">= 0")  # decoded samples printed at each evaluation
    log_interval: int = ranged(10, ">= 1")  # steps between metrics lines
    ckpt_interval: int = ranged(200, ">= 1")  # steps between resume.pt saves (Ctrl-C saves too)
    # system
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:1 | mps
    dtype: str = "auto"  # auto (native bf16 on GPU or CPU, fp16 on older GPUs, else fp32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model (CUDA)
    seed: int = ranged(1337, "[0, 2**32)")  # model init, data order, dropout


# The defaults of --mode=pretrain where they differ from SFT's (--help shows both). Batch 8 because the tiny
# base model is short of optimizer steps, not of tokens (the trial is in docs/experiments.md).
MODES = {"sft": {}, "pretrain": dict(out_dir="out/pretrain", init_from="scratch", dropout=0.0, epochs=2.0,
                                     lr=2e-3, warmup_steps=100, batch_size=8)}


def check_config(cfg):
    """Each field in its range (a config made in code skips parse_config) and the settings that contradict
    each other, refused before anything loads."""
    check_ranges(cfg)
    if cfg.init_from == "scratch" and cfg.n_embd % cfg.n_head:
        raise ConfigError(f"--n_embd={cfg.n_embd} must be a multiple of --n_head={cfg.n_head}")
    if cfg.select_rm and cfg.mode != "sft":
        raise ConfigError(f"--select_rm chooses an SFT model; --mode={cfg.mode} selects by val loss")


# -----------------------------------------------------------------------------
# batches: (x, y) with y = -1 wherever no loss is taken


def sft_batch(split, indices):
    """Right-padded prompt + response (+ EOS) sequences; the targets are the next tokens of the response
    only (-1 on prompt and padding): SFT learns to answer, not to ask."""
    prompts = [split.prompts[i] for i in indices]
    tokens, lengths = pad_right([np.concatenate([p, split.responses[i]]) for p, i in zip(prompts, indices)])
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    positions = torch.arange(y.size(1))[None]
    # y[t] is token t+1: a target iff token t+1 is part of the response (index >= prompt_len) and real
    prompt_lens = torch.tensor([len(p) for p in prompts])[:, None]
    y[~((positions + 1 >= prompt_lens) & (positions + 1 < lengths[:, None]))] = -1
    return x, y


def lm_loss_sum(logits, targets):
    """Summed next-token cross-entropy over the targets that are not -1: (B, T, V), (B, T) -> scalar.
    The caller divides by the number of targets of the whole global batch."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum")


class Batches:
    """Micro-batch number k -> (x, y), a pure function of (seed, k, rank): a resumed run sees exactly the
    batches the uninterrupted run would have, and each DDP rank its own share of the global batch."""

    def __init__(self, cfg, split, block_size, rank=0, world_size=1):
        self.cfg, self.split, self.block_size, self.rank, self.world = cfg, split, block_size, rank, world_size
        if cfg.mode == "sft":
            lengths = split.prompts.lengths + split.responses.lengths
            self.keep = fitting(lengths, block_size + 1, split.name, rank == 0)  # x, y drop one token each
            self.lengths = lengths[self.keep]
            self.per_epoch = len(self.keep) // (cfg.batch_size * world_size)  # micro-batches per rank per epoch
        else:
            self.per_epoch = len(split.stream) // (cfg.batch_size * block_size * world_size)
        if self.per_epoch == 0:
            raise ConfigError(f"{split.name}: fewer examples than one global batch of "
                              f"{cfg.batch_size} x {world_size}")
        self._epoch, self._order = None, None

    def __call__(self, k):
        cfg = self.cfg
        if cfg.mode == "pretrain":
            return random_windows(self.split.stream, cfg.batch_size, self.block_size, [cfg.seed, k, self.rank])
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            size = cfg.batch_size * self.world  # full global batches only: every rank gets batch_size
            batches = length_bucketed_batches(self.lengths, size, cfg.seed + epoch)
            self._order = [b for b in batches if len(b) == size]
        return sft_batch(self.split, self.keep[self._order[j][self.rank::self.world]])


# -----------------------------------------------------------------------------
# the steps of main


def init_model(cfg, resume_path):
    """(model, tokenizer, source): a new GPT (scratch), GPT-2's weights (by name, or a directory in the Hugging
    Face layout), or a checkpoint of this project (source is the file read). A model keeps the vocabulary it
    was born with, so only scratch builds one."""
    if cfg.init_from == "scratch":
        tok = dataset_tokenizer(cfg.data_dir, cfg.vocab)
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                              n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias))
        return model, tok, cfg.init_from
    resume = cfg.init_from == "resume"
    source = resume_path if resume else cfg.init_from
    model, tok, _ = load_lm(source, stages=("resume",) if resume else ("pretrain", "sft"), dropout=cfg.dropout,
                            default=cfg.init_from == MODES[cfg.mode].get("init_from", SFTConfig.init_from))
    return model, tok, source


def load_batches(cfg, tok, source, block_size, rt):
    """(train, val) Batches of this rank: windows of the pretraining text, or the demonstrations."""
    kind = "pretrain" if cfg.mode == "pretrain" else "sft"
    with vocabulary_of(source, cfg.data_dir):
        train = Batches(cfg, load_split(cfg.data_dir, kind, "train", tok), block_size, rt.rank, rt.world_size)
        val = Batches(cfg, load_split(cfg.data_dir, kind, "val", tok), block_size, rt.rank, rt.world_size)
    return train, val


def accumulate_gradients(train_model, micro_batches, scaler, rt):
    """The backward passes of one optimizer step over its micro-batches [(x, y)]; returns the loss. The loss is
    the mean over every target token of the global batch (all micro-batches, all ranks), so that DDP and
    gradient accumulation change nothing."""
    n_targets = rt.sum(sum(int((y != -1).sum()) for _, y in micro_batches))
    loss_sum = 0.0
    for m, (x, y) in enumerate(micro_batches):
        x, y = x.to(rt.device), y.to(rt.device)
        sync = m == len(micro_batches) - 1 or not rt.ddp  # all-reduce the gradients once per step
        with nullcontext() if sync else train_model.no_sync(), rt.autocast():
            loss = lm_loss_sum(train_model(x)[0], y)
        scaler.scale(loss * rt.world_size / n_targets).backward()  # DDP averages over ranks
        loss_sum += loss.item()
    return rt.sum(loss_sum) / n_targets


# -----------------------------------------------------------------------------
# evaluation and the choice of the final model


@torch.no_grad()
def evaluate_loss(model, batches, n, rt):
    """Mean validation loss over the first n validation micro-batches (the same ones every time)."""
    model.eval()
    losses = []
    for k in range(n):
        x, y = batches(k % batches.per_epoch)
        with rt.autocast():
            losses.append(model(x.to(rt.device), y.to(rt.device))[1].item())
    model.train()
    return rt.mean(sum(losses) / len(losses))


def rm_selection_score(model, tok, rm, prompts, cfg, rt):
    """The paper's SFT model selection: the mean reward-model score of responses sampled for val prompts."""
    _, _, tokens = generate_responses(model, tok, prompts, cfg.max_new_tokens, seed=cfg.seed,
                                      autocast=rt.autocast)
    seqs = [encode_prompt(tok, p) + ids for p, ids in zip(prompts, tokens)]
    return score_sequences(rm, seqs, rt.autocast).mean().item()


def print_samples(model, tok, cfg, val, rt):
    """A few decoded generations: responses to val prompts, or continuations of pretraining text."""
    if cfg.mode == "sft":
        prompts = [r["prompt"] for r in read_split(cfg.data_dir, "sft", "val")[:cfg.num_samples]]
        room = model.config.block_size - cfg.max_new_tokens  # a prompt without room to answer shows nothing
        prompts = [p for p in prompts if len(encode_prompt(tok, p)) <= room]
        texts, _, _ = generate_responses(model, tok, prompts, cfg.max_new_tokens, autocast=rt.autocast)
        for p, t in zip(prompts, texts):
            tqdm.write(f"  [prompt] {p!r}\n  [model]  {t!r}")
    elif cfg.num_samples:
        starts = range(0, len(val.stream) - 16, (len(val.stream) - 16) // cfg.num_samples)[:cfg.num_samples]
        out = generate(model, [val.stream[s:s + 16] for s in starts], 32, autocast=rt.autocast)
        for s, cont in zip(starts, out["response_lists"]):
            tqdm.write(f"  [text] {tok.decode(val.stream[s:s + 16])!r} -> {tok.decode(cont)!r}")


class Selection:
    """The final model is the best one on validation so far, saved as final_path: by validation loss or, as
    the paper chooses its SFT model, by a reward model's mean score (--select_rm). Only trained models are
    candidates: the evaluation before step 1 is the baseline in the log, and no MODE.pt exists before a step.
    best: the criterion's best value so far (higher is better), which resume.pt keeps."""

    def __init__(self, cfg, rt, tok, final_path, block_size, best=None):
        self.cfg, self.rt, self.tok, self.final_path, self.best = cfg, rt, tok, final_path, best
        self.rm = self.prompts = None
        if cfg.select_rm and cfg.mode == "sft":
            self.rm = load_model(cfg.select_rm, rt.device, stages=("reward",))[0].eval()
            prompts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", "val")[:cfg.select_prompts]]
            self.prompts = answerable(tok, prompts, block_size, cfg.max_new_tokens, "--select_rm prompts", rt.master)

    def evaluate(self, step, model, train_model, val, log):
        """Validation loss (and RM score), logged; an improvement is saved."""
        cfg, rt, tok = self.cfg, self.rt, self.tok
        # evaluation draws its own random numbers: training's dropout stream is the same whether or not (and
        # however often) a run evaluates, so resumed runs stay exact
        with torch.random.fork_rng(devices=[rt.device] if rt.device_type == "cuda" else []):
            record = {"step": step, "val_loss": evaluate_loss(train_model, val, cfg.eval_batches, rt)}
            if self.rm is not None:
                record["val_rm_score"] = rt.mean(rm_selection_score(model, tok, self.rm, self.prompts, cfg, rt))
            criterion = record["val_rm_score"] if self.rm is not None else -record["val_loss"]
            improved = step > 0 and (self.best is None or criterion > self.best)  # the start: logged only
            self.best = criterion if improved else self.best
            if rt.master:
                if improved:
                    save_checkpoint(self.final_path, stage=cfg.mode, model=model, run_config=cfg, tokenizer=tok,
                                    step=step)
                log(record)
                figures = " | ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "step")
                tqdm.write(f"step {step}: {figures}" + (" (best: saved)" if improved else ""))
                print_samples(model, tok, cfg, val.split, rt)


# -----------------------------------------------------------------------------


def main(argv=None):
    cfg = argv if isinstance(argv, SFTConfig) else parse_config(SFTConfig, argv, MODES)
    check_config(cfg)
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    os.makedirs(cfg.out_dir, exist_ok=True)
    resume_path = os.path.join(cfg.out_dir, "resume.pt")
    final_path = os.path.join(cfg.out_dir, f"{cfg.mode}.pt")  # the model chosen on validation
    resume = cfg.init_from == "resume"

    # 1. the model: a new GPT, GPT-2's weights, or a checkpoint (SFT starts from the base model)
    model, tok, source = init_model(cfg, resume_path)
    block_size = min(cfg.block_size, model.config.block_size)
    model.to(rt.device)
    if rt.master:
        print(f"{cfg.mode}: {model.num_params() / 1e6:.2f}M non-embedding parameters, vocabulary "
              f"{tok.vocab_size}, device {rt.device} {rt.dtype}, {rt.world_size} process(es)")

    # 2. data: packed windows of plain text, or demonstrations whose prompt tokens are no targets
    train, val = load_batches(cfg, tok, source, block_size, rt)
    total_steps = max(1, math.ceil(cfg.epochs * train.per_epoch / cfg.grad_accum))

    # 3. optimizer, the resumed state, and the choice of the final model
    optimizer = configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, rt.device_type)
    step, best = 0, None
    if resume:
        state = load_resume(resume_path, cfg.mode, rt, {"model": optimizer})
        step, best = state["step"], state["best"]
        if step >= total_steps and rt.master:
            print(f"{resume_path} is at step {step}, the end of this run ({total_steps} steps): nothing to train")
    selection = Selection(cfg, rt, tok, final_path, block_size, best)
    train_model = rt.wrap(torch.compile(model) if cfg.compile else model)
    scaler, log = rt.grad_scaler(), MetricsLog(cfg.out_dir, rt.master, step if resume else None)

    # 4. training: next-token loss on the targets, cosine lr, evaluation and selection every eval_interval
    bar = tqdm(total=total_steps, initial=step, disable=not rt.master, desc=cfg.mode, dynamic_ncols=True)
    if step == 0:
        selection.evaluate(step, model, train_model, val, log)
    t0, tokens_seen = time.time(), 0  # the loop's own tokens/s: the evaluation before step 1 is not in it
    with Interrupt(rt) as interrupt:
        while step < total_steps:
            lr = cosine_lr(step, total_steps, cfg.lr, cfg.warmup_steps, cfg.final_lr_ratio)
            set_lr(optimizer, lr)
            micro_batches = [train(step * cfg.grad_accum + m) for m in range(cfg.grad_accum)]
            tokens_seen += sum(x.numel() for x, _ in micro_batches)
            loss = accumulate_gradients(train_model, micro_batches, scaler, rt)
            optimizer_step(train_model, optimizer, scaler, cfg.grad_clip, f"at step {step} (loss {loss})")
            step += 1

            tps = tokens_seen * rt.world_size / max(time.time() - t0, 1e-9)  # tokens through the model
            mfu = estimate_mfu(model, tps, rt.device)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}",
                            **({"mfu": f"{100 * mfu:.1f}%"} if mfu is not None else {}))
            bar.update(1)
            if step % cfg.log_interval == 0:
                log({"step": step, "loss": loss, "lr": lr, "tokens_per_s": tps} | ({"mfu": mfu} if mfu else {}))
            if step % cfg.eval_interval == 0 or step == total_steps:  # before the save: resume never repeats it
                selection.evaluate(step, model, train_model, val, log)
            if step % cfg.ckpt_interval == 0 or step == total_steps or interrupt.requested():
                save_resume(resume_path, rt, model=model, run_config=cfg, tokenizer=tok, of=cfg.mode, step=step,
                            optimizers={"model": optimizer}, best=selection.best)
                if interrupt.requested() and step < total_steps:
                    print(f"interrupted: saved {resume_path}; continue with --init_from=resume")
                    raise SystemExit(130)
    bar.close()
    if rt.master:
        by = "reward model score" if selection.rm is not None else "val loss"
        print(f"done: {final_path} (selected by {by})")
    rt.close()
    return final_path


if __name__ == "__main__":
    run(main)
