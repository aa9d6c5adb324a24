"""
Step 4: judge the pipeline's models against the SFT model on held-out prompts, as the paper's labelers judged
InstructGPT (its Figure 1: how often each model's answer is preferred to the SFT model's).

Who judges is the data's business. Data with a judge of its own (data.load_judge: the synthetic world's
programmatic labelers) is handed over whole to that judge's evaluation (data/synthetic/evaluate.py and its
outputs). Real preference data has none: there the judge is a held-out reward model (--judge_model) trained with
`reward.py --train_split=judge` on comparisons that the policy's reward model never saw. Its win rate is a proxy,
as in Gao et al. 2022 and AlpacaFarm, not a human judgment; a judge trained on the policy RM's own comparisons
is refused.

    python evaluate.py          # the synthetic pipeline's models (run.sh's last step)
    python evaluate.py --data_dir=data/hh_rlhf --models=sft=out/sft_hh/sft.pt,ppo_ptx=out/ppo_hh/ppo.pt \\
        --reward_model=out/rm_hh/reward.pt --judge_model=out/judge_hh/reward.pt --text_dir=data/text \\
        --out_dir=out/eval_hh --dtype=bfloat16

With a judge RM, per model, on the first --prompts held-out prompts that fit (prompts_test.jsonl, or
prompts_val.jsonl where there is none), one T=1 sample each (prompt i samples with seed + i in every model):
    win_rate_vs_sft, win_ci95  how often the judge RM scores the answer above SFT's to the same prompt, ties and
                               identical answers half, with the 95% CI over prompts (normal approximation)
    judge_score, rm_score      the judge's and the policy RM's mean scores: the second outruns the first where
                               PPO over-optimised its RM
    kl_to_sft                  KL(model || SFT) in nats per response: the mean summed log-ratio on its own samples
    text_loss                  the LM loss on held-out plain text (--text_dir's pretrain_val.jsonl): the
                               alignment tax PPO-ptx pays back
    ended                      the fraction of answers that ended with EOS (the rest hit --max_new_tokens)
written into --out_dir as results.json (each of those {model: number}, and what judged), results.md (the table
and the first answers side by side) and responses/NAME.jsonl ({"prompt", "response", "ended", "judge_score",
"rm_score"} per prompt). Cut-off answers are scored as they stand; `ended` says how many there are.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common import ConfigError, check_ranges, load_lm, parse_config, ranged, run, setup_runtime, vocabulary_of
from data import load_judge
from data.formats import atomic_write, read_split, write_jsonl
from data.loader import encode_prompt, fitting, generate_responses
from data.synthetic.evaluate import MODEL_STAGES, kl_to_reference, markdown_cell, pretrain_loss, resolve_models
from data.synthetic.labelers import mean_ci95
from model import score_sequences


@dataclass
class EvalConfig:
    """Judge the pipeline's models against SFT on held-out prompts (step 4)."""
    data_dir: str = "data/synthetic"  # the dataset; where it has a judge (judge.json), that judge evaluates
    models: tuple[str, ...] = ()  # NAME=PATH,... (a checkpoint, gpt2 or a GPT-2 DIR); default: run.sh's that exist
    baseline: str = "sft"  # the model of --models that the win rates and the KL are against
    reward_model: str = "out/reward/reward.pt"  # the policy's reward model: its scores
    judge_model: str = ""  # data without a judge: the held-out judge RM (python reward.py --train_split=judge)
    text_dir: str = ""  # a folder with pretrain_val.jsonl: each model's LM loss on it (the alignment tax); "": none
    split: str = "test"  # prompts_SPLIT.jsonl judged: test (val where the data has no test) | val
    prompts: int = ranged(500, ">= 1")  # held-out prompts judged: the first that leave room for max_new_tokens
    max_new_tokens: int = ranged(64, ">= 1")  # response length limit
    batch_size: int = ranged(64, ">= 1")  # prompts per generation and scoring batch
    seed: int = ranged(1337, "[0, 2**32)")  # sampling seed: prompt i samples with seed + i, in every model
    out_dir: str = "out"  # results.json, results.md, responses/
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    dtype: str = "auto"  # auto (bf16 on CUDA or a native-bf16 CPU, fp16 on older GPUs, else fp32) | float32 | bfloat16


