"""
Prepare the synthetic closed world: all four kinds of InstructGPT data, judged by programmatic labelers.

    python data/synthetic/prepare.py                      # default 1/5-of-the-paper sizes
    python data/synthetic/prepare.py --scale=0.1         # a tiny version (all split sizes x 0.1)
    python data/synthetic/prepare.py --from_policy=out/sft/sft.pt   # the paper's way: rank the model's own
                                                 # samples with the written candidates (rewrites comparisons_*)

Writes into --out_dir (default data/synthetic/):
    pretrain_{train,val}.jsonl     {"text"}                 the base model's corpus (also ptx data and the
                                                             held-out text for the alignment tax)
    sft_{train,val}.jsonl          {"prompt", "response"}   labeler demonstrations
    comparisons_{train,val}.jsonl  {"prompt", "responses"}  K = 4..9 responses, best first, strict ranking
    prompts_{train,val,test}.jsonl {"prompt"}               PPO prompts; test = held-out evaluation prompts
    probe_test.jsonl               {"text", "answer"}       closed-book probe: text + answer is a corpus
                                                             sentence, answer has its leading space
    lexicon.jsonl                  {"text"}                 every word and number of the world in every
                                                             spelling, so the compact vocabulary (built from
                                                             all *.jsonl) covers whatever the world can write
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

from common import ConfigError, check_ranges, load_lm, parse_config, ranged, run  # noqa: E402
from data.formats import write_jsonl  # noqa: E402
from data.loader import encode_prompt, encode_response, generate_responses  # noqa: E402
from data.synthetic import corpus, labelers, responses, tasks  # noqa: E402
from data.synthetic.world import ADJECTIVES, ANIMALS, COLOURS, FOODS, NAMES, NUMBER_WORDS, VERBS, WORLD  # noqa: E402
from data.tokenizer import VocabularyError  # noqa: E402

# split name -> (default size, the file it goes to). Order matters: earlier splits claim their prompts
# first, so the test prompts depend only on the seed, not on the training sizes.
PROMPT_SPLITS = [("test", 500), ("ppo_val", 500), ("sft_val", 300), ("rm_val", 700),
                 ("sft_train", 8000), ("rm_train", 4400), ("ppo_train", 6200)]


@dataclass
class PrepareConfig:
    """Write the synthetic world's data files (and judge.json, which lets the stages find its labelers)."""
    out_dir: str = "data/synthetic"  # output folder
    seed: int = ranged(1337, "[0, 2**32)")  # everything is a function of this seed
    test: int = ranged(500, ">= 1")  # held-out evaluation prompts (never trained or tuned on)
    ppo_val: int = ranged(500, ">= 1")  # PPO validation prompts (tuning, and ppo.py's final comparison)
    sft_val: int = ranged(300, ">= 1")  # SFT validation demonstrations
    rm_val: int = ranged(700, ">= 1")  # reward-model validation rankings
    sft_train: int = ranged(8000, ">= 1")  # demonstrations
    rm_train: int = ranged(4400, ">= 1")  # rankings
    ppo_train: int = ranged(6200, ">= 1")  # PPO prompts
    pretrain_tokens: int = ranged(1_500_000, ">= 1")  # GPT-2 tokens of pretrain_train
    pretrain_val_tokens: int = ranged(75_000, ">= 1")  # GPT-2 tokens of pretrain_val
    scale: float = ranged(1.0, "> 0")  # multiply every size above by this
    from_policy: str = ""  # rewrite only comparisons_*: these checkpoints' samples join the ranked candidates (a,b)
    policy_samples: int = ranged(2, ">= 1")  # samples per RM prompt and checkpoint with --from_policy
    policy_max_tokens: int = ranged(48, ">= 1")  # max new tokens per policy sample
    device: str = "cpu"  # device for --from_policy sampling
    quiet: bool = False  # print nothing


def split_prompts(args) -> dict:
    """Disjoint prompt lists per split. Families whose prompt space runs out get rarer in later splits."""
    sizes = {name: max(1, round(getattr(args, name) * args.scale)) for name, _ in PROMPT_SPLITS}
    seed, seen, out = args.seed, set(), {}
    for name, _ in PROMPT_SPLITS:
        rng = random.Random(f"{seed}:prompts:{name}")
        prompts, tries = [], 0
        while len(prompts) < sizes[name]:
            tries += 1
            if tries > 100 * sizes[name] + 1000:
                raise ConfigError(f"ran out of distinct prompts for split {name} ({sizes[name]} asked): lower "
                                  f"--{name} or --scale")
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


