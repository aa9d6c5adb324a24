"""Invariants of the run harness (common.py) and the tokenizer: config parsing, schedules, one-line
errors for user mistakes, the metrics log across a resume."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import common as C
from data.formats import write_jsonl
from data.tokenizer import Tokenizer, VocabularyError
from model import GPT, GPTConfig, save_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compact_tokenizer_round_trip_and_unknown_text():
    """A compact vocabulary encodes and decodes its texts exactly and refuses text outside it clearly."""
    texts = ["The capital of Zorbia is Quelt.", "Count from 1 to 5."]
    tok = Tokenizer.build_compact(texts)
    assert tok.eos_id == 0 and tok.vocab_size < 40
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
    assert Tokenizer.from_state(tok.state()).encode(texts[0]) == tok.encode(texts[0])
    with pytest.raises(VocabularyError, match="not in the compact vocabulary"):
        tok.encode("a giraffe")
    full = Tokenizer()
    assert full.eos_id == 50256 and full.decode(full.encode("hello world")) == "hello world"


@dataclass
class DemoConfig:
    """A demo stage."""
    mode: str = "b"  # which mode
    lr: float = 1e-3  # peak learning rate
    steps: int = 10  # optimizer steps
    compile: bool = False  # torch.compile the model
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    init: str | None = None  # optional checkpoint


def test_parse_config_types_and_errors(capsys):
    """--key=value overrides are typed, bare --flag sets a bool, unknown keys and bad values are refused."""
    cfg = C.parse_config(DemoConfig, ["--lr=0.5", "--steps=3", "--compile", "--betas=0.8,0.9", "--init=none"])
    assert cfg == DemoConfig(lr=0.5, steps=3, compile=True, betas=(0.8, 0.9), init=None)
    assert C.parse_config(DemoConfig, ["--init=a.pt"]).init == "a.pt"
    for bad in (["--nope=1"], ["--steps=x"], ["steps=3"], ["--steps"], ["--compile=maybe"]):
        with pytest.raises(C.ConfigError):
            C.parse_config(DemoConfig, bad)


def test_per_mode_defaults_and_help(capsys):
    """--mode picks that mode's defaults, explicit flags win over them, and --help shows every mode's value."""
    modes = {"b": {}, "a": {"lr": 0.1, "steps": 99}}
    assert C.parse_config(DemoConfig, ["--mode=a"], modes) == DemoConfig(mode="a", lr=0.1, steps=99)
    assert C.parse_config(DemoConfig, ["--mode=a", "--lr=0.2"], modes).lr == 0.2
    assert C.parse_config(DemoConfig, [], modes) == DemoConfig()
    with pytest.raises(C.ConfigError, match="--mode must be one of"):
        C.parse_config(DemoConfig, ["--mode=c"], modes)
    with pytest.raises(SystemExit):
        C.parse_config(DemoConfig, ["--help"], modes)
    out = capsys.readouterr().out
    lr_line = next(line for line in out.splitlines() if "--lr=" in line)
    assert "--lr=0.001" in lr_line and "peak learning rate" in lr_line and "a: 0.1" in lr_line
    import sft  # the real stage: every default written out, none a -1 resolved later
    with pytest.raises(SystemExit):
        C.parse_config(sft.SFTConfig, ["--help"], sft.MODES)
    assert "=-1" not in capsys.readouterr().out


@dataclass
class RangedConfig:
    """A stage with ranges."""
    steps: int = C.ranged(10, ">= 1")  # optimizer steps
    lr: float = C.ranged(1e-3, "> 0")  # peak learning rate
    dropout: float = C.ranged(0.0, "[0, 1)")  # dropout
    ratio: float = C.ranged(1.0, "(0, 1]")  # a fraction
    clip: float = C.ranged(1.0, "[0, inf]")  # inf: no clip
    seed: int = C.ranged(0, "[0, 2**32)")  # a 32-bit seed
    penalty: float | None = -1.0  # any finite number, or none
    betas: tuple[float, float] = C.ranged((0.9, 0.95), "[0, 1)")  # AdamW betas
    name: str = "x"  # not a number


@pytest.mark.parametrize("flag, accepted", [
    ("--steps=1", True), ("--steps=0", False), ("--lr=1e-9", True), ("--lr=0", False), ("--dropout=0", True),
    ("--dropout=1", False), ("--dropout=-0.01", False), ("--ratio=1", True), ("--ratio=0", False),
    ("--clip=inf", True), ("--clip=-inf", False), ("--clip=nan", False), ("--lr=inf", False), ("--lr=nan", False),
    ("--seed=4294967295", True), ("--seed=4294967296", False), ("--seed=-1", False), ("--penalty=-5", True),
    ("--penalty=none", True), ("--penalty=nan", False), ("--penalty=-inf", False), ("--betas=0,0.999", True),
    ("--betas=0.9,1", False), ("--betas=-0.1,0.9", False),
])
def test_parse_config_keeps_each_field_in_its_range(flag, accepted):
    """A value on the closed side of a bound passes, one past it (or on an open side) is refused, and so are NaN
    and inf in any float field whose range does not close at inf; a tuple's every value is checked."""
    if accepted:
        C.parse_config(RangedConfig, [flag])
        return
    with pytest.raises(C.ConfigError) as refused:
        C.parse_config(RangedConfig, [flag])
    assert str(refused.value).startswith(f"{flag} must ") and "\n" not in str(refused.value)


