"""
Judge the pipeline's models on the synthetic world, the way the paper's labelers judged InstructGPT.

    python data/synthetic/evaluate.py                      # every model the default pipeline wrote
    python data/synthetic/evaluate.py --models=sft=out/sft/sft.pt,ppo=out/ppo/ppo.pt --baseline=sft

For each model, on the held-out test prompts (never used for training or selection):
    score      the held-out labelers' mean score of its responses (0..1)
    win        how often the held-out labelers prefer it to the baseline (SFT), ties half, with a 95% CI
    gold       the noiseless truth of the labelers (data/synthetic/labelers.py: gold_score)
    rm         the reward model's mean score (with --reward_model), to watch it drift away from gold
and the alignment tax, the analogue of the paper's regressions on public NLP tasks:
    ptx_loss   language-modelling loss on held-out pretraining text (pretrain_val)
    probe      closed-book probe accuracy ("The capital of X is" -> Y), greedy
"few" models (NAME=PATH@fewshot) get a few-shot prompt of demonstrations: the paper's "GPT-3 prompted".
Responses are decoded greedily (temperature 0) so the numbers are reproducible; --temperature=1 samples.
"""

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import load_lm, parse_config, run  # noqa: E402
from data.formats import atomic_write, read_jsonl, read_split, render_prompt, render_response  # noqa: E402
from data.loader import encode_prompt, generate_responses, load_split  # noqa: E402
from data.synthetic import HELDOUT_LABELERS, gold_score, judge_mean, win_rate  # noqa: E402
from model import generate, score_sequences  # noqa: E402

DEFAULT_MODELS = ("base=out/pretrain/pretrain.pt", "base_fewshot=out/pretrain/pretrain.pt@fewshot",
                  "sft=out/sft/sft.pt", "ppo=out/ppo/ppo.pt", "ppo_ptx0=out/ppo_ptx0/ppo.pt")


@dataclass
class EvalConfig:
    """Judge the pipeline's models on the synthetic world's held-out test prompts and labelers."""
    models: tuple[str, ...] = ()  # NAME=PATH[@fewshot],... (default: every model the pipeline wrote)
    baseline: str = "sft"  # the model the win rates are against
    data_dir: str = "data/synthetic"  # the synthetic world's folder
    reward_model: str = "out/reward/reward.pt"  # also report its mean score ('' or a missing file: skip)
    num_prompts: int = 500  # test prompts to judge
    max_new_tokens: int = 64  # response length limit
    temperature: float = 0.0  # 0: greedy (reproducible); 1: sampled with the seed
    seed: int = 0  # sampling seed when temperature > 0
    out_dir: str = "out"  # eval.json goes here


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


@torch.no_grad()
def pretrain_loss(model, tok, data_dir, block_size, max_windows=64):
    """Mean next-token loss on non-overlapping windows of held-out pretraining text."""
    stream = load_split(data_dir, "pretrain", "val", tok).stream
    n = min(max_windows, (len(stream) - 1) // block_size)
    x = torch.from_numpy(np.stack([np.asarray(stream[i * block_size:(i + 1) * block_size + 1], dtype=np.int64)
                                   for i in range(n)]))
    losses = [model(x[i:i + 16, :-1], x[i:i + 16, 1:])[1].item() for i in range(0, n, 16)]
    return sum(losses) / len(losses)


@torch.no_grad()
def probe_accuracy(model, tok, data_dir):
    """Fraction of closed-book probes whose greedy continuation starts with the answer's tokens."""
    probes = read_jsonl(Path(data_dir) / "probe_test.jsonl", {"text": str, "answer": str})
    answers = [tok.encode(p["answer"]) for p in probes]
    out = generate(model, [tok.encode(p["text"]) for p in probes], max(len(a) for a in answers), temperature=0)
    return sum(out["responses"][i, :len(a)].tolist() == a for i, a in enumerate(answers)) / len(probes)


def main(argv=None):
    args = argv if isinstance(argv, EvalConfig) else parse_config(EvalConfig, argv)
    torch.set_flush_denormal(True)
    specs = [s.partition("=")[::2] for s in (args.models or DEFAULT_MODELS)]
    specs = [(name, path) for name, path in specs if args.models or os.path.exists(path.split("@")[0])]
    prompts = [r["prompt"] for r in read_split(args.data_dir, "prompts", "test")[:args.num_prompts]]
    rm = None
    if args.reward_model and os.path.exists(args.reward_model):
        rm = load_lm(args.reward_model, stages=("reward",))[0].eval()

    results, responses = {}, {}
    for name, spec in specs:
        path, _, mode = spec.partition("@")
        model, tok, ckpt = load_lm(path, stages=("pretrain", "sft", "ppo"))
        model.eval()
        prefix = fewshot_prefix(args.data_dir) if mode == "fewshot" else ""
        texts, ended, tokens = generate_responses(model, tok, prompts, args.max_new_tokens, args.temperature,
                                                  prefix=prefix, seed=args.seed)
        if ckpt["stage"] == "pretrain":
            texts, ended = cut_at_next_turn(texts, ended)
        r = {"score": judge_mean(prompts, texts, HELDOUT_LABELERS, ended),
             "gold": sum(gold_score(q, t, e) for q, t, e in zip(prompts, texts, ended)) / len(prompts),
             "ended": sum(ended) / len(ended),
             "ptx_loss": pretrain_loss(model, tok, args.data_dir, model.config.block_size),
             "probe": probe_accuracy(model, tok, args.data_dir)}
        if rm is not None:
            seqs = [encode_prompt(tok, q) + ids for q, ids in zip(prompts, tokens)]
            r["rm"] = score_sequences(rm, seqs).mean().item()
        results[name], responses[name] = r, (texts, ended)
        print(f"{name}: " + " | ".join(f"{k} {v:.3f}" for k, v in r.items()), flush=True)

    if args.baseline in responses:
        bt, be = responses[args.baseline]
        for name, (texts, ended) in responses.items():
            rate, ci = win_rate(prompts, texts, bt, HELDOUT_LABELERS, ended, be)
            results[name]["win"], results[name]["win_ci95"] = rate, ci

    cols = ["score", "win", "gold", "rm", "ended", "ptx_loss", "probe"]
    cols = [c for c in cols if any(c in r for r in results.values())]
    print(f"\n{len(prompts)} held-out test prompts, judged by {len(HELDOUT_LABELERS)} held-out labelers; "
          f"win rates against {args.baseline} (ties half, 95% CI)\n")
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in results.items():
        cells = [f"{r['win']:.3f} ± {r['win_ci95']:.3f}" if c == "win" and c in r else
                 (f"{r[c]:.3f}" if c in r else "") for c in cols]
        print(f"| {name} | " + " | ".join(cells) + " |")
    with atomic_write(Path(args.out_dir) / "eval.json") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    run(main)
