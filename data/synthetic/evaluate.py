"""
Judge the pipeline's models on the synthetic world, the way the paper's labelers judged InstructGPT.

    python data/synthetic/evaluate.py                      # every model the default pipeline wrote
    python data/synthetic/evaluate.py --models sft=out/sft/sft.pt ppo=out/ppo/ppo.pt --baseline sft

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

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data.formats import read_jsonl, read_split, render_prompt, render_response  # noqa: E402
from data.loader import encode_prompt, generate_responses, load_split, pad_left  # noqa: E402
from data.synthetic import HELDOUT_LABELERS, gold_score, judge_mean, win_rate  # noqa: E402
from model import load_model  # noqa: E402

DEFAULT_MODELS = ["base=out/pretrain/pretrain.pt", "base_fewshot=out/pretrain/pretrain.pt@fewshot",
                  "sft=out/sft/sft.pt", "ppo=out/ppo/ppo.pt", "ppo_ptx0=out/ppo_ptx0/ppo.pt"]


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
    idx, mask = pad_left([tok.encode(p["text"]) for p in probes])
    out = model.generate(idx, max(len(a) for a in answers), temperature=0, attention_mask=mask)[:, idx.size(1):]
    return sum(out[i, :len(a)].tolist() == a for i, a in enumerate(answers)) / len(probes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="NAME=PATH[@fewshot] ... (default: the pipeline's)")
    p.add_argument("--baseline", default="sft", help="the model the win rates are against")
    p.add_argument("--data_dir", default="data/synthetic")
    p.add_argument("--reward_model", default="out/reward/reward.pt", help="also report its scores ('' to skip)")
    p.add_argument("--num_prompts", type=int, default=500, help="test prompts to judge")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--out", default="out/eval.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    given = args.models is not None
    specs = [s.partition("=")[::2] for s in (args.models if given else DEFAULT_MODELS)]
    specs = [(name, path) for name, path in specs if given or os.path.exists(path.split("@")[0])]
    prompts = [r["prompt"] for r in read_split(args.data_dir, "prompts", "test")[:args.num_prompts]]
    rm = None
    if args.reward_model and os.path.exists(args.reward_model):
        from reward import score_sequences
        rm, rm_tok, _ = load_model(args.reward_model, stages=("reward",))
        rm.eval()

    results, responses = {}, {}
    for name, spec in specs:
        path, _, mode = spec.partition("@")
        model, tok, ckpt = load_model(path, stages=("pretrain", "sft", "ppo"))
        model.eval()
        prefix = fewshot_prefix(args.data_dir) if mode == "fewshot" else ""
        texts, ended, tokens = generate_responses(model, tok, prompts, args.max_new_tokens, args.temperature,
                                                  prefix=prefix, return_tokens=True)
        if ckpt["stage"] == "pretrain":
            texts, ended = cut_at_next_turn(texts, ended)
        r = {"score": judge_mean(prompts, texts, HELDOUT_LABELERS, ended),
             "gold": sum(gold_score(q, t, e) for q, t, e in zip(prompts, texts, ended)) / len(prompts),
             "ended": sum(ended) / len(ended),
             "ptx_loss": pretrain_loss(model, tok, args.data_dir, model.config.block_size),
             "probe": probe_accuracy(model, tok, args.data_dir)}
        if rm is not None:
            seqs = [encode_prompt(tok, q) + ids for q, ids in zip(prompts, tokens)]
            r["rm"] = score_sequences(rm, seqs, "cpu").mean().item()
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
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
