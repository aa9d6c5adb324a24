"""
Benchmarks: this project's GPT, sampler, PPO and stage scripts next to what a reader would otherwise use,
in one run on one machine (as nanoGPT's bench.py, with the peers beside it).

    echo torch==2.13.0 > /tmp/c.txt    # the torch you have: an unpinned install pulls a CUDA build of GBs
    pip install -c /tmp/c.txt transformers "trl==1.12.0"    # the peers; optional, never in requirements.txt
    python bench.py                              # every section: out/bench.json and a table
    python bench.py --sections=train,sample      # some sections; out/bench.json keeps the others' entries
    python bench.py --device=cuda                # on a GPU: the same sections there, and gpt2

Both sides of a comparison get the same model shape (the pipeline's default: sft.py's 4 layers x 128 wide,
block 256, the synthetic world's compact vocabulary), batch, threads, warm-up and dtype (the pipeline's: bf16
autocast on a CPU with native bf16, else fp32). The sides take turns, `repeats` times, and each keeps its
best time, so that a slow moment of a shared machine hurts neither side alone.

    matmul  the machine's matmul FLOP/s: a large square matmul in the training dtype
    train   a training step (forward, backward, clip, AdamW) of model.py vs transformers' GPT2LMHeadModel
            (its sdpa and eager attention; the faster counts, here and for sampling);
            model.py's model FLOPs/s (6N + attention, as nanoGPT counts them) over the matmul's;
            also fp32, 1 thread and torch.compile
    sample  model.generate with the KV cache vs transformers' generate (greedy, EOS off: equal work), and
            vs model.generate without the cache at several lengths
    ppo     ppo.py's iteration vs TRL's PPOTrainer (episodes/s) at equal sizes and settings
    stages  pretrain, sft, reward and ppo run briefly by their own main() on a small synthetic world: the
            training tokens/s of the script over that of a bare loop of the same step (taking turns too)
    gpt2    (CUDA by default) GPT-2 124M from random weights, block 1024, trained as the GPU recipe does
            (bf16 autocast, SDPA's flash kernel, fused AdamW, torch.compile): tokens/s and MFU against the
            GPU's datasheet bf16 peak, next to GPT2LMHeadModel with the same settings

On a GPU, `--n_layer=12 --n_head=12 --n_embd=768 --vocab_size=50304` gives the sample and ppo sections
GPT-2 124M's shape too.
"""

import contextlib
import dataclasses
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import ppo
import reward
import sft
from common import (
    ConfigError,
    check_ranges,
    configure_optimizer,
    cpu_has_bf16,
    flops_per_token,
    gpu_peak_flops,
    load_lm,
    optimizer_step,
    parse_config,
    ranged,
    run,
    setup_runtime,
)
from data.formats import atomic_write, read_split
from data.loader import encode_prompt, length_bucketed_batches, load_split, random_windows
from data.synthetic import prepare
from data.tokenizer import dataset_tokenizer
from model import (
    GPT,
    GPTConfig,
    generate,
    last_token_scores,
    pad_left,
    response_logprobs,
    save_checkpoint,
    score_sequences,
)

SECTIONS = ("matmul", "train", "sample", "ppo", "stages", "gpt2")
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)  # the gpt2 section's model (GPT-2 small)


@dataclass
class BenchConfig:
    """Benchmarks side by side with transformers and TRL (peers skipped, and said so, when not installed)."""
    sections: tuple[str, ...] = ()  # which to run: matmul,train,sample,ppo,stages,gpt2; () = all (gpt2 on CUDA)
    device: str = "auto"  # auto (cuda if there is one) | cpu | cuda
    out: str = "out/bench.json"  # results, merged into what an earlier run wrote there
    work_dir: str = ""  # the synthetic world and checkpoints go here; "" = a temporary folder
    peers: bool = True  # compare with transformers / TRL where installed
    # the model (sft.py's defaults; the vocabulary is the synthetic world's)
    n_layer: int = ranged(4, ">= 1")  # transformer blocks
    n_head: int = ranged(4, ">= 1")  # attention heads
    n_embd: int = ranged(128, ">= 1")  # width
    block_size: int = ranged(256, ">= 1")  # context length
    vocab_size: int = ranged(0, ">= 0")  # 0 = the synthetic world's compact vocabulary (its prompts fit any larger one)
    batch_size: int = ranged(32, ">= 1")  # training sequences per step
    # measurement
    dtype: str = "auto"  # auto (the pipeline's: bf16 on a CPU with native bf16, else fp32) | float32 | bfloat16
    threads: int = ranged(0, ">= 0")  # torch threads; 0 = torch's default (one per core)
    warmup: int = ranged(2, ">= 0")  # untimed steps before each timing
    steps: int = ranged(5, ">= 1")  # timed steps (training) per repeat
    repeats: int = ranged(3, ">= 1")  # the sides take turns this many times; each keeps its best
    matmul_size: int = ranged(0, ">= 0")  # the matmul is n x n; 0 = 2048 on a CPU, 8192 on a GPU (enough for its peak)
    extras: bool = True  # train: also fp32, 1 thread and torch.compile
    # sampling
    sample_prompts: int = ranged(64, ">= 1")  # prompts per generate call (synthetic-world prompts)
    sample_new_tokens: int = ranged(64, ">= 1")  # new tokens per prompt, vs transformers
    no_cache_lengths: tuple[int, ...] = ranged((2, 8, 32, 128), ">= 1")  # new tokens per prompt, cache vs no cache
    # PPO (ppo.py's defaults)
    ppo_iterations: int = ranged(3, ">= 1")  # timed iterations, after one warm-up iteration
    ppo_batch_size: int = ranged(64, ">= 1")  # episodes per iteration
    ppo_minibatch_size: int = ranged(16, ">= 1")  # episodes per optimizer step
    ppo_epochs: int = ranged(2, ">= 1")  # passes over each batch
    ppo_new_tokens: int = ranged(48, ">= 1")  # response length limit
    # stages
    world_scale: float = ranged(0.2, "> 0")  # size of the synthetic world (prepare.py --scale)
    # gpt2
    gpt2_batch_size: int = ranged(16, ">= 1")  # sequences of 1,024 tokens per step
    gpt2_vocab_size: int = ranged(50304, ">= 1")  # GPT-2's 50,257 padded to a multiple of 64 (nanoGPT: faster matmuls)
    gpt2_steps: int = ranged(10, ">= 1")  # timed steps per repeat
    gpt2_compile: bool = True  # also torch.compile both sides (the first step compiles: timed apart)
    stage_steps: int = ranged(30, ">= 3")  # optimizer steps of each stage run (PPO: ppo_iterations + 1 iterations)
    seed: int = ranged(1337, "[0, 2**32)")  # models, batches, samples


