"""
Judge the pipeline's models on the synthetic world, the way the paper's labelers judged InstructGPT.

    python data/synthetic/evaluate.py                      # every model the default pipeline (run.sh) wrote
    python data/synthetic/evaluate.py --models=sft=out/sft/sft.pt,ppo=out/ppo/ppo.pt --out_dir=out/eval_x
    python data/synthetic/evaluate.py --split=val          # for tuning: validation prompts, training labelers

run.sh runs it as the pipeline's step 4, `python evaluate.py`, which hands data with a judge to the judge's own
evaluation (judge.py: Judge.evaluate, config_from_stage below).

For each model, on the held-out test prompts (never used for training or selection):
    score      the held-out labelers' mean score of its responses (0..1)
    win        how often the held-out labelers prefer it to the baseline (SFT), ties half, with a 95% CI;
               greedy, and again with both sampled at temperature 1 (win_t1; not for base models, which
               never stop)
    gold       the noiseless truth of the labelers (data/synthetic/labelers.py: gold_score), overall and
               per task family, with the four criteria (helpful, honest, harmless, style)
    rm         the reward model's mean score, to watch it drift away from gold
    kl_to_sft  KL(model || SFT) in nats per response, estimated on its own temperature-1 samples
and the alignment tax, the analogue of the paper's regressions on public NLP tasks:
    ptx_loss   language-modelling loss on held-out pretraining text (pretrain_val)
    probe      closed-book probe accuracy ("The capital of X is" -> Y), greedy
and the reward model's accuracy, next to its ceiling (how often the noiseless gold score itself agrees
with the noisy labelers), on the comparison val set and on pairs of SFT samples.
"few" models (NAME=PATH@fewshot) get a few-shot prompt of demonstrations: the paper's "GPT-3 prompted".

A PPO checkpoint is reported as ppo_ptx or ppo by its own run config (ptx_coef > 0 or not), whatever
--models calls it (ppo_label).

Writes into --out_dir: results.json (the schema below), results.md (the same as tables, linking the plots),
eval.json (the numbers per model), responses/MODEL.jsonl ({"prompt", "response", "ended"} per test prompt, the
decoding of --temperature), plots/ (data/synthetic/plots.py: PPO per iteration from each PPO run's
metrics.jsonl, the RM's accuracy per family, the win rates; CSV always, PNG where matplotlib is installed).
With --split=val the files are results_val.json, results_val.md, eval_val.json, responses_val/ and plots_val/,
and the judges are the training labelers: the numbers to tune on. results.json:
    win_rate_vs_sft, win_ci95, score, gold, rm_score, ended   {model: number}
    win_rate_vs_sft_t1, win_ci95_t1, score_t1, gold_t1        {model: number}   (temperature 1)
    per_family      {model: {family: {helpful, honest, harmless, style, gold}}}
    rm_accuracy     {train_labelers, heldout_labelers, gold_ceiling: {train_labelers, heldout_labelers},
                     pairs, sft_samples: {the same four keys}, per_family: {family: {the same four keys}},
                     nearest_miss: {all, per_family: {family: fraction}, prompts}}
    alignment_tax   {model: {ptx_loss, probe}}
    kl_to_sft       {model: nats}
    headroom        {sft_without_habits, ideal: {win_rate_vs_sft, win_ci95, gold}}: references, not models
    seconds         {stage: seconds}  (out_dir/seconds.json, which run.sh writes, plus this evaluation)
    plots           {ppo_curves, rm_accuracy, win_rates: path relative to out_dir, the PNG or else the CSV}
    seed, num_prompts
"""

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch

from common import ConfigError, check_ranges, is_pretrained_source, load_lm, parse_config, ranged, run
from data.formats import (
    DataError,
    atomic_write,
    read_jsonl,
    read_split,
    render_prompt,
    render_response,
    write_jsonl,
)
from data.loader import encode_prompt, encode_response, generate_responses, load_split
from data.synthetic import HELDOUT_LABELERS, TRAIN_LABELERS, criteria, gold_score, judge_mean, score, tasks, win_rate
from data.synthetic.labelers import TIE_EPS
from data.synthetic.plots import write_curves, write_rm_accuracy, write_win_rates
from data.synthetic.responses import without_habits
from data.synthetic.tasks import ideal_answer
from model import generate, load_checkpoint, pad_left, pad_right, response_logprobs, score_sequences

