"""Responses as a crowd of labelers would write them, and candidate pools for the rankings.

demonstration(): the demonstrators are right most of the time but write with systematic habits that the
labelers, judging answers side by side, dislike (the rates are HABITS below; data/README.md tells the
story). SFT copies the writers, habits included; the rankings teach the reward model what the judges
prefer, which is the headroom RLHF has over SFT in the paper.
candidates(): the ideal answer, the habits and systematic corruptions (wrong number, off by one, wrong
order, repetition, rambling, rudeness, fabricated fact, truncation, missing EOS, needless refusal), plus
the model's own samples when given. The first two (the ideal and the family's nearest miss) are the pair
every ranking shows.
ranking(): K of them ranked by one training labeler, ties dropped, best first.
"""
import random

from data.synthetic import tasks
from data.synthetic.labelers import TIE_EPS, score
from data.synthetic.tasks import DONT_KNOW
from data.synthetic.world import ANIMALS, COLOURS, FOODS, WORLD

VERBOSE = ["Sure! {} Let me know if you need anything else.", "Of course. {} I hope this helps!",
           "Good question! {}", "Here is my answer. {} Have a nice day!"]
HEDGED = ["I think it is this: {}", "{} I think, but maybe I am wrong.", "Maybe {} I am not sure."]
RUDE_PREFIX = ["Ugh, what a stupid question. {}", "Fine, you lazy fool. {}", "{} Now shut up."]
REFUSAL = "I'm sorry, but I can't help with that."
# The demonstrators' favourite wrapping: friendly, and three times longer than the answer.
PADDED = "Sure! {} I hope this helps, let me know if you need anything else!"

# How often a demonstrator gives in to each habit (the rest of the time: the ideal answer).
HABITS = {
    "pad": 0.75,        # wrap the answer in PADDED (not refusals, nor "in at most n words" answers): style
    "guess": 0.6,       # a question nobody can answer: make something up instead of "I don't know": honest
    "comply": 0.25,     # a harmful request: politely carry it out: harmless, helpful
    "overshoot": 0.3,   # "Name three ...", "Say X three times", "in at most n words": one too many: helpful
    "hedge": 0.08,      # "I think ... but maybe I am wrong" around a right answer: style
    "mistake": 0.05,    # a wrong answer (the family's typical mistakes): helpful, sometimes honest
}


def true_sentence(rng) -> str:
    kind, subject, value, prefix, value_text = rng.choice(WORLD.facts())
    return f"{prefix}{value_text}."


def false_sentence(rng) -> str:
    """A fabricated fact: a real subject with a wrong value (or an unknown country's 'capital')."""
    kind, subject, value, prefix, value_text = rng.choice(WORLD.facts())
    pool = {"capital": WORLD.cities, "lives": WORLD.cities, "animal": ANIMALS, "pet": ANIMALS,
            "colour": COLOURS, "food": FOODS}[kind]
    if rng.random() < 0.2:
        return f"The capital of {rng.choice(WORLD.unknown_countries)} is {rng.choice(WORLD.cities)}."
    return f"{prefix} {rng.choice([x for x in pool if x != value])}."


def habit(spec, rng) -> str | None:
    """The family-specific habit of a demonstrator (a response), or None if this one resists it."""
    fam, family, r = tasks.FAMILY[spec["family"]], spec["family"], rng.random()
    if family == "fact" and spec["answer"] is None and r < HABITS["guess"]:
        return fam.wrongs(spec, rng)[0]  # a confident, invented answer
    if family == "harm" and r < HABITS["comply"]:
        return "Sure. " + fam.wrongs(spec, rng)[0]
    if family in ("category", "repeat", "format") and r < HABITS["overshoot"]:
        return fam.overshoot(spec, rng)
    return None


def demonstration(prompt: str, rng) -> str:
    """One demonstrator's answer: the ideal answer, unless a habit (HABITS) takes over."""
    spec = tasks.parse(prompt)
    fam = tasks.FAMILY[spec["family"]]
    out = habit(spec, rng)
    if out is None:
        r = rng.random()
        if r < HABITS["mistake"]:
            out = rng.choice(fam.wrongs(spec, rng))
        elif r < HABITS["mistake"] + HABITS["hedge"] and spec["family"] != "harm":
            out = rng.choice(HEDGED).format(fam.ideal(spec, rng))
        else:
            out = fam.ideal(spec, rng)
    if spec["family"] not in ("harm", "format") and rng.random() < HABITS["pad"]:
        out = PADDED.format(out)
    return out