def policy_samples(path, prompts, n, max_tokens, device, seed) -> tuple[dict, int]:
    """prompt -> [(response, ended)], n samples each from the checkpoint's policy (temperature 1), and how
    many samples were dropped because their text does not re-encode in the policy's vocabulary (the reward
    model, which starts from the policy, could not read them)."""
    model, tok, _ = load_lm(path, device)
    fits = []
    for p in prompts:
        try:
            encode_prompt(tok, p)
            fits.append(p)
        except VocabularyError:  # outside the policy's compact vocabulary: no samples for this prompt
            pass
    if len(fits) < len(prompts):
        print(f"--from_policy: {len(prompts) - len(fits)} prompts skipped (outside the policy's vocabulary)")
    jobs = [p for p in fits for _ in range(n)]
    texts, ended, _ = generate_responses(model, tok, jobs, max_tokens, temperature=1.0, seed=seed)
    out, dropped = {p: [] for p in prompts}, 0
    for p, text, e in zip(jobs, texts, ended):
        try:
            encode_response(tok, text)
        except VocabularyError:
            dropped += 1
            continue
        if text:
            out[p].append((text, e))
    return out, dropped


def comparisons(prompts, rng, extra=None) -> list[dict]:
    """One strict ranking of K = 4..9 candidates per prompt by a random training labeler. The policy's samples
    (extra) are always among the K, and so are the right answer and the family's nearest miss; the other
    written candidates fill the rest: the RM must learn to judge what the policy writes, which is what PPO
    will show it. A sample that hit the length limit is judged with ended=False; the record keeps the flags
    as `ended`."""
    records = []
    for p in prompts:
        samples = (extra or {}).get(p, [])
        pool = responses.candidates(p, rng, [s for s, _ in samples])
        shown = {s.strip() for s, _ in samples}  # as candidates() put them in the pool
        # The right answer next to its nearest miss in every ranking. Drawn at random like the rest, the two
        # would rarely meet: an RM that sees "w" < "w w" < "w w w" far more often than "w w w" > "w w w w"
        # learns that more is better, and PPO would overshoot counts.
        shown.update(pool[:2])
        not_ended = {s.strip() for s, ended in samples if not ended}
        k = rng.randint(4, 9)
        labeler = rng.choice(labelers.TRAIN_LABELERS)
        ranked = responses.ranking(p, pool, labeler, k, rng, not_ended, shown)
        record = {"prompt": p, "responses": ranked}
        if not_ended & set(ranked):
            record["ended"] = [r not in not_ended for r in ranked]
        records.append(record)
    return records


def lexicon() -> list[dict]:
    """Every word and number the world can write, alone on a line, after a space, capitalised and plural:
    GPT-2's tokens depend on the spelling around a word, and a model's compact vocabulary must cover any
    candidate or sample of any seed, not only those this seed happened to draw."""
    world_words = (NAMES + ANIMALS + COLOURS + FOODS + VERBS + ADJECTIVES + NUMBER_WORDS + WORLD.countries
                   + WORLD.unknown_countries + WORLD.cities + list(WORLD.categories))
    words = world_words + [w + "s" for w in ANIMALS + FOODS] + [str(i) for i in range(-20, 200)]
    spellings = {v for w in words for v in (w, w.capitalize(), w.lower())}
    # ... and every fixed phrasing: the prompts, demonstrations and candidates of many prompts of a fixed draw
    rng = random.Random("lexicon")
    phrases = set()
    for _ in range(3000):
        p = tasks.sample_prompt(rng)
        phrases.update([p, responses.demonstration(p, rng), *responses.candidates(p, rng)])
    phrases = sorted(phrases)
    return [{"text": "\n".join(sorted(spellings))}, {"text": " ".join(sorted(spellings))},
            {"text": "\n".join(phrases)}, {"text": " ".join(phrases)}]


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
    prompts = split_prompts(args)
    files = {}
    rng = random.Random(f"{args.seed}:sft")
    for split in ("train", "val"):
        files[f"sft_{split}.jsonl"] = [{"prompt": p, "response": responses.demonstration(p, rng)}
                                       for p in prompts[f"sft_{split}"]]
    files.update(comparison_files(prompts, args.seed))
    for split in ("train", "val", "test"):
        key = "test" if split == "test" else f"ppo_{split}"
        files[f"prompts_{split}.jsonl"] = [{"prompt": p} for p in prompts[key]]
    enc = tiktoken.get_encoding("gpt2")
    files["pretrain_train.jsonl"], _ = pretrain_docs(round(args.pretrain_tokens * args.scale),
                                                     random.Random(f"{args.seed}:pretrain:train"), enc)
    files["pretrain_val.jsonl"], _ = pretrain_docs(round(args.pretrain_val_tokens * args.scale),
                                                   random.Random(f"{args.seed}:pretrain:val"), enc)
    files["probe_test.jsonl"] = corpus.probe_records()
    files["lexicon.jsonl"] = lexicon()
    return files


