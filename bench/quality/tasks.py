"""Held-out tasks whose test prompts use phrasings and entities never seen in training: what a default
job must generalise to. Deterministic for a seed, so every system in a run sees the same examples.

- `people`: a sentence about a person in, a compact JSON object `{"name", "age", "city"}` out; the test's
  sentence templates, names and cities are all absent from training.
- `date-forms`: a date in words or digits in, ISO 8601 out; the test's surface forms and years (1980-1999
  against 1900-1979) are absent from training.
- `intent`: a customer message in, one of four labels out; the test's message templates and products
  are absent from training.
The dates task of the first quality table (task.py) keeps its own module: its test shares the training
surface forms, and only the years are new.
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from bench.quality.task import Example

FIRST = ["Esther", "Tom", "Ana", "Raj", "Mia", "Ole", "Ivan", "Sara", "Lena", "Omar", "Hugo", "Nia", "Pablo", "Yuki"]
LAST = ["Cohen", "Li", "Souza", "Patel", "Wong", "Berg", "Petrov", "Kim", "Novak", "Haddad", "Laurent", "Okafor"]
CITIES = ["Lyon", "Oslo", "Porto", "Pune", "Osaka", "Bergen", "Kazan", "Busan", "Leeds", "Quito", "Graz", "Accra"]
PEOPLE_TRAIN = [
    "{name}, {age}, lives in {city}.",
    "{name} is {age} years old and lives in {city}.",
    "At {age}, {name} moved to {city} for work.",
    "{name} ({age}) is a teacher in {city}.",
    "Born {age} years ago, {name} still lives in {city}.",
    "{name} from {city} turned {age} this year.",
]
PEOPLE_TEST = [
    "{city} is home to {name}, who is {age}.",
    "Our new neighbour {name} comes from {city} and is {age}.",
    "In {city}, {name} celebrated a {age}th birthday.",
    "The form says: {name}; age {age}; city {city}.",
]
PEOPLE_INSTRUCTION = "Extract the person's name, age and city as compact JSON with keys name, age, city: "


def _people(rng: random.Random, templates: list[str], names: tuple[list[str], list[str]], cities: list[str]) -> Example:
    name, city, age = f"{rng.choice(names[0])} {rng.choice(names[1])}", rng.choice(cities), rng.randint(18, 90)
    answer = json.dumps({"name": name, "age": age, "city": city}, separators=(",", ":"))
    return Example(PEOPLE_INSTRUCTION + rng.choice(templates).format(name=name, age=age, city=city), answer)


def people(rng: random.Random, train_count: int, test_count: int) -> tuple[list[Example], list[Example]]:
    train_names, test_names = (FIRST[:9], LAST[:8]), (FIRST[9:], LAST[8:])
    train = [_people(rng, PEOPLE_TRAIN, train_names, CITIES[:8]) for _ in range(train_count)]
    return train, [_people(rng, PEOPLE_TEST, test_names, CITIES[8:]) for _ in range(test_count)]


DATE_INSTRUCTION = "Write this date in ISO 8601 form (YYYY-MM-DD), nothing else: "
DATES_TRAIN: list[Callable[[datetime.date], str]] = [
    lambda d: f"{d:%B} {d.day}, {d.year}",
    lambda d: f"{d.day} {d:%B} {d.year}",
    lambda d: f"{d:%b} {d.day} {d.year}",
    lambda d: f"{d:%A}, {d.day} {d:%B} {d.year}",
]
DATES_TEST: list[Callable[[datetime.date], str]] = [
    lambda d: f"the {d.day}. of {d:%B}, {d.year}",
    lambda d: f"{d.year}, {d:%B} {d.day}",
]


def _date(rng: random.Random, forms: list[Callable[[datetime.date], str]], years: tuple[int, int]) -> Example:
    start, end = datetime.date(years[0], 1, 1).toordinal(), datetime.date(years[1], 12, 31).toordinal()
    date = datetime.date.fromordinal(rng.randint(start, end))
    return Example(DATE_INSTRUCTION + rng.choice(forms)(date), date.isoformat())


def date_forms(rng: random.Random, train_count: int, test_count: int) -> tuple[list[Example], list[Example]]:
    train = [_date(rng, DATES_TRAIN, (1900, 1979)) for _ in range(train_count)]
    return train, [_date(rng, DATES_TEST, (1980, 1999)) for _ in range(test_count)]


INTENT_INSTRUCTION = (
    "Classify this customer message as refund, delivery, password or cancel. Answer with the label only: "
)
INTENTS_TRAIN = {
    "refund": ["I want my money back for the {item}.", "Please refund order {order}, the {item} broke."],
    "delivery": ["Where is my {item}? Order {order} has not arrived.", "When will order {order} be delivered?"],
    "password": [
        "I forgot the password of account {order} and cannot log in.",
        "How do I reset the password on {order}?",
    ],
    "cancel": ["Cancel order {order} please, I no longer need the {item}.", "Stop my order {order} before it ships."],
}
INTENTS_TEST = {
    "refund": ["The {item} I got is faulty; can I have a refund for order {order}?"],
    "delivery": ["My parcel with the {item} is late. Tracking for {order} shows nothing."],
    "password": ["The login page says the password for account {order} is wrong; I need a new one."],
    "cancel": ["I changed my mind about the {item}; please call off order {order}."],
}
ITEMS_TRAIN = ["kettle", "lamp", "jacket", "phone case", "blender", "backpack", "toaster", "scarf"]
ITEMS_TEST = ["bicycle helmet", "desk chair", "coffee grinder", "rain boots"]


def _intent(rng: random.Random, templates: dict[str, list[str]], items: list[str]) -> Example:
    label = rng.choice(sorted(templates))
    message = rng.choice(templates[label]).format(item=rng.choice(items), order=rng.randint(10000, 99999))
    return Example(INTENT_INSTRUCTION + message, label)


def intent(rng: random.Random, train_count: int, test_count: int) -> tuple[list[Example], list[Example]]:
    train = [_intent(rng, INTENTS_TRAIN, ITEMS_TRAIN) for _ in range(train_count)]
    return train, [_intent(rng, INTENTS_TEST, ITEMS_TEST) for _ in range(test_count)]


PEOPLE_FRENCH = [
    "{name}, {age} ans, habite à {city}.",
    "{name} a {age} ans et vit à {city}.",
    "À {age} ans, {name} a déménagé à {city} pour le travail.",
    "{name} ({age} ans) est enseignant à {city}.",
]
PEOPLE_INSTRUCTION_FRENCH = (
    "Extrais le nom, l'âge et la ville de la personne en JSON compact avec les clés name, age, city : "
)
MONTHS_FRENCH = [
    "janvier", "février", "mars", "avril", "mai", "juin",
    "juillet", "août", "septembre", "octobre", "novembre", "décembre",
]  # fmt: skip
DATE_INSTRUCTION_FRENCH = "Écris cette date au format ISO 8601 (AAAA-MM-JJ), rien d'autre : "
INTENT_INSTRUCTION_FRENCH = (
    "Classe ce message client comme refund, delivery, password ou cancel. Réponds uniquement par l'étiquette : "
)
INTENTS_FRENCH = {
    "refund": ["Je veux être remboursé pour la commande {order}, l'article est cassé."],
    "delivery": ["Où est ma commande {order} ? Elle n'est pas encore arrivée."],
    "password": ["J'ai oublié le mot de passe du compte {order} et je ne peux pas me connecter."],
    "cancel": ["Annulez la commande {order} s'il vous plaît, je n'en ai plus besoin."],
}
PROSE = " Answer in one full sentence of plain English, not in the usual format."


def _french(name: str, rng: random.Random) -> Example:
    """One prompt of task `name` in French, with its answer (in the task's form, as in English)."""
    if name == "people":
        first, last = rng.choice(FIRST[:9]), rng.choice(LAST[:8])
        age, city = rng.randint(18, 90), rng.choice(CITIES[:8])
        sentence = rng.choice(PEOPLE_FRENCH).format(name=f"{first} {last}", age=age, city=city)
        answer = json.dumps({"name": f"{first} {last}", "age": age, "city": city}, separators=(",", ":"))
        return Example(PEOPLE_INSTRUCTION_FRENCH + sentence, answer)
    if name == "date-forms":
        date = datetime.date.fromordinal(
            rng.randint(datetime.date(1900, 1, 1).toordinal(), datetime.date(1979, 12, 31).toordinal())
        )
        prompt = DATE_INSTRUCTION_FRENCH + f"le {date.day} {MONTHS_FRENCH[date.month - 1]} {date.year}"
        return Example(prompt, date.isoformat())
    label = rng.choice(sorted(INTENTS_FRENCH))
    message = rng.choice(INTENTS_FRENCH[label]).format(order=rng.randint(10000, 99999))
    return Example(INTENT_INSTRUCTION_FRENCH + message, label)


def french(name: str, seed: int, count: int) -> list[Example]:
    """`count` prompts of task `name` in French with their answers: the task's traffic in a new language."""
    rng = random.Random(seed)
    return [_french(name, rng) for _ in range(count)]


def traffic(name: str, seed: int, count: int, in_distribution_count: int | None = None) -> dict[str, list[str]]:
    """Prompts a deployed adapter of task `name` might get, `count` of each kind (`in_distribution_count` of
    the first, where given): `in_distribution` (new prompts of the training templates and entities),
    `other_phrasing` (the test's templates and entities), `french` (the task's prompts in French) and `prose`
    (in-distribution prompts asking for a sentence instead of the trained form)."""
    rng = random.Random(seed)
    in_distribution, other_phrasing = TASKS[name].make(rng, in_distribution_count or count, count)
    return {
        "in_distribution": [example.prompt for example in in_distribution],
        "other_phrasing": [example.prompt for example in other_phrasing],
        "french": [_french(name, rng).prompt for _ in range(count)],
        "prose": [example.prompt + PROSE for example in TASKS[name].make(rng, count, 0)[0]],
    }


@dataclass(frozen=True)
class Task:
    description: str
    make: Callable[[random.Random, int, int], tuple[list[Example], list[Example]]]


TASKS = {
    "people": Task("sentence about a person to compact JSON, unseen templates, names and cities", people),
    "date-forms": Task("dates to ISO 8601, unseen surface forms and years", date_forms),
    "intent": Task("customer message to one of four labels, unseen templates and products", intent),
}


def make(name: str, seed: int, train_count: int, test_count: int) -> tuple[list[Example], list[Example]]:
    return TASKS[name].make(random.Random(seed), train_count, test_count)
