"""The one command (run.sh) end to end at a tiny scale, and data/synthetic/evaluate.py's results: the reward-model
accuracy math against brute force, log-probabilities of padded batches, the results.json schema, the plots, and
PPO checkpoints named by their own run config."""

import csv
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ConfigError
from data.formats import read_jsonl, read_split, render_prompt
from data.synthetic import evaluate, plots, prepare, tasks
from data.synthetic.labelers import HELDOUT_LABELERS, TRAIN_LABELERS, compare, gold_score, judge_mean, score, win_rate
from data.tokenizer import dataset_tokenizer
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["base", "base_fewshot", "sft", "ppo_ptx", "ppo"]
PPO_RUNS = {"ppo_ptx": {"ptx_coef": 0.2}, "ppo": {"ptx_coef": 0.0}}  # each name's truth, as ppo.py stores it
STAGES = ["data", "pretrain", "sft", "comparisons", "reward", "ppo_ptx", "ppo", "eval"]
PER_MODEL = ["win_rate_vs_sft", "win_ci95", "score", "gold", "rm_score", "ended", "per_family", "alignment_tax"]
# sampled at T=1 too (a base model never stops, so it gets no T=1 pass and no KL)
PER_MODEL_T1 = ["win_rate_vs_sft_t1", "win_ci95_t1", "score_t1", "gold_t1", "kl_to_sft"]


def check_results(out, models, prompts, stages=None):
    """results.json has every key of the schema with values in range; results.md and responses/ agree."""
    res = json.loads((out / "results.json").read_text())
    sampled = [m for m in models if not m.startswith("base")]
    for key in PER_MODEL:
        assert set(res[key]) == set(models), key
    for key in PER_MODEL_T1:
        assert set(res[key]) == set(sampled), key
    for m in models:
        for key in ("win_rate_vs_sft", "gold", "ended") + (("win_rate_vs_sft_t1", "gold_t1") if m in sampled else ()):
            assert 0 <= res[key][m] <= 1, (key, m)
        assert 0 <= res["win_ci95"][m] <= 1 and -1 < res["score"][m] < 2 and math.isfinite(res["rm_score"][m])
        assert res["alignment_tax"][m]["ptx_loss"] > 0 and 0 <= res["alignment_tax"][m]["probe"] <= 1
        assert m not in sampled or math.isfinite(res["kl_to_sft"][m])
        for fam, crit in res["per_family"][m].items():
            assert set(crit) == {"helpful", "honest", "harmless", "style", "gold"}, fam
            assert all(0 <= v <= 1 for v in crit.values()), (m, fam)
    assert res["win_rate_vs_sft"]["sft"] == 0.5 and res["kl_to_sft"]["sft"] == 0.0
    acc = res["rm_accuracy"]
    assert set(acc) == {"train_labelers", "heldout_labelers", "gold_ceiling", "pairs", "sft_samples", "per_family",
                        "nearest_miss"}
    near = acc["nearest_miss"]
    assert near["prompts"] >= 1 and 0 <= near["all"] <= 1 and set(near["per_family"]) <= set(tasks.FAMILY)
    assert set(acc["sft_samples"]) == {"train_labelers", "heldout_labelers", "gold_ceiling", "pairs"}
    # per family: the comparison val set's pairs split by the prompt's family, every pair in exactly one
    assert sum(a["pairs"] for a in acc["per_family"].values()) == acc["pairs"]
    assert set(acc["per_family"]) <= set(tasks.FAMILY)
    assert "Per task family, comparison val set" in (out / "results.md").read_text()
    for a in (acc, acc["sft_samples"], *acc["per_family"].values()):
        assert 0 <= a["train_labelers"] <= 1 and 0 <= a["heldout_labelers"] <= 1 and a["pairs"] >= 1
        assert all(0 <= a["gold_ceiling"][k] <= 1 for k in ("train_labelers", "heldout_labelers"))
    assert set(res["headroom"]) == {"sft_without_habits", "ideal"}
    for ref in res["headroom"].values():
        assert set(ref) == {"win_rate_vs_sft", "win_ci95", "gold"} and all(0 <= v <= 1 for v in ref.values())
    assert res["headroom"]["ideal"]["gold"] == 1.0  # the ideal answers are the gold score's maximum
    assert res["num_prompts"] == len(prompts)
    if stages is not None:
        assert list(res["seconds"]) == stages and all(s > 0 for s in res["seconds"].values())
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in models) and "Reward model accuracy" in table and "Headroom" in table
    # the answers side by side: the first prompt of each family (a fixed rule), every model's greedy answer
    first = {}
    for p in prompts:
        first.setdefault(tasks.parse(p)["family"], p)
    assert [(e["family"], e["prompt"]) for e in res["examples"]] == sorted(first.items())
    assert all(list(e["responses"]) == models for e in res["examples"]) and "Answers side by side" in table
    answers = {}
    for m in models:
        records = read_jsonl(out / "responses" / f"{m}.jsonl")
        assert [r["prompt"] for r in records] == prompts, m
        assert all(isinstance(r["response"], str) and isinstance(r["ended"], bool) for r in records), m
        answers[m] = ([r["response"] for r in records], [r["ended"] for r in records])
    # the test split's numbers are the held-out labelers' verdicts on exactly the responses written, each model
    # against SFT's
    for m, (texts, ended) in answers.items():
        assert res["score"][m] == pytest.approx(judge_mean(prompts, texts, HELDOUT_LABELERS, ended), abs=1e-12), m
        rate, ci = win_rate(prompts, texts, answers["sft"][0], HELDOUT_LABELERS, ended, answers["sft"][1])
        assert (res["win_rate_vs_sft"][m], res["win_ci95"][m]) == pytest.approx((rate, ci), abs=1e-12), m
        assert res["ended"][m] == sum(ended) / len(prompts), m
    return res