# -----------------------------------------------------------------------------
# timing


def best_rates(fns, work, cfg, steps=1, warmup=None, repeats=None):
    """{name: best work/second}: the functions (one step each) take turns, cfg.repeats times, each run for
    cfg.warmup untimed and `steps` timed calls."""
    rates = {name: 0.0 for name in fns}
    for _ in range(cfg.repeats if repeats is None else repeats):
        for name, fn in fns.items():
            for _ in range(cfg.warmup if warmup is None else warmup):
                fn()
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            rates[name] = max(rates[name], work[name] * steps / (time.perf_counter() - t0))
    return rates


def sync():
    """Wait for the GPU's queued work, so the clock reads finished work (CUDA runs asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def train_step(model, loss_fn, x, y, rt):
    """One training step as the stages take it: autocast forward, backward, clip, AdamW (common.py's)."""
    opt = configure_optimizer(model, 1e-4, device_type=rt.device_type)
    scaler = rt.grad_scaler()

    def step():
        with rt.autocast():
            loss = loss_fn(model, x, y)
        loss.backward()
        optimizer_step(model, opt, scaler, 1.0, "in bench.py")
    return step


def lm_loss(logits, y):
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1)


# -----------------------------------------------------------------------------
# peers: transformers and TRL, when installed


def peer_versions():
    versions = {}
    for name in ("transformers", "trl"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def hf_gpt2(model_cfg, attn="sdpa", scalar_head=False, pad_id=None):
    """transformers' GPT-2 with model.py's shape: tied embeddings, tanh GELU, no dropout."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
    c = GPT2Config(vocab_size=model_cfg.vocab_size, n_positions=model_cfg.block_size, n_embd=model_cfg.n_embd,
                   n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                   attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=pad_id, num_labels=1,
                   attn_implementation=attn)
    return (GPT2ForSequenceClassification if scalar_head else GPT2LMHeadModel)(c)


# -----------------------------------------------------------------------------
# sections


def bench_matmul(cfg, rt):
    """FLOP/s of an n x n matmul in the dtype the pipeline's matmuls run in."""
    dtype = torch.bfloat16 if rt.dtype == "bfloat16" else torch.float32
    n = cfg.matmul_size or (8192 if rt.device_type == "cuda" else 2048)
    a, b = (torch.randn(n, n, dtype=dtype, device=rt.device) for _ in range(2))
    steps = 20 if rt.device_type == "cuda" else 3  # 8192^3 is 1.1 TFLOP: about 1 ms at a GPU's peak
    rate = best_rates({"matmul": lambda: a @ b}, {"matmul": 2 * n ** 3}, cfg, steps=steps)["matmul"]
    return {"matmul_flops_per_s": rate, "size": n, "dtype": str(dtype).removeprefix("torch.")}


def bench_train(cfg, rt, model_cfg, peak, versions):
    """Training tokens/s of model.py vs GPT2LMHeadModel (sdpa and eager attention: the faster counts)."""
    torch.manual_seed(cfg.seed)
    B, T = cfg.batch_size, cfg.block_size
    x = torch.randint(model_cfg.vocab_size, (B, T), device=rt.device)
    y = torch.randint(model_cfg.vocab_size, (B, T), device=rt.device)
    ours = GPT(model_cfg).to(rt.device)
    steps = {"ours": train_step(ours, lambda m, x, y: lm_loss(m(x)[0], y), x, y, rt)}
    if versions["transformers"] and cfg.peers:
        for attn in ("sdpa", "eager"):
            steps[f"transformers_{attn}"] = train_step(
                hf_gpt2(model_cfg, attn).to(rt.device),
                lambda m, x, y: lm_loss(m(input_ids=x, use_cache=False).logits, y), x, y, rt)
    rates = best_rates(steps, {k: B * T for k in steps}, cfg, cfg.steps)
    theirs = max((v for k, v in rates.items() if k != "ours"), default=None)
    fpt = flops_per_token(ours, T)
    result = {
        "train_vs_transformers": {
            "ratio": rates["ours"] / theirs if theirs else None, "ours_tokens_per_s": rates["ours"],
            **{f"{k}_tokens_per_s": v for k, v in rates.items() if k != "ours"},
            "shape": f"{model_cfg.n_layer}x{model_cfg.n_embd}, vocab {model_cfg.vocab_size}, batch {B}x{T}",
            "dtype": rt.dtype, **({} if theirs else {"skipped": "transformers not installed (or --peers=false)"})},
        "matmul_peak_fraction": {
            "fraction": fpt * rates["ours"] / peak["matmul_flops_per_s"], "flops_per_token": fpt,
            "model_flops_per_s": fpt * rates["ours"], **peak},
    }
    if cfg.extras:
        result["train_settings"] = bench_train_settings(cfg, rt, model_cfg, x, y, rates["ours"])
    return result


def bench_train_settings(cfg, rt, model_cfg, x, y, default_rate):
    """model.py's training tokens/s in fp32, with 1 thread, and torch.compile'd (with its compile time)."""
    B, T = x.shape
    out = {"default": {"tokens_per_s": default_rate, "dtype": rt.dtype, "threads": torch.get_num_threads()}}
    fp32 = dataclasses.replace(rt, dtype="float32")
    rates = best_rates({"float32": train_step(GPT(model_cfg).to(rt.device), lambda m, x, y: lm_loss(m(x)[0], y),
                                              x, y, fp32)}, {"float32": B * T}, cfg, cfg.steps)
    out["float32"] = {"tokens_per_s": rates["float32"]}
    threads = torch.get_num_threads()
    if threads > 1 and rt.device_type == "cpu":  # threads are a CPU's setting
        torch.set_num_threads(1)
        rates = best_rates({"one_thread": train_step(GPT(model_cfg).to(rt.device),
                                                     lambda m, x, y: lm_loss(m(x)[0], y), x, y, rt)},
                           {"one_thread": B * T}, cfg, cfg.steps)
        torch.set_num_threads(threads)
        out["one_thread"] = {"tokens_per_s": rates["one_thread"]}
    model = GPT(model_cfg).to(rt.device)
    compiled = torch.compile(model)
    step = train_step(model, lambda m, x, y: lm_loss(compiled(x)[0], y), x, y, rt)
    t0 = time.perf_counter()
    step()
    compile_s = time.perf_counter() - t0
    rate = best_rates({"compiled": step}, {"compiled": B * T}, cfg, cfg.steps)["compiled"]
    out["compile"] = {"tokens_per_s": rate, "first_step_seconds": compile_s}
    return out


def bench_sample(cfg, rt, model_cfg, prompts, versions):
    """Sampling tokens/s: model.generate with the KV cache vs transformers' generate, and vs no cache."""
    torch.manual_seed(cfg.seed)
    ours = GPT(model_cfg).to(rt.device).eval()
    n_new = min(cfg.sample_new_tokens, model_cfg.block_size - max(map(len, prompts)))

    def ours_fn(n, use_cache=True):
        return lambda: generate(ours, prompts, n, temperature=0, use_cache=use_cache, autocast=rt.autocast)

    fns = {"ours": ours_fn(n_new)}
    if versions["transformers"] and cfg.peers:
        idx, mask = (t.to(rt.device) for t in pad_left(prompts))
        for attn in ("sdpa", "eager"):
            hf = hf_gpt2(model_cfg, attn, pad_id=0).to(rt.device).eval()

            def hf_fn(hf=hf):
                with torch.no_grad(), rt.autocast():
                    out = hf.generate(input_ids=idx, attention_mask=mask.long(), max_new_tokens=n_new,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)
                assert out.shape[1] == idx.shape[1] + n_new  # EOS off: every row got every token
            fns[f"transformers_{attn}"] = hf_fn
    rates = best_rates(fns, {k: len(prompts) * n_new for k in fns}, cfg, warmup=1)
    theirs = max((v for k, v in rates.items() if k != "ours"), default=None)
    result = {"sample_vs_transformers": {
        "ratio": rates["ours"] / theirs if theirs else None, "ours_tokens_per_s": rates["ours"],
        **{f"{k}_tokens_per_s": v for k, v in rates.items() if k != "ours"},
        "prompts": len(prompts), "new_tokens": n_new, "decoding": "greedy, EOS off", "dtype": rt.dtype,
        **({} if theirs else {"skipped": "transformers not installed (or --peers=false)"})}}
    by_length = {}
    for n in cfg.no_cache_lengths:
        n = min(n, model_cfg.block_size - max(map(len, prompts)))
        long = n > 32  # a no-cache call then takes seconds: one timed call each, the model already warm
        r = best_rates({"cache": ours_fn(n), "no_cache": ours_fn(n, False)}, {"cache": len(prompts) * n,
                       "no_cache": len(prompts) * n}, cfg, warmup=0 if long else 1, repeats=1 if long else None)
        by_length[str(n)] = {"ratio": r["cache"] / r["no_cache"], "cache_tokens_per_s": r["cache"],
                             "no_cache_tokens_per_s": r["no_cache"]}
    result["sample_vs_no_cache"] = {"ratio": min(v["ratio"] for v in by_length.values()), "by_length": by_length,
                                    "prompts": len(prompts)}
    return result


# GPT-2 124M -------------------------------------------------------------------


def bench_gpt2(cfg, rt, peak, versions):
    """GPT-2 124M (random init, block 1024) training tokens/s, eager and compiled, model.py next to
    GPT2LMHeadModel (sdpa attention) with the same autocast, fused AdamW and clip; MFU of each against the
    GPU's datasheet bf16 peak (None on a CPU) and against the matmul measured in this run."""
    model_cfg = GPTConfig(vocab_size=cfg.gpt2_vocab_size, dropout=0.0, **GPT2_124M)
    B, T = cfg.gpt2_batch_size, model_cfg.block_size
    torch.manual_seed(cfg.seed)
    x = torch.randint(model_cfg.vocab_size, (B, T), device=rt.device)
    y = torch.randint(model_cfg.vocab_size, (B, T), device=rt.device)
    peers = versions["transformers"] and cfg.peers
    steps, compile_seconds = {}, {}
    for mode in ("eager", "compiled") if cfg.gpt2_compile else ("eager",):
        wrap = torch.compile if mode == "compiled" else (lambda m: m)
        ours = GPT(model_cfg).to(rt.device)
        steps[f"ours_{mode}"] = train_step(ours, lambda m, x, y, f=wrap(ours): lm_loss(f(x)[0], y), x, y, rt)
        if peers:
            hf = hf_gpt2(model_cfg, "sdpa").to(rt.device)
            steps[f"transformers_{mode}"] = train_step(
                hf, lambda m, x, y, f=wrap(hf): lm_loss(f(input_ids=x, use_cache=False).logits, y), x, y, rt)
    for name, step in steps.items():  # the first step compiles; timed here, outside the rates
        t0 = time.perf_counter()
        step()
        sync()
        compile_seconds[name] = time.perf_counter() - t0
    rates = best_rates(steps, {k: B * T for k in steps}, cfg, cfg.gpt2_steps)
    fpt = flops_per_token(ours, T)
    gpu_peak = gpu_peak_flops(rt.device)
    best_ours = max(v for k, v in rates.items() if k.startswith("ours"))
    theirs = max((v for k, v in rates.items() if k.startswith("transformers")), default=None)
    entry = {"ratio": best_ours / theirs if theirs else None,
             **{f"{k}_tokens_per_s": v for k, v in rates.items()},
             "mfu": fpt * best_ours / gpu_peak if gpu_peak else None,
             "matmul_fraction": fpt * best_ours / peak["matmul_flops_per_s"],
             "flops_per_token": fpt, "gpu_bf16_peak_flops_per_s": gpu_peak,
             "matmul_flops_per_s": peak["matmul_flops_per_s"],
             "first_step_seconds": compile_seconds,
             "shape": f"{model_cfg.n_layer}x{model_cfg.n_embd}, vocab {model_cfg.vocab_size}, batch {B}x{T}",
             "dtype": rt.dtype,
             **({} if theirs else {"skipped": "transformers not installed (or --peers=false)"})}
    return {"gpt2_124m": entry}


# PPO --------------------------------------------------------------------------


def ppo_config(cfg, rt, work, data_dir, **kw):
    """ppo.py's config for the benchmark: its defaults but for the sizes of bench's config."""
    return ppo.PPOConfig(**{**dict(
        init_from=str(work / "sft.pt"), reward_model=str(work / "reward.pt"), data_dir=str(data_dir),
        out_dir=str(work / "ppo_out"), iterations=cfg.ppo_iterations + 1, batch_size=cfg.ppo_batch_size,
        minibatch_size=cfg.ppo_minibatch_size, ppo_epochs=cfg.ppo_epochs, max_new_tokens=cfg.ppo_new_tokens,
        eval_prompts=0, sample_interval=0, ckpt_interval=0, warmup_iters=0, device=rt.device, dtype=rt.dtype,
        seed=cfg.seed), **kw})


def random_ppo_models(cfg, model_cfg, tok, work):
    """An 'SFT' policy and a 'reward' model of the benchmark's shape, random: their responses run to the length
    limit on both sides (a random model's EOS is rare), so both do the same work."""
    torch.manual_seed(cfg.seed)
    save_checkpoint(str(work / "sft.pt"), stage="sft", model=GPT(model_cfg), run_config={}, tokenizer=tok)
    rm = GPT(GPTConfig(**{**model_cfg.__dict__, "scalar_head": True}))
    save_checkpoint(str(work / "reward.pt"), stage="reward", model=rm, run_config={}, tokenizer=tok)


def ppo_script_rate(pcfg):
    """Episodes/s of ppo.py's main() over its iterations after the first (each iteration's own "seconds")."""
    history, _ = ppo.main(pcfg)
    seconds = [m["seconds"] for m in history[1:]]
    return pcfg.batch_size * len(seconds) / sum(seconds), seconds


def bare_ppo_rate(pcfg, rt):
    """Episodes/s of a bare PPO iteration: the same steps as ppo.py (rollout with per-row seeds, RM scores,
    logprobs, reference logprobs and values, KL-shaped rewards, GAE, whitening, epochs x minibatches of
    policy (+ ptx) and value updates with clip and AdamW) and nothing else: no stats, logging or judge."""
    policy, ref, value_model, reward_model, tok = ppo.load_models(pcfg, rt)
    split = load_split(pcfg.data_dir, "prompts", "train", tok)
    stream = load_split(pcfg.data_dir, "pretrain", "train", tok).stream if pcfg.ptx_coef > 0 else None
    opts = [configure_optimizer(m, lr, 0.0, (0.9, 0.95), rt.device_type)
            for m, lr in ((policy, pcfg.lr), (value_model, pcfg.value_lr))]
    scaler, B, mbs = rt.grad_scaler(), pcfg.batch_size, pcfg.minibatch_size
    times = []
    for it in range(pcfg.iterations):
        t0 = time.perf_counter()
        ids = np.random.default_rng([pcfg.seed, it]).integers(len(split.prompts), size=B)
        prompts = [split.prompts[i].tolist() for i in ids]
        batch = generate(policy, prompts, pcfg.max_new_tokens, pcfg.temperature, eos_id=tok.eos_id,
                         seeds=[ppo.seed_of(pcfg.seed, it, r) for r in range(B)], autocast=rt.autocast)
        P, mask = batch["prompt_len"], batch["response_mask"]
        scores = score_sequences(reward_model, [p + r for p, r in zip(prompts, batch["response_lists"])],
                                 rt.autocast).float()
        scores[~batch["ended"]] = pcfg.no_eos_penalty
        with torch.no_grad(), rt.autocast():
            chunks = [{k: batch[k][i:i + mbs] for k in ("seqs", "attention_mask")} for i in range(0, B, mbs)]
            logprobs = torch.cat([response_logprobs(policy, c["seqs"], c["attention_mask"], P) for c in chunks])
            ref_logprobs = torch.cat([response_logprobs(ref, c["seqs"], c["attention_mask"], P) for c in chunks])
            values = torch.cat([ppo.response_values(value_model, c["seqs"], c["attention_mask"], P)
                                for c in chunks]) * mask
        rewards = ppo.kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, pcfg.kl_coef)
        advantages, returns = ppo.gae(rewards, values, mask, pcfg.gamma, pcfg.lam)
        advantages = ppo.whiten(advantages, mask)
        b = {"seqs": batch["seqs"], "attention_mask": batch["attention_mask"], "response_mask": mask,
             "logprobs": logprobs, "values": values, "advantages": advantages, "returns": returns}
        for epoch in range(pcfg.ppo_epochs):
            order = torch.randperm(B, generator=torch.Generator().manual_seed(ppo.seed_of(pcfg.seed, it, epoch)))
            for m, first in enumerate(range(0, B, mbs)):
                mb = {k: v[order[first:first + mbs]] for k, v in b.items()}
                with rt.autocast():
                    new_logprobs = response_logprobs(policy, mb["seqs"], mb["attention_mask"], P)
                ppo.policy_loss(new_logprobs, mb["logprobs"], mb["advantages"], mb["response_mask"]).backward()
                if stream is not None:
                    x, y = random_windows(stream, pcfg.ptx_batch_size, min(pcfg.ptx_seq_len or 10 ** 9,
                                          policy.config.block_size), [pcfg.seed, it, epoch, m])
                    with rt.autocast():
                        lm = policy(x.to(rt.device), targets=y.to(rt.device))[1]
                    (pcfg.ptx_coef * lm).backward()
                optimizer_step(policy, opts[0], scaler, pcfg.grad_clip, "")
                with rt.autocast():
                    new_values = ppo.response_values(value_model, mb["seqs"], mb["attention_mask"], P)
                ppo.value_loss(new_values, mb["values"], mb["returns"], mb["response_mask"]).backward()
                optimizer_step(value_model, opts[1], scaler, pcfg.grad_clip, "")
        times.append(time.perf_counter() - t0)
    return B * (len(times) - 1) / sum(times[1:]), times[1:]


