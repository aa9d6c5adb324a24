"""Model sizes: what run.sh hands each stage at each SIZE (read from the commands it runs, with a stand-in python
that only records them), the size presets' models, and data/synthetic/scaling.py's arithmetic and its refusals.
`TINY=1 bash run.sh scaling` itself runs in tests/test_pipeline.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sft  # noqa: E402
from common import ConfigError, parse_config  # noqa: E402
from data.synthetic import scaling  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402
from model import GPT, GPTConfig, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_sh(tmp_path, *args, fail_on="", **env):
    """run.sh's commands, in order, as [(script, [flags])], run by a python that records its arguments and does
    nothing else, from a copy of run.sh in tmp_path (the folders it makes land there); env: run.sh's variables
    (SIZE=..., TINY=...), OUT_DIR and DATA_DIR unset unless given; fail_on: a flag that makes that python fail."""
    bin_dir, repo, log = tmp_path / "bin", tmp_path / "repo", tmp_path / "calls.txt"
    bin_dir.mkdir(parents=True, exist_ok=True)
    repo.mkdir(exist_ok=True)
    shutil.copy(ROOT / "run.sh", repo / "run.sh")
    fail = f'[[ " $* " == *" {fail_on} "* ]] && exit 1\n' if fail_on else ""
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\n{fail}printf "%s\\t" "$@" >> {log}\necho >> {log}\n')
    (bin_dir / "python").chmod(0o755)
    log.write_text("")
    base = {k: v for k, v in os.environ.items() if k not in ("OUT_DIR", "DATA_DIR", "TINY", "SIZE", "SIZES", "SEED")}
    proc = subprocess.run(["bash", "run.sh", *args], cwd=repo, capture_output=True, text=True,
                          env={**base, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env})
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    return proc, [(Path(script).name, flags) for script, *flags in calls]


def flags_of(calls, script, index=0):
    """{--key: value} of the index-th call of script (later flags win, as parse_config reads them)."""
    found = [flags for s, flags in calls if s == script]
    return dict(f[2:].partition("=")[::2] for f in found[index])


def stage_configs(calls):
    """The base model's SFTConfig as sft.py --mode=pretrain would parse it from run.sh's command."""
    pretrain = [flags for s, flags in calls if s == "sft.py" and "--mode=pretrain" in flags][0]
    return parse_config(sft.SFTConfig, pretrain, sft.MODES)


def test_default_size_is_sft_defaults_in_out(tmp_path):
    """`bash run.sh` (SIZE m) builds sft.py's default model in out/ and data/synthetic, every stage with its own
    defaults: the shape it passes is the one sft.py would choose anyway, and no stage gets other flags."""
    proc, calls = run_sh(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [s for s, _ in calls] == ["prepare.py", "sft.py", "sft.py", "prepare.py", "reward.py", "ppo.py", "ppo.py",
                                     "evaluate.py"]
    cfg, default = stage_configs(calls), sft.SFTConfig()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (default.n_layer, default.n_head, default.n_embd)
    assert flags_of(calls, "sft.py", 0)["out_dir"] == "out/pretrain" and flags_of(calls, "prepare.py")["out_dir"] == \
        "data/synthetic"
    assert set(flags_of(calls, "sft.py", 1)) == {"seed", "data_dir", "init_from", "out_dir"}
    assert set(flags_of(calls, "reward.py")) == {"seed", "data_dir", "init_from", "out_dir"}
    assert set(flags_of(calls, "ppo.py", 0)) == {"seed", "data_dir", "init_from", "reward_model", "out_dir"}
    assert run_sh(tmp_path, SIZE="m")[1] == calls


@pytest.mark.parametrize("size,shape,lr", [("xs", (2, 2, 40), 1.6e-2), ("s", (3, 4, 80), 8e-3)])
def test_each_size_has_its_shape_and_folders(tmp_path, size, shape, lr):
    """SIZE=xs and SIZE=s: their shape and learning rate reach the base model (a flag of the user's wins over
    the preset's), every stage writes into out/SIZE and the world goes to out/SIZE/data, with the default seed."""
    proc, calls = run_sh(tmp_path, SIZE=size)
    assert proc.returncode == 0, proc.stderr
    cfg = stage_configs(calls)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.lr) == (*shape, lr)
    assert stage_configs(run_sh(tmp_path, SIZE=size, PRETRAIN_FLAGS="--lr=1e-3")[1]).lr == 1e-3
    assert flags_of(calls, "prepare.py")["out_dir"] == f"out/{size}/data"
    assert flags_of(calls, "prepare.py")["seed"] == "1337"
    for script, flags in calls:
        out = [f for f in flags if f.startswith(("--out_dir=", "--data_dir=", "--init_from=", "--reward_model="))]
        assert all(f.partition("=")[2].startswith(f"out/{size}") for f in out if "scratch" not in f), (script, out)


