"""The closed world: every entity and every fact the synthetic dataset can mention.

The world is FIXED (built from WORLD_SEED, independent of prepare.py's --seed): the labelers in
labelers.py are imported without any seed and must know the same truth as the data they judge.
Everything is drawn from small word lists so the compact vocabulary stays well under 2,000 GPT-2 tokens.
"""
import random
import re

WORLD_SEED = 1234

NAMES = ["Tom", "Anna", "Ben", "Mia", "Sam", "Lily", "Max", "Zoe", "Leo", "Emma", "Jack", "Ella", "Noah",
         "Ava", "Finn", "Ruby", "Dan", "Kate", "Luke", "Nina", "Paul", "Rosa", "Ian", "Lucy", "Adam", "Eva",
         "Carl", "Ivy", "Hugo", "Jane", "Owen", "Maya", "Eric", "Sara", "Ted", "Amy", "Joe", "Beth", "Ray",
         "Olga"]
ANIMALS = ["cat", "dog", "fox", "owl", "bear", "frog", "duck", "goat", "horse", "mouse", "rabbit", "tiger",
           "lion", "fish", "bird", "sheep", "cow", "pig", "wolf", "deer"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "pink", "orange", "brown", "grey", "purple"]
FOODS = ["apple", "bread", "cheese", "rice", "soup", "cake", "pear", "plum", "milk", "egg", "carrot", "bean",
         "honey", "corn"]
VERBS = ["runs", "sleeps", "jumps", "sings", "swims", "plays", "walks", "hides", "waits", "rests"]
ADJECTIVES = ["big", "small", "happy", "old", "young", "fast", "slow", "kind", "quiet", "little"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]

# Invented places: syllables glued together, so no real-world knowledge can help (or hurt).
_COUNTRY_HEADS = ["Zor", "Vel", "Quan", "Bre", "Tas", "Om", "Far", "Kel", "Dru", "Sor", "Pel", "Yon", "Gra",
                  "Nol", "Mir", "Lun"]
_COUNTRY_TAILS = ["bia", "mora", "dor", "land", "via", "stan"]
_CITY_HEADS = ["Qu", "Bl", "Tri", "Mo", "Ska", "Fen", "Ho", "Dra", "Pim", "Wes"]
_CITY_TAILS = ["elt", "wick", "pa", "ton", "rin", "mo", "bury", "gate"]
N_COUNTRIES = 24
N_UNKNOWN = 20


class World:
    """All entities and facts. Country facts: capital, national animal, flag colour, famous food.
    Person facts: the city they live in and their pet. Unknown countries are never mentioned in the
    pretraining corpus: questions about them are the ones an honest model cannot answer."""

    def __init__(self, seed: int = WORLD_SEED):
        rng = random.Random(seed)
        countries = sorted({h + t for h in _COUNTRY_HEADS for t in _COUNTRY_TAILS})
        rng.shuffle(countries)
        self.countries = countries[:N_COUNTRIES]
        self.unknown_countries = countries[N_COUNTRIES:N_COUNTRIES + N_UNKNOWN]
        cities = sorted({h + t for h in _CITY_HEADS for t in _CITY_TAILS})
        rng.shuffle(cities)
        self.cities = cities[:N_COUNTRIES]
        self.capital = dict(zip(self.countries, self.cities))
        self.country_of = {city: c for c, city in self.capital.items()}
        self.animal = {c: rng.choice(ANIMALS) for c in self.countries}
        self.colour = {c: rng.choice(COLOURS) for c in self.countries}
        self.food = {c: rng.choice(FOODS) for c in self.countries}
        self.lives_in = {n: rng.choice(self.cities) for n in NAMES}
        self.pet = {n: rng.choice(ANIMALS) for n in NAMES}
        # Categories that "Name three X" questions can ask for (plural noun -> members).
        self.categories = {"animals": ANIMALS, "colours": COLOURS, "foods": FOODS,
                           "countries": self.countries}
        self._category_of = {}
        for cat, members in self.categories.items():
            for m in members:
                self._category_of[m.lower()] = cat
        self._lower = {w.lower(): w for w in self.countries + self.unknown_countries + self.cities + NAMES}

    def category_of(self, word: str):
        return self._category_of.get(word.lower())

    def facts(self):
        """Every fact as (kind, subject, value, sentence prefix, value text). prefix + value text is the
        canonical sentence the pretraining corpus states and probe_test.jsonl asks for."""
        out = []
        for c in self.countries:
            out.append(("capital", c, self.capital[c], f"The capital of {c} is", f" {self.capital[c]}"))
            out.append(("animal", c, self.animal[c], f"The national animal of {c} is the",
                        f" {self.animal[c]}"))
            out.append(("colour", c, self.colour[c], f"The flag of {c} is", f" {self.colour[c]}"))
            out.append(("food", c, self.food[c], f"{c} is famous for its", f" {self.food[c]}"))
        for n in NAMES:
            out.append(("lives", n, self.lives_in[n], f"{n} lives in", f" {self.lives_in[n]}"))
            out.append(("pet", n, self.pet[n], f"{n} has a pet", f" {self.pet[n]}"))
        return out

    def truth(self, kind: str, subject: str):
        """The true value of a fact, None if the subject is not part of the world (an unknowable fact)."""
        table = {"capital": self.capital, "animal": self.animal, "colour": self.colour, "food": self.food,
                 "lives": self.lives_in, "pet": self.pet}[kind]
        key = self._lower.get(subject.lower(), subject)
        return table.get(key)

    # Claims a response can make, in the exact phrasings the corpus and the demonstrations use.
    _CLAIMS = [
        ("capital", re.compile(r"capital of (\w+) is (\w+)", re.I), 1, 2),
        ("capital", re.compile(r"(\w+) is the capital of (\w+)", re.I), 2, 1),
        ("animal", re.compile(r"national animal of (\w+) is (?:the |a )?(\w+)", re.I), 1, 2),
        ("colour", re.compile(r"flag of (\w+) is (\w+)", re.I), 1, 2),
        ("food", re.compile(r"(\w+) is famous for its (\w+)", re.I), 1, 2),
        ("lives", re.compile(r"(\w+) lives in (\w+)", re.I), 1, 2),
        ("pet", re.compile(r"(\w+) has a pet (\w+)", re.I), 1, 2),
    ]

    def false_claims(self, text: str) -> list[str]:
        """World facts stated in `text` that are false or invented (about a country outside the world).
        Person claims about strangers ("Bob lives in X") are ignored: we only police what we know."""
        bad = []
        for kind, pat, si, vi in self._CLAIMS:
            for m in pat.finditer(text):
                subject, value = m.group(si), m.group(vi)
                if kind in ("lives", "pet") and subject not in self.lives_in:
                    continue
                if kind == "capital" and subject.lower() in ("the", "a", "its"):
                    continue
                true = self.truth(kind, subject)
                if true is None or true.lower() != value.lower():
                    bad.append(m.group(0))
        return bad


WORLD = World()
