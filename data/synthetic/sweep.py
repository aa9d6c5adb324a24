"""
Reward-model over-optimisation, seen (Gao et al. 2022, "Scaling laws for reward model overoptimization"):
the more a policy optimises the reward model, the further it moves from the SFT model (sqrt(KL) on the x
axis), and while the RM's score (the proxy) keeps rising, the truth (the synthetic world's gold score)
rises, peaks and falls. Two ways of optimising the same RM from the same SFT model:

    PPO          ppo.py at several KL coefficients beta, 0 included, without ptx: the RM score, KL and gold
                 of each iteration's training rollouts (T = 1 samples, what Gao et al. plot)
    best-of-n    n = 1, 2, 4, ..., 64 T = 1 samples of the SFT model per validation prompt, the RM picking
                 the best; KL(best-of-n || SFT) = log n - (n - 1) / n (Stiennon et al. 2020, appendix G.3)

After the main pipeline (out/sft/sft.pt and out/reward/reward.pt), outside its time budget:

    python data/synthetic/sweep.py --seed=1337 --out_dir=out/sweep
    python data/synthetic/sweep.py --betas=0,0.05 --iterations=50 --ppo_args=batch_size=32,lr=2e-5

Writes into --out_dir:
    ppo_beta{B}/              each PPO run (ppo.pt, metrics.jsonl); a finished run with the same flags is
                              reused, an interrupted one resumed, unless --rerun
    bon_samples.jsonl         every best-of-n sample: prompt, response, ended, RM score, gold
    overoptimisation.csv      method, beta, iteration_or_n, kl, sqrt_kl, score, rm_score, gold,
                              labelers_score, response_length, ended: one row per PPO iteration and per n
    overoptimisation.png      proxy and gold against sqrt(KL), if matplotlib is installed (optional)
`score` is the proxy as optimised (the RM score, no_eos_penalty for a response cut off without EOS, as in
ppo.py); `rm_score` is the RM's own reading; `gold` and `labelers_score` are the training labelers' (the
truth may be looked at while tuning; the held-out labelers and test prompts are evaluate.py's).
"""

import csv
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import ConfigError, check_ranges, load_lm, parse_config, ranged, run, setup_runtime  # noqa: E402
from data import load_judge  # noqa: E402
from data.formats import atomic_write, read_jsonl, read_split, write_jsonl  # noqa: E402
from data.loader import encode_prompt, fitting, generate_responses  # noqa: E402
from model import score_sequences  # noqa: E402

COLUMNS = ("method", "beta", "iteration_or_n", "kl", "sqrt_kl", "score", "rm_score", "gold", "labelers_score",
           "response_length", "ended")


@dataclass
class SweepConfig:
    """Over-optimisation of the reward model: PPO over beta and best-of-n, proxy and gold against sqrt(KL)."""
    sft: str = "out/sft/sft.pt"  # the SFT checkpoint: every PPO run's start and reference, best-of-n's sampler
    reward_model: str = "out/reward/reward.pt"  # the proxy that PPO and best-of-n optimise
    data_dir: str = "data/synthetic"  # prompts_train (PPO), prompts_val (best-of-n), the judge (gold)
    out_dir: str = "out/sweep"  # ppo_beta{B}/, bon_samples.jsonl, overoptimisation.csv and .png
    # PPO
    betas: tuple[float, ...] = ranged((0.0, 0.01, 0.03, 0.05, 0.1), ">= 0")  # beta of each PPO run (ppo.py's: 0.05)
    iterations: int = ranged(100, ">= 1")  # PPO iterations per run
    ptx_coef: float = ranged(0.0, ">= 0")  # 0: the pure RM-vs-KL picture (no pretraining term pulling the policy back)
    ppo_args: tuple[str, ...] = ()  # further ppo.py flags for every run, key=value,... (e.g. batch_size=32)
    rerun: bool = False  # run every PPO again even where a finished run with the same flags exists
    # best-of-n
    bon_prompts: int = ranged(100, ">= 1")  # validation prompts
    bon_samples: int = ranged(64, ">= 1")  # T = 1 samples per prompt; n runs over the powers of 2 up to it
    # shared by both
    max_new_tokens: int = ranged(48, ">= 1")  # response length limit (ppo.py's default)
    no_eos_penalty: float | None = -1.0  # the proxy of a response cut off without EOS (ppo.py's default)
    smooth: int = ranged(9, ">= 1")  # centred moving average over this many PPO iterations in the plot and the table
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto | float32 | bfloat16, as the stages
    seed: int = ranged(1337, "[0, 2**32)")  # every PPO run's seed and the best-of-n samples'