def trl_ppo_rate(cfg, rt, model_cfg, prompts, work):
    """Episodes/s of TRL's PPOTrainer at ppo.py's sizes and settings, its own "eps" clock replaced by the time
    between its iterations after the first. Random GPT-2 policy, value and reward models of model.py's
    shape (vocabulary + 1: TRL needs a padding token that is no real token), a word-level tokenizer."""
    import datasets
    import tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    V = model_cfg.vocab_size
    words = {f"t{i}": i for i in range(V)} | {"<pad>": V}
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(tokenizers.models.WordLevel(words, "<pad>")),
                                  eos_token="t0", pad_token="<pad>", padding_side="left")  # id 0: our EOS
    shape = GPTConfig(**{**model_cfg.__dict__, "vocab_size": V + 1})
    torch.manual_seed(cfg.seed)
    policy, ref = hf_gpt2(shape, pad_id=V), hf_gpt2(shape, pad_id=V)
    value, rm = hf_gpt2(shape, scalar_head=True, pad_id=V), hf_gpt2(shape, scalar_head=True, pad_id=V)
    data = datasets.Dataset.from_dict({"input_ids": prompts})
    n_iter = cfg.ppo_iterations + 1
    args = PPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=cfg.ppo_batch_size, gradient_accumulation_steps=1,
        num_mini_batches=cfg.ppo_batch_size // cfg.ppo_minibatch_size, num_ppo_epochs=cfg.ppo_epochs,
        total_episodes=cfg.ppo_batch_size * n_iter, response_length=cfg.ppo_new_tokens, temperature=1.0,
        stop_token="eos", missing_eos_penalty=1.0, kl_coef=0.05, kl_estimator="k1", cliprange=0.2,
        cliprange_value=0.2, gamma=1.0, lam=0.95, learning_rate=1e-5,
        local_rollout_forward_batch_size=cfg.ppo_batch_size,
        num_sample_generations=0, gradient_checkpointing=False, bf16=rt.dtype == "bfloat16",
        use_cpu=rt.device_type == "cpu", report_to="none", save_strategy="no", logging_steps=10 ** 9,
        disable_tqdm=True, seed=cfg.seed)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    clock = Clock()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                         value_model=value, train_dataset=data, eval_dataset=data.select(range(4)),
                         callbacks=[clock])
    # PPOTrainer builds its own Accelerator, which ignores args.bf16 (mixed_precision "no"): the same autocast
    # as ppo.py's, around everything (rollout, scoring, updates), is what makes the dtypes equal
    with rt.autocast():
        trainer.train()
    seconds = np.diff(clock.times).tolist()  # iterations 2..n
    return cfg.ppo_batch_size * len(seconds) / sum(seconds), seconds, f"{rt.dtype} autocast around train()"


