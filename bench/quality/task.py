"""A held-out task: dates written many ways, to be answered in ISO 8601.

Training dates fall in 1900-1979, test dates in 1980-1999: the adapter must learn the rule, not
recall dates it saw. (A first split with test dates in 2031-2059 defeated every system, the plain
script included: trained on one century, SmolLM2-135M writes the next one's years in it.)
Deterministic for a seed, so every system in a run sees the same examples.
"""

from __future__ import annotations

import datetime
import json
import random
from dataclasses import dataclass
from pathlib import Path

INSTRUCTION = "Write this date in ISO 8601 form (YYYY-MM-DD), nothing else: "
_SURFACES = (
    lambda d: f"{d:%B} {d.day}, {d.year}",
    lambda d: f"{d.day} {d:%B} {d.year}",
    lambda d: f"{d:%b} {d.day} {d.year}",
    lambda d: f"{d:%A}, {d.day} {d:%B} {d.year}",
    lambda d: f"{d.month}/{d.day}/{d.year} (US)",
    lambda d: f"the {d.day}. of {d:%B}, {d.year}",
)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def _examples(rng: random.Random, first_year: int, last_year: int, count: int) -> list[Example]:
    start = datetime.date(first_year, 1, 1).toordinal()
    end = datetime.date(last_year, 12, 31).toordinal()
    examples = []
    for _ in range(count):
        date = datetime.date.fromordinal(rng.randint(start, end))
        examples.append(Example(INSTRUCTION + rng.choice(_SURFACES)(date), date.isoformat()))
    return examples


def make_task(seed: int, train_count: int, test_count: int) -> tuple[list[Example], list[Example]]:
    rng = random.Random(seed)
    return _examples(rng, 1900, 1979, train_count), _examples(rng, 1980, 1999, test_count)


def write_jsonl(path: Path, examples: list[Example]) -> Path:
    path.write_text("".join(json.dumps({"prompt": e.prompt, "completion": e.answer}) + "\n" for e in examples))
    return path
