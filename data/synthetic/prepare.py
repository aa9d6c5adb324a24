"""
Prepare the synthetic closed world: all four kinds of InstructGPT data, judged by programmatic labelers.

    python data/synthetic/prepare.py                      # default 1/5-of-the-paper sizes, ~15 s on 2 cores
    python data/synthetic/prepare.py --scale=0.1         # a tiny version (all split sizes x 0.1)
    python data/synthetic/prepare.py --from_policy=out/sft/sft.pt   # "rinse and repeat": add policy samples
                                                                      # to the candidates the labelers rank

Writes into --out_dir (default data/synthetic/):
    pretrain_{train,val}.jsonl     {"text"}                 the base model's corpus (also ptx data and the
                                                             held-out text for the alignment tax)
    sft_{train,val}.jsonl          {"prompt", "response"}   labeler demonstrations
    comparisons_{train,val}.jsonl  {"prompt", "responses"}  K = 4..9 responses, best first, strict ranking
    prompts_{train,val,test}.jsonl {"prompt"}               PPO prompts; test = held-out evaluation prompts
    probe_test.jsonl               {"text", "answer"}       closed-book probe: text + answer is a corpus
                                                             sentence, answer has its leading space
Every split uses its own prompts: no prompt appears in two splits. Same --seed, same bytes.
Default sizes are the paper's (SFT 13k, RM 33k, PPO 31k prompts) divided by 5.
"""
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tiktoken  # noqa: E402

from common import load_lm, parse_config, run  # noqa: E402
from data.formats import write_jsonl  # noqa: E402
from data.loader import generate_responses  # noqa: E402
from data.synthetic import corpus, labelers, responses, tasks  # noqa: E402
from data.tokenizer import VocabularyError  # noqa: E402

# split name -> (default size, the file it goes to). Order matters: earlier splits claim their prompts
# first, so the test prompts depend only on the seed, not on the training sizes.
PROMPT_SPLITS = [("test", 500), ("ppo_val", 500), ("sft_val", 300), ("rm_val", 700),
                 ("sft_train", 2600), ("rm_train", 6600), ("ppo_train", 6200)]


@dataclass
class PrepareConfig:
    """Write the synthetic world's data files (and judge.json, which lets the stages find its labelers)."""
    out_dir: str = "data/synthetic"  # output folder
    seed: int = 1337  # everything is a function of this seed
    test: int = 500  # held-out evaluation prompts (never trained or tuned on)
    ppo_val: int = 500  # PPO validation prompts (tuning, and ppo.py's final comparison)
    sft_val: int = 300  # SFT validation demonstrations
    rm_val: int = 700  # reward-model validation rankings
    sft_train: int = 2600  # demonstrations
    rm_train: int = 6600  # rankings
    ppo_train: int = 6200  # PPO prompts
    pretrain_tokens: int = 1_500_000  # GPT-2 tokens of pretrain_train
    pretrain_val_tokens: int = 75_000  # GPT-2 tokens of pretrain_val
    scale: float = 1.0  # multiply every size above by this
    from_policy: str = ""  # checkpoint whose samples join the ranked candidates ("rinse and repeat")
    policy_samples: int = 2  # samples per RM prompt with --from_policy
    policy_max_tokens: int = 48  # max new tokens per policy sample
    device: str = "cpu"  # device for --from_policy sampling
    quiet: bool = False  # print nothing


def split_prompts(sizes: dict, seed: int) -> dict:
    """Disjoint prompt lists per split. Families whose prompt space runs out get rarer in later splits."""
    seen, out = set(), {}
    for name, _ in PROMPT_SPLITS:
        rng = random.Random(f"{seed}:prompts:{name}")
        prompts, tries = [], 0
        while len(prompts) < sizes[name]:
            tries += 1
            if tries > 100 * sizes[name] + 1000:
                raise RuntimeError(f"ran out of distinct prompts for split {name}")
            p = tasks.sample_prompt(rng)
            if p not in seen:
                seen.add(p)
                prompts.append(p)
        out[name] = prompts
    return out


def pretrain_docs(n_tokens: int, rng, enc) -> tuple[list[dict], int]:
    """Documents until at least n_tokens GPT-2 tokens (counted exactly, a batch at a time)."""
    docs, total = [], 0
    while total < n_tokens:
        batch = [corpus.document(rng) for _ in range(256)]
        for text, ids in zip(batch, enc.encode_ordinary_batch(batch)):
            if total >= n_tokens:
                break
            docs.append({"text": text})
            total += len(ids)
    return docs, total


def policy_samples(path, prompts, n, max_tokens, device, seed) -> dict:
    """prompt -> [(response, ended)], n samples each from the checkpoint's policy (temperature 1)."""
    model, tok, _ = load_lm(path, device)
    fits = []
    for p in prompts:
        try:
            tok.encode(p)
            fits.append(p)
        except VocabularyError:  # outside the policy's compact vocabulary: no samples for this prompt
            pass
    if len(fits) < len(prompts):
        print(f"--from_policy: {len(prompts) - len(fits)} prompts skipped (outside the policy's vocabulary)")
    jobs = [p for p in fits for _ in range(n)]
    texts, ended, _ = generate_responses(model, tok, jobs, max_tokens, temperature=1.0, seed=seed)
    out = {p: [] for p in prompts}
    for p, text, e in zip(jobs, texts, ended):
        if text:
            out[p].append((text, e))
    return out


