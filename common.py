"""
The run harness every stage shares (as nanochat's common.py), so that sft.py, reward.py and ppo.py hold
their algorithm and little else.

    parse_config, run      --key=value overrides of a stage's @dataclass (per-mode defaults shown by
                           --help), and one-line errors, not tracebacks, for mistakes a user can make
    ranged, check_ranges   a field's valid values, declared beside its default (`= ranged(64, ">= 1")`)
    setup_runtime          device, dtype, autocast and DDP, chosen once the same way in every stage
    configure_optimizer, set_lr, cosine_lr, optimizer_step, check_finite
    flops_per_token, estimate_mfu   nanoGPT's FLOPs count, and its fraction of a GPU's bf16 peak
    MetricsLog             one JSONL line of metrics per logged step
    save_resume, load_resume, Interrupt
                           the one resume convention: --init_from=resume restores the model, the
                           optimizers, every rank's RNG and the step (which fixes the data position);
                           resumed after a SIGKILL at any point, a CPU run ends bitwise where an
                           uninterrupted one does
    load_lm                a language model and its tokenizer, from a checkpoint or GPT-2's weights (--init_from=
                           gpt2 or a Hugging Face directory), announcing a default choice
"""

import contextlib
import dataclasses
import inspect
import json
import math
import os
import re
import signal
import sys
import types
import typing
from dataclasses import dataclass

import torch
import torch.distributed as dist

from data.formats import DataError
from data.tokenizer import Tokenizer, VocabularyError
from model import (
    GPT,
    GPT2_SIZES,
    CheckpointError,
    checkpoint_dict,
    hf_layout_problem,
    load_checkpoint,
    load_model,
    save_checkpoint,
    unwrap,
)


class ConfigError(ValueError):
    """A bad flag or a bad combination of settings."""


# -----------------------------------------------------------------------------
# Configuration: a stage's @dataclass, overridden by --key=value


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric field, written as in mathematics: `>= 1`, `> 0`, `<= 1`, `[0, 1]`,
    `[0, 1)`, `(0, 1]`, `[0, 2**32)`. A bound left out is infinity, excluded: only a range that closes at
    inf (`[0, inf]`) lets inf through; NaN is in no range."""
    text: str
    lo: float = -math.inf
    hi: float = math.inf
    lo_closed: bool = False
    hi_closed: bool = False

    @classmethod
    def parse(cls, text):
        one_sided = re.fullmatch(r"(>=|>|<=|<)\s*(\S+)", text.strip())
        if one_sided:
            op, bound = one_sided[1], number(one_sided[2])
            if op[0] == ">":
                return cls(text, lo=bound, lo_closed=op == ">=")
            return cls(text, hi=bound, hi_closed=op == "<=")
        interval = re.fullmatch(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])", text.strip())
        if not interval:
            raise ValueError(f"not a range: {text!r} (write >= 1, > 0, [0, 1], [0, 1) ...)")
        return cls(text, number(interval[2]), number(interval[3]), interval[1] == "[", interval[4] == "]")

    @property
    def phrase(self):
        """What a value must be, after "must be": ">= 1", "in [0, 1)"."""
        return self.text if self.text[0] in "<>" else f"in {self.text}"

    def __contains__(self, x):
        above = self.lo <= x if self.lo_closed else self.lo < x
        below = x <= self.hi if self.hi_closed else x < self.hi
        return above and below


def number(text):
    """A bound of a Range: a number, inf, or a power such as 2**32."""
    base, power, exponent = text.partition("**")
    return int(base) ** int(exponent) if power else float(text)


FINITE = Range.parse("(-inf, inf)")  # the range of a float field that declares none: any finite number


def ranged(default, valid):
    """A dataclass field with its default and its valid values (a Range's text), which parse_config enforces:
    `batch_size: int = ranged(64, ">= 1")  # episodes per iteration`."""
    return dataclasses.field(default=default, metadata={"range": Range.parse(valid)})


def scalar_type(tp):
    """The type of one value of a field: X for X, X | None and tuple[X, ...]."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return scalar_type(next(a for a in typing.get_args(tp) if a is not type(None)))
    return scalar_type(typing.get_args(tp)[0]) if typing.get_origin(tp) is tuple else tp


def field_range(field, tp):
    """The Range a field's values must lie in: its own, FINITE for a float that declares none, else None."""
    return field.metadata.get("range") or (FINITE if scalar_type(tp) is float else None)


def check_ranges(cfg, given=None):
    """Refuse the first field of the dataclass instance cfg whose value (each value, for a tuple) lies outside
    its range, in one line naming the flag, the value (as given: {name: text}) and the range."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        valid, value = field_range(f, hints[f.name]), getattr(cfg, f.name)
        values = value if isinstance(value, tuple) else (value,)
        bad = [v for v in values if v is not None and v not in valid] if valid else []
        if bad:
            shown = (given or {}).get(f.name, ",".join(map(str, values)))
            finite = "a finite number" if isinstance(bad[0], float) and not math.isfinite(bad[0]) else ""
            what = " ".join(w for w in (finite, "" if valid is FINITE else valid.phrase) if w)
            raise ConfigError(f"--{f.name}={shown} must {'each ' if isinstance(value, tuple) else ''}be {what}")


def field_comments(cls):
    """The trailing `# comment` of each field in the dataclass source: the --help text."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        head, _, comment = line.partition("  #")
        name = head.strip().split(":")[0]
        if comment and name.isidentifier():
            comments[name] = comment.strip()
    return comments


def parse_value(text, tp, name):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X] / X | None
        if text.lower() == "none":
            return None
        return parse_value(text, next(a for a in typing.get_args(tp) if a is not type(None)), name)
    if tp is bool:
        if text.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return text.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"--{name} takes true or false, got {text!r}")
    if origin is tuple:
        values = tuple(parse_value(t, typing.get_args(tp)[0], name) for t in text.split(",") if t)
        if Ellipsis not in typing.get_args(tp) and len(values) != len(typing.get_args(tp)):
            raise ConfigError(f"--{name} takes {len(typing.get_args(tp))} comma-separated values, got {text!r}")
        return values
    try:
        return tp(text)
    except ValueError:
        article = "an" if tp.__name__[0] in "aeiou" else "a"
        raise ConfigError(f"--{name} takes {article} {tp.__name__}, got {text!r}") from None


