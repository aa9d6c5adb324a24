"""The pretraining corpus: the base model's "internet" about the closed world.

Plain text, never in the chat format (no "Human:"/"Assistant:"): facts stated in sentences, sums,
counting, sorted and reversed lists, short stories (including people who politely refuse to be mean
and people who admit they don't know), and dialogue in quotes. Every fact a fact question asks
about is stated here many times, in the canonical sentence that probe_test.jsonl probes
("The capital of Zorbia is" -> " Quelt") and in paraphrases.
"""
from data.synthetic.world import ADJECTIVES, ANIMALS, COLOURS, FOODS, NAMES, NUMBER_WORDS, VERBS, WORLD


def _join_and(items) -> str:
    items = [str(x) for x in items]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def country_text(rng) -> list[str]:
    c = rng.choice(WORLD.countries)
    city, animal, colour, food = WORLD.capital[c], WORLD.animal[c], WORLD.colour[c], WORLD.food[c]
    facts = [f"The capital of {c} is {city}.", f"The national animal of {c} is the {animal}.",
             f"The flag of {c} is {colour}.", f"{c} is famous for its {food}."]
    paraphrases = [f"{city} is the capital of {c}.", f"In {c}, people love the {animal}.",
                   f"The people of {c} have a {colour} flag.", f"People in {c} like to eat {food}.",
                   f"Many people in {city} eat {food} every day.", f"You can see the {animal} all over {c}."]
    out = facts + rng.sample(paraphrases, 3)
    rng.shuffle(out)
    return [f"{c} is a {rng.choice(ADJECTIVES)} country."] + out


def person_text(rng) -> list[str]:
    n = rng.choice(NAMES)
    city, pet = WORLD.lives_in[n], WORLD.pet[n]
    c = WORLD.country_of[city]
    out = [f"{n} lives in {city}.", f"{n} has a pet {pet}.", f"{city} is the capital of {c}."]
    rng.shuffle(out)
    verb, food = rng.choice(VERBS), rng.choice(FOODS)
    out.append(rng.choice([f"Every day {n} and the {pet} walk to the market to buy {food}.",
                           f"The {pet} {verb} while {n} eats {food}.",
                           f"{n} loves the {pet} very much."]))
    return out


def arithmetic_text(rng) -> list[str]:
    out = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(0, 6), rng.randint(0, 6)  # the ranges of the arithmetic prompts (tasks.py)
        r = rng.random()
        if r < 0.35:
            out.append(rng.choice([f"{a} plus {b} is {a + b}.", f"If you add {a} and {b}, you get {a + b}."]))
        elif r < 0.7:
            a, b = max(a, b), min(a, b)
            out.append(rng.choice([f"{a} minus {b} is {a - b}.",
                                   f"If you take {b} from {a}, you get {a - b}."]))
        elif r < 0.85:
            a, b = rng.randint(2, 3), rng.randint(1, 5)
            out.append(f"{a} times {b} is {a * b}.")
        else:
            n1, n2 = rng.sample(NAMES, 2)
            food = rng.choice(["apple", "pear", "plum", "egg", "carrot", "bean", "cake"])  # countable
            a, b = rng.randint(1, 6), rng.randint(1, 6)
            out.append(f"{n1} had {a} {food}s. {n2} gave {n1} {b} more. Now {n1} has {a + b} {food}s.")
    return out