def bench_ppo(cfg, rt, model_cfg, tok, world, work, versions):
    """ppo.py (plain PPO: TRL has no ptx term) vs TRL's PPOTrainer, episodes/s."""
    data = work / "ppo_data"  # the world's prompts without its judge: TRL scores nothing else either
    data.mkdir(parents=True, exist_ok=True)
    for name in ("prompts_train.jsonl", "prompts_val.jsonl", "pretrain_train.jsonl"):
        shutil.copy(world / name, data / name)
    random_ppo_models(cfg, model_cfg, tok, work)
    ours, ours_seconds = ppo_script_rate(ppo_config(cfg, rt, work, data, ptx_coef=0.0))
    entry = {"ratio": None, "ours_episodes_per_s": ours, "ours_seconds": ours_seconds,
             "settings": {"batch_size": cfg.ppo_batch_size, "minibatch_size": cfg.ppo_minibatch_size,
                          "ppo_epochs": cfg.ppo_epochs, "response_length": cfg.ppo_new_tokens, "temperature": 1.0,
                          "kl_estimator": "k1 (log p - log p_ref per token)", "stop_token": "EOS, then padding",
                          "models": "random, policy/reference/value/reward of one shape", "dtype": rt.dtype},
             "unequal": ["ppo.py recomputes the rollout's logprobs with a forward pass; TRL takes them from "
                         "generate's logits (one forward fewer per iteration for TRL)",
                         "TRL's vocabulary has one more row (a padding token)",
                         "ppo.py steps policy and value with two AdamWs and clips each; TRL one AdamW on both",
                         "no-EOS penalty: ppo.py replaces the score, TRL subtracts from it (same work)"]}
    if versions["trl"] and versions["transformers"] and cfg.peers:
        prompts = [encode_prompt(tok, r["prompt"]) for r in read_split(data, "prompts", "train")]
        trl, trl_seconds, precision = trl_ppo_rate(cfg, rt, model_cfg, prompts, work)
        entry.update(ratio=ours / trl, trl_episodes_per_s=trl, trl_seconds=trl_seconds, trl_mixed_precision=precision)
    else:
        entry["skipped"] = "trl==1.12.0 or transformers not installed (or --peers=false)"
    return {"ppo_vs_trl": entry}