# What run.sh writes: PPO-ptx (the paper's InstructGPT, ppo.py's default ptx_coef) in out/ppo_ptx, PPO
# without ptx in out/ppo; each PPO checkpoint is then named by its own run config (resolve_models).
DEFAULT_MODELS = ("base=out/pretrain/pretrain.pt", "base_fewshot=out/pretrain/pretrain.pt@fewshot",
                  "sft=out/sft/sft.pt", "ppo_ptx=out/ppo_ptx/ppo.pt", "ppo=out/ppo/ppo.pt")
MODEL_STAGES = ("pretrain", "sft", "ppo")  # the checkpoints that answer prompts
LABELER_SETS = {"train_labelers": TRAIN_LABELERS, "heldout_labelers": HELDOUT_LABELERS}
CRITERIA = ("helpful", "honest", "harmless", "style", "gold")


@dataclass
class EvalConfig:
    """Judge the pipeline's models on the synthetic world's held-out test prompts and labelers."""
    models: tuple[str, ...] = ()  # NAME=PATH[@fewshot],... (default: those of DEFAULT_MODELS that exist)
    baseline: str = "sft"  # the model the win rates and the KL are against
    data_dir: str = "data/synthetic"  # the synthetic world's folder
    reward_model: str = "out/reward/reward.pt"  # its scores and accuracy ('' or a missing file: skip)
    split: str = "test"  # test: held-out prompts and labelers (the measurement) | val: for tuning (training labelers)
    num_prompts: int = ranged(500, ">= 1")  # prompts to judge
    max_new_tokens: int = ranged(64, ">= 1")  # response length limit
    temperature: float = ranged(0.0, ">= 0")  # the main pass: 0 greedy (reproducible); 1 sampled with the seed
    sample_t1: bool = True  # also sample every model at T=1: win rates at T=1, KL to SFT, RM on SFT samples
    seed: int = ranged(1337, "[0, 2**32)")  # the pipeline's seed (reported in results.json) and the sampling seed
    out_dir: str = "out"  # results.json, results.md, eval.json, responses/, plots/ go here; seconds.json is read here


# -----------------------------------------------------------------------------
# the models and their names


def ppo_label(name, path, run_config):
    """
    The name a PPO checkpoint is reported under. ppo and ppo_ptx are claims about the run, and its stored config
    decides: a run with ptx_coef > 0 is PPO-ptx, one with 0 plain PPO. A name that claims the other prints one
    warning line and is replaced; any other name, or a config without ptx_coef, is kept as given.
    Warn rather than refuse: the wrong name is most often a default (an out_dir left as it was), not the user's
    word, the truth is unambiguous, and an error would cost the user a rerun for a label we can set right.
    """
    if name not in ("ppo", "ppo_ptx") or "ptx_coef" not in run_config:
        return name
    truth = "ppo_ptx" if run_config["ptx_coef"] > 0 else "ppo"
    if name != truth:
        kind = "PPO-ptx" if truth == "ppo_ptx" else "plain PPO"
        print(f"warning: {name}={path} was trained with ptx_coef={run_config['ptx_coef']:g} ({kind}): "
              f"reported as {truth}")
    return truth


def resolve_models(models):
    """
    (specs, ppo_dirs): specs [(name, PATH[@fewshot])] from --models, or those of DEFAULT_MODELS whose checkpoint
    exists, with every PPO checkpoint named by ppo_label; ppo_dirs {name: a PPO checkpoint's folder}, its run's
    out_dir (where its metrics.jsonl is). Two models with one name are an error (one would hide the other).
    """
    specs, ppo_dirs = [], {}
    for name, spec in (s.partition("=")[::2] for s in (models or DEFAULT_MODELS)):
        path = spec.partition("@")[0]
        if not models and not os.path.exists(path):
            continue
        ckpt = None if is_pretrained_source(path) else load_checkpoint(path, MODEL_STAGES)  # GPT-2: no run config
        if ckpt is not None and ckpt["stage"] == "ppo":
            name = ppo_label(name, path, ckpt["run_config"])
            ppo_dirs[name] = str(Path(path).parent)
        specs.append((name, spec))
    names = [n for n, _ in specs]
    for n in dict.fromkeys(names):
        if names.count(n) > 1:
            raise ConfigError(f"two models are named {n} ({', '.join(s for m, s in specs if m == n)}): give each a "
                              "name of its own in --models (names other than ppo and ppo_ptx are kept as given)")
    return specs, ppo_dirs