# -----------------------------------------------------------------------------
# the judge reward model


def trained_on(ckpt):
    """(data folder, split) of the comparisons a reward checkpoint was trained on, from its run_config."""
    run_config = ckpt.get("run_config", {})
    return os.path.realpath(run_config.get("data_dir", "")), run_config.get("train_split", "train")


def check_held_out(cfg, judge_ckpt, rm_ckpt):
    """A judge trained on the policy RM's own comparisons shares the errors PPO learnt to exploit, so its win
    rate would measure nothing: refused when both run configs name the same data folder and split."""
    if trained_on(judge_ckpt) == trained_on(rm_ckpt):
        data_dir, split = judge_ckpt["run_config"].get("data_dir"), trained_on(judge_ckpt)[1]
        raise ConfigError(f"--judge_model={cfg.judge_model} was trained on {data_dir}/comparisons_{split}.jsonl, the "
                          f"comparisons of --reward_model={cfg.reward_model}: train a held-out judge on others with "
                          f"`python reward.py --data_dir={data_dir} --train_split=judge --out_dir=out/judge_rm`")


def load_scorers(cfg, rt):
    """(judge RM, policy RM, tokenizer, the judge's training file): both frozen, with one vocabulary, the judge
    held out."""
    if not cfg.judge_model:
        raise ConfigError(f"{cfg.data_dir} has no judge of its own (judge.json): pass a held-out judge reward model, "
                          f"--judge_model=out/judge_rm/reward.pt (python reward.py --data_dir={cfg.data_dir} "
                          f"--train_split=judge --out_dir=out/judge_rm)")
    if not cfg.reward_model:
        raise ConfigError("--reward_model is needed: the policy's reward model, whose scores are reported and whose "
                          "training comparisons the judge must not share")
    judge, tok, judge_ckpt = load_lm(cfg.judge_model, rt.device, stages=("reward",))
    rm, rm_tok, rm_ckpt = load_lm(cfg.reward_model, rt.device, stages=("reward",))
    check_held_out(cfg, judge_ckpt, rm_ckpt)
    if rm_tok.state() != tok.state():
        raise ConfigError(f"--reward_model={cfg.reward_model} and --judge_model={cfg.judge_model} have different "
                          f"vocabularies: train both from the same SFT model")
    judge_data = f"{judge_ckpt['run_config'].get('data_dir')}/comparisons_{trained_on(judge_ckpt)[1]}.jsonl"
    return judge.eval(), rm.eval(), tok, judge_data


def held_out_prompts(cfg, tok, limit):
    """(split, prompts): the first cfg.prompts of the split's prompts that leave room to answer (the others
    dropped and counted aloud)."""
    split = cfg.split
    if split not in ("test", "val"):
        raise ConfigError(f"--split must be test or val (the prompts no stage trained on), not {split!r}")
    if split == "test" and not (Path(cfg.data_dir) / "prompts_test.jsonl").exists():
        split = "val"
        print(f"{cfg.data_dir} has no prompts_test.jsonl: judging prompts_val.jsonl (held out from training too)")
    texts = [r["prompt"] for r in read_split(cfg.data_dir, "prompts", split)]
    with vocabulary_of(cfg.judge_model, cfg.data_dir):
        lengths = [len(encode_prompt(tok, p)) for p in texts]
    keep = fitting(lengths, limit, f"{cfg.data_dir}/prompts_{split}.jsonl (room for --max_new_tokens)")
    return split, [texts[i] for i in keep[:cfg.prompts]]


def win_rate(scores, baseline_scores, same):
    """(rate, 95% CI half-width): how often a score beats the baseline's on the same prompt, a tie or an identical
    answer (same[i]: rounding may score one answer twice a hair apart) counting half; the CI over prompts."""
    outcomes = [0.5 if s or a == b else float(a > b) for a, b, s in zip(scores, baseline_scores, same)]
    return mean_ci95(outcomes)