def test_range_errors_name_flag_value_and_range():
    """The refusal is one line with the flag, the value as typed and the range; non-finite values say so."""
    cases = {"--steps=0": "--steps=0 must be >= 1", "--dropout=1.0": "--dropout=1.0 must be in [0, 1)",
             "--lr=nan": "--lr=nan must be a finite number > 0",
             "--penalty=inf": "--penalty=inf must be a finite number",
             "--betas=0.9,1": "--betas=0.9,1 must each be in [0, 1)"}
    for flag, says in cases.items():
        with pytest.raises(C.ConfigError) as refused:
            C.parse_config(RangedConfig, [flag])
        assert str(refused.value) == says
    with pytest.raises(C.ConfigError, match=r"--betas takes 2 comma-separated values, got '0.9'"):
        C.parse_config(RangedConfig, ["--betas=0.9"])
    with pytest.raises(C.ConfigError, match="^--lr=-1.0 must be > 0$"):  # a config made in code, shown as it is
        C.check_ranges(RangedConfig(lr=-1.0))


def test_help_shows_each_range(capsys):
    """--help lists a ranged field's valid values beside its default, and none for a field without a range."""
    with pytest.raises(SystemExit):
        C.parse_config(RangedConfig, ["--help"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert lines["--dropout=0.0"].split()[1:4] == ["[0,", "1)", "dropout"]
    assert lines["--steps=10"].split()[1:3] == [">=", "1"]
    assert lines["--name='x'"].split()[1:] == ["not", "a", "number"]


def test_a_range_that_does_not_parse_is_refused_where_it_is_written():
    """A typo in a range fails when the dataclass is defined, not silently at parse time."""
    for text in ("=> 1", "[0, 1", "0..1", "> one"):
        with pytest.raises(ValueError):
            C.ranged(1, text)


def test_cosine_schedule_values():
    """Warmup rises linearly; cosine decays from the peak to 10% of it, half-way at the middle."""
    assert C.cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert C.cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert C.cosine_lr(0, 100, 1.0) == pytest.approx(1.0)
    assert C.cosine_lr(50, 100, 1.0) == pytest.approx(0.55)
    assert C.cosine_lr(100, 100, 1.0) == pytest.approx(0.1)
    assert C.cosine_lr(150, 100, 1.0) == pytest.approx(0.1)  # past the end: stays at the floor


def test_optimizer_step_refuses_a_nan_gradient():
    """A non-finite gradient norm stops before the step: the weights are untouched."""
    m = torch.nn.Linear(3, 1)
    opt = C.configure_optimizer(m, 0.1)
    before = [p.detach().clone() for p in m.parameters()]
    (m(torch.ones(1, 3)) * float("nan")).sum().backward()
    with pytest.raises(FloatingPointError, match="stopped before the optimizer step"):
        C.optimizer_step(m, opt, torch.amp.GradScaler("cuda", enabled=False), 1.0, "at step 0")
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_optimizer_step_clips_steps_and_clears_the_gradients():
    """optimizer_step scales a gradient of norm 6 to grad_clip = 1 (grad_clip = 0: unclipped), steps, clears the
    gradients for the next accumulation and returns the norm before clipping."""
    for grad_clip, moved in ((1.0, 0.5), (0.0, 3.0)):
        m = torch.nn.Linear(4, 1, bias=False)
        torch.nn.init.zeros_(m.weight)
        m.weight.grad = torch.full((1, 4), 3.0)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        norm = C.optimizer_step(m, opt, torch.amp.GradScaler("cuda", enabled=False), grad_clip, "at step 0")
        assert norm == pytest.approx(6.0) and m.weight.grad is None
        torch.testing.assert_close(m.weight.detach(), torch.full((1, 4), -moved))


def test_weight_decay_on_matrices_only():
    """configure_optimizer decays every matrix (embeddings and Linear weights) and no bias or LayerNorm gain."""
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=8))
    decay, no_decay = C.configure_optimizer(model, 1e-3, weight_decay=0.1).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        n for n, p in model.named_parameters() if n.endswith(".bias") or ".ln_" in n)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert all(p.dim() == 2 for p in decay["params"])