# stages -----------------------------------------------------------------------


@contextlib.contextmanager
def step_clock(module, name, tokens_of):
    """Replace module.name, a function a stage calls once per training micro-batch, by one that also notes the
    time and tokens_of(args) of each call made with gradients on (evaluation calls are not counted)."""
    calls, original = [], getattr(module, name)

    def clocked(*args, **kw):
        if torch.is_grad_enabled():
            calls.append((time.perf_counter(), tokens_of(*args)))
        return original(*args, **kw)
    setattr(module, name, clocked)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def steady_rate(calls):
    """Tokens/s between the second and the last training step: every cost of the loop counts (logging, data,
    checkpoints, evaluations in between), the first step's warm-up and the evaluations around the run do not."""
    (t1, _), (tn, _) = calls[1], calls[-1]
    return sum(n for _, n in calls[1:-1]) / (tn - t1)


def logged_rate(out_dir):
    """The last tokens_per_s the stage wrote to its metrics.jsonl (None before its first log line)."""
    records = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return ([r["tokens_per_s"] for r in records if "tokens_per_s" in r] or [None])[-1]


def bare_rate(step, batches, warmup=1):
    """Tokens/s of step(batch) over batches, as steady_rate counts them (the same batches as the stage)."""
    for batch in batches[:warmup]:
        step(batch)
    t0 = time.perf_counter()
    for batch in batches[warmup:-1]:
        step(batch)
    return sum(b[-1] for b in batches[warmup:-1]) / (time.perf_counter() - t0)