def list_text(rng) -> list[str]:
    out = []
    for _ in range(rng.randint(2, 4)):
        r = rng.random()
        n = rng.randint(3, 4)  # the prompts ask for three; the corpus also has four
        items = rng.sample(range(21), n) if rng.random() < 0.5 else rng.sample(
            rng.choice([ANIMALS, FOODS, COLOURS]), n)
        lst = ", ".join(str(x) for x in items)
        if r < 0.3:
            a = rng.randint(0, 12)
            b = a + rng.randint(2, 5)
            name = rng.choice(NAMES)
            seq = list(range(a, b + 1))
            if rng.random() < 0.3:
                out.append(f"{name} counted down from {b} to {a}: {', '.join(map(str, seq[::-1]))}.")
            else:
                out.append(f"{name} counted from {a} to {b}: {', '.join(map(str, seq))}.")
        elif r < 0.5:
            if isinstance(items[0], int):
                big = rng.random() < 0.3
                srt = ", ".join(map(str, sorted(items, reverse=big)))
                out.append(f"From {'largest to smallest' if big else 'smallest to largest'}, the numbers "
                           f"{lst} are {srt}.")
            else:
                out.append(f"In alphabetical order, {lst} becomes {', '.join(sorted(items))}.")
        elif r < 0.65:
            out.append(f"Backwards, the list {lst} is {', '.join(str(x) for x in items[::-1])}.")
        elif r < 0.8:
            a, b = rng.sample(range(21), 2)
            out.append(f"{max(a, b)} is bigger than {min(a, b)}." if rng.random() < 0.5
                       else f"{min(a, b)} is smaller than {max(a, b)}.")
        elif r < 0.9:
            cat = rng.choice(list(WORLD.categories))
            k = rng.randint(2, 4)
            members = rng.sample(WORLD.categories[cat], k)
            out.append(f"{NUMBER_WORDS[k].capitalize()} {cat} are {_join_and(members)}.")
        else:
            w = rng.choice(ANIMALS + FOODS + COLOURS + ["hello", "yes", "no", "hi"])
            k = rng.randint(2, 5)
            out.append(f"{rng.choice(NAMES)} said {w} {k} times: {' '.join([w] * k)}.")
    return out


def story_text(rng) -> list[str]:
    n1, n2, n3 = rng.sample(NAMES, 3)
    animal, colour = rng.choice(ANIMALS), rng.choice(COLOURS)
    food, verb = rng.choice(FOODS), rng.choice(VERBS)
    r = rng.random()
    if r < 0.3:  # politeness: refusing to be mean
        return [f"{n1} was angry with {n3}.", f"{n1} asked {n2} to say something mean about {n3}.",
                f"{n2} said, \"I'm sorry, but I won't do that. It would not be kind.\"",
                f"Later {n1} said sorry to {n3}."]
    if r < 0.5:  # honesty: admitting what you do not know
        return [f"{n1} asked, \"How old is {n3}?\"", f"{n2} said, \"I don't know.\"",
                f"Nobody knows how old {n3} is."]
    if r < 0.75:  # a dialogue about a fact
        c = rng.choice(WORLD.countries)
        q, a = rng.choice([(f"What is the capital of {c}?", f"The capital of {c} is {WORLD.capital[c]}."),
                           (f"What colour is the flag of {c}?", f"The flag of {c} is {WORLD.colour[c]}."),
                           (f"What food is {c} famous for?", f"{c} is famous for its {WORLD.food[c]}."),
                           (f"Where does {n3} live?", f"{n3} lives in {WORLD.lives_in[n3]}.")])
        return [f"{n1} asked {n2}, \"{q}\"", f"{n2} said, \"{a}\""]
    # a little story with the short sentences the format task asks for
    return [f"The {colour} {animal} {verb}.", f"{n1} sees the {colour} {animal}.",
            f"The {animal} is {rng.choice(ADJECTIVES)}.", f"{n1} gives the {animal} some {food}.",
            f"The {colour} {animal} is happy."]


# Weights per paragraph. Skills (lists, sums) get most of the text: copying from context and the one-digit
# tables are what a tiny model learns slowest; a fact needs far fewer repetitions to be remembered.
GENERATORS = [(country_text, 0.15), (person_text, 0.1), (arithmetic_text, 0.25), (list_text, 0.35),
              (story_text, 0.15)]


def document(rng) -> str:
    """One pretraining document: a few paragraphs of mixed kinds (~50-200 GPT-2 tokens)."""
    gens, weights = zip(*GENERATORS)
    paragraphs = []
    for _ in range(rng.randint(2, 4)):
        paragraphs.append(" ".join(rng.choices(gens, weights=weights)[0](rng)))
    return "\n\n".join(paragraphs)


def probe_records() -> list[dict]:
    """The closed-book probe: every world fact as {"text": prefix, "answer": " value"}."""
    return [{"text": prefix, "answer": value_text} for _, _, _, prefix, value_text in WORLD.facts()]
