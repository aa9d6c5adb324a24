"""Every flag of every script has its value checked. Each numeric field of each script's config dataclass, set
to 0, -1, a very large value, nan or inf, either is refused in one line that names it (a ConfigError, which
common.run prints as `error: ...` with exit code 1) or passes the script's own checks (a normal start; the
stage itself is not run). The fields come from dataclasses.fields, so a new flag is covered without a new
test. A few real commands show the one-line error and the exit code end to end."""

import dataclasses
import importlib
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import common
import sft
from data.formats import write_jsonl
from model import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["sft", "reward", "ppo", "evaluate", "bench", "data.synthetic.prepare", "data.synthetic.evaluate",
           "data.synthetic.sweep", "data.alpaca.prepare", "data.hh_rlhf.prepare", "data.oasst.prepare",
           "data.text.prepare"]


def config_class(module):
    """The script's config: the one dataclass named *Config that the module defines."""
    found = [c for c in vars(module).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
             and c.__module__ == module.__name__ and c.__name__.endswith("Config")]
    assert len(found) == 1, f"{module.__name__}: {found}"
    return found[0]


def numeric_fields(cls):
    """(field, value type) of every int or float field, tuples and Optional included."""
    hints = typing.get_type_hints(cls)
    return [(f, common.scalar_type(hints[f.name])) for f in dataclasses.fields(cls)
            if common.scalar_type(hints[f.name]) in (int, float)]


MODULES = {name: importlib.import_module(name) for name in SCRIPTS}
CASES = [(name, f.name) for name, m in MODULES.items() for f, _ in numeric_fields(config_class(m))]


def values_to_try(tp):
    """0, -1, a very large value, nan and inf, as a user would type them."""
    return ["0", "-1", str(10 ** 30) if tp is int else "1e300", "nan", "inf"]


def meaning(text, tp):
    """The value a flag's text stands for, or None where it is no value of the type (nan for an int)."""
    try:
        return int(text) if tp is int else float(text)
    except ValueError:
        return None


def outcome(module, argv):
    """The config parse_config and the script's check_config make of argv, or the ConfigError's message."""
    cls = config_class(module)
    try:
        cfg = common.parse_config(cls, argv, getattr(module, "MODES", None))
        if hasattr(module, "check_config"):
            module.check_config(cfg)
        return cfg
    except common.ConfigError as e:
        return str(e)


@pytest.mark.parametrize("script, name", CASES)
def test_each_numeric_flag_is_refused_in_one_line_or_accepted_within_its_range(script, name):
    """0, -1, huge, nan and inf, in every mode of a script with per-mode defaults: a value outside the field's
    range (NaN always; inf unless the range closes at inf) is refused in one line that names the flag and the
    range; one inside it is accepted as it is, or refused in one line naming the flag as a combination of
    settings. No other exception escapes."""
    module = MODULES[script]
    cls = config_class(module)
    field, tp = next((f, t) for f, t in numeric_fields(cls) if f.name == name)
    valid = common.field_range(field, typing.get_type_hints(cls)[name])
    default = getattr(cls(), name)
    for text in values_to_try(tp):
        value = meaning(text, tp)
        given = ",".join([text] * len(default)) if isinstance(default, tuple) else text
        flag = f"--{name}={given}"
        for mode in getattr(module, "MODES", [None]):
            result = outcome(module, ([f"--mode={mode}"] if mode else []) + [flag])
            if isinstance(result, str):
                assert "\n" not in result and f"--{name}" in result, (flag, result)
            if value is None or value not in valid:
                assert isinstance(result, str) and result.startswith(f"--{name}"), (flag, result)
            elif isinstance(result, str):  # in range: only a combination may refuse it
                assert not result.startswith(f"{flag} must be {valid.phrase}"), (flag, result)
                assert not result.startswith(f"{flag} must each be {valid.phrase}"), (flag, result)
            else:
                parsed = getattr(result, name)
                assert parsed == (tuple([value] * len(default)) if isinstance(default, tuple) else value), flag


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_int_flag_declares_its_range(script):
    """No int flag is left unchecked: each declares its valid values with common.ranged (a float without one is
    still checked to be finite)."""
    cls = config_class(MODULES[script])
    missing = [f.name for f, tp in numeric_fields(cls) if tp is int and "range" not in f.metadata]
    assert missing == [], f"{cls.__name__}: declare a range for {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_defaults_pass_their_own_checks(script):
    """Every default (in every mode) lies in its range and passes the script's combination checks."""
    module = MODULES[script]
    for mode in getattr(module, "MODES", {None: {}}):
        result = outcome(module, [f"--mode={mode}"] if mode else [])
        assert not isinstance(result, str), result