# -----------------------------------------------------------------------------
# one model


@torch.no_grad()
def answer(name, path, prompts, cfg, rt, scorers, ref):
    """(model, its numbers and answers): one seeded T=1 sample per prompt, scored by the judge and the policy RM;
    its KL to ref (the baseline, None while the baseline itself is answering) and its held-out text loss."""
    judge, rm, tok = scorers
    model, model_tok, _ = load_lm(path, rt.device, stages=MODEL_STAGES)
    model.eval()
    if model_tok.state() != tok.state():
        raise ConfigError(f"{name}={path} has another vocabulary than --judge_model={cfg.judge_model}: every model "
                          f"of one evaluation reads the same tokens")
    if model.config.block_size < judge.config.block_size:
        raise ConfigError(f"{name}={path} has a context of {model.config.block_size} tokens, shorter than the "
                          f"judge's {judge.config.block_size}")
    texts, ended, tokens = generate_responses(model, tok, prompts, cfg.max_new_tokens, 1.0, cfg.batch_size,
                                              seed=cfg.seed, autocast=rt.autocast)
    seqs = [encode_prompt(tok, p) + t for p, t in zip(prompts, tokens)]
    out = {"texts": texts, "ended": ended, "tokens": tokens,
           "judge_scores": score_sequences(judge, seqs, rt.autocast, cfg.batch_size).tolist(),
           "rm_scores": score_sequences(rm, seqs, rt.autocast, cfg.batch_size).tolist()}
    out["kl_to_sft"] = 0.0 if ref is None else kl_to_reference(model, ref, tok, prompts, "", tokens)
    if cfg.text_dir:
        with vocabulary_of(path, cfg.text_dir):
            out["text_loss"] = pretrain_loss(model, tok, cfg.text_dir, model.config.block_size,
                                             autocast=rt.autocast)
    n = len(prompts)
    print(f"{name}: judge {sum(out['judge_scores']) / n:+.3f} | rm {sum(out['rm_scores']) / n:+.3f} | kl "
          f"{out['kl_to_sft']:.3f} | ended {sum(ended) / n:.3f}", flush=True)
    return model, out


# -----------------------------------------------------------------------------
# reporting