# -----------------------------------------------------------------------------
# sampling


def fewshot_prefix(data_dir, k=3):
    """k demonstrations in the chat template, the context a prompted base model continues."""
    demos = read_split(data_dir, "sft", "train")[:k]
    return "".join(render_prompt(d["prompt"]) + render_response(d["response"]) + "\n\n" for d in demos)


def cut_at_next_turn(texts, ended):
    """A base model runs on into a made-up next turn; as the paper did for prompted GPT-3, keep only the
    response (the cut counts as a proper end)."""
    out_t, out_e = [], []
    for t, e in zip(texts, ended):
        i = t.find("\n\nHuman")
        out_t.append(t if i < 0 else t[:i].strip())
        out_e.append(e or i >= 0)
    return out_t, out_e


def sample(model, tok, prompts, args, temperature, prefix, is_base, seed):
    """{"texts", "ended", "tokens"}: one response per prompt; tokens are the sampled ids (EOS included when
    there is one), texts and ended what the labelers judge (a base model's cut at its made-up next turn)."""
    texts, ended, tokens = generate_responses(model, tok, prompts, args.max_new_tokens, temperature,
                                              prefix=prefix, seed=seed)
    if is_base:
        texts, ended = cut_at_next_turn(texts, ended)
    return {"texts": texts, "ended": ended, "tokens": tokens}


# -----------------------------------------------------------------------------
# reading the models


@torch.no_grad()
def logprob_sums(model, prompts, responses, batch_size=32):
    """(N,) sum over each response's tokens of log p(token | prompt, earlier tokens), temperature 1, in float32
    on the model's device. prompts and responses are lists of token-id lists; prompts left-padded, responses
    right-padded."""
    device = next(model.parameters()).device
    sums = []
    for i in range(0, len(prompts), batch_size):
        idx, prompt_mask = pad_left(prompts[i:i + batch_size])
        resp, lengths = pad_right(responses[i:i + batch_size])
        resp_mask = torch.arange(resp.size(1))[None, :] < lengths[:, None]
        seqs, mask = torch.cat([idx, resp], 1).to(device), torch.cat([prompt_mask, resp_mask], 1).to(device)
        logprobs = response_logprobs(model, seqs, mask, idx.size(1))  # (B, T)
        sums.append((logprobs * resp_mask.to(device)).sum(1).cpu())
    return torch.cat(sums)


def kl_to_reference(model, ref, tok, prompts, prefix, tokens):
    """KL(model || ref) in nats per response: the mean over the model's own T=1 samples of
    sum_t log p_model(y_t) - log p_ref(y_t), the model reading its prompt (with its few-shot prefix), the
    reference (SFT) the bare prompt; over every sampled token (a base model's past its cut too). Unbiased:
    the samples come from the model."""
    own = [tok.encode(prefix + render_prompt(p)) for p in prompts]
    bare = [encode_prompt(tok, p) for p in prompts]
    return (logprob_sums(model, own, tokens) - logprob_sums(ref, bare, tokens)).mean().item()


