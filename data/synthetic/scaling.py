"""
Figure 1 of InstructGPT at laptop scale: the pipeline at several model sizes (`bash run.sh scaling` runs each
size's run.sh into DIR/NAME first), then every model of every size judged against the largest SFT model, as the
paper's labelers compared every model with the 175B SFT:

    python data/synthetic/scaling.py --sizes=xs,s,m --dir=out/scaling

Reads each size's run (DIR/NAME: checkpoints, data/, results.json, seconds.json). Writes into --dir:
    vs_largest_sft/     the joint evaluation (data/synthetic/evaluate.py with every size's models, the largest
                        SFT as the baseline): its results.json, results.md and responses/
    results.json        {"largest": NAME, "sizes": {NAME: {"params", "win_rate_vs_largest_sft", "win_ci95",
                        "win_rate_vs_own_sft", "win_ci95_vs_own_sft", "gold", "rm_accuracy", "ideal_win_rate",
                        "headroom_captured", "alignment_tax", "ppo_ptx_vs_largest_base", "seconds"}}, "seed",
                        "num_prompts", "seconds", "plot"}
    results.md          the tables
    scaling.csv         one row per size and model
    scaling.png         win rate against the largest SFT over parameters (log), a line per method, like the paper's
                        Figure 1; beside it the RM's accuracy against its gold ceiling, and the headroom captured
                        (matplotlib is optional: without it, the CSV alone)
The test prompts and held-out labelers are the measurement's; no size is tuned on them.
"""

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common import ConfigError, check_ranges, parse_config, ranged, run  # noqa: E402
from data.formats import atomic_write, read_jsonl, read_split  # noqa: E402
from data.synthetic import evaluate  # noqa: E402
from data.synthetic.labelers import HELDOUT_LABELERS, win_rate  # noqa: E402
from data.synthetic.plots import new_figure, save_png, write_csv  # noqa: E402
from model import GPT, GPTConfig, load_checkpoint  # noqa: E402

# the models of each size, in the paper's order (GPT-3, GPT-3 prompted, SFT, PPO, PPO-ptx), and their checkpoints
METHODS = {"base": "pretrain/pretrain.pt", "base_fewshot": "pretrain/pretrain.pt@fewshot", "sft": "sft/sft.pt",
           "ppo": "ppo/ppo.pt", "ppo_ptx": "ppo_ptx/ppo.pt"}
LABELS = {"base": "base (GPT-3)", "base_fewshot": "base, few-shot prompted", "sft": "SFT", "ppo": "PPO",
          "ppo_ptx": "PPO-ptx (InstructGPT)"}


@dataclass
class ScalingConfig:
    """Every model of every size judged against the largest SFT model (Figure 1), and each size's own numbers."""
    sizes: tuple[str, ...] = ("xs", "s", "m")  # run.sh's SIZE names, each a finished run in DIR/NAME
    dir: str = "out/scaling"  # the sizes' runs are its folders; the results go here
    num_prompts: int = ranged(500, ">= 1")  # test prompts judged (each size's own evaluation judged 500)
    max_new_tokens: int = ranged(64, ">= 1")  # response length limit, as each size's evaluation
    seed: int = ranged(1337, "[0, 2**32)")  # the pipeline's seed (reported)


def count_params(path):
    """The parameters of a checkpoint's model without the position embeddings (GPT.num_params, which sft.py
    prints: the output matrix tied to the token embedding counts once), from its config, no weights built."""
    with torch.device("meta"):
        return GPT(GPTConfig(**load_checkpoint(path)["model_config"])).num_params()


def headroom_captured(win, ideal):
    """The share of the ideal answers' lead over SFT that a policy wins: (win - 1/2) / (ideal - 1/2), both win
    rates against the same SFT model on the same prompts; None where the ideal answers do not beat SFT."""
    return (win - 0.5) / (ideal - 0.5) if ideal > 0.5 else None


def largest_size(params):
    """The name of the size with the most parameters ({name: parameters}); a tie for the most is refused, as the
    largest SFT model would not be one model."""
    name = max(params, key=params.get)
    tied = [n for n, p in params.items() if p == params[name]]
    if len(tied) > 1:
        raise ConfigError(f"sizes {', '.join(tied)} have the same number of parameters: which SFT is the largest?")
    return name


def check_sizes(cfg):
    """{name: its run's folder}, each a finished run of the same world; one error line naming what is missing."""
    if len(set(cfg.sizes)) != len(cfg.sizes) or len(cfg.sizes) < 2:
        raise ConfigError(f"--sizes needs two or more different sizes, got {','.join(cfg.sizes)}")
    runs = {name: Path(cfg.dir) / name for name in cfg.sizes}
    for name, d in runs.items():
        for f in ("results.json", *(p.partition("@")[0] for p in METHODS.values())):
            if not (d / f).exists():
                raise ConfigError(f"{d / f} is missing: run the size first (SIZE={name} OUT_DIR={d} "
                                  f"DATA_DIR={d / 'data'} bash run.sh, or bash run.sh scaling)")
    worlds = {name: [r["prompt"] for r in read_split(d / "data", "prompts", "test")] for name, d in runs.items()}
    first = cfg.sizes[0]
    for name, prompts in worlds.items():
        if prompts != worlds[first]:
            raise ConfigError(f"{runs[name] / 'data'} is another world than {runs[first] / 'data'} (its test "
                              f"prompts differ): every size must be run with the same SEED and SCALE")
    return runs