def comparison_files(prompts, seed, extra=None) -> dict:
    return {f"comparisons_{split}.jsonl": comparisons(prompts[f"rm_{split}"], random.Random(f"{seed}:rm:{split}"),
                                                      extra) for split in ("train", "val")}


def from_policy(args) -> dict:
    """The comparisons again, now with the policies' samples among the candidates (the paper's labelers
    ranked samples of the models being trained). The written candidates are the same as without."""
    prompts = split_prompts(args)
    extra, dropped = {}, 0
    for i, path in enumerate(args.from_policy.split(",")):  # e.g. the SFT model and a first PPO policy
        samples, d = policy_samples(path, prompts["rm_train"] + prompts["rm_val"], args.policy_samples,
                                    args.policy_max_tokens, args.device, args.seed + i)
        for p, s in samples.items():
            extra.setdefault(p, []).extend(s)
        dropped += d
    files = comparison_files(prompts, args.seed, extra)
    ranked = sum(len(set(r["responses"]) & {s.strip() for s, _ in extra.get(r["prompt"], [])})
                 for recs in files.values() for r in recs)
    total = sum(len(v) for v in extra.values())
    if not args.quiet:
        print(f"--from_policy: {total} samples of {args.from_policy} ({dropped} dropped: outside its "
              f"vocabulary), {ranked} of them in the rankings")
    return files


def measured_agreement(records, seed, labeler_set) -> float:
    """Inter-labeler agreement on random pairs of distinct candidates, as the RM data contains them."""
    rng = random.Random(f"{seed}:agreement")
    triples = [(r["prompt"], *rng.sample(r["responses"], 2)) for r in records if len(r["responses"]) >= 2]
    return labelers.agreement(triples, labeler_set)


def print_agreement(files, seed):
    val = files["comparisons_val.jsonl"]
    print(f"inter-labeler agreement on ranked pairs: training labelers "
          f"{measured_agreement(val, seed, labelers.TRAIN_LABELERS):.3f}, "
          f"held-out {measured_agreement(val, seed, labelers.HELDOUT_LABELERS):.3f} (paper: ~0.73)")


def main(argv=None):
    args = argv if isinstance(argv, PrepareConfig) else parse_config(PrepareConfig, argv)
    check_ranges(args)  # a config made in code skips parse_config
    t0 = time.time()
    files = from_policy(args) if args.from_policy else build(args)
    out = Path(args.out_dir)
    for name, records in files.items():
        write_jsonl(out / name, records)
    write_jsonl(out / "judge.json", [{"module": "data.synthetic.judge"}])  # how data.load_judge finds the labelers
    if args.quiet or args.from_policy:
        if args.from_policy and not args.quiet:  # the pairs the reward model trains on are these
            print_agreement(files, args.seed)
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
    print(f"distinct GPT-2 tokens across all files: {len(vocab)} (+1 for <|endoftext|>)")
    print(f"K per ranking (train): {dict(sorted(ks.items()))}")
    # Each split's family shares next to the mix it was drawn from: a family whose prompts run out (every
    # split has its own) is rarer in the later splits, and a model trained there sees less of it.
    print(f"{'% of prompts per family':24s}" + " ".join(f"{f[:5]:>5s}" for f in tasks.MIX))
    print(f"{'  mix':24s}" + " ".join(f"{100 * w:5.1f}" for w in tasks.MIX.values()))
    for name in ("prompts_test", "sft_train", "comparisons_train", "prompts_train"):
        fams = Counter(tasks.parse(r["prompt"])["family"] for r in files[f"{name}.jsonl"])
        n = sum(fams.values())
        print(f"  {name:22s}" + " ".join(f"{100 * fams[f] / n:5.1f}" for f in tasks.MIX))
    print_agreement(files, args.seed)
    print(f"wrote {len(files)} files to {out} in {time.time() - t0:.1f}s")
    return files


if __name__ == "__main__":
    run(main)