def test_gpt2_preset_is_gpt2_124m(tmp_path):
    """SIZE=gpt2 builds GPT-2 small's shape, context and vocabulary: 124M parameters (counted without building
    the weights); TINY=1 SIZE=gpt2 keeps its vocabulary and learning rates at a tiny shape and context."""
    proc, calls = run_sh(tmp_path, SIZE="gpt2")
    assert proc.returncode == 0, proc.stderr
    cfg = stage_configs(calls)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab) == (12, 12, 768, 1024, "gpt2")
    with torch.device("meta"):
        model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=50257, n_layer=cfg.n_layer, n_head=cfg.n_head,
                              n_embd=cfg.n_embd))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small, position embeddings included
    cfg = stage_configs(run_sh(tmp_path, SIZE="gpt2", TINY="1")[1])
    assert (cfg.n_layer, cfg.n_head, cfg.vocab, cfg.block_size, cfg.lr) == (2, 12, "gpt2", 256, 6e-4)


@pytest.mark.parametrize("size,out", [("m", "out"), ("xs", "out/xs")])
def test_sweep_runs_on_the_sizes_sft_and_rm(tmp_path, size, out):
    """`bash run.sh sweep` hands sweep.py the SFT model and RM of the size's run and its world."""
    for f in ("sft/sft.pt", "reward/reward.pt"):
        (tmp_path / "repo" / out / f).parent.mkdir(parents=True)
        (tmp_path / "repo" / out / f).write_text("")
    data = "data/synthetic" if size == "m" else f"{out}/data"
    proc, calls = run_sh(tmp_path, "sweep", SIZE=size)
    assert proc.returncode == 0, proc.stderr
    assert [s for s, _ in calls] == ["sweep.py"]
    assert flags_of(calls, "sweep.py") == {"seed": "1337", "data_dir": data, "sft": f"{out}/sft/sft.pt",
                                           "reward_model": f"{out}/reward/reward.pt", "out_dir": f"{out}/sweep"}


def test_unknown_size_is_refused(tmp_path):
    proc, calls = run_sh(tmp_path, SIZE="xl")
    assert proc.returncode == 1 and "unknown SIZE 'xl'" in proc.stderr and calls == []


def test_scaling_runs_each_size_then_judges(tmp_path):
    """`bash run.sh scaling`: the whole pipeline of each size of SIZES in DIR/NAME (its world in DIR/NAME/data),
    then scaling.py over them; a size whose folder has results.json is kept, not run again."""
    out = tmp_path / "scaling"
    proc, calls = run_sh(tmp_path, "scaling", OUT_DIR=str(out), SIZES="xs m")
    assert proc.returncode == 0, proc.stderr
    assert [s for s, _ in calls].count("sft.py") == 4 and calls[-1][0] == "scaling.py"
    assert flags_of(calls, "scaling.py") == {"seed": "1337", "sizes": "xs,m", "dir": str(out)}
    pretrains = [dict(f[2:].partition("=")[::2] for f in flags) for s, flags in calls if "--mode=pretrain" in flags]
    assert [(p["n_layer"], p["out_dir"], p["data_dir"]) for p in pretrains] == [
        ("2", f"{out}/xs/pretrain", f"{out}/xs/data"), ("4", f"{out}/m/pretrain", f"{out}/m/data")]
    (out / "xs").mkdir(parents=True, exist_ok=True)
    (out / "xs" / "results.json").write_text("{}")
    proc, calls = run_sh(tmp_path, "scaling", OUT_DIR=str(out), SIZES="xs m")
    assert proc.returncode == 0 and f"kept {out}/xs" in proc.stdout
    assert [flags_of(calls, "sft.py", 0)["out_dir"]] == [f"{out}/m/pretrain"]


def test_tiny_scaling_runs_sizes_side_by_side_and_stops_on_a_failure(tmp_path):
    """TINY=1's sizes run at once, each into DIR/NAME/run.log; one that fails stops the run with one line naming
    it and its log (after the log's tail), and the judging is not run."""
    out = tmp_path / "scaling"
    proc, calls = run_sh(tmp_path, "scaling", OUT_DIR=str(out), TINY="1")
    assert proc.returncode == 0, proc.stderr
    widths = [flags_of(calls, "sft.py", i).get("n_embd") for i in range(6)]
    assert sorted(w for w in widths if w) == ["16", "24", "32"]
    assert all((out / name / "run.log").exists() for name in ("xs", "s", "m")) and calls[-1][0] == "scaling.py"
    proc, calls = run_sh(tmp_path / "f", "scaling", OUT_DIR=str(tmp_path / "f" / "scaling"), TINY="1",
                         fail_on="--n_embd=16")
    assert proc.returncode == 1 and f"error: size xs failed: {tmp_path}/f/scaling/xs/run.log" in proc.stderr
    assert "scaling.py" not in [s for s, _ in calls]