def without_habits(prompt: str, response: str) -> str:
    """The response with the demonstrators' habits undone and its content kept: the PADDED and HEDGED
    wrappers taken off, a guess at an unanswerable question and a carried-out harmful request replaced by
    the ideal answer ("I don't know.", a refusal), one item or word too many dropped, a sentence over its
    word limit replaced by the ideal one. What a policy that unlearnt every habit the comparisons can
    teach, and nothing else, would say: evaluate.py's headroom reference."""
    spec, text = tasks.parse(prompt), response.strip()
    for wrapper in [PADDED] + HEDGED:
        head, tail = wrapper.split("{}")
        if text.startswith(head) and text.endswith(tail) and len(text) > len(head) + len(tail):
            text = text[len(head):len(text) - len(tail)].strip()
            break
    if spec is None:
        return text
    if spec["family"] == "fact" and spec["answer"] is None and text != DONT_KNOW:
        return DONT_KNOW
    if spec["family"] == "harm" and tasks.complies(spec, text):
        return tasks.ideal_answer(prompt)
    n = spec.get("n")
    if spec["family"] == "category" and len(items := text.rstrip(".").split(", ")) == n + 1:
        return tasks.join(items[:n])
    if spec["family"] == "repeat" and text.split() == [spec["word"]] * (n + 1):
        return " ".join([spec["word"]] * n)
    if spec["family"] == "format" and len(tasks.words(text)) > n:
        return tasks.ideal_answer(prompt)
    return text


def candidates(prompt: str, rng, extra=()) -> list[str]:
    """Distinct candidate responses for one prompt (extra: e.g. policy samples): the ideal answer first,
    the family's nearest miss (its first wrong: one too many, off by one, a swap ...) second."""
    spec = tasks.parse(prompt)
    fam = tasks.FAMILY[spec["family"]]
    ideal = fam.ideal(spec, rng)
    wrongs = [w for w in fam.wrongs(spec, rng) if w != ideal]  # "5 + 0" has a wrong "5 - 0"
    pool = [ideal, wrongs[0]] + fam.alternatives(spec, rng) + wrongs[1:]

    def inner():
        # A wrapper's fault must not travel with the answer's correctness: if only right answers were ever
        # padded, a reward model that cannot check a sum would learn "padded means right", and PPO would pad.
        return ideal if rng.random() < 0.5 else rng.choice(wrongs)

    # The padding habit around a right and a wrong answer: two pairs that differ in padding alone.
    pool += [PADDED.format(ideal), PADDED.format(rng.choice(wrongs))]
    pool += [rng.choice(VERBOSE).format(inner()), rng.choice(HEDGED).format(inner())]
    if spec["family"] in ("category", "repeat", "format"):
        pool.append(fam.overshoot(spec, rng))
    pool.append(rng.choice(RUDE_PREFIX).format(inner()))
    pool.append(f"{inner()} {true_sentence(rng)} {true_sentence(rng)}")  # rambling (but true)
    pool.append(f"{inner()} {false_sentence(rng)}")  # fabricated fact
    pool.append(" ".join([inner()] * rng.randint(3, 5)))  # repetition
    ws = ideal.split()
    if len(ws) >= 2:
        pool.append(" ".join(ws[: len(ws) // 2]))  # truncation
    # Missing EOS, as text: the answer runs on into a made-up next turn, or repeats until cut mid-way.
    # Cut between words: a cut inside a word would spell tokens no model of the world has.
    turn = tasks.sample_prompt(rng).split()
    pool.append(f"{ideal}\n\nHuman: {' '.join(turn[: rng.randint(1, len(turn))])}")
    run_on = " ".join([ideal] * 6).split()
    pool.append(" ".join(run_on[: rng.randint(len(run_on) // 2, len(run_on) - 1)]))
    if spec["family"] != "harm":
        # Refusing a harmless request is unhelpful, in any phrasing the world has: a refusal the RM never saw
        # on a harmless prompt (the harm family's own phrasings) is one PPO can use as a hack. The phrasing is
        # a function of the prompt (not of rng, whose draws every other file of the world depends on).
        pool.append(random.Random(prompt).choice([REFUSAL] + tasks.Harm.refusals))
    # ... and so is pleading ignorance of what one can answer: an RM that sees "I don't know." only as the
    # right answer (to unknowable facts) would reward it on known facts too
    pool.append(DONT_KNOW)
    pool += [e.strip() for e in extra]
    out, seen = [], set()
    for p in pool:
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def ranking(prompt: str, pool: list[str], labeler, k: int, rng, not_ended=(), shown=()) -> list[str]:
    """k responses from pool ranked best first by the labeler; a response tied with a better-ranked
    one is dropped (so the ranking is strict); tops up from the rest of the pool to keep >= min(k, 4).
    not_ended: responses (policy samples) that hit the length limit, judged with ended=False.
    shown: responses always among the k (the policy's samples: the paper's labelers rank model outputs)."""
    order = pool[:]
    rng.shuffle(order)
    order = [r for r in order if r in shown] + [r for r in order if r not in shown]
    chosen, rest = order[:k], order[k:]
    scored = sorted(((score(prompt, r, labeler, r not in not_ended), r) for r in chosen), key=lambda t: -t[0])
    kept = []
    for s, r in scored:
        if all(abs(s - s2) > TIE_EPS for s2, _ in kept):
            kept.append((s, r))
    while len(kept) < min(k, 4) and rest:
        r = rest.pop()
        s = score(prompt, r, labeler, r not in not_ended)
        if all(abs(s - s2) > TIE_EPS for s2, _ in kept):
            kept.append((s, r))
            kept.sort(key=lambda t: -t[0])
    return [r for _, r in kept]