def test_markdown_cell_keeps_a_response_on_one_row():
    """A response with a newline (a made-up next turn) or a pipe stays in its cell; a long one is cut."""
    assert evaluate.markdown_cell("4\n\nHuman: hi | x") == "4\\n\\nHuman: hi \\| x"
    assert evaluate.markdown_cell("a" * 100, width=10) == "a" * 9 + "…"
    assert evaluate.markdown_cell("short") == "short"


# -----------------------------------------------------------------------------
# the reward model's accuracy


def groups_of(data, n=6, seed=0):
    """(prompt, responses, ended, random rewards) of the first n rankings of a tiny world's comparison val set."""
    rng = random.Random(seed)
    return [(r["prompt"], r["responses"], [True] * len(r["responses"]), [rng.random() for _ in r["responses"]])
            for r in read_split(data, "comparisons", "val")[:n]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    data = tmp_path_factory.mktemp("world")
    prepare.main(["--scale=0.02", "--quiet", f"--out_dir={data}"])
    return data


def test_pairwise_accuracy_equals_brute_force(world):
    """The accuracy is the mean over labelers of (pairs whose reward order is the labeler's verdict, from
    labelers.compare) / (pairs the labeler does not tie), with a reward tie counting half."""
    groups = groups_of(world)
    groups[0][3][1] = groups[0][3][0]  # one reward tie
    for labelers in (TRAIN_LABELERS, HELDOUT_LABELERS):
        per_labeler = []
        for lab in labelers:
            agree = judged = 0
            for p, rs, _, rw in groups:
                for x in range(len(rs)):
                    for y in range(x + 1, len(rs)):
                        c = compare(p, rs[x], rs[y], lab)
                        if c != 0:
                            agree += 0.5 if rw[x] == rw[y] else float((rw[x] > rw[y]) == (c > 0))
                            judged += 1
            per_labeler.append(agree / judged)
        assert evaluate.pairwise_accuracy(groups, labelers) == pytest.approx(sum(per_labeler) / len(labelers))


def test_pairwise_accuracy_ends(world):
    """A labeler's own scores as rewards agree with it always, their negatives never, a constant half the time."""
    lab = TRAIN_LABELERS[0]
    own = [(p, rs, es, [score(p, r, lab) for r in rs]) for p, rs, es, _ in groups_of(world)]
    assert evaluate.pairwise_accuracy(own, [lab]) == 1.0
    assert evaluate.pairwise_accuracy([(p, rs, es, [-x for x in rw]) for p, rs, es, rw in own], [lab]) == 0.0
    assert evaluate.pairwise_accuracy([(p, rs, es, [0.0] * len(rs)) for p, rs, es, _ in own], [lab]) == 0.5


def test_accuracy_table_names_each_labeler_set(world):
    """accuracy_table reports the training labelers' agreement under train_labelers and the held-out labelers'
    under heldout_labelers, for the rewards and for the gold ceiling."""
    groups = groups_of(world, n=20)
    gold = [(p, rs, es, [gold_score(p, r) for r in rs]) for p, rs, es, _ in groups]
    table = evaluate.accuracy_table(groups)
    for who, labelers in (("train_labelers", TRAIN_LABELERS), ("heldout_labelers", HELDOUT_LABELERS)):
        assert table[who] == evaluate.pairwise_accuracy(groups, labelers)
        assert table["gold_ceiling"][who] == evaluate.pairwise_accuracy(gold, labelers)
    assert table["train_labelers"] != table["heldout_labelers"]  # else the test could not tell them apart


def test_rm_with_gold_rewards_reaches_the_gold_ceiling(world):
    """A reward model whose rewards are the gold scores is exactly as accurate as the gold ceiling, and
    the ceiling is below 1 (the labelers are noisy) and above chance."""
    groups = [(p, rs, es, [gold_score(p, r) for r in rs]) for p, rs, es, _ in groups_of(world, n=20)]
    table = evaluate.accuracy_table(groups)
    for who in ("train_labelers", "heldout_labelers"):
        assert table[who] == table["gold_ceiling"][who]
        assert 0.5 < table[who] < 1
    assert table["pairs"] == sum(len(g[1]) * (len(g[1]) - 1) // 2 for g in groups)


# -----------------------------------------------------------------------------
# log-probabilities and the schema, on random tiny models


def tiny_gpt(vocab_size, seed, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=256, vocab_size=vocab_size, n_layer=1, n_head=2, n_embd=16, **kw)).eval()


def test_logprob_sums_of_padded_batches_equal_one_at_a_time():
    """Summed response log-probs from one left/right-padded batch equal those of each sequence alone."""
    model = tiny_gpt(50, 0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    responses = [torch.randint(1, 50, (n,), generator=g).tolist() for n in (4, 1, 6, 2)]
    batched = evaluate.logprob_sums(model, prompts, responses)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        logits, _ = model(torch.tensor([p + r]))
        logprobs = torch.log_softmax(logits[0, len(p) - 1:-1].float(), -1)
        assert batched[i].item() == pytest.approx(logprobs[range(len(r)), r].sum().item(), abs=1e-4)


def test_kl_to_reference_equals_the_log_ratio_one_at_a_time(world):
    """kl_to_reference is the mean over samples of log p_model(y | prefix + prompt) - log p_ref(y | prompt), each
    sequence's log-probs summed on its own: the model reads its few-shot prefix, the reference the bare prompt."""
    tok = dataset_tokenizer(world)
    model, ref = tiny_gpt(tok.vocab_size, 0), tiny_gpt(tok.vocab_size, 1)
    prompts = [r["prompt"] for r in read_split(world, "prompts", "test")[:3]]
    prefix = evaluate.fewshot_prefix(world, k=1)
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, tok.vocab_size, (n,), generator=g).tolist() for n in (5, 1, 3)]

    def logprob(m, context, ys):
        logits, _ = m(torch.tensor([context + ys]))
        return torch.log_softmax(logits[0, len(context) - 1:-1].float(), -1)[range(len(ys)), ys].sum().item()

    ratios = [logprob(model, tok.encode(prefix + render_prompt(p)), ys) - logprob(ref, tok.encode(render_prompt(p)), ys)
              for p, ys in zip(prompts, tokens)]
    kl = evaluate.kl_to_reference(model, ref, tok, prompts, prefix, tokens)
    assert kl == pytest.approx(sum(ratios) / len(ratios), abs=1e-4)