# -----------------------------------------------------------------------------
# The math: importable, tested on hand-made values


def bon_kl(n):
    """KL(best-of-n || base) = log n - (n - 1) / n nats, the analytic value for a continuous proxy (no ties)."""
    return math.log(n) - (n - 1) / n


def best_of_n(proxy, values, n):
    """
    The expected value of `values` at the response the proxy picks (its argmax) among n drawn without
    replacement from the N samples of one prompt, averaged over all C(N, n) subsets exactly: the sample
    ranked i-th lowest (0-based) is the best of a subset when the other n - 1 come from the i below it, so
    its weight is C(i, n - 1) / C(N, n). This is the mean over every way of cutting the N samples into
    disjoint groups of n (the estimator of Nakano et al. 2021 that Gao et al. use), with less variance than
    any one cut. proxy: (N,); values: (N,) or (N, k). n = 1 gives the mean, n = N the value at the argmax.
    Ties in the proxy go to the later sample.
    """
    proxy, values = np.asarray(proxy, dtype=float), np.asarray(values, dtype=float)
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}], got {n}")
    order = np.argsort(proxy, kind="stable")
    weights = np.array([math.comb(i, n - 1) for i in range(N)], dtype=float) / math.comb(N, n)
    return np.tensordot(weights, values[order], axes=1)


def moving_average(x, k):
    """Centred moving average with window 2 * (k // 2) + 1, narrower at the ends (so the output has the
    input's length and no lag: a peak stays where it was)."""
    x, h = np.asarray(x, dtype=float), max(k, 1) // 2
    return np.array([x[max(0, i - h):i + h + 1].mean() for i in range(len(x))])


def write_csv(path, rows):
    """rows of dicts -> CSV with COLUMNS (a missing value is written empty), atomically."""
    with atomic_write(path) as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS} for r in rows)


def read_csv(path):
    """The rows of write_csv's file, numbers as floats (an empty cell: None)."""
    def value(k, v):
        return v if k == "method" else None if v == "" else float(v)
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: value(k, v) for k, v in r.items()} for r in csv.DictReader(f)]


def ppo_rows(metrics_path, beta):
    """One CSV row per PPO iteration of a metrics.jsonl: the training rollouts' figures (the final
    evaluation line, with its eval_ keys, is left out)."""
    rows = []
    for m in read_jsonl(metrics_path):
        if "kl" in m and "rm_score" in m:
            rows.append({"method": f"ppo_beta={beta:g}", "beta": beta, "iteration_or_n": m["step"], "kl": m["kl"],
                         "sqrt_kl": math.sqrt(max(m["kl"], 0.0)), "score": m["score"], "rm_score": m["rm_score"],
                         "gold": m.get("gold_score"), "labelers_score": m.get("labelers_score"),
                         "response_length": m.get("response_length"), "ended": m.get("ended")})
    return rows


def bon_rows(samples, ns):
    """One CSV row per n: the best-of-n figures averaged over prompts. samples: per prompt a dict of (N,)
    arrays score (the proxy that picks), rm_score, gold, labelers_score, response_length, ended."""
    keys = ("score", "rm_score", "gold", "labelers_score", "response_length", "ended")
    rows = []
    for n in ns:
        picked = np.mean([best_of_n(s["score"], np.stack([s[k] for k in keys], 1), n) for s in samples], axis=0)
        rows.append({"method": "bon", "beta": None, "iteration_or_n": n, "kl": bon_kl(n),
                     "sqrt_kl": math.sqrt(bon_kl(n)), **{k: float(v) for k, v in zip(keys, picked)}})
    return rows


def curves(rows, smooth):
    """{method: {column: array}} ordered by iteration_or_n; PPO's noisy per-iteration figures smoothed."""
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["iteration_or_n"])
        c = {k: np.array([np.nan if r[k] is None else r[k] for r in rs], dtype=float) for k in COLUMNS[2:]}
        if method != "bon":
            c = {k: v if k == "iteration_or_n" else moving_average(v, smooth) for k, v in c.items()}
        out[method] = c
    return out


# -----------------------------------------------------------------------------
# The runs