def parse_config(cls, argv=None, modes=None):
    """
    An instance of the @dataclass cls with `--key=value` overrides from argv (default sys.argv[1:]); a bare
    `--flag` sets a bool field. modes: {mode: {field: default}} for a config with a `mode` field whose
    defaults differ per mode (sft.py: pretrain | sft); --mode picks the set, other flags override it.
    `--help` lists every field with its default (and its value in the other modes), its range and its comment.
    A value outside its field's range (ranged(); any float: finite) is refused (check_ranges).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if any(a in ("-h", "--help") for a in argv):
        comments, base = field_comments(cls), cls()
        ranges = {f.name: f.metadata["range"].text for f in dataclasses.fields(cls) if "range" in f.metadata}
        print(f"{(cls.__doc__ or cls.__name__).strip()}\n\noptions (--key=value, then the valid values):")
        for name in names:
            other = [f"{m}: {d[name]!r}" for m, d in (modes or {}).items() if d.get(name, getattr(base, name))
                     != getattr(base, name)]
            print(f"  {f'--{name}={getattr(base, name)!r}':<30} {ranges.get(name, ''):<10} {comments.get(name, '')}"
                  + (f" [{'; '.join(other)}]" if other else ""))
        raise SystemExit(0)
    overrides, given = {}, {}
    for arg in argv:
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or not key:
            raise ConfigError(f"expected --key=value, got {arg!r} (see --help)")
        if key not in hints or key not in names:
            raise ConfigError(f"unknown option --{key} (see --help)")
        if not eq and hints[key] is not bool:
            raise ConfigError(f"--{key} needs a value: --{key}=...")
        overrides[key], given[key] = parse_value(value if eq else "true", hints[key], key), value
    defaults = {}
    if modes:
        mode = overrides.get("mode", cls().mode)
        if mode not in modes:
            raise ConfigError(f"--mode must be one of {', '.join(modes)}, got {mode!r}")
        defaults = modes[mode]
    cfg = cls(**{**defaults, **overrides})
    check_ranges(cfg, given)
    return cfg


USER_ERRORS = (ConfigError, DataError, CheckpointError, FloatingPointError, FileNotFoundError)


def run(main):
    """Call main(argv) as a script: a mistake a user can make ends in one line `error: ...` and exit code 1
    (RLHF_DEBUG=1 shows the traceback); Ctrl-C, after the stage saved its state, exits 130."""
    try:
        main(sys.argv[1:])
    except USER_ERRORS as e:
        if os.environ.get("RLHF_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        raise SystemExit(130)
    except BrokenPipeError:  # the reader went away (`--help | head`): nothing is left to say, and no one to say it to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1)


# -----------------------------------------------------------------------------
# Runtime: device, precision and distributed setup


@dataclass
class Runtime:
    device: str
    device_type: str
    dtype: str  # float32 | bfloat16 | float16
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def master(self):
        return self.rank == 0

    @property
    def ddp(self):
        return self.world_size > 1

    def autocast(self):
        """Mixed precision where asked (bf16, or fp16 with a GradScaler on CUDA); plain fp32 otherwise."""
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=getattr(torch, self.dtype))

    def grad_scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self.device_type == "cuda" and self.dtype == "float16")

    def sum(self, value):
        """Sum of a number over the ranks (the number itself in a single process)."""
        if not self.ddp:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def mean(self, value):
        return self.sum(value) / self.world_size

    def wrap(self, model):
        """DDP around the model under torchrun (the gradient all-reduce); the model itself otherwise."""
        if not self.ddp:
            return model
        ids = [self.local_rank] if self.device_type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self):
        if self.ddp:
            dist.barrier()
            dist.destroy_process_group()


def cpu_has_bf16() -> bool:
    """Does this CPU multiply bf16 natively (AVX512-BF16 or AMX)? There, bf16 autocast trains the default
    model faster than fp32 with the same loss curve (measured: docs/benchmarks.md); elsewhere it is emulated
    and slower."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: stay in fp32
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def setup_runtime(device="auto", dtype="auto", seed=1337):
    """
    Device cuda > mps > cpu unless named; dtype bf16 on CUDA where supported, else fp16; on a CPU bf16 where
    it is native (cpu_has_bf16), else fp32.
    Under torchrun (WORLD_SIZE > 1) it joins the process group: nccl on CUDA, gloo on CPU. Each rank seeds
    with seed + rank so that their dropout masks differ.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    device_type = device.split(":")[0]
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if device_type not in available:
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if not available[device_type]:
        raise ConfigError(f"--device={device}, but this torch sees no {device_type} device: use --device=auto")
    if world_size > 1:
        if device_type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if dtype == "auto":
        if device_type == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "bfloat16" if device_type == "cpu" and cpu_has_bf16() else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device_type == "cpu":
        # Tiny activations and gradients underflow to denormals, which x86 CPUs handle in microcode, many
        # times slower (measured: docs/benchmarks.md); a small GPT loses nothing when they are flushed to zero.
        torch.set_flush_denormal(True)
    torch.manual_seed(seed + rank)
    return Runtime(device, device_type, dtype, rank, world_size, local_rank)


# -----------------------------------------------------------------------------
# Optimisation


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95), device_type="cpu"):
    """AdamW (the paper's betas 0.9, 0.95) with weight decay on matrices only (not biases, LayerNorms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device_type == "cuda")


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def cosine_lr(step, total_steps, peak_lr, warmup_steps=0, final_ratio=0.1):
    """Linear warmup, then cosine decay from peak_lr to final_ratio * peak_lr (InstructGPT: 10%)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak_lr * (final_ratio + (1 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def check_finite(value, what, where):
    """Stop before the optimizer step when a loss or gradient norm is NaN/inf: the checkpoints stay good."""
    if not torch.isfinite(torch.as_tensor(value)).all():
        raise FloatingPointError(f"{what} is {torch.as_tensor(value).float().tolist()} {where}: stopped before "
                                 f"the optimizer step; the last checkpoint on disk is the last good state")


def optimizer_step(model, optimizer, scaler, grad_clip, where):
    """One step from the accumulated gradients: unscale (fp16), clip the norm, refuse a non-finite one,
    step, zero the gradients. Returns the gradient norm before clipping."""
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if not scaler.is_enabled():  # fp16's scaler skips steps with inf gradients itself
        check_finite(norm, "the gradient norm", where)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()


def flops_per_token(model, seq_len):
    """Training FLOPs per token as nanoGPT counts them (PaLM appendix B): 6N for the weights (N without the
    position embeddings: a lookup, not a matmul) plus 12 L T d for attention over sequences of T tokens."""
    cfg = unwrap(model).config
    return 6 * unwrap(model).num_params() + 12 * cfg.n_layer * seq_len * cfg.n_embd


# Dense bf16 tensor-core peaks from the datasheets (their sparse figures halved), matched as whole words of
# the device's name, the more specific first ("NVIDIA H100 PCIe" is not an H100 SXM; "L4" is not "L40S")
GPU_BF16_PEAK = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H200 NVL": 835e12, "H100": 989e12, "H200": 989e12,
                 "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12, "A10": 125e12, "4090": 165e12}


def gpu_peak_flops(device):
    """The bf16 peak FLOP/s of a CUDA device, None where unknown (or not CUDA)."""
    return bf16_peak_of(torch.cuda.get_device_name(device)) if str(device).startswith("cuda") else None


def bf16_peak_of(name):
    """The bf16 peak FLOP/s of a GPU by its name ("NVIDIA H100 80GB HBM3"), None where unknown."""
    return next((v for k, v in GPU_BF16_PEAK.items() if re.search(rf"\b{k}\b", name)), None)


def estimate_mfu(model, tokens_per_second, device, seq_len=None):
    """Model FLOPs utilisation against the GPU's bf16 peak (None on a CPU or an unknown GPU)."""
    peak = gpu_peak_flops(device)
    seq_len = seq_len or unwrap(model).config.block_size
    return None if peak is None else flops_per_token(model, seq_len) * tokens_per_second / peak


class MetricsLog:
    """out_dir/metrics.jsonl, one line per logged step. A new run starts the file afresh; a resumed run first
    drops the lines the interrupted one wrote after its resume point, so the file reads as one run."""

    def __init__(self, out_dir, master=True, resume_step=None):
        self.path, self.master = os.path.join(out_dir, "metrics.jsonl"), master
        if master:
            os.makedirs(out_dir, exist_ok=True)
        if master and os.path.exists(self.path):
            kept = []
            if resume_step is not None:
                with open(self.path) as f:
                    kept = [line for line in f if json.loads(line).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(kept)

    def __call__(self, record):
        if self.master:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# -----------------------------------------------------------------------------
# Loading and resuming


def is_pretrained_source(source):
    """Does source name GPT-2's weights (one of model.GPT2_SIZES, downloaded once, or a directory, which must
    be in the Hugging Face layout) rather than a checkpoint file of this project?"""
    return source in GPT2_SIZES or os.path.isdir(source)


def load_lm(source, device="cpu", stages=None, default=False, scalar_head=None, dropout=None):
    """
    (model, tokenizer, checkpoint) from one of this project's checkpoints or from GPT-2's weights (by name, or
    a directory with config.json + model.safetensors or pytorch_model.bin). GPT-2 is a 'pretrain' model with
    GPT-2's whole vocabulary; its checkpoint is the dict a saved one would be. scalar_head and dropout as in
    model.load_model; default=True says that the stage picked source itself, so the user sees which model a
    run starts from.
    """
    if default:
        print(f"starting from {source} (the default; choose another with --init_from=PATH)")
    if not is_pretrained_source(source):
        model, ckpt = load_model(source, device, stages=stages, scalar_head=scalar_head, dropout=dropout)
        return model, Tokenizer.from_state(ckpt["tokenizer"]), ckpt
    problem = hf_layout_problem(source) if os.path.isdir(source) else None
    if problem:
        raise CheckpointError(problem)
    if stages is not None and "pretrain" not in stages:
        raise CheckpointError(f"{source}: is GPT-2's pretrained weights; expected a {' or '.join(stages)} checkpoint")
    model = GPT.from_pretrained(source, dropout=0.0 if dropout is None else dropout, scalar_head=bool(scalar_head))
    tok = Tokenizer()
    if model.config.vocab_size < tok.vocab_size:
        raise CheckpointError(f"{source}: its vocabulary of {model.config.vocab_size} tokens is smaller than the "
                              f"{tok.vocab_size} of GPT-2's tokenizer, which it would be read with")
    ckpt = checkpoint_dict(stage="pretrain", model=model, run_config={"init_from": source}, tokenizer=tok)
    return model.to(device), tok, ckpt


@contextlib.contextmanager
def vocabulary_of(source, data_dir):
    """Data that the model's vocabulary cannot encode is a wrong pairing of model and data: say how to fix it."""
    try:
        yield
    except VocabularyError as e:
        raise ConfigError(f"{e}: {source} was trained with another vocabulary than {data_dir} needs. Start the "
                          f"pipeline from a model that covers it: `python sft.py --init_from=gpt2 "
                          f"--data_dir={data_dir}`, or pretrain one on this data with `python sft.py --mode=pretrain "
                          f"--data_dir={data_dir}`") from None


def rng_states(rt):
    """Every rank's CPU (and CUDA) generator state, gathered to (world_size, n) uint8 tensors."""
    states = {"cpu": torch.get_rng_state()}
    if rt.device_type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(rt.device)
    if rt.ddp:
        for k, s in states.items():
            parts = [torch.empty_like(s).to(rt.device) for _ in range(rt.world_size)]
            dist.all_gather(parts, s.to(rt.device))
            states[k] = torch.stack([p.cpu() for p in parts])
        return states
    return {k: s[None] for k, s in states.items()}


def save_resume(path, rt, *, model, run_config, tokenizer, of, step, optimizers, **state):
    """
    out_dir/resume.pt: everything a run needs to go on exactly from step (weights, every optimizer, every
    rank's RNG, **state such as the best score or a second model). Its stage is "resume", so it is never
    mistaken for a finished model. Every rank calls this (the RNG gather); rank 0 writes, atomically.
    """
    rng = rng_states(rt)
    if rt.master:
        save_checkpoint(path, stage="resume", model=model, run_config=run_config, tokenizer=tokenizer,
                        resumes=of, step=step, world_size=rt.world_size, rng=rng,
                        optimizers={k: o.state_dict() for k, o in optimizers.items()}, **state)


def load_resume(path, of, rt, optimizers):
    """The resume checkpoint (a path, or the loaded dict) of stage `of`, with the optimizers' state and this
    rank's RNG restored."""
    ckpt = path if isinstance(path, dict) else load_checkpoint(path, stages=("resume",))
    path = "resume.pt" if isinstance(path, dict) else path
    if ckpt["resumes"] != of:
        raise CheckpointError(f"{path}: resumes a '{ckpt['resumes']}' run, not '{of}'")
    if ckpt["world_size"] != rt.world_size:
        raise ConfigError(f"{path}: saved by {ckpt['world_size']} processes; resume with as many "
                          f"(this run has {rt.world_size}) so that every rank gets its RNG back")
    for k, o in optimizers.items():
        o.load_state_dict(ckpt["optimizers"][k])
    torch.set_rng_state(ckpt["rng"]["cpu"][rt.rank])
    if "cuda" in ckpt["rng"] and rt.device_type == "cuda":
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"][rt.rank], rt.device)
    if rt.master:
        print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt


class Interrupt:
    """
    Ctrl-C asks the run to stop at the next step boundary (`requested()`), where it saves resume.pt and
    exits: nothing is lost and the resumed run is exact. A second Ctrl-C stops at once. Under torchrun
    every rank agrees on the step to stop at.
    """

    def __init__(self, rt):
        self.rt, self.flag = rt, False

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C as it is
            self.previous = None
        return self

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print("\nCtrl-C: stopping after this step (again to stop at once)", file=sys.stderr)

    def requested(self):
        return self.rt.sum(float(self.flag)) > 0 if self.rt.ddp else self.flag

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