def test_results_schema_on_random_models(world, tmp_path, monkeypatch, capsys):
    """evaluate.py on random tiny checkpoints writes every key of results.json, responses/MODEL.jsonl for each
    test prompt, and a model identical to SFT has KL 0 and win rate 0.5; without matplotlib the plots are CSVs,
    with one line saying the PNGs were skipped."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    tok = dataset_tokenizer(world)
    paths = {}
    for seed, (name, stage) in enumerate([("base", "pretrain"), ("sft", "sft"), ("ppo_ptx", "ppo"), ("ppo", "ppo"),
                                          ("rm", "reward")]):
        paths[name] = str(tmp_path / f"{name}.pt")
        model = tiny_gpt(tok.vocab_size, 1 if name == "ppo_ptx" else seed, scalar_head=stage == "reward")
        save_checkpoint(paths[name], stage=stage, model=model, run_config=PPO_RUNS.get(name, {}), tokenizer=tok)
    (tmp_path / "seconds.json").write_text(json.dumps({"data": 1.0, "sft": 2.0}))
    models = [f"base={paths['base']}", f"base_fewshot={paths['base']}@fewshot", f"sft={paths['sft']}",
              f"ppo_ptx={paths['ppo_ptx']}", f"ppo={paths['ppo']}"]
    res = evaluate.main([f"--models={','.join(models)}", f"--reward_model={paths['rm']}", f"--data_dir={world}",
                         f"--out_dir={tmp_path}", "--max_new_tokens=8", "--seed=5"])
    prompts = [r["prompt"] for r in read_split(world, "prompts", "test")]
    check_results(tmp_path, MODELS, prompts, stages=["data", "sft", "eval"])
    assert res["seed"] == 5
    assert res["kl_to_sft"]["ppo_ptx"] == 0.0 and res["win_rate_vs_sft"]["ppo_ptx"] == 0.5  # the same weights
    assert set(json.loads((tmp_path / "eval.json").read_text())) == set(MODELS)

    # --split=val: the tuning view (validation prompts, training labelers) in files of its own, so it never
    # overwrites the test measurement
    before = (tmp_path / "results.json").read_text()
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as where it is not installed
    capsys.readouterr()
    val = evaluate.main([f"--models=sft={paths['sft']},ppo={paths['ppo']}", f"--data_dir={world}", "--split=val",
                         f"--out_dir={tmp_path}", "--max_new_tokens=8", "--sample_t1=false", "--reward_model="])
    val_prompts = [r["prompt"] for r in read_split(world, "prompts", "val")]
    assert val["split"] == "val" and val["num_prompts"] == len(val_prompts) and val["seconds"] == {}
    rows = read_jsonl(tmp_path / "responses_val" / "ppo.jsonl")
    assert [r["prompt"] for r in rows] == val_prompts
    texts = [r["response"] for r in rows]
    assert val["score"]["ppo"] == pytest.approx(judge_mean(val_prompts, texts, TRAIN_LABELERS,
                                                           [r["ended"] for r in rows]))
    assert (tmp_path / "results_val.md").exists() and (tmp_path / "results.json").read_text() == before
    assert val["plots"] == {"win_rates": "plots_val/win_rates.csv"} and not list((tmp_path / "plots_val").glob("*.png"))
    assert "](plots_val/win_rates.csv)" in (tmp_path / "results_val.md").read_text()
    assert sum("PNGs skipped" in line for line in capsys.readouterr().out.splitlines()) == 1
    with pytest.raises(ConfigError, match="--split"):
        evaluate.main([f"--models=sft={paths['sft']}", f"--data_dir={world}", "--split=train",
                       f"--out_dir={tmp_path}"])


# -----------------------------------------------------------------------------
# plots and the names of PPO checkpoints


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_png(path):
    """path is a non-empty PNG file (its 8-byte signature and more)."""
    data = path.read_bytes()
    assert len(data) > 8 and data[:8] == b"\x89PNG\r\n\x1a\n", path


def test_write_curves_has_a_row_per_iteration(tmp_path):
    """ppo_curves.csv holds one row per iteration of each run's metrics.jsonl, in order, with the five metrics
    (a key the run did not log left empty); the final evaluation line (eval_* keys) and a run without
    metrics.jsonl give no rows."""
    runs = {"a": tmp_path / "a", "b": tmp_path / "b", "none": tmp_path / "none"}
    for d in runs.values():
        d.mkdir()
    lines = {"a": [{"step": i, "rm_score": 0.1 * i, "gold_score": 0.5, "kl": i, "response_length": 9, "ended": 1.0}
                   for i in (1, 2, 3)] + [{"step": 3, "eval_n": 8, "eval_policy_rm_score": 0.3}],
             "b": [{"step": 1, "rm_score": -1, "kl": 0.0, "response_length": 4, "ended": 0.5}]}  # no judge: no gold
    for name, records in lines.items():
        (runs[name] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shown = plots.write_curves(runs, tmp_path / "plots")
    rows = read_csv(tmp_path / "plots" / "ppo_curves.csv")
    assert rows[0] == ["iteration", "model", "rm_score", "gold_score", "kl", "response_length", "ended"]
    assert rows[1:] == [["1", "a", "0.1", "0.5", "1", "9", "1.0"], ["2", "a", "0.2", "0.5", "2", "9", "1.0"],
                        ["3", "a", str(0.1 * 3), "0.5", "3", "9", "1.0"], ["1", "b", "-1", "", "0.0", "4", "0.5"]]
    assert shown.name in ("ppo_curves.png", "ppo_curves.csv") and shown.exists()
    assert plots.write_curves({"none": runs["none"]}, tmp_path / "empty") is None


def tiny_checkpoint(world, path, run_config, stage="ppo"):
    """A 1-layer random checkpoint at path in world's vocabulary, with the run config a stage would have stored."""
    tok = dataset_tokenizer(world)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(str(path), stage=stage, model=tiny_gpt(tok.vocab_size, 0), run_config=run_config, tokenizer=tok)
    return str(path)