def test_headroom_captured_by_hand():
    """(win - 1/2) / (ideal - 1/2): the default run's PPO-ptx 0.586 against the ideal answers' 0.688 is 46%."""
    assert scaling.headroom_captured(0.586, 0.688) == pytest.approx(0.086 / 0.188)
    assert scaling.headroom_captured(0.688, 0.688) == 1.0 and scaling.headroom_captured(0.4, 0.6) == pytest.approx(-1)
    assert scaling.headroom_captured(0.7, 0.5) is None


def test_size_record_takes_each_number_from_its_evaluation():
    """A size's entry: win rates against the largest SFT from the joint evaluation, everything against its own SFT
    (win rates, gold, the RM, the ideal answers, the alignment tax, seconds) from its own run's results.json;
    the two hold different numbers here, so a number read from the wrong one shows."""
    models = list(scaling.METHODS)
    own = {"win_rate_vs_sft": {m: 0.1 + i / 10 for i, m in enumerate(models)},
           "win_ci95": {m: 0.01 * (i + 1) for i, m in enumerate(models)},
           "gold": {m: 0.5 + i / 20 for i, m in enumerate(models)},
           "headroom": {"ideal": {"win_rate_vs_sft": 0.7}},
           "rm_accuracy": {"heldout_labelers": 0.66, "train_labelers": 0.67, "pairs": 12,
                           "gold_ceiling": {"heldout_labelers": 0.8, "train_labelers": 0.81},
                           "sft_samples": {"heldout_labelers": 0.6}},
           "alignment_tax": {m: {"ptx_loss": 1.0 + i, "probe": 0.9 - i / 10} for i, m in enumerate(models)},
           "seconds": {"pretrain": 10.0, "eval": 2.5}}
    joint = {"win_rate_vs_sft": {f"xs_{m}": 0.9 - i / 10 for i, m in enumerate(models)},
             "win_ci95": {f"xs_{m}": 0.02 * (i + 1) for i, m in enumerate(models)}}
    r = scaling.size_record("xs", own, joint, 1234, (0.8, 0.03))
    assert r["params"] == 1234 and r["seconds"] == 12.5 and r["ideal_win_rate"] == 0.7
    assert r["win_rate_vs_largest_sft"] == {m: joint["win_rate_vs_sft"][f"xs_{m}"] for m in models}
    assert r["win_ci95"] == {m: joint["win_ci95"][f"xs_{m}"] for m in models}
    assert r["win_rate_vs_own_sft"] == own["win_rate_vs_sft"] and r["win_ci95_vs_own_sft"] == own["win_ci95"]
    assert r["gold"] == own["gold"] and r["alignment_tax"] == own["alignment_tax"]
    assert r["headroom_captured"] == pytest.approx((own["win_rate_vs_sft"]["ppo_ptx"] - 0.5) / 0.2)
    assert r["rm_accuracy"] == {"heldout_labelers": 0.66, "train_labelers": 0.67, "pairs": 12, "sft_samples": 0.6,
                                "gold_ceiling": {"heldout_labelers": 0.8, "train_labelers": 0.81}}
    assert r["ppo_ptx_vs_largest_base"] == {"win_rate": 0.8, "win_ci95": 0.03}


def test_largest_size_by_parameters_not_by_order():
    assert scaling.largest_size({"m": 1000, "xs": 10, "s": 100}) == "m"
    with pytest.raises(ConfigError, match="sizes a, b have the same number of parameters"):
        scaling.largest_size({"a": 5, "b": 5, "c": 1})


def test_count_params_matches_the_model(tmp_path):
    """count_params reads a checkpoint's state dict: GPT.num_params (position embeddings left out, the tied
    output matrix counted once)."""
    tok = Tokenizer.build_compact(["Human: hi\n\nAssistant: hello"])
    model = GPT(GPTConfig(block_size=16, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=8))
    save_checkpoint(str(tmp_path / "m.pt"), stage="sft", model=model, run_config={}, tokenizer=tok)
    assert scaling.count_params(str(tmp_path / "m.pt")) == model.num_params()


def test_scaling_refuses_missing_and_mismatched_sizes(tmp_path):
    """A size without its run, one size alone, and sizes of two worlds are each refused in one line."""
    cfg = scaling.ScalingConfig(sizes=("xs", "m"), dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"xs/results.json is missing: run the size first"):
        scaling.check_sizes(cfg)
    with pytest.raises(ConfigError, match="two or more different sizes"):
        scaling.check_sizes(scaling.ScalingConfig(sizes=("m", "m"), dir=str(tmp_path)))
    for name, prompt in (("xs", "a"), ("m", "b")):
        d = tmp_path / name
        for f in ("results.json", "pretrain/pretrain.pt", "sft/sft.pt", "ppo/ppo.pt", "ppo_ptx/ppo.pt"):
            (d / f).parent.mkdir(parents=True, exist_ok=True)
            (d / f).write_text("{}")
        (d / "data").mkdir()
        (d / "data" / "prompts_test.jsonl").write_text(f'{{"prompt": "{prompt}"}}\n')
    with pytest.raises(ConfigError, match="another world"):
        scaling.check_sizes(cfg)
