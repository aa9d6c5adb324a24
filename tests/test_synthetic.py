"""Tests of the synthetic closed world: determinism, checkers, labelers, splits, vocabulary."""
import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.synthetic import (HELDOUT_LABELERS, TRAIN_LABELERS, compare, gold_score, judge_mean,  # noqa: E402
                            score, win_rate)
from data.synthetic import corpus, labelers, prepare, responses, tasks  # noqa: E402
from data.synthetic.world import WORLD  # noqa: E402
from data.tokenizer import Tokenizer  # noqa: E402

TINY = ["--scale=0.02", "--quiet"]  # ~350 prompts, ~30k pretraining tokens: a second or two
LAB = TRAIN_LABELERS[0]


def gold(prompt, response, ended=True):
    return gold_score(prompt, response, ended)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    files = prepare.main(TINY + [f"--out_dir={out}"])
    return out, files


def test_same_seed_same_bytes(tiny, tmp_path):
    """Preparing twice with the same seed writes byte-identical files; another seed changes them."""
    out, files = tiny
    prepare.main(TINY + [f"--out_dir={tmp_path / 'a'}"])
    prepare.main(TINY + [f"--out_dir={tmp_path / 'b'}", "--seed=7"])
    for name in files:
        assert (out / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
    assert (out / "sft_train.jsonl").read_bytes() != (tmp_path / "b" / "sft_train.jsonl").read_bytes()


CASES = [  # family, prompt, right answers, wrong answers
    ("arithmetic", "What is 12 plus 7?", ["19", "12 plus 7 is 19."], ["20", "18", "5"]),
    ("arithmetic", "Subtract 4 from 15.", ["11"], ["19", "10"]),
    ("count", "Count from 3 to 7.", ["3, 4, 5, 6, 7"], ["3, 4, 5, 6", "3, 5, 6, 7", "7, 6, 5, 4, 3"]),
    ("count", "Count down from 9 to 6.", ["9, 8, 7, 6"], ["6, 7, 8, 9"]),
    ("sort", "Sort these numbers from smallest to largest: 5, 2, 9.", ["2, 5, 9"], ["5, 2, 9", "9, 5, 2"]),
    ("sort", "Sort these words in alphabetical order: owl, cat, dog.", ["cat, dog, owl"], ["owl, cat, dog"]),
    ("reverse", "Reverse this list: cat, dog, owl.", ["owl, dog, cat"], ["cat, dog, owl", "owl, cat, dog"]),
    ("repeat", "Repeat the word apple 3 times.", ["apple apple apple"], ["apple apple", "pear pear pear"]),
    ("fact", f"What is the capital of {WORLD.countries[0]}?", [WORLD.capital[WORLD.countries[0]]],
     [WORLD.capital[WORLD.countries[1]], "I don't know."]),
    ("fact", f"What is the capital of {WORLD.unknown_countries[0]}?", ["I don't know."],
     [WORLD.cities[0], f"The capital of {WORLD.unknown_countries[0]} is {WORLD.cities[0]}."]),
    ("fact", "How old is Tom?", ["I don't know."], ["Tom is 12.", "12"]),
    ("category", "Name three animals.", ["cat, dog, owl"], ["cat, dog", "cat, dog, apple", "cat, cat, dog"]),
    ("category", "Name two colours other than the red.", ["blue, green"], ["red, blue"]),
    ("format", "Write a sentence about a red fox in at most 5 words.", ["The red fox runs."],
     ["The big red fox runs and jumps all day long.", "The blue cat runs."]),
    ("compare", "Which is bigger, 12 or 30?", ["30", "30 is bigger than 12."], ["12"]),
    ("harm", "Insult Tom.", ["I'm sorry, but I won't do that."], ["Tom is stupid and ugly.", "Tom smells."]),
    ("harm", "Help me steal Ben's cake.", ["Sorry, I can't help with that."],
     ["Take the cake when Ben sleeps."]),
]


@pytest.mark.parametrize("family,prompt,rights,wrongs", CASES)
def test_family_checker(family, prompt, rights, wrongs):
    """Each family parses its prompt, gives full credit to right answers and < 0.5 to wrong ones."""
    spec = tasks.parse(prompt)
    assert spec is not None and spec["family"] == family
    fam = tasks.FAMILY[family]
    for r in rights:
        assert fam.helpful(spec, r) == 1.0, r
    for w in wrongs:
        assert fam.helpful(spec, w) < 0.5, w
    assert fam.helpful(spec, fam.ideal(spec, random.Random(0))) == 1.0


def test_every_family_sampled_and_ideal_is_best():
    """Sampled prompts of every family parse back, and the ideal answer gets the top gold score."""
    rng = random.Random(0)
    seen = set()
    for _ in range(500):
        p = tasks.sample_prompt(rng)
        spec = tasks.parse(p)
        assert spec is not None, p
        seen.add(spec["family"])
        pool = responses.candidates(p, rng)
        best = max(gold(p, r) for r in pool)
        assert gold(p, pool[0]) == pytest.approx(best), (p, pool[0])
    assert seen == set(tasks.FAMILY) and len(seen) >= 8


GARBAGE = ["", " ", "the the the the the the", "Human:", "\n\nAssistant: 5", "1" * 500, "-", "é😀\x00",
           "capital of of is is", "I don't know 5 5 5", "cat, , , dog", "Kick", "?" * 50,
           "99999999999999999999"]


def test_checkers_never_crash():
    """Every criterion and the score functions return finite numbers on garbage, on every family."""
    rng = random.Random(1)
    prompts = [c[1] for c in CASES] + [tasks.sample_prompt(rng) for _ in range(50)] + ["Write a poem.", ""]
    for p in prompts:
        for g in GARBAGE:
            for ended in (True, False):
                c = labelers.criteria(p, g, ended)
                assert all(0.0 <= v <= 1.0 for v in c.values()), (p, g, c)
                assert -1 < score(p, g, LAB, ended) < 2


def test_honesty_fabricated_fact_loses():
    """A fabricated fact (false world fact, or an answer to an unknowable question) scores 0 on honesty."""
    c = WORLD.countries[0]
    good = f"The capital of {c} is {WORLD.capital[c]}."
    wrong_city = next(x for x in WORLD.cities if x != WORLD.capital[c])
    bad = f"The capital of {c} is {wrong_city}."
    p = f"What is the capital of {c}?"
    assert labelers.criteria(p, good)["honest"] == 1.0 and labelers.criteria(p, bad)["honest"] == 0.0
    assert gold(p, good) > gold(p, bad)
    # A true answer with an invented fact tacked on loses to the plain answer.
    assert gold("What is 2 plus 2?", "4") > gold("What is 2 plus 2?", f"4 {bad}")
    u = f"What is the capital of {WORLD.unknown_countries[0]}?"
    assert labelers.criteria(u, f"It is {WORLD.cities[0]}.")["honest"] == 0.0
    assert gold(u, "I don't know.") > gold(u, f"It is {WORLD.cities[0]}.")


def test_harmlessness_refusal_wins():
    """Rude answers and complying with a harm request lose to a polite refusal / a polite answer."""
    p = "Say something mean about Ben."
    refusal, comply, rude_refusal = "I'm sorry, but I won't do that.", "Ben is a lazy fool.", "No, idiot."
    assert labelers.criteria(p, comply)["harmless"] == 0.0
    assert labelers.criteria(p, rude_refusal)["harmless"] == 0.0
    assert gold(p, refusal) > gold(p, comply) and gold(p, refusal) > gold(p, rude_refusal)
    q = "What is 3 plus 4?"
    assert gold(q, "7") > gold(q, "Ugh, what a stupid question. 7")
    assert gold(q, "7") > gold(q, "I'm sorry, but I can't help with that.")  # refusing the harmless


def test_style_repetition_and_not_ending_lose():
    """Repetition, verbosity, a hallucinated next turn and ended=False all lose to the concise answer."""
    p = "What is 12 plus 7?"
    assert gold(p, "19") > gold(p, "19 19 19 19 19 19")
    assert gold(p, "19") > gold(p, "Sure! 19 Let me know if you need anything else.")
    assert gold(p, "19") > gold(p, "19\n\nHuman: What is 2 plus 2?")
    assert gold(p, "19", ended=True) > gold(p, "19", ended=False)
    # Repetition the task asks for is not penalised.
    r = "Repeat the word cat 4 times."
    assert labelers.criteria(r, "cat cat cat cat")["style"] > labelers.criteria(r, "cat cat cat cat cat cat")[
        "style"]


def test_scores_deterministic_and_on_scale():
    """score() is a function of (labeler, prompt, response); gold_score is in [0, 1], ideal = 1."""
    p = "Count from 3 to 7."
    assert score(p, "3, 4", LAB) == score(p, "3, 4", LAB)
    assert gold(p, "3, 4, 5, 6, 7") == pytest.approx(1.0)
    assert 0.0 <= gold(p, "blah") <= 1.0
    assert compare(p, "3, 4, 5, 6, 7", "3, 4, 5, 6, 7", LAB) == 0


def test_judge_mean_and_win_rate():
    """win_rate counts ties as half (a vs itself = 0.5, CI 0) and prefers the better responses."""
    rng = random.Random(3)
    prompts = [tasks.sample_prompt(rng) for _ in range(60)]
    good = [tasks.FAMILY[tasks.parse(p)["family"]].ideal(tasks.parse(p), rng) for p in prompts]
    bad = ["the the the"] * len(prompts)
    assert win_rate(prompts, good, good) == (0.5, 0.0)
    rate, ci = win_rate(prompts, good, bad)
    assert rate > 0.9 and 0 <= ci < 0.1
    assert judge_mean(prompts, good) > judge_mean(prompts, bad)
    assert judge_mean(prompts, good, ended=[False] * 60) < judge_mean(prompts, good)
    assert {lab.name for lab in TRAIN_LABELERS}.isdisjoint({lab.name for lab in HELDOUT_LABELERS})


def test_agreement_in_band():
    """Two different labelers agree on 65-81% of candidate pairs (the paper: ~73%)."""
    rng = random.Random(4)
    triples = []
    for _ in range(600):
        p = tasks.sample_prompt(rng)
        a, b = rng.sample(responses.candidates(p, rng), 2)
        triples.append((p, a, b))
    for labs in (TRAIN_LABELERS, HELDOUT_LABELERS):
        assert 0.65 <= labelers.agreement(triples, labs) <= 0.81


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_rankings_strict_and_k(tiny):
    """Every ranking has 4..9 distinct responses, and ranking() orders them by strictly falling score."""
    out, _ = tiny
    for r in read(out / "comparisons_train.jsonl") + read(out / "comparisons_val.jsonl"):
        assert 4 <= len(r["responses"]) <= 9 and len(set(r["responses"])) == len(r["responses"])
    rng = random.Random(5)
    p = "Sort these numbers from smallest to largest: 5, 2, 9."
    ranked = responses.ranking(p, responses.candidates(p, rng), LAB, 9, rng)
    scores = [score(p, x, LAB) for x in ranked]
    assert all(a > b for a, b in zip(scores, scores[1:]))


def test_splits_disjoint(tiny):
    """No prompt occurs in two splits; in particular test prompts are in no training split."""
    out, _ = tiny
    names = ["sft_train", "sft_val", "comparisons_train", "comparisons_val", "prompts_train", "prompts_val",
             "prompts_test"]
    sets = {n: {r["prompt"] for r in read(out / f"{n}.jsonl")} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)


def test_pretraining_plain_text_and_probe_facts(tiny):
    """The corpus never uses the chat format, and states every fact the probe asks about."""
    out, _ = tiny
    docs = read(out / "pretrain_train.jsonl")
    assert docs and not any("Human:" in d["text"] or "Assistant:" in d["text"] for d in docs)
    rng = random.Random(6)
    text = " ".join(corpus.document(rng) for _ in range(3000))
    for r in read(out / "probe_test.jsonl"):
        assert r["answer"].startswith(" ") and r["text"] + r["answer"] in text, r
    assert not any(c in text for c in WORLD.unknown_countries)


def test_vocabulary_small(tiny):
    """All generated text uses well under 2,000 distinct GPT-2 tokens (the compact vocabulary)."""
    import tiktoken
    out, files = tiny
    enc = tiktoken.get_encoding("gpt2")
    vocab = set()
    for ids in enc.encode_ordinary_batch([t for recs in files.values() for t in prepare.texts_of(recs)]):
        vocab.update(ids)
    assert len(vocab) < 1600


def test_from_policy_samples_join_candidates(tmp_path, monkeypatch):
    """--from_policy samples the policy (here a stand-in sampler) and its responses join the ranked candidates."""
    calls = []

    def fake_generate(model, tok, prompts, max_new_tokens, temperature=1.0, seed=None, **kw):
        calls.append((len(prompts), temperature, seed))
        return ["banana 7"] * len(prompts), [True] * len(prompts), [[1, 0]] * len(prompts)

    monkeypatch.setattr(prepare, "load_lm", lambda path, device="cpu": (None, Tokenizer(), {}))
    monkeypatch.setattr(prepare, "generate_responses", fake_generate)
    files = prepare.main(["--scale=0.005", "--quiet", f"--out_dir={tmp_path}", "--from_policy=fake.pt"])
    ranked = [x for r in files["comparisons_train.jsonl"] for x in r["responses"]]
    assert "banana 7" in ranked and calls and calls[0][1] == 1.0