def test_ppo_checkpoints_are_named_by_their_run_config(world, tmp_path, capsys):
    """A PPO checkpoint named ppo that was trained with ptx_coef > 0 is reported as ppo_ptx (and one named ppo_ptx
    with ptx_coef 0 as ppo), with one warning line each; a right name, another name, or a config without
    ptx_coef is kept silently; two models with one name after that are an error."""
    ptx = tiny_checkpoint(world, tmp_path / "a" / "ppo.pt", PPO_RUNS["ppo_ptx"])
    plain = tiny_checkpoint(world, tmp_path / "b" / "ppo.pt", PPO_RUNS["ppo"])
    unknown = tiny_checkpoint(world, tmp_path / "c" / "ppo.pt", {})
    specs, dirs = evaluate.resolve_models((f"ppo={ptx}", f"ppo_ptx={plain}@fewshot"))
    assert specs == [("ppo_ptx", ptx), ("ppo", f"{plain}@fewshot")]
    assert dirs == {"ppo_ptx": str(tmp_path / "a"), "ppo": str(tmp_path / "b")}
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "ptx_coef=0.2" in warnings[0] and "reported as ppo_ptx" in warnings[0]
    specs, _ = evaluate.resolve_models((f"ppo_ptx={ptx}", f"ppo={plain}", f"mine={ptx}", f"ppo_ptx0={unknown}"))
    assert [n for n, _ in specs] == ["ppo_ptx", "ppo", "mine", "ppo_ptx0"] and capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="two models are named ppo_ptx"):
        evaluate.resolve_models((f"ppo_ptx={ptx}", f"ppo={ptx}"))