def comparisons(prompts, rng, extra=None) -> list[dict]:
    """One strict ranking of K = 4..9 candidates per prompt by a random training labeler."""
    records = []
    for p in prompts:
        samples = (extra or {}).get(p, [])
        pool = responses.candidates(p, rng, [s for s, _ in samples])
        not_ended = {s.strip() for s, ended in samples if not ended}
        k = rng.randint(4, 9)
        labeler = rng.choice(labelers.TRAIN_LABELERS)
        ranked = responses.ranking(p, pool, labeler, k, rng, not_ended)
        records.append({"prompt": p, "responses": ranked})
    return records


def texts_of(records) -> list[str]:
    """Every string a stage will tokenize, raw and rendered in the chat template."""
    out = []
    for r in records:
        for key in ("text", "answer"):
            if key in r:
                out.append(r[key])
        if "text" in r and "answer" in r:
            out.append(r["text"] + r["answer"])
        if "prompt" in r:
            out += [r["prompt"], "Human: " + r["prompt"] + "\n\nAssistant:"]
        for resp in ([r["response"]] if "response" in r else []) + r.get("responses", []):
            out += [resp, " " + resp]
    return out


def build(args) -> dict:
    """All files' records, keyed by file name. Pure function of the arguments."""
    sizes = {name: max(1, round(getattr(args, name) * args.scale)) for name, _ in PROMPT_SPLITS}
    prompts = split_prompts(sizes, args.seed)
    files = {}
    rng = random.Random(f"{args.seed}:sft")
    for split in ("train", "val"):
        files[f"sft_{split}.jsonl"] = [{"prompt": p, "response": responses.demonstration(p, rng)}
                                       for p in prompts[f"sft_{split}"]]
    extra = None
    if args.from_policy:
        extra = policy_samples(args.from_policy, prompts["rm_train"] + prompts["rm_val"], args.policy_samples,
                               args.policy_max_tokens, args.device, args.seed)
    for split in ("train", "val"):
        rng = random.Random(f"{args.seed}:rm:{split}")
        files[f"comparisons_{split}.jsonl"] = comparisons(prompts[f"rm_{split}"], rng, extra)
    for split in ("train", "val", "test"):
        key = "test" if split == "test" else f"ppo_{split}"
        files[f"prompts_{split}.jsonl"] = [{"prompt": p} for p in prompts[key]]
    enc = tiktoken.get_encoding("gpt2")
    files["pretrain_train.jsonl"], _ = pretrain_docs(round(args.pretrain_tokens * args.scale),
                                                     random.Random(f"{args.seed}:pretrain:train"), enc)
    files["pretrain_val.jsonl"], _ = pretrain_docs(round(args.pretrain_val_tokens * args.scale),
                                                   random.Random(f"{args.seed}:pretrain:val"), enc)
    files["probe_test.jsonl"] = corpus.probe_records()
    return files


def measured_agreement(records, seed, labeler_set) -> float:
    """Inter-labeler agreement on random pairs of distinct candidates, as the RM data contains them."""
    rng = random.Random(f"{seed}:agreement")
    triples = [(r["prompt"], *rng.sample(r["responses"], 2)) for r in records if len(r["responses"]) >= 2]
    return labelers.agreement(triples, labeler_set)


def main(argv=None):
    args = argv if isinstance(argv, PrepareConfig) else parse_config(PrepareConfig, argv)
    t0 = time.time()
    files = build(args)
    out = Path(args.out_dir)
    for name, records in files.items():
        write_jsonl(out / name, records)
    write_jsonl(out / "judge.json", [{"module": "data.synthetic.judge"}])  # how data.load_judge finds the labelers
    if args.quiet:
        return files
    enc = tiktoken.get_encoding("gpt2")
    vocab = set()
    print(f"{'file':28s} {'records':>8s} {'MB':>7s} {'GPT-2 tokens':>13s}")
    for name, records in files.items():
        ids = enc.encode_ordinary_batch(texts_of(records))
        for x in ids:
            vocab.update(x)
        n_tok = sum(len(x) for x in ids) if name.startswith("pretrain") else None
        if n_tok is None:  # count the text once (not its rendered copy)
            n_tok = sum(len(x) for x in enc.encode_ordinary_batch(
                [t for t in texts_of(records) if not t.startswith(("Human: ", " "))]))
        mb = (out / name).stat().st_size / 1e6
        print(f"{name:28s} {len(records):8d} {mb:7.2f} {n_tok:13,d}")
    ks = Counter(len(r["responses"]) for r in files["comparisons_train.jsonl"])
    fams = Counter(tasks.parse(r["prompt"])["family"] for r in files["prompts_test.jsonl"])
    print(f"distinct GPT-2 tokens across all files: {len(vocab)} (+1 for <|endoftext|>)")
    print(f"K per ranking (train): {dict(sorted(ks.items()))}")
    print(f"test prompts per family: {dict(sorted(fams.items()))}")
    val = files["comparisons_val.jsonl"]
    print(f"inter-labeler agreement on ranked pairs: training labelers "
          f"{measured_agreement(val, args.seed, labelers.TRAIN_LABELERS):.3f}, "
          f"held-out {measured_agreement(val, args.seed, labelers.HELDOUT_LABELERS):.3f} (paper: ~0.73)")
    print(f"wrote {len(files)} files to {out} in {time.time() - t0:.1f}s")
    return files


if __name__ == "__main__":
    run(main)