@torch.no_grad()
def pretrain_loss(model, tok, data_dir, block_size, max_windows=64, autocast=None):
    """Mean next-token loss on non-overlapping windows of held-out pretraining text."""
    stream = load_split(data_dir, "pretrain", "val", tok).stream
    n = min(max_windows, (len(stream) - 1) // block_size)
    if n == 0:
        raise DataError(f"{data_dir}/pretrain_val.jsonl: {len(stream)} tokens, fewer than one window of "
                        f"{block_size + 1}")
    x = torch.from_numpy(np.stack([np.asarray(stream[i * block_size:(i + 1) * block_size + 1], dtype=np.int64)
                                   for i in range(n)])).to(next(model.parameters()).device)
    with autocast() if autocast else contextlib.nullcontext():
        losses = [model(x[i:i + 16, :-1], x[i:i + 16, 1:])[1].item() for i in range(0, n, 16)]
    return sum(losses) / len(losses)


@torch.no_grad()
def probe_accuracy(model, tok, data_dir):
    """Fraction of closed-book probes whose greedy continuation starts with the answer's tokens."""
    probes = read_jsonl(Path(data_dir) / "probe_test.jsonl", {"text": str, "answer": str})
    answers = [tok.encode(p["answer"]) for p in probes]
    out = generate(model, [tok.encode(p["text"]) for p in probes], max(len(a) for a in answers), temperature=0)
    return sum(out["responses"][i, :len(a)].tolist() == a for i, a in enumerate(answers)) / len(probes)


# -----------------------------------------------------------------------------
# judging


def family_of(prompt):
    """The prompt's task family (tasks.parse), "other" for a prompt outside the synthetic world."""
    spec = tasks.parse(prompt)
    return spec["family"] if spec else "other"


def per_family(prompts, texts, ended):
    """{family: {helpful, honest, harmless, style, gold}}: the means of the labelers' four criteria and of
    the gold score over the prompts of each task family (tasks.parse; "other" for an unrecognised prompt)."""
    sums, counts = {}, {}
    for p, t, e in zip(prompts, texts, ended):
        fam = family_of(p)
        values = {**criteria(p, t, e), "gold": gold_score(p, t, e)}
        acc = sums.setdefault(fam, dict.fromkeys(CRITERIA, 0.0))
        for k in CRITERIA:
            acc[k] += values[k]
        counts[fam] = counts.get(fam, 0) + 1
    return {fam: {k: v / counts[fam] for k, v in acc.items()} for fam, acc in sorted(sums.items())}


def examples(prompts, texts):
    """The first prompt of each task family, in the prompts' order (a fixed rule, not a pick by hand), with
    every model's answer: [{family, prompt, responses: {model: text}}], families sorted. texts: {model: [str]}."""
    first = {}
    for i, p in enumerate(prompts):
        first.setdefault(family_of(p), i)
    return [{"family": fam, "prompt": prompts[i], "responses": {m: t[i] for m, t in texts.items()}}
            for fam, i in sorted(first.items())]


def markdown_cell(text, width=90):
    """A response as one table cell: newlines shown as \\n, pipes escaped, long text cut with an ellipsis."""
    text = text.replace("\n", "\\n").replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def pairwise_accuracy(groups, labelers):
    """
    How often a scorer orders a pair of responses as a labeler does, averaged over the labelers.
    groups: (prompt, responses, ended, rewards) per prompt; every pair of a group's responses is judged by
    every labeler (labelers.compare's verdict from the same scores); a labeler's tie is skipped, a reward tie
    counts half. With rewards = gold scores this is the gold ceiling: the agreement of the noiseless truth
    with the noisy labelers, the most any reward model can expect.
    """
    accs = []
    for lab in labelers:
        agree = judged = 0.0
        for prompt, responses, ended, rewards in groups:
            s = [score(prompt, r, lab, e) for r, e in zip(responses, ended)]
            for x in range(len(responses)):
                for y in range(x + 1, len(responses)):
                    d = s[x] - s[y]
                    if abs(d) <= TIE_EPS:
                        continue
                    dr = rewards[x] - rewards[y]
                    agree += 0.5 if dr == 0 else float((dr > 0) == (d > 0))
                    judged += 1
        accs.append(agree / max(judged, 1))
    return sum(accs) / len(accs)


def accuracy_table(groups):
    """The reward model's accuracy against both labeler sets, and the gold ceiling on the same pairs."""
    gold_groups = [(p, rs, es, [gold_score(p, r, e) for r, e in zip(rs, es)]) for p, rs, es, _ in groups]
    out = {who: pairwise_accuracy(groups, labs) for who, labs in LABELER_SETS.items()}
    out["gold_ceiling"] = {who: pairwise_accuracy(gold_groups, labs) for who, labs in LABELER_SETS.items()}
    out["pairs"] = sum(len(g[1]) * (len(g[1]) - 1) // 2 for g in groups)
    return out


def nearest_miss_accuracy(rm, tok, prompts):
    """How often the reward model scores a prompt's ideal answer above the family's nearest miss (its first
    wrong: one item too many, a sum off by one, two neighbours swapped ...), overall and per family: the
    distinction a policy drifts across when the RM cannot make it. Prompts whose miss is no worse in gold are
    left out: there neither order would be wrong."""
    pairs = []
    for p in prompts:
        spec = tasks.parse(p)
        if spec is None:
            continue
        ideal = ideal_answer(p)
        miss = tasks.FAMILY[spec["family"]].wrongs(spec, random.Random(p))[0]  # fixed by the prompt: reproducible
        if gold_score(p, ideal) > gold_score(p, miss):
            pairs.append((spec["family"], p, ideal, miss))
    if not pairs:
        return None
    r = score_sequences(rm, [encode_prompt(tok, p) + encode_response(tok, x) for _, p, i, m in pairs
                             for x in (i, m)]).tolist()
    right = {}
    for j, (fam, *_) in enumerate(pairs):
        right.setdefault(fam, []).append(r[2 * j] > r[2 * j + 1])
    return {"all": sum(map(sum, right.values())) / len(pairs), "prompts": len(pairs),
            "per_family": {f: sum(v) / len(v) for f, v in sorted(right.items())}}


def rm_accuracy(rm, tok, data_dir, prompts=(), a=None, b=None):
    """The reward model's accuracy, to compare with the gold ceiling (how far the RM is from the best any
    reward model can do against these noisy labelers), on every pair of every ranking of comparisons_val.jsonl
    and, given two samples a and b of the SFT model on each prompt (sample()'s dicts), on those pairs
    (sft_samples: identical pairs left out; None without samples); on prompts, the ideal answer against
    the nearest miss (nearest_miss_accuracy)."""
    records = read_split(data_dir, "comparisons", "val")
    seqs = [encode_prompt(tok, r["prompt"]) + encode_response(tok, x) for r in records for x in r["responses"]]
    rewards = score_sequences(rm, seqs).tolist()
    groups, i = [], 0
    for r in records:
        k = len(r["responses"])
        ended = r.get("ended", [True] * k)  # a policy sample cut without EOS, where the data says so
        groups.append((r["prompt"], r["responses"], ended, rewards[i:i + k]))
        i += k
    out = {**accuracy_table(groups), "sft_samples": None, "nearest_miss": nearest_miss_accuracy(rm, tok, prompts)}
    by_family = {}  # where the RM falls short of the ceiling: the families whose truth it cannot check
    for g in groups:
        by_family.setdefault(family_of(g[0]), []).append(g)
    out["per_family"] = {fam: accuracy_table(gs) for fam, gs in sorted(by_family.items())}
    keep = [i for i in range(len(prompts))
            if (a["texts"][i], a["ended"][i]) != (b["texts"][i], b["ended"][i])] if a and b else []
    if keep:
        seqs = [encode_prompt(tok, prompts[i]) + s["tokens"][i] for i in keep for s in (a, b)]
        r = score_sequences(rm, seqs).tolist()
        out["sft_samples"] = accuracy_table([(prompts[i], [a["texts"][i], b["texts"][i]],
                                              [a["ended"][i], b["ended"][i]], r[2 * j:2 * j + 2])
                                             for j, i in enumerate(keep)])
    return out


# -----------------------------------------------------------------------------
# reporting


def markdown(res, baseline):
    """results.md: results.json as tables."""
    models = list(res["score"])

    def num(x, fmt=".3f"):
        return "" if x is None else format(x, fmt)

    def win(rates, cis, m):
        return "" if m not in rates else f"{rates[m]:.3f} ± {cis[m]:.3f}"

    who = (f"held-out test prompts judged by {len(HELDOUT_LABELERS)} held-out labelers" if res["split"] == "test"
           else f"validation prompts judged by the {len(TRAIN_LABELERS)} training labelers (for tuning)")
    lines = [f"# Results (seed {res['seed']}, {res['split']})", "",
             f"{res['num_prompts']} {who}; "
             f"win rates against {baseline}, ties half, with the 95% CI; KL to {baseline} in nats per response "
             f"on T=1 samples; alignment tax: loss on held-out pretraining text and the closed-book probe.", "",
             f"| model | labelers' score | win rate vs {baseline} (greedy) | win rate vs {baseline} (T=1) | gold "
             f"| gold (T=1) | RM score | ended with EOS | KL to {baseline} | loss on held-out pretraining text "
             "| closed-book probe |",
             "|---|" + "---|" * 10]
    for m in models:
        cells = [num(res["score"][m]), win(res["win_rate_vs_sft"], res["win_ci95"], m),
                 win(res["win_rate_vs_sft_t1"], res["win_ci95_t1"], m), num(res["gold"][m]),
                 num(res["gold_t1"].get(m)), num(res["rm_score"].get(m), ".2f"), num(res["ended"][m]),
                 num(res["kl_to_sft"].get(m), ".2f"), num(res["alignment_tax"][m]["ptx_loss"]),
                 num(res["alignment_tax"][m]["probe"])]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    titles = {"ppo_curves": "PPO per iteration: RM score, gold, KL, response length, EOS rate",
              "rm_accuracy": "reward model accuracy per task family, next to the gold ceiling",
              "win_rates": f"win rates vs {baseline} with 95% CIs"}
    if res.get("plots"):
        lines += ["", "Plots: " + "; ".join(f"[{titles[k]}]({p})" for k, p in res["plots"].items()) + "."]
    families = sorted({f for m in models for f in res["per_family"][m]})
    for k in CRITERIA:
        lines += ["", f"## Per task family: {k}", "", "| family | " + " | ".join(models) + " |",
                  "|---|" + "---|" * len(models)]
        lines += [f"| {f} | " + " | ".join(num(res["per_family"][m].get(f, {}).get(k)) for m in models) + " |"
                  for f in families]
    if res.get("headroom"):
        lines += ["", f"## Headroom over {baseline}", "",
                  f"{baseline}'s own greedy answers with the demonstrators' habits undone (padding and hedging "
                  "taken off, a guess at an unanswerable question or a carried-out harmful request replaced by "
                  "the ideal answer, one list item or word too many dropped), and the ideal answers: what "
                  "unlearning the habits alone is worth, and what getting every answer right too is worth.", "",
                  f"| reference | win rate vs {baseline} | gold |", "|---|---|---|"]
        lines += [f"| {k} | {v['win_rate_vs_sft']:.3f} ± {v['win_ci95']:.3f} | {v['gold']:.3f} |"
                  for k, v in res["headroom"].items()]
    acc = res["rm_accuracy"]
    if acc is not None:
        lines += ["", "## Reward model accuracy", "",
                  "Agreement of the RM's order of a pair with each labeler's own verdict (labeler ties skipped), "
                  "averaged over the labelers; the gold ceiling is the same for the noiseless gold score.", "",
                  "| pairs | n | training labelers | held-out labelers | gold ceiling (training) "
                  "| gold ceiling (held-out) |", "|---|---|---|---|---|---|"]
        for what, a in (("comparison val set, every pair of each ranking", acc),
                        ("two T=1 samples of SFT per test prompt", acc.get("sft_samples"))):
            if a:
                cells = [a["train_labelers"], a["heldout_labelers"], *a["gold_ceiling"].values()]
                lines.append(f"| {what} | {a['pairs']} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")
        lines += ["", "Per task family, comparison val set (held-out labelers):", "",
                  "| family | pairs | RM | gold ceiling | RM - ceiling |", "|---|---|---|---|---|"]
        for fam, a in acc["per_family"].items():
            rm, ceiling = a["heldout_labelers"], a["gold_ceiling"]["heldout_labelers"]
            lines.append(f"| {fam} | {a['pairs']} | {rm:.3f} | {ceiling:.3f} | {rm - ceiling:+.3f} |")
        near = acc.get("nearest_miss")
        if near:
            lines += ["", f"The ideal answer above the family's nearest miss (one too many, off by one, a swap ...) "
                      f"in the RM's score, on {near['prompts']} {res['split']} prompts: {near['all']:.3f}", "",
                      "| family | ideal > nearest miss |", "|---|---|"]
            lines += [f"| {f} | {x:.3f} |" for f, x in near["per_family"].items()]
    if res.get("examples"):
        shown = list(res["examples"][0]["responses"])
        lines += ["", "## Answers side by side", "",
                  "The first prompt of each task family (greedy answers).", "",
                  "| family | prompt | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
        lines += [f"| {e['family']} | {markdown_cell(e['prompt'])} | "
                  + " | ".join(markdown_cell(e["responses"][m]) for m in shown) + " |" for e in res["examples"]]
    if res["seconds"]:
        lines += ["", "## Seconds per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in res["seconds"].items()]
        lines.append(f"| total | {sum(res['seconds'].values()):.1f} |")
    return "\n".join(lines) + "\n"


def evaluate_model(name, spec, prompts, args, rm, ref, ref_tok, labelers):
    """One model's numbers and its responses: (results, main pass, T=1 pass or None)."""
    path, _, mode = spec.partition("@")
    model, tok, ckpt = load_lm(path, stages=MODEL_STAGES)
    model.eval()
    prefix = fewshot_prefix(args.data_dir) if mode == "fewshot" else ""
    is_base = ckpt["stage"] == "pretrain"
    s = sample(model, tok, prompts, args, args.temperature, prefix, is_base, args.seed)
    r = {"score": judge_mean(prompts, s["texts"], labelers, s["ended"]),
         "gold": sum(gold_score(*x) for x in zip(prompts, s["texts"], s["ended"])) / len(prompts),
         "ended": sum(s["ended"]) / len(prompts),
         "ptx_loss": pretrain_loss(model, tok, args.data_dir, model.config.block_size),
         "probe": probe_accuracy(model, tok, args.data_dir)}
    if rm is not None:
        seqs = [encode_prompt(tok, q) + ids for q, ids in zip(prompts, s["tokens"])]
        r["rm"] = score_sequences(rm, seqs).mean().item()
    s1 = None
    if args.sample_t1 and not is_base:  # a base model never stops: its T=1 pass would only cost time
        t0 = time.time()
        s1 = sample(model, tok, prompts, args, 1.0, prefix, is_base, args.seed + len(prompts))
        r["score_t1"] = judge_mean(prompts, s1["texts"], labelers, s1["ended"])
        r["gold_t1"] = sum(gold_score(*x) for x in zip(prompts, s1["texts"], s1["ended"])) / len(prompts)
        if name == args.baseline:
            r["kl_to_sft"] = 0.0
        elif ref is not None and tok.state() == ref_tok.state():  # log-probs need one vocabulary
            r["kl_to_sft"] = kl_to_reference(model, ref, tok, prompts, prefix, s1["tokens"])
        r["t1_seconds"] = time.time() - t0
    print(f"{name}: " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)
    r["per_family"] = per_family(prompts, s["texts"], s["ended"])
    return r, s, s1


# The settings of the top-level evaluate.py (step 4 of the pipeline) that this evaluation takes: theirs -> ours
STAGE_SETTINGS = {"models": "models", "baseline": "baseline", "data_dir": "data_dir", "reward_model": "reward_model",
                  "split": "split", "prompts": "num_prompts", "max_new_tokens": "max_new_tokens", "seed": "seed",
                  "out_dir": "out_dir"}


def config_from_stage(stage_cfg):
    """This evaluation's EvalConfig from the config of the top-level evaluate.py, which hands the whole evaluation
    of this world to its judge (judge.py's Judge.evaluate). A setting this evaluation has no use for (a judge
    model: the labelers judge; device and dtype: it runs on the CPU in float32, the same numbers on every
    machine) is refused unless left at its default, so that nothing asked for is silently ignored."""
    defaults = type(stage_cfg)()
    unused = [f.name for f in dataclasses.fields(stage_cfg)
              if f.name not in STAGE_SETTINGS and getattr(stage_cfg, f.name) != getattr(defaults, f.name)]
    if unused:
        raise ConfigError(f"{stage_cfg.data_dir} is judged by its own labelers (data/synthetic/evaluate.py), which "
                          f"take no {', '.join('--' + n for n in unused)}: drop them")
    return EvalConfig(**{ours: getattr(stage_cfg, theirs) for theirs, ours in STAGE_SETTINGS.items()})


def main(argv=None):
    args = argv if isinstance(argv, EvalConfig) else parse_config(EvalConfig, argv)
    check_ranges(args)  # a config made in code (config_from_stage's) skips parse_config
    t_start = time.time()
    torch.set_flush_denormal(True)
    if args.split not in ("test", "val"):
        raise ConfigError(f"--split must be test or val, not {args.split!r}")
    specs, ppo_dirs = resolve_models(args.models)
    # Tuning sees only what training may see: validation prompts and the training labelers (the paper's
    # held-out labelers and test prompts are for the final measurement).
    labelers, suffix = (HELDOUT_LABELERS, "") if args.split == "test" else (TRAIN_LABELERS, "_val")
    prompts = [r["prompt"] for r in read_split(args.data_dir, "prompts", args.split)[:args.num_prompts]]
    rm = rm_tok = ref = ref_tok = None
    if args.reward_model and os.path.exists(args.reward_model):
        rm, rm_tok, _ = load_lm(args.reward_model, stages=("reward",))
        rm.eval()
    if args.baseline in dict(specs):  # the SFT model: the reference of the KL
        ref, ref_tok, _ = load_lm(dict(specs)[args.baseline].partition("@")[0], stages=MODEL_STAGES)
        ref.eval()

    # 1. each model's responses to the test prompts (greedy; T=1), judged; its alignment tax and KL to SFT
    results, main_pass, t1_pass = {}, {}, {}
    for name, spec in specs:
        results[name], main_pass[name], t1 = evaluate_model(name, spec, prompts, args, rm, ref, ref_tok, labelers)
        if t1 is not None:
            t1_pass[name] = t1

    # 2. the held-out labelers' win rates against the baseline, on the same prompts, greedy and T=1
    for tag, passes in (("", main_pass), ("_t1", t1_pass)):
        if args.baseline in passes:
            b = passes[args.baseline]
            for name, s in passes.items():
                rate, ci = win_rate(prompts, s["texts"], b["texts"], labelers, s["ended"], b["ended"])
                results[name]["win" + tag], results[name]["win_ci95" + tag] = rate, ci

    # 2b. the headroom: how far a policy could get past the baseline by unlearning the demonstrators' habits
    #     alone (its own answers, content kept), and with every answer right (the ideal answers)
    headroom = {}
    if args.baseline in main_pass:
        b = main_pass[args.baseline]
        refs = {"sft_without_habits": ([without_habits(p, t) for p, t in zip(prompts, b["texts"])], b["ended"]),
                "ideal": ([ideal_answer(p) or "" for p in prompts], [True] * len(prompts))}
        for name, (texts, ended) in refs.items():
            rate, ci = win_rate(prompts, texts, b["texts"], labelers, ended, b["ended"])
            headroom[name] = {"win_rate_vs_sft": rate, "win_ci95": ci,
                              "gold": sum(gold_score(*x) for x in zip(prompts, texts, ended)) / len(prompts)}

    # 3. the reward model's accuracy, on the comparison val set and on pairs of two T=1 samples of SFT
    acc = None
    if rm is not None:
        pair = {"prompts": prompts}
        if args.baseline in t1_pass:  # the second sample: seeds after those of the T=1 pass
            pair.update(a=t1_pass[args.baseline],
                        b=sample(ref, ref_tok, prompts, args, 1.0, "", False, args.seed + 2 * len(prompts)))
        acc = rm_accuracy(rm, rm_tok, args.data_dir, **pair)

    # 4. write responses/, plots/, results.json, results.md, eval.json
    out = Path(args.out_dir)
    for name, s in main_pass.items():
        write_jsonl(out / f"responses{suffix}" / f"{name}.jsonl",
                    [{"prompt": p, "response": t, "ended": e} for p, t, e in zip(prompts, s["texts"], s["ended"])])
    # a run.sh run's stage times, and this one's (a tuning pass on val is no stage of it)
    timed = args.split == "test" and (out / "seconds.json").exists()
    seconds = json.loads((out / "seconds.json").read_text()) if timed else {}

    def column(key):
        return {m: r[key] for m, r in results.items() if key in r}

    res = {"win_rate_vs_sft": column("win"), "win_ci95": column("win_ci95"), "score": column("score"),
           "gold": column("gold"), "rm_score": column("rm"), "ended": column("ended"),
           "win_rate_vs_sft_t1": column("win_t1"), "win_ci95_t1": column("win_ci95_t1"),
           "score_t1": column("score_t1"), "gold_t1": column("gold_t1"),
           "per_family": column("per_family"), "rm_accuracy": acc,
           "alignment_tax": {m: {"ptx_loss": r["ptx_loss"], "probe": r["probe"]} for m, r in results.items()},
           "kl_to_sft": column("kl_to_sft"), "headroom": headroom,
           "examples": examples(prompts, {m: s["texts"] for m, s in main_pass.items()}),
           "seconds": seconds, "seed": args.seed,
           "num_prompts": len(prompts), "split": args.split}
    pictures = {"ppo_curves": write_curves(ppo_dirs, out / f"plots{suffix}"),
                "rm_accuracy": write_rm_accuracy(acc, out / f"plots{suffix}"),
                "win_rates": write_win_rates(res, args.baseline, out / f"plots{suffix}")}
    res["plots"] = {k: p.relative_to(out).as_posix() for k, p in pictures.items() if p is not None}
    if res["plots"] and not any(p.endswith(".png") for p in res["plots"].values()):
        print(f"matplotlib is not installed: PNGs skipped, {out / f'plots{suffix}'} has the CSVs")
    if seconds:
        seconds["eval"] = round(time.time() - t_start, 1)
    with atomic_write(out / f"results{suffix}.json") as f:
        json.dump(res, f, indent=1)
    table = markdown(res, args.baseline)
    with atomic_write(out / f"results{suffix}.md") as f:
        f.write(table)
    with atomic_write(out / f"eval{suffix}.json") as f:
        json.dump(results, f, indent=1)
    print("\n" + table)
    return res


if __name__ == "__main__":
    run(main)