def test_default_models_find_both_ppo_runs(world, tmp_path, monkeypatch, capsys):
    """Without --models, evaluate.py takes out/ppo_ptx/ppo.pt and out/ppo/ppo.pt where they exist, named by their
    run config: a PPO-ptx run that `python ppo.py` once wrote into out/ppo is reported as ppo_ptx."""
    monkeypatch.chdir(tmp_path)
    sft = tiny_checkpoint(world, Path("out/sft/sft.pt"), {}, stage="sft")
    old = tiny_checkpoint(world, Path("out/ppo/ppo.pt"), PPO_RUNS["ppo_ptx"])
    assert evaluate.resolve_models(()) == ([("sft", sft), ("ppo_ptx", old)], {"ppo_ptx": "out/ppo"})
    assert "warning: ppo=out/ppo/ppo.pt" in capsys.readouterr().out
    tiny_checkpoint(world, Path("out/ppo_ptx/ppo.pt"), PPO_RUNS["ppo_ptx"])
    tiny_checkpoint(world, Path("out/ppo/ppo.pt"), PPO_RUNS["ppo"])
    specs, dirs = evaluate.resolve_models(())
    assert specs == [("sft", sft), ("ppo_ptx", "out/ppo_ptx/ppo.pt"), ("ppo", "out/ppo/ppo.pt")]
    assert dirs == {"ppo_ptx": "out/ppo_ptx", "ppo": "out/ppo"} and "warning" not in capsys.readouterr().out