def take_turns(cfg, script, bare):
    """(the best of script's results, the best rate of bare): an untimed bare pass first, so that both sides find
    the kernels for every batch shape already made (oneDNN builds a kernel on a fresh shape's first call; in a
    real run of many epochs that cost is paid once per shape); then they take turns cfg.repeats times, as
    the sides of the other sections do. script(r) runs the stage's main() for the r-th time and returns its
    rate first (then what else that run reports)."""
    bare()
    runs = [(script(r), bare()) for r in range(cfg.repeats)]
    return max((s for s, _ in runs), key=lambda s: s[0]), max(b for _, b in runs)


def clocked_run(module, name, tokens_of, run_cfg):
    """module.main(run_cfg) with module.name clocked (step_clock): (its steady tokens/s, the tokens/s it logged,
    its training steps)."""
    with step_clock(module, name, tokens_of) as calls:
        module.main(run_cfg)
    return steady_rate(calls), logged_rate(run_cfg.out_dir), len(calls)


def run_dir(work, name, r):
    """The out_dir of a stage's r-th run: the first keeps the plain name (the next stage starts from it)."""
    return str(work / (name if r == 0 else f"{name}_{r}"))


def bench_stages(cfg, rt, tok, world, work):
    """Each stage's main() on the world for cfg.stage_steps steps vs a bare loop of the same step on the same
    batches, taking turns (take_turns)."""
    out, n = {}, cfg.stage_steps
    common_args = dict(data_dir=str(world), device=rt.device, dtype=rt.dtype, seed=cfg.seed)
    model_args = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                      batch_size=cfg.batch_size)

    # pretrain and sft: sft.py's loop; the bare step is the same forward, loss, backward, clip and AdamW
    for mode, init in (("pretrain", "scratch"), ("sft", str(work / "pretrain" / "pretrain.pt"))):
        scfg = sft.SFTConfig(mode=mode, init_from=init, out_dir=str(work / mode), **model_args, **common_args,
                             **{k: v for k, v in sft.MODES[mode].items() if k in ("lr", "warmup_steps")})
        model = load_lm(init)[0] if init != "scratch" else GPT(GPTConfig(
            block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
            n_embd=cfg.n_embd))
        model.to(rt.device)
        opt = configure_optimizer(model, scfg.lr, scfg.weight_decay, scfg.betas, rt.device_type)
        train = sft.Batches(scfg, load_split(str(world), mode, "train", tok), cfg.block_size)
        scfg.epochs = n / train.per_epoch  # n optimizer steps
        batches = [(x, y, x.numel()) for x, y in map(train, range(n))]

        def step(batch, model=model, opt=opt):
            x, y, _ = batch
            with rt.autocast():
                loss = sft.lm_loss_sum(model(x.to(rt.device))[0], y.to(rt.device))
            (loss / (y != -1).sum()).backward()
            optimizer_step(model, opt, rt.grad_scaler(), scfg.grad_clip, "")
        def script(r, scfg=scfg, mode=mode):
            return clocked_run(sft, "lm_loss_sum", lambda logits, y: logits.shape[0] * logits.shape[1],
                               dataclasses.replace(scfg, out_dir=run_dir(work, mode, r)))
        (rate, logged, steps), bare = take_turns(cfg, script,
                                                 lambda step=step, batches=batches: bare_rate(step, batches))
        out[mode] = stage_entry(rate, bare, logged, steps)

    # reward: the K responses of each prompt in one forward, eq. 1 over all pairs
    rcfg = reward.RewardConfig(init_from=str(work / "sft" / "sft.pt"), out_dir=str(work / "reward"), max_steps=n,
                               batch_size=cfg.batch_size, norm_demos=64, norm_samples=64, **common_args)
    model = load_lm(rcfg.init_from, scalar_head=True)[0].to(rt.device)
    model.score_head.bias.requires_grad_(False)
    opt = configure_optimizer(model, rcfg.lr, rcfg.weight_decay, rcfg.betas, rt.device_type)
    comparisons = reward.Comparisons(str(world), "train", tok, model.config.block_size, master=False)
    per_epoch, rows = len(comparisons) // rcfg.batch_size, []  # reward.py's batches: length-bucketed, full
    for epoch in range(math.ceil(n / per_epoch)):
        rows += [b for b in length_bucketed_batches(comparisons.longest, rcfg.batch_size, cfg.seed + epoch)
                 if len(b) == rcfg.batch_size]
    batches = [comparisons.batch(r) for r in rows[:n]]
    batches = [(seqs, k, sum(len(s) for s in seqs)) for seqs, k in batches]

    def reward_step(batch):
        seqs, k, _ = batch
        rewards = reward.pad_rewards(last_token_scores(model, seqs, rt.autocast), k)
        reward.ranking_loss(rewards, k.to(rewards.device)).backward()
        optimizer_step(model, opt, rt.grad_scaler(), rcfg.grad_clip, "")
    def reward_script(r):
        return clocked_run(reward, "last_token_scores", lambda model, seqs, *a: sum(len(s) for s in seqs),
                           dataclasses.replace(rcfg, out_dir=run_dir(work, "reward", r)))
    (rate, logged, steps), bare = take_turns(cfg, reward_script, lambda: bare_rate(reward_step, batches))
    out["reward"] = stage_entry(rate, bare, logged, steps)

    # ppo (PPO-ptx, the pipeline's InstructGPT run, with the world's judge): episodes/s
    random_ppo_models(cfg, GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                                     n_head=cfg.n_head, n_embd=cfg.n_embd), tok, work)
    pcfg = ppo_config(cfg, rt, work, world, out_dir=str(work / "ppo"))
    (script, _), bare = take_turns(
        cfg, lambda r: ppo_script_rate(dataclasses.replace(pcfg, out_dir=run_dir(work, "ppo", r))),
        lambda: bare_ppo_rate(pcfg, rt)[0])
    out["ppo"] = {"fraction": script / bare, "script_episodes_per_s": script, "bare_episodes_per_s": bare,
                  "iterations": pcfg.iterations}
    return {"stage_vs_bare": out}