def test_metrics_log_drops_lines_after_the_resume_point(tmp_path):
    """A resumed run's metrics.jsonl reads as one run: lines written after the resume step are dropped."""
    log = C.MetricsLog(str(tmp_path))
    for step in range(1, 6):
        log({"step": step, "loss": 1.0 / step})
    C.MetricsLog(str(tmp_path), resume_step=3)({"step": 4, "loss": 0.0})
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]


def run_script(*args, cwd):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, os.path.join(REPO, args[0]), *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, says", [
    (["sft.py", "--epoch=3"], "unknown option --epoch"),
    (["reward.py", "--lr=fast"], "--lr takes a float"),
    (["ppo.py", "--init_from=nothing.pt"], "nothing.pt: no such checkpoint"),
    (["sft.py", "--data_dir=nowhere"], "out/pretrain/pretrain.pt: no such checkpoint"),
    (["reward.py", "--device=gpu"], "--device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    (["sft.py", "--init_from=."], ".: not a GPT-2 directory in the Hugging Face layout (no config.json and no "
                                  "model.safetensors or pytorch_model.bin)"),
])
def test_user_errors_are_one_line(tmp_path, args, says):
    """A bad flag, a bad value, a missing checkpoint or a directory that holds no GPT-2 prints one line
    `error: ...` and exits 1."""
    r = run_script(*args, cwd=tmp_path)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(err) == 1 and err[0].startswith("error:") and says in err[0], r.stderr


def test_vocabulary_mismatch_names_the_fix(tmp_path):
    """SFT from a checkpoint whose compact vocabulary cannot encode the data is refused in one line that
    names the checkpoint it defaulted to and how to fix it."""
    tok = Tokenizer.build_compact(["Human: hi\n\nAssistant: hello"])
    os.makedirs(tmp_path / "out" / "pretrain")
    model = GPT(GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(str(tmp_path / "out" / "pretrain" / "pretrain.pt"), stage="pretrain", model=model,
                    run_config={}, tokenizer=tok)
    for split in ("train", "val"):
        write_jsonl(tmp_path / "d" / f"sft_{split}.jsonl", [{"prompt": "giraffes?", "response": "zebras"}])
    r = run_script("sft.py", "--data_dir=d", "--device=cpu", cwd=tmp_path)
    assert "starting from out/pretrain/pretrain.pt (the default" in r.stdout
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert "not in the compact vocabulary" in err[0] and "--init_from=gpt2" in err[0] and "--mode=pretrain" in err[0]


def test_flops_count_and_gpu_peaks_by_name():
    """nanoGPT's FLOPs per token, by hand for a 1-layer model (N: wte 50x8 tied, block 12 d^2 + 13 d, ln_f 2 d;
    no position embeddings), and the bf16 peak of a GPU matched by whole words of its name, specific first."""
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=8))
    n = 50 * 8 + 12 * 8 * 8 + 13 * 8 + 2 * 8
    assert C.flops_per_token(model, 16) == 6 * n + 12 * 1 * 16 * 8
    assert C.estimate_mfu(model, 1e6, "cpu") is None
    peaks = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H200": 989e12,
             "NVIDIA H100 NVL": 835e12, "NVIDIA L40S": 362e12, "NVIDIA L4": 121e12, "NVIDIA A10G": None,
             "NVIDIA A100-SXM4-80GB": 312e12, "Some New GPU": None}
    assert {name: C.bf16_peak_of(name) for name in peaks} == peaks


def test_help_into_a_closed_pipe_ends_without_a_traceback():
    """`python sft.py --help | head -1`: the reader closes the pipe early, and the script ends quietly."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(f"{sys.executable} sft.py --help | head -1", shell=True, cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