def size_record(name, own, joint, params, vs_base):
    """One size's entry of results.json: the joint evaluation's win rates against the largest SFT, and its own
    evaluation's (own: its results.json) numbers against its own SFT; vs_base: (rate, CI) of its PPO-ptx against
    the largest base model."""
    ideal = own["headroom"]["ideal"]["win_rate_vs_sft"]
    acc = own["rm_accuracy"]
    return {"params": params,
            "win_rate_vs_largest_sft": {m: joint["win_rate_vs_sft"][f"{name}_{m}"] for m in METHODS},
            "win_ci95": {m: joint["win_ci95"][f"{name}_{m}"] for m in METHODS},
            "win_rate_vs_own_sft": {m: own["win_rate_vs_sft"][m] for m in METHODS},
            "win_ci95_vs_own_sft": {m: own["win_ci95"][m] for m in METHODS},
            "gold": {m: own["gold"][m] for m in METHODS},
            "rm_accuracy": {"heldout_labelers": acc["heldout_labelers"], "train_labelers": acc["train_labelers"],
                            "gold_ceiling": acc["gold_ceiling"], "pairs": acc["pairs"],
                            "sft_samples": (acc["sft_samples"] or {}).get("heldout_labelers")},
            "ideal_win_rate": ideal,
            "headroom_captured": headroom_captured(own["win_rate_vs_sft"]["ppo_ptx"], ideal),
            "alignment_tax": {m: own["alignment_tax"][m] for m in METHODS},
            "ppo_ptx_vs_largest_base": {"win_rate": vs_base[0], "win_ci95": vs_base[1]},
            "seconds": round(sum(own["seconds"].values()), 1) if own.get("seconds") else None}