def stage_entry(script, bare, logged, steps):
    return {"fraction": script / bare, "script_tokens_per_s": script, "bare_tokens_per_s": bare,
            "logged_tokens_per_s": logged, "steps": steps}


# -----------------------------------------------------------------------------


def cpu_name():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def prepare_world(cfg, work):
    """The synthetic world at cfg.world_scale (prepare.py), its compact tokenizer and a sample of its prompts."""
    world = work / "world"
    if not (world / "judge.json").exists():
        prepare.main(prepare.PrepareConfig(out_dir=str(world), scale=cfg.world_scale, seed=cfg.seed, quiet=True))
    tok = dataset_tokenizer(str(world))
    prompts = [encode_prompt(tok, r["prompt"]) for r in read_split(world, "prompts", "train")]
    return world, tok, prompts


def print_table(results):
    def fmt(x):
        return "-" if x is None else f"{x:,.0f}" if x > 100 else f"{x:.2f}"
    rows = []
    for key, entry in results.items():
        if not isinstance(entry, dict) or key in ("train_settings",):
            continue
        if key == "stage_vs_bare":
            rows += [(f"stage_vs_bare {s}", e["fraction"], e) for s, e in entry.items()]
        elif key == "sample_vs_no_cache":
            rows += [(f"sample_vs_no_cache {n} new", e["ratio"], e) for n, e in entry["by_length"].items()]
        else:
            rows.append((key, entry.get("ratio", entry.get("fraction")), entry))
    print(f"\n{'benchmark':28s} {'ratio':>7s}  figures")
    for name, ratio, entry in rows:
        figures = ", ".join(f"{k} {fmt(v)}" for k, v in entry.items()
                            if isinstance(v, (int, float)) and k not in ("ratio", "fraction"))
        print(f"{name:28s} {fmt(ratio):>7s}  {figures}")
    for name, s in results.get("train_settings", {}).items():
        print(f"{'train ' + name:28s} {'':7s}  " + ", ".join(f"{k} {fmt(v) if not isinstance(v, str) else v}"
                                                             for k, v in s.items()))