def run_ppo(cfg, beta):
    """ppo.py from the SFT model at this beta, in its own process (data/ imports no stage), into
    out_dir/ppo_beta{beta}. A finished run with the same flags is reused; an interrupted one resumes."""
    run_dir = Path(cfg.out_dir) / f"ppo_beta{beta:g}"
    flags = [f"--init_from={Path(cfg.sft).resolve()}", f"--reward_model={Path(cfg.reward_model).resolve()}",
             f"--data_dir={Path(cfg.data_dir).resolve()}", f"--out_dir={run_dir.resolve()}",
             f"--kl_coef={beta}", f"--iterations={cfg.iterations}", f"--ptx_coef={cfg.ptx_coef}",
             f"--max_new_tokens={cfg.max_new_tokens}", f"--no_eos_penalty={cfg.no_eos_penalty}",
             f"--seed={cfg.seed}", f"--device={cfg.device}", f"--dtype={cfg.dtype}", "--eval_prompts=0",
             *(f"--{a}" for a in cfg.ppo_args)]  # later flags win: ppo_args may override any of these
    flags_path, metrics = run_dir / "sweep_flags.json", run_dir / "metrics.jsonl"
    same = not cfg.rerun and flags_path.exists() and json.loads(flags_path.read_text()) == flags
    steps = [m["step"] for m in read_jsonl(metrics) if "kl" in m] if same and metrics.exists() else []
    if steps and steps[-1] == cfg.iterations:
        print(f"ppo beta={beta:g}: reusing the finished run in {run_dir}")
        return ppo_rows(metrics, beta)
    resume = same and (run_dir / "resume.pt").exists()
    if not resume:  # a fresh run: metrics.jsonl would be appended to, so it goes first
        metrics.unlink(missing_ok=True)
        with atomic_write(flags_path) as f:
            json.dump(flags, f)
    cmd = [sys.executable, "ppo.py", *flags, *(["--init_from=resume"] if resume else [])]
    print(f"ppo beta={beta:g}: {'resuming' if resume else 'running'} " + " ".join(cmd[1:]), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc == 130:
        raise KeyboardInterrupt
    if rc != 0:
        raise SystemExit(f"error: ppo.py at beta={beta:g} exited with code {rc} (its message is above)")
    return ppo_rows(metrics, beta)


@torch.no_grad()
def sample_best_of_n(cfg, judge):
    """bon_samples T = 1 responses of the SFT model to each of the first bon_prompts validation prompts,
    each scored by the RM (the proxy, no_eos_penalty without EOS) and judged: per prompt a dict of arrays
    for bon_rows, and the records for bon_samples.jsonl."""
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    sft, tok, _ = load_lm(cfg.sft, rt.device, stages=("sft",), dropout=0.0)
    rm = load_lm(cfg.reward_model, rt.device, stages=("reward",), dropout=0.0)[0].eval()
    sft.eval()
    prompts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", "val")[:cfg.bon_prompts]]
    if cfg.max_new_tokens >= sft.config.block_size:
        raise ConfigError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in {cfg.sft}'s "
                          f"block_size of {sft.config.block_size}")
    keep = fitting([len(encode_prompt(tok, p)) for p in prompts], sft.config.block_size - cfg.max_new_tokens,
                   "best-of-n prompts")
    prompts, N = [prompts[i] for i in keep], cfg.bon_samples
    print(f"best-of-n: sampling {N} responses to each of {len(prompts)} validation prompts", flush=True)
    # each prompt N times in a row: one batch of N per prompt; row i samples with seed + i
    repeated = [p for p in prompts for _ in range(N)]
    texts, ended, tokens = generate_responses(sft, tok, repeated, cfg.max_new_tokens, 1.0, N, seed=cfg.seed,
                                              autocast=rt.autocast)
    seqs = [encode_prompt(tok, p) + t for p, t in zip(repeated, tokens)]
    rm_scores = score_sequences(rm, seqs, rt.autocast).float().cpu().numpy()
    samples, records = [], []
    for j, prompt in enumerate(prompts):
        rows = range(j * N, (j + 1) * N)
        judged = [judge.score([prompt], [texts[i]], [ended[i]]) for i in rows]
        s = {"rm_score": rm_scores[list(rows)].astype(float),
             "ended": np.array([ended[i] for i in rows], dtype=float),
             "response_length": np.array([len(tokens[i]) for i in rows], dtype=float),
             "gold": np.array([d["gold_score"] for d in judged]),
             "labelers_score": np.array([d["labelers_score"] for d in judged])}
        s["score"] = s["rm_score"] if cfg.no_eos_penalty is None else \
            np.where(s["ended"] > 0, s["rm_score"], cfg.no_eos_penalty)
        samples.append(s)
        records += [{"prompt": prompt, "response": texts[i], "ended": ended[i], "score": float(s["score"][k]),
                     "rm_score": float(s["rm_score"][k]), "gold": float(s["gold"][k])} for k, i in enumerate(rows)]
    return samples, records