@pytest.mark.parametrize("script, argv", [
    ("sft", ["--epochs=0"]), ("sft", ["--mode=pretrain", "--epochs=0"]), ("sft", ["--grad_accum=0"]),
    ("reward", ["--epochs=0"]), ("reward", ["--batch_size=0"]), ("ppo", ["--iterations=0"]),
    ("ppo", ["--ppo_epochs=0"]), ("ppo", ["--batch_size=0"]), ("ppo", ["--minibatch_size=0"]),
])
def test_no_stage_can_be_asked_for_zero_optimizer_steps(script, argv):
    """Zero optimizer steps would save a checkpoint (or report a model) that the run never trained: every flag
    that asks a stage for none is refused before anything loads."""
    assert isinstance(outcome(MODULES[script], argv), str), argv


TABLE = [  # (script, flag, its one line on stderr)
    ("ppo.py", "--batch_size=0", "error: --batch_size=0 must be >= 1"),
    ("reward.py", "--batch_size=0", "error: --batch_size=0 must be >= 1"),
    ("sft.py", "--epochs=-1", "error: --epochs=-1 must be in (0, 10000]"),
    ("ppo.py", "--minibatch_size=0", "error: --minibatch_size=0 must be >= 1"),
    ("ppo.py", "--lr=-1", "error: --lr=-1 must be >= 0"),
    ("ppo.py", "--max_new_tokens=0", "error: --max_new_tokens=0 must be >= 1"),
    ("ppo.py", "--kl_coef=-1", "error: --kl_coef=-1 must be >= 0"),
    ("ppo.py", "--clip_eps=-0.2", "error: --clip_eps=-0.2 must be > 0"),
]


def test_bad_values_end_in_one_error_line_and_exit_code_1(tmp_path):
    """Run as commands (at once: each is mostly the import of torch), a bad value prints exactly one line,
    `error: --NAME=VALUE must be ...`, on stderr, nothing on stdout, exits 1 and writes nothing."""
    env = {k: v for k, v in os.environ.items() if k != "RLHF_DEBUG"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / script), flag], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for script, flag, _ in TABLE[:3]]
    for p, (script, flag, says) in zip(procs, TABLE):
        out, err = p.communicate(timeout=120)
        assert (p.returncode, err, out) == (1, says + "\n", ""), (script, flag)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script, flag, says", TABLE[3:])
def test_bad_values_through_common_run_in_process(script, flag, says, monkeypatch, capsys):
    """The rest of the table through what `python SCRIPT FLAG` runs (common.run around main), in this process:
    the same one line and exit code 1."""
    monkeypatch.setattr(sys, "argv", [script, flag])
    monkeypatch.delenv("RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        common.run(MODULES[script.removesuffix(".py")].main)
    assert (exit_info.value.code, capsys.readouterr().err) == (1, says + "\n")


def test_sft_never_selects_the_model_it_started_from(tmp_path, monkeypatch):
    """With validation losses that only rise (1, 2, 3 at steps 0, 1, 2), the final model is step 1's, the first
    it trained: the starting model is evaluated as the baseline, never saved as sft.pt."""
    data = tmp_path / "data"
    for split in ("train", "val"):
        write_jsonl(data / f"sft_{split}.jsonl", [{"prompt": f"say {w}", "response": w} for w in "abcdefgh"])
    scripted = iter([1.0, 2.0, 3.0])
    monkeypatch.setattr(sft, "evaluate_loss", lambda *a: next(scripted))
    sft.main([f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", "--init_from=scratch", "--n_layer=1",
              "--n_head=1", "--n_embd=8", "--block_size=16", "--batch_size=4", "--epochs=1", "--eval_interval=1",
              "--num_samples=0", "--device=cpu", "--dtype=float32"])
    assert load_checkpoint(str(tmp_path / "out" / "sft.pt"))["step"] == 1