def markdown(res, answers, shown=5):
    """results.md: what judged, the table, and the first answers side by side."""
    base, models, has_text = res["baseline"], list(res["win_rate_vs_sft"]), bool(res["text_loss"])
    who = (f"A proxy, not a human judgment: a held-out reward model ({res['judge']['model']}, trained on "
           f"{res['judge']['trained_on']}) judges, as in Gao et al. 2022 and AlpacaFarm; it never saw the "
           f"comparisons of the policy's reward model ({res['reward_model']}).")
    how = (f"{res['num_prompts']} held-out prompts, one T=1 sample per model; win rates against {base}, ties half, "
           f"with the 95% CI; KL to {base} in nats per response on the model's own samples"
           + ("; held-out text loss: the alignment tax." if has_text else "."))
    lines = [f"# Results on {res['data_dir']} ({res['split']} prompts, seed {res['seed']})", "", who, how, "",
             f"| model | win rate vs {base} (judge RM) | judge score | RM score | KL to {base} | ended with EOS |"
             + (" held-out text loss |" if has_text else ""), "|---|" + "---|" * (5 + has_text)]
    for m in models:
        cells = [f"{res['win_rate_vs_sft'][m]:.3f} ± {res['win_ci95'][m]:.3f}", f"{res['judge_score'][m]:.3f}",
                 f"{res['rm_score'][m]:.3f}", f"{res['kl_to_sft'][m]:.3f}", f"{res['ended'][m]:.3f}"]
        cells += [f"{res['text_loss'][m]:.3f}"] if has_text else []
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Answers side by side", "", f"The first {shown} prompts, each answer with its judge score.", "",
              "| prompt | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for i, p in enumerate(res["prompts"][:shown]):
        cells = [f"{markdown_cell(answers[m]['texts'][i])} ({answers[m]['judge_scores'][i]:+.2f})" for m in models]
        lines.append(f"| {markdown_cell(p)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(cfg, res, answers):
    out = Path(cfg.out_dir)
    for name, a in answers.items():
        write_jsonl(out / "responses" / f"{name}.jsonl",
                    [{"prompt": p, "response": t, "ended": e, "judge_score": j, "rm_score": r}
                     for p, t, e, j, r in zip(res["prompts"], a["texts"], a["ended"], a["judge_scores"],
                                              a["rm_scores"])])
    table = markdown(res, answers)
    with atomic_write(out / "results.json") as f:
        json.dump({k: v for k, v in res.items() if k != "prompts"}, f, indent=1)
    with atomic_write(out / "results.md") as f:
        f.write(table)
    print("\n" + table)


# -----------------------------------------------------------------------------


def evaluate_with_judge_model(cfg):
    """The evaluation of data without a judge of its own: the held-out judge RM compares each model with SFT."""
    rt = setup_runtime(cfg.device, cfg.dtype, cfg.seed)
    # 1. the judge, held out from the policy RM's comparisons, and the models, the baseline first (the KL's reference)
    judge, rm, tok, judge_data = load_scorers(cfg, rt)
    specs = dict(resolve_models(cfg.models)[0])
    if cfg.baseline not in specs:
        raise ConfigError(f"--models has no {cfg.baseline}=PATH: the model the win rates and the KL are against "
                          f"(--baseline)")
    if any("@" in spec for spec in specs.values()):
        raise ConfigError("NAME=PATH@fewshot is for the synthetic world's base models: drop the @fewshot")
    # 2. held-out prompts that leave room to answer in every model and reward model
    context = min(judge.config.block_size, rm.config.block_size)
    if cfg.max_new_tokens >= context:
        raise ConfigError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the reward models' "
                          f"context of {context} tokens")
    split, prompts = held_out_prompts(cfg, tok, context - cfg.max_new_tokens)
    # 3. each model answers; the judge and the policy RM score; KL to the baseline and the held-out text loss
    ref, answers = None, {}
    for name in [cfg.baseline] + [n for n in specs if n != cfg.baseline]:
        model, answers[name] = answer(name, specs[name], prompts, cfg, rt, (judge, rm, tok), ref)
        ref = model if ref is None else ref
        del model
    # 4. win rates against the baseline on the same prompts, in the order of --models
    answers = {n: answers[n] for n in specs}
    base = answers[cfg.baseline]
    res = {"win_rate_vs_sft": {}, "win_ci95": {}}
    for name, a in answers.items():
        same = [x == y for x, y in zip(a["tokens"], base["tokens"])]
        res["win_rate_vs_sft"][name], res["win_ci95"][name] = win_rate(a["judge_scores"], base["judge_scores"], same)
    n = len(prompts)
    res |= {"judge_score": {m: sum(a["judge_scores"]) / n for m, a in answers.items()},
            "rm_score": {m: sum(a["rm_scores"]) / n for m, a in answers.items()},
            "kl_to_sft": {m: a["kl_to_sft"] for m, a in answers.items()},
            "text_loss": {m: a["text_loss"] for m, a in answers.items() if "text_loss" in a},
            "ended": {m: sum(a["ended"]) / n for m, a in answers.items()},
            "judge": {"model": cfg.judge_model, "trained_on": judge_data},
            "reward_model": cfg.reward_model, "baseline": cfg.baseline, "data_dir": cfg.data_dir,
            "split": split, "num_prompts": n, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed,
            "prompts": prompts}
    write_results(cfg, res, answers)
    return {k: v for k, v in res.items() if k != "prompts"}


def main(argv=None):
    cfg = argv if isinstance(argv, EvalConfig) else parse_config(EvalConfig, argv)
    check_ranges(cfg)  # a config made in code skips parse_config
    judge = load_judge(cfg.data_dir)
    if judge is not None:  # the data judges itself: its evaluation, whole
        return judge.evaluate(cfg)
    return evaluate_with_judge_model(cfg)


if __name__ == "__main__":
    run(main)