# -----------------------------------------------------------------------------
# Output


def plot(path, rows, smooth):
    """Proxy (left) and gold (right) against sqrt(KL): one colour per beta, black for best-of-n. Returns
    False when matplotlib is not installed (it is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    series = curves(rows, smooth)
    ppo = [m for m in series if m != "bon"]
    for ax, key, title in ((axes[0], "score", "proxy: reward model score"),
                           (axes[1], "gold", "truth: gold score")):
        for i, method in enumerate(ppo):
            c = series[method]
            ax.plot(c["sqrt_kl"], c[key], color=f"C{i % 10}", label=method.replace("_", " "))
        if "bon" in series:
            c = series["bon"]
            ax.plot(c["sqrt_kl"], c[key], "k--o", markersize=3,
                    label=f"best-of-n (n = 1..{c['iteration_or_n'][-1]:g})")
        ax.set_xlabel("sqrt(KL to SFT), sqrt(nats)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("RM score (normalised; no EOS: penalty)")
    axes[1].set_ylabel("gold score (0..1)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Reward model over-optimisation (PPO on training rollouts, moving average of {smooth}; "
                 f"best-of-n on validation prompts)", fontsize=9)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return True


def summary(rows, smooth):
    """Per run: the final KL, proxy and gold (PPO: smoothed over the last iterations; best-of-n: largest n),
    and where gold peaked."""
    lines = [f"{'run':<16} {'KL':>6} {'sqrt KL':>7} {'score':>7} {'gold':>6} {'labelers':>8}   peak gold (at)"]
    for method, c in curves(rows, smooth).items():
        at = int(np.nanargmax(c["gold"])) if not np.isnan(c["gold"]).all() else -1
        where = f"{'n' if method == 'bon' else 'it.'} {c['iteration_or_n'][at]:g}, sqrt KL {c['sqrt_kl'][at]:.2f}"
        lines.append(f"{method:<16} {c['kl'][-1]:>6.2f} {c['sqrt_kl'][-1]:>7.2f} {c['score'][-1]:>7.3f} "
                     f"{c['gold'][-1]:>6.3f} {c['labelers_score'][-1]:>8.3f}   {c['gold'][at]:.3f} ({where})")
    return "\n".join(lines)


def check_config(cfg):
    """Each field in its range (a config made in code skips parse_config) and the settings that contradict
    each other, refused before anything loads."""
    check_ranges(cfg)
    names = [f"{b:g}" for b in cfg.betas]  # each run's folder is ppo_beta{name}
    if len(set(names)) < len(names):
        raise ConfigError(f"--betas={','.join(names)} names a run twice: give each beta once")


def main(argv=None):
    cfg = argv if isinstance(argv, SweepConfig) else parse_config(SweepConfig, argv)
    check_config(cfg)
    judge = load_judge(cfg.data_dir)
    if judge is None:
        raise ConfigError(f"{cfg.data_dir} has no judge (judge.json): over-optimisation is measured against the "
                          f"truth, which only the synthetic world knows")
    out = Path(cfg.out_dir)

    # 1. best-of-n from SFT (first: it also checks the checkpoints before minutes of PPO)
    samples, records = sample_best_of_n(cfg, judge)
    write_jsonl(out / "bon_samples.jsonl", records)
    ns = [2 ** k for k in range(int(math.log2(cfg.bon_samples)) + 1)]
    rows = bon_rows(samples, ns)

    # 2. PPO at each beta from the same SFT model and RM, each in its own process
    rows = [r for beta in cfg.betas for r in run_ppo(cfg, beta)] + rows

    # 3. the CSV always, the picture when matplotlib is there, the table
    write_csv(out / "overoptimisation.csv", rows)
    drawn = plot(out / "overoptimisation.png", rows, cfg.smooth)
    print(summary(rows, cfg.smooth))
    print(f"wrote {out / 'overoptimisation.csv'}" + (f" and {out / 'overoptimisation.png'}" if drawn else
                                                   " (pip install matplotlib for overoptimisation.png)"))
    return rows


if __name__ == "__main__":
    run(main)