# -----------------------------------------------------------------------------
# run.sh


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`TINY=1 SEED=3 bash run.sh scaling` once for the tests below (the pipeline at sizes xs, s and m, then the
    models of all three judged against m's SFT): size m's out and data folders."""
    root = tmp_path_factory.mktemp("tiny")
    env = {**os.environ, "TINY": "1", "SEED": "3", "OUT_DIR": str(root / "scaling")}
    proc = subprocess.run(["bash", "run.sh", "scaling"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = root / "scaling" / "m"
    return out, out / "data"


def test_run_sh_tiny_end_to_end(world, tiny_run):
    """`TINY=1 SEED=3 bash run.sh` (size m of the scaling run) runs every stage in order at a tiny scale
    (seconds), with seed 3 from the data on; each stage's time lands in results.json, every model is judged on
    every test prompt. (`bash run.sh sweep`: its commands in tests/test_scaling.py, the sweep in test_sweep.py.)"""
    out, data = tiny_run
    prompts = [r["prompt"] for r in read_split(data, "prompts", "test")]
    res = check_results(out, MODELS, prompts, stages=STAGES)
    assert res["seed"] == 3
    assert prompts != [r["prompt"] for r in read_split(world, "prompts", "test")]  # seed 3's world, not 1337's
    for stage in ("pretrain/pretrain.pt", "sft/sft.pt", "reward/reward.pt", "ppo_ptx/ppo.pt", "ppo/ppo.pt"):
        assert (out / stage).exists(), stage


def test_run_sh_tiny_writes_the_plots_csv(tiny_run):
    """The tiny run's plots/: ppo_curves.csv has one row per PPO iteration per PPO model (the iterations of its
    metrics.jsonl, the numbers as logged), rm_accuracy.csv one row for all pairs and one per task family of
    results.json, win_rates.csv one per model with its CI; results.md links each plot by a relative path."""
    out, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "plots" / "ppo_curves.csv")
    metrics = ["rm_score", "gold_score", "kl", "response_length", "ended"]
    assert rows[0] == ["iteration", "model", *metrics]
    for name in ("ppo_ptx", "ppo"):
        iterations = load_checkpoint(str(out / name / "ppo.pt"))["run_config"]["iterations"]
        logged = [r for r in read_jsonl(out / name / "metrics.jsonl") if "kl" in r]
        mine = [r for r in rows[1:] if r[1] == name]
        assert [int(r[0]) for r in mine] == [r["step"] for r in logged] == list(range(1, iterations + 1)), name
        assert [[float(x) for x in r[2:]] for r in mine] == [[m[k] for k in metrics] for m in logged], name
    assert len(rows) == 1 + 2 * iterations

    rows = read_csv(out / "plots" / "rm_accuracy.csv")
    assert rows[0] == ["family", "pairs", "rm_train_labelers", "rm_heldout_labelers", "gold_ceiling_train_labelers",
                       "gold_ceiling_heldout_labelers"]
    acc = res["rm_accuracy"]
    assert [r[0] for r in rows[1:]] == ["all", *acc["per_family"]]
    for r, a in zip(rows[1:], [acc, *acc["per_family"].values()]):
        assert int(r[1]) == a["pairs"] and float(r[3]) == a["heldout_labelers"]
        assert float(r[5]) == a["gold_ceiling"]["heldout_labelers"]

    rows = read_csv(out / "plots" / "win_rates.csv")
    assert rows[0] == ["model", "win_rate", "ci95", "win_rate_t1", "ci95_t1"]
    assert [r[0] for r in rows[1:]] == MODELS
    assert all(float(r[1]) == res["win_rate_vs_sft"][r[0]] and float(r[2]) == res["win_ci95"][r[0]] for r in rows[1:])

    table = (out / "results.md").read_text()
    assert set(res["plots"]) == {"ppo_curves", "rm_accuracy", "win_rates"}
    for path in res["plots"].values():
        assert f"]({path})" in table and (out / path).exists(), path


def test_run_sh_tiny_draws_the_plots_png(tiny_run):
    """With matplotlib installed, the tiny run's plots/ has the three PNGs, and results.md links them."""
    pytest.importorskip("matplotlib")
    out, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    for name in ("ppo_curves", "rm_accuracy", "win_rates"):
        assert_png(out / "plots" / f"{name}.png")
        assert res["plots"][name] == f"plots/{name}.png"


