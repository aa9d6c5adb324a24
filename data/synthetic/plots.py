"""
Pictures of an evaluation: a CSV of every plotted number always, and a PNG of it where matplotlib is installed
(it is optional, not in requirements.txt, so it is imported only when a picture is drawn).

    write_curves(run_dirs, out_dir)          PPO per iteration, one line per run (any runs' metrics.jsonl)
    write_rm_accuracy(rm_accuracy, out_dir)  the reward model's accuracy per task family next to the gold ceiling
    write_win_rates(res, baseline, out_dir)  each model's win rate against the baseline with its 95% CI

Each writes NAME.csv (and NAME.png) into out_dir and returns the path a reader should open: the PNG, or the
CSV without matplotlib; None when there is nothing to show. write_curves knows only ppo.py's metrics.jsonl,
so any evaluator can reuse it; the other two read evaluate.py's results.json.
"""

import csv
from pathlib import Path

from data.formats import atomic_write, read_jsonl

# What PPO users watch, as ppo.py logs it each iteration (gold_score only where the data has a judge)
CURVES = {"rm_score": "RM score", "gold_score": "gold score (the judge)", "kl": "KL to SFT (nats per response)",
          "response_length": "response length (tokens)", "ended": "EOS rate (ended / all)"}


def write_csv(path, header, rows):
    """rows (lists in header's order; None is written as an empty cell) -> CSV, atomically."""
    with atomic_write(path) as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(["" if x is None else x for x in row] for row in rows)


def new_figure(n_panels, cols=3, size=(4.2, 3.2)):
    """(figure, its n_panels axes) drawn by matplotlib's Agg backend, or None without matplotlib. The figure
    is made without pyplot, so no global backend is switched and no figure stays open in the caller's process."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    cols = min(cols, n_panels)
    rows = -(-n_panels // cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_png(fig, path):
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)


def write_curves(run_dirs, out_dir, metrics=CURVES):
    """
    ppo_curves.csv (iteration, model, one column per metric) and ppo_curves.png (a panel per metric, a line per
    run) from run_dirs {name: a PPO run's out_dir}. A row is one iteration of the run's metrics.jsonl; the final
    evaluation's line (eval_* keys) is no iteration and is left out, as is a run without metrics.jsonl.
    """
    curves = {}  # {name: [metrics.jsonl records of its iterations]}
    for name, run_dir in run_dirs.items():
        path = Path(run_dir) / "metrics.jsonl"
        if path.exists():
            curves[name] = [r for r in read_jsonl(path) if "step" in r and not any(k.startswith("eval_") for k in r)]
    if not curves:
        return None
    out = Path(out_dir)
    write_csv(out / "ppo_curves.csv", ["iteration", "model", *metrics],
              [[r["step"], name, *(r.get(k) for k in metrics)] for name, rows in curves.items() for r in rows])
    shown = [k for k in metrics if any(k in r for rows in curves.values() for r in rows)]
    drawn = new_figure(len(shown)) if shown else None
    if drawn is None:
        return out / "ppo_curves.csv"
    fig, axes = drawn
    for ax, key in zip(axes, shown):
        for i, (name, rows) in enumerate(curves.items()):
            xy = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if xy:
                ax.plot(*zip(*xy), marker="." if len(xy) < 30 else None, color=f"C{i % 10}", label=name)
        ax.set(title=metrics[key], xlabel="PPO iteration", ylabel=key)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("PPO per iteration (each run's rollouts, from its metrics.jsonl)")
    save_png(fig, out / "ppo_curves.png")
    return out / "ppo_curves.png"


def write_rm_accuracy(rm_accuracy, out_dir):
    """
    rm_accuracy.csv (one row for the whole comparison val set, "all", then one per task family: pairs, the RM's
    accuracy and the gold ceiling for both labeler sets) and rm_accuracy.png (grouped bars of the RM and its
    ceiling against the held-out labelers, as results.md's per-family table). rm_accuracy: results.json's.
    """
    if not rm_accuracy:
        return None
    groups = {"all": rm_accuracy, **rm_accuracy["per_family"]}
    who = ("train_labelers", "heldout_labelers")
    out = Path(out_dir)
    write_csv(out / "rm_accuracy.csv",
              ["family", "pairs", *(f"rm_{w}" for w in who), *(f"gold_ceiling_{w}" for w in who)],
              [[fam, a["pairs"], *(a[w] for w in who), *(a["gold_ceiling"][w] for w in who)]
               for fam, a in groups.items()])
    drawn = new_figure(1, size=(max(6.0, 1.1 * len(groups)), 3.6))
    if drawn is None:
        return out / "rm_accuracy.csv"
    fig, (ax,) = drawn
    x = range(len(groups))
    rm = [a["heldout_labelers"] for a in groups.values()]
    ceiling = [a["gold_ceiling"]["heldout_labelers"] for a in groups.values()]
    ax.bar([i - 0.2 for i in x], rm, width=0.4, label="reward model")
    ax.bar([i + 0.2 for i in x], ceiling, width=0.4, label="gold ceiling (the noiseless truth)")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="chance")
    ax.set_xticks(list(x), list(groups), rotation=30, ha="right")
    ax.set(ylim=(0, 1.15), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1], xlabel="task family (comparison val set)",
           ylabel="pairwise accuracy", title="Reward model accuracy against the held-out labelers, per task family")
    ax.legend(loc="upper center", ncols=3, fontsize="small")  # above the bars, in the headroom over 1
    save_png(fig, out / "rm_accuracy.png")
    return out / "rm_accuracy.png"


def write_win_rates(res, baseline, out_dir):
    """
    win_rates.csv (model, win rate and 95% CI half-width greedy, and at temperature 1 where sampled) and
    win_rates.png (bars with the CIs as error bars, greedy and T=1 side by side, the tie line at 0.5).
    res: results.json's.
    """
    greedy, t1 = res["win_rate_vs_sft"], res["win_rate_vs_sft_t1"]
    if not greedy:
        return None
    models = list(greedy)
    out = Path(out_dir)
    write_csv(out / "win_rates.csv", ["model", "win_rate", "ci95", "win_rate_t1", "ci95_t1"],
              [[m, greedy[m], res["win_ci95"][m], t1.get(m), res["win_ci95_t1"].get(m)] for m in models])
    drawn = new_figure(1, size=(max(6.0, 1.2 * len(models)), 3.6))
    if drawn is None:
        return out / "win_rates.csv"
    fig, (ax,) = drawn
    for shift, (label, rates, cis) in ((-0.2, ("greedy", greedy, res["win_ci95"])),
                                       (0.2, ("temperature 1", t1, res["win_ci95_t1"]))):
        x = [i + shift for i, m in enumerate(models) if m in rates]
        ax.bar(x, [rates[m] for m in models if m in rates], width=0.4, label=label,
               yerr=[cis[m] for m in models if m in rates], capsize=3)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label=f"as good as {baseline}")
    ax.set_xticks(range(len(models)), models)
    ax.set(ylim=(0, 1.15), yticks=[0, 0.2, 0.4, 0.6, 0.8, 1], xlabel="model", ylabel=f"win rate vs {baseline}",
           title=f"Win rate against {baseline} (ties half), with 95% CI ({res['split']} prompts)")
    ax.legend(loc="upper center", ncols=3, fontsize="small")
    save_png(fig, out / "win_rates.png")
    return out / "win_rates.png"