def markdown(res):
    """results.md: Figure 1's numbers, then each size against its own SFT."""
    sizes, largest = res["sizes"], res["largest"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.0f}%"

    lines = [f"# Model size (seed {res['seed']}, {res['num_prompts']} test prompts, held-out labelers)", "",
             f"Win rate against the largest SFT model ({largest}_sft), ties half, with 95% CI:", "",
             "| size | parameters | " + " | ".join(LABELS[m] for m in METHODS) + " |",
             "|---|---:|" + "---:|" * len(METHODS)]
    for name, r in sizes.items():
        cells = [f"{r['win_rate_vs_largest_sft'][m]:.3f} ± {r['win_ci95'][m]:.3f}" for m in METHODS]
        lines.append(f"| {name} | {r['params']:,} | " + " | ".join(cells) + " |")
    lines += ["", "Each size against its own SFT: PPO-ptx, the ideal answers, the share of their headroom PPO-ptx "
              "captures; the reward model's accuracy on the held-out labelers' comparisons and its gold ceiling "
              "(the noiseless truth on the same pairs); the alignment tax (LM loss on held-out pretraining text, "
              f"probe accuracy); its PPO-ptx head to head against the largest base model ({largest}_base):", "",
              "| size | PPO-ptx vs SFT | PPO vs SFT | ideal vs SFT | headroom captured | RM accuracy | gold ceiling "
              f"| LM loss SFT / PPO-ptx / base | probe SFT / PPO-ptx / base | PPO-ptx vs {largest}_base | minutes |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in sizes.items():
        own, acc, tax = r["win_rate_vs_own_sft"], r["rm_accuracy"], r["alignment_tax"]
        lm = " / ".join(f"{tax[m]['ptx_loss']:.2f}" for m in ("sft", "ppo_ptx", "base"))
        probe = " / ".join(f"{tax[m]['probe']:.2f}" for m in ("sft", "ppo_ptx", "base"))
        minutes = "-" if r["seconds"] is None else f"{r['seconds'] / 60:.1f}"
        lines.append(f"| {name} | {own['ppo_ptx']:.3f} | {own['ppo']:.3f} | {r['ideal_win_rate']:.3f} | "
                     f"{pct(r['headroom_captured'])} | {acc['heldout_labelers']:.3f} | "
                     f"{acc['gold_ceiling']['heldout_labelers']:.3f} | {lm} | {probe} | "
                     f"{r['ppo_ptx_vs_largest_base']['win_rate']:.3f} | {minutes} |")
    if res["plot"].endswith(".png"):
        lines += ["", f"![Win rate against the largest SFT over parameters]({res['plot']})"]
    else:
        lines += ["", f"The numbers of the figure: [{res['plot']}]({res['plot']}) (matplotlib draws it)"]
    return "\n".join(lines) + "\n"


def write_plot(res, out):
    """scaling.csv always; scaling.png (Figure 1, the RM against its ceiling, the headroom captured) with
    matplotlib. Returns the path a reader should open."""
    sizes = res["sizes"]
    write_csv(out / "scaling.csv", ["size", "params", "model", "win_rate_vs_largest_sft", "ci95",
                                    "win_rate_vs_own_sft", "gold", "ptx_loss", "probe"],
              [[name, r["params"], m, r["win_rate_vs_largest_sft"][m], r["win_ci95"][m], r["win_rate_vs_own_sft"][m],
                r["gold"][m], r["alignment_tax"][m]["ptx_loss"], r["alignment_tax"][m]["probe"]]
               for name, r in sizes.items() for m in METHODS])
    drawn = new_figure(3, size=(4.6, 3.6))
    if drawn is None:
        return out / "scaling.csv"
    fig, (ax, ax_rm, ax_head) = drawn
    order = sorted(sizes, key=lambda n: sizes[n]["params"])
    x = [sizes[n]["params"] for n in order]
    for i, m in enumerate(METHODS):
        ax.errorbar(x, [sizes[n]["win_rate_vs_largest_sft"][m] for n in order],
                    yerr=[sizes[n]["win_ci95"][m] for n in order], marker="o", capsize=3, color=f"C{i}",
                    label=LABELS[m])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set(xscale="log", ylim=(0, 1), xlabel="parameters (log scale)",
           ylabel=f"win rate vs {res['largest']}_sft", title="Preferred to the largest SFT model")
    ax.legend(fontsize="small")
    acc = [sizes[n]["rm_accuracy"] for n in order]
    ax_rm.plot(x, [a["heldout_labelers"] for a in acc], marker="o", label="reward model")
    ax_rm.plot(x, [a["gold_ceiling"]["heldout_labelers"] for a in acc], marker="o", linestyle="--",
               label="gold ceiling")
    ax_rm.set(xscale="log", ylim=(0.5, 1), xlabel="parameters (log scale)", ylabel="pairwise accuracy",
              title="RM accuracy, held-out labelers")
    ax_rm.legend(fontsize="small")
    share = [(p, sizes[n]["headroom_captured"]) for p, n in zip(x, order) if sizes[n]["headroom_captured"] is not None]
    if share:
        ax_head.plot(*zip(*share), marker="o", color="C4")
    ax_head.axhline(0, color="grey", linewidth=0.8)
    ax_head.axhline(1, color="grey", linewidth=0.8, linestyle="--")  # as good as the ideal answers
    ax_head.set(xscale="log", ylim=(min([0.0, *(y for _, y in share)]) - 0.05, 1.05), xlabel="parameters (log scale)",
                ylabel="(win - 0.5) / (ideal - 0.5)", title="PPO-ptx's share of the ideal's headroom")
    for a in (ax, ax_rm, ax_head):
        a.grid(alpha=0.3)
    save_png(fig, out / "scaling.png")
    return out / "scaling.png"


def main(argv=None):
    cfg = argv if isinstance(argv, ScalingConfig) else parse_config(ScalingConfig, argv)
    check_ranges(cfg)
    t0 = time.time()
    runs = check_sizes(cfg)
    params = {name: count_params(str(d / METHODS["sft"])) for name, d in runs.items()}
    largest = largest_size(params)
    out = Path(cfg.dir)
    models = tuple(f"{name}_{m}={d / path}" for name, d in runs.items() for m, path in METHODS.items())
    joint = evaluate.main(evaluate.EvalConfig(
        models=models, baseline=f"{largest}_sft", data_dir=str(runs[largest] / "data"), reward_model="",
        split="test", num_prompts=cfg.num_prompts, max_new_tokens=cfg.max_new_tokens, sample_t1=False,
        seed=cfg.seed, out_dir=str(out / "vs_largest_sft")))
    # the paper's 1.3B InstructGPT against the 175B GPT-3: each size's PPO-ptx against the largest base model, head
    # to head on the responses just judged
    answers = {name: read_jsonl(out / "vs_largest_sft" / "responses" / f"{name}.jsonl") for name in joint["gold"]}
    prompts, base = [r["prompt"] for r in answers[f"{largest}_base"]], answers[f"{largest}_base"]
    sizes = {}
    for name, d in runs.items():
        mine = answers[f"{name}_ppo_ptx"]
        vs_base = win_rate(prompts, [r["response"] for r in mine], [r["response"] for r in base], HELDOUT_LABELERS,
                           [r["ended"] for r in mine], [r["ended"] for r in base])
        sizes[name] = size_record(name, json.loads((d / "results.json").read_text()), joint, params[name], vs_base)
    res = {"largest": largest, "sizes": sizes, "seed": cfg.seed, "num_prompts": joint["num_prompts"],
           "seconds": {"judge": round(time.time() - t0, 1)}}
    picture = write_plot(res, out)
    res["plot"] = picture.relative_to(out).as_posix()
    with atomic_write(out / "results.json") as f:
        json.dump(res, f, indent=1)
    table = markdown(res)
    with atomic_write(out / "results.md") as f:
        f.write(table)
    print("\n" + table)
    return res


if __name__ == "__main__":
    run(main)