def test_run_sh_tiny_scaling(tiny_run):
    """`TINY=1 bash run.sh scaling`: results.json has each size's parameters (their checkpoints' count, m the
    largest), its win rates against m's SFT as the joint evaluation measured them on the responses it wrote,
    against its own SFT as its own run's results.json, its RM accuracy and the headroom captured by PPO-ptx;
    scaling.csv has a row per size and model, results.md a row per size, scaling.png with matplotlib."""
    out, _ = tiny_run
    top = out.parent
    res = json.loads((top / "results.json").read_text())
    joint = json.loads((top / "vs_largest_sft" / "results.json").read_text())
    assert res["largest"] == "m" and list(res["sizes"]) == ["xs", "s", "m"] and res["seed"] == 3
    params = [r["params"] for r in res["sizes"].values()]
    assert params == sorted(params) and len(set(params)) == 3
    prompts = [r["prompt"] for r in read_split(out / "data", "prompts", "test")]
    answers = {name: [(r["response"], r["ended"]) for r in read_jsonl(top / "vs_largest_sft" / "responses" /
                                                                        f"{name}.jsonl")] for name in joint["gold"]}
    sft_texts, sft_ended = zip(*answers["m_sft"])
    for name, r in res["sizes"].items():
        own = json.loads((top / name / "results.json").read_text())
        model = GPT(GPTConfig(**load_checkpoint(str(top / name / "sft" / "sft.pt"))["model_config"]))
        assert r["params"] == model.num_params(), name
        assert set(r) == {"params", "win_rate_vs_largest_sft", "win_ci95", "win_rate_vs_own_sft",
                          "win_ci95_vs_own_sft", "gold", "rm_accuracy", "ideal_win_rate", "headroom_captured",
                          "alignment_tax", "ppo_ptx_vs_largest_base", "seconds"}
        for m in MODELS:
            texts, ended = zip(*answers[f"{name}_{m}"])
            rate, ci = win_rate(prompts, list(texts), list(sft_texts), HELDOUT_LABELERS, list(ended), list(sft_ended))
            assert (r["win_rate_vs_largest_sft"][m], r["win_ci95"][m]) == pytest.approx((rate, ci), abs=1e-12)
            assert r["win_rate_vs_own_sft"][m] == own["win_rate_vs_sft"][m] and r["gold"][m] == own["gold"][m]
        assert r["rm_accuracy"]["heldout_labelers"] == own["rm_accuracy"]["heldout_labelers"]
        texts, ended = zip(*answers[f"{name}_ppo_ptx"])
        base_texts, base_ended = zip(*answers["m_base"])
        rate, ci = win_rate(prompts, list(texts), list(base_texts), HELDOUT_LABELERS, list(ended), list(base_ended))
        assert r["ppo_ptx_vs_largest_base"] == pytest.approx({"win_rate": rate, "win_ci95": ci}, abs=1e-12)
        ideal = own["headroom"]["ideal"]["win_rate_vs_sft"]
        assert r["headroom_captured"] == pytest.approx((own["win_rate_vs_sft"]["ppo_ptx"] - 0.5) / (ideal - 0.5))
        assert r["seconds"] == pytest.approx(sum(own["seconds"].values()), abs=0.1)
    assert res["sizes"]["m"]["win_rate_vs_largest_sft"]["sft"] == 0.5
    rows = read_csv(top / "scaling.csv")
    assert rows[0][:4] == ["size", "params", "model", "win_rate_vs_largest_sft"] and len(rows) == 1 + 3 * len(MODELS)
    table = (top / "results.md").read_text()
    assert all(f"| {name} | {r['params']:,} |" in table for name, r in res["sizes"].items())
    if importlib.util.find_spec("matplotlib"):
        assert_png(top / "scaling.png")
        assert res["plot"] == "scaling.png" and "](scaling.png)" in table


def test_run_sh_sweep_needs_the_pipeline_first(tmp_path):
    """`bash run.sh sweep` without SFT and RM checkpoints stops with one line saying what to run; an unknown
    argument is refused."""
    env = {**os.environ, "OUT_DIR": str(tmp_path)}
    proc = subprocess.run(["bash", "run.sh", "sweep"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "run 'bash run.sh' first" in proc.stderr
    proc = subprocess.run(["bash", "run.sh", "swep"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 1 and "unknown argument" in proc.stderr