def check_config(cfg):
    """Each field in its range (a config made in code skips parse_config), the sections and the device, and
    the settings that contradict each other, refused before anything runs."""
    check_ranges(cfg)
    unknown = set(cfg.sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown --sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device takes auto, cpu or cuda, got {cfg.device!r}")
    if cfg.n_embd % cfg.n_head:
        raise ConfigError(f"--n_embd={cfg.n_embd} must be a multiple of --n_head={cfg.n_head}")
    if cfg.ppo_batch_size % cfg.ppo_minibatch_size:
        raise ConfigError(f"--ppo_batch_size={cfg.ppo_batch_size} must be a multiple of "
                          f"--ppo_minibatch_size={cfg.ppo_minibatch_size}")
    if not cfg.no_cache_lengths:
        raise ConfigError("--no_cache_lengths needs at least one length")


def main(argv=None):
    cfg = argv if isinstance(argv, BenchConfig) else parse_config(BenchConfig, argv)
    check_config(cfg)
    rt = setup_runtime("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       "cpu" if cfg.device == "auto" else cfg.device, cfg.dtype, cfg.seed)
    sections = cfg.sections or tuple(s for s in SECTIONS if s != "gpt2" or rt.device_type == "cuda")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    versions = peer_versions() if cfg.peers else {"transformers": None, "trl": None}
    cpu = f"{cpu_name()}, {torch.get_num_threads()} threads{', avx512_bf16' if cpu_has_bf16() else ''}"
    results = {"device": torch.cuda.get_device_name(rt.device) if rt.device_type == "cuda" else cpu,
               "torch": torch.__version__, "dtype": rt.dtype, **versions}
    with contextlib.ExitStack() as stack:
        work = Path(cfg.work_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_")))
        world, tok, prompts = prepare_world(cfg, work)  # its compact vocabulary sets the model's
        if 0 < cfg.vocab_size < tok.vocab_size:
            raise ConfigError(f"--vocab_size={cfg.vocab_size} is below the world's vocabulary ({tok.vocab_size})")
        longest = max(map(len, prompts[:cfg.sample_prompts]))  # the sample section's prompts
        if "sample" in sections and cfg.block_size <= longest:
            raise ConfigError(f"--block_size={cfg.block_size} leaves no room to answer the sample section's prompts "
                              f"of up to {longest} tokens")
        model_cfg = GPTConfig(block_size=cfg.block_size, vocab_size=cfg.vocab_size or tok.vocab_size,
                              n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0)
        peak = bench_matmul(cfg, rt) if {"matmul", "train", "gpt2"} & set(sections) else None
        if "train" in sections:
            results |= bench_train(cfg, rt, model_cfg, peak, versions)
        if "sample" in sections:
            results |= bench_sample(cfg, rt, model_cfg, prompts[:cfg.sample_prompts], versions)
        if "ppo" in sections:
            results |= bench_ppo(cfg, rt, model_cfg, tok, world, work / "ppo_vs_trl", versions)
        if "stages" in sections:
            results |= bench_stages(cfg, rt, tok, world, work / "stages")
        if "gpt2" in sections:
            results |= bench_gpt2(cfg, rt, peak, versions)
        if "matmul" in sections and "train" not in sections:
            results["matmul"] = peak
    path = Path(cfg.out)
    merged = json.loads(path.read_text()) if path.exists() else {}
    merged |= results
    with atomic_write(path) as f:
        json.dump(merged, f, indent=1)
    print_table(results)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    run(main)
