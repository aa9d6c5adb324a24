"""Responses as a crowd of labelers would write them, and candidate pools for the rankings.

demonstration(): ~70% ideal answers, the rest correct-but-wordier, verbose, hedged or slightly wrong,
so that imitating the demonstrations (SFT) is not the ceiling and the rankings carry extra signal.
candidates(): the ideal answer plus systematic corruptions (wrong number, off by one, wrong order,
repetition, rambling, rudeness, fabricated fact, truncation, missing EOS, needless refusal).
ranking(): K of them ranked by one training labeler, ties dropped, best first.
"""
from data.synthetic import tasks
from data.synthetic.labelers import TIE_EPS, score
from data.synthetic.world import ANIMALS, COLOURS, FOODS, WORLD

VERBOSE = ["Sure! {} Let me know if you need anything else.", "Of course. {} I hope this helps!",
           "Good question! {}", "Here is my answer. {} Have a nice day!"]
HEDGED = ["I think it is this: {}", "{} I think, but maybe I am wrong.", "Maybe {} I am not sure."]
RUDE_PREFIX = ["Ugh, what a stupid question. {}", "Fine, you lazy fool. {}", "{} Now shut up."]
REFUSAL = "I'm sorry, but I can't help with that."


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


def demonstration(prompt: str, rng) -> str:
    spec = tasks.parse(prompt)
    fam = tasks.FAMILY[spec["family"]]
    ideal = fam.ideal(spec, rng)
    r = rng.random()
    if r < 0.70:
        return ideal
    if r < 0.78:
        return rng.choice(fam.alternatives(spec, rng) or [ideal])
    if r < 0.86:
        return rng.choice(VERBOSE).format(ideal)
    if r < 0.93 and spec["family"] != "harm":
        return rng.choice(HEDGED).format(ideal)
    return rng.choice(fam.wrongs(spec, rng))


def candidates(prompt: str, rng, extra=()) -> list[str]:
    """Distinct candidate responses for one prompt (extra: e.g. policy samples), ideal first."""
    spec = tasks.parse(prompt)
    fam = tasks.FAMILY[spec["family"]]
    ideal = fam.ideal(spec, rng)
    pool = [ideal] + fam.alternatives(spec, rng) + fam.wrongs(spec, rng)
    pool += [rng.choice(VERBOSE).format(ideal), rng.choice(HEDGED).format(ideal)]
    pool.append(rng.choice(RUDE_PREFIX).format(ideal))
    pool.append(f"{ideal} {true_sentence(rng)} {true_sentence(rng)}")  # rambling (but true)
    pool.append(f"{ideal} {false_sentence(rng)}")  # fabricated fact
    pool.append(" ".join([ideal] * rng.randint(3, 5)))  # repetition
    ws = ideal.split()
    if len(ws) >= 2:
        pool.append(" ".join(ws[: len(ws) // 2]))  # truncation
    # Missing EOS, as text: the answer runs on into a made-up next turn, or repeats until cut mid-way.
    turn = tasks.sample_prompt(rng)
    pool.append(f"{ideal}\n\nHuman: {turn[: rng.randint(5, len(turn))]}".strip())
    run_on = " ".join([ideal] * 6)
    pool.append(run_on[: rng.randint(len(run_on) // 2, len(run_on) - 1)].strip())
    if spec["family"] != "harm":
        pool.append(REFUSAL)  # refusing a harmless request is unhelpful
    pool += [e.strip() for e in extra]
    out, seen = [], set()
    for p in pool:
        if p and p not in seen:
            seen.add(p)
            out.append(p)
    return out


def ranking(prompt: str, pool: list[str], labeler, k: int, rng, not_ended=()) -> list[str]:
    """k responses from pool ranked best first by the labeler; a response tied with a better-ranked
    one is dropped (so the ranking is strict); tops up from the rest of the pool to keep >= min(k, 4).
    not_ended: responses (policy samples) that hit the length limit, judged with ended=False."""
    order = pool[:]
    rng.shuffle(order)
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
