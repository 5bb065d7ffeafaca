"""The requests every system answers: prompts, and which adapter each request asks for.

Plans are built once in the benchmark process and handed to every system, so all of them see
the same prompts in the same order with the same adapter per request. The draw is seeded by the
seed, the adapter count and the traffic shape only, so a rerun asks the same questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

Traffic = Literal["uniform", "zipf"]
TRAFFICS: tuple[Traffic, ...] = ("uniform", "zipf")
BASE_TRAFFIC = "base"
"""The traffic label of the row with no adapter: every request goes to the base model."""
ZIPF_EXPONENT = 1.0

TOPICS = (
    "a lighthouse keeper",
    "a lost robot",
    "the last bakery in town",
    "a dragon who hates fire",
    "a time-travelling cat",
    "a city under the sea",
    "an honest politician",
    "a haunted library",
    "the first day of school",
    "a mountain rescue",
    "a talking tree",
    "a detective who cannot see",
    "a garden on Mars",
    "a chess match with a ghost",
    "the world's slowest race",
    "a violin that plays by itself",
    "a storm at sea",
    "two rival chefs",
    "a forgotten birthday",
    "a train that never stops",
    "a map to nowhere",
    "a shy superhero",
    "a village without clocks",
    "an astronaut's dog",
    "a letter from the future",
    "a painter who loses colour",
    "a snowman in summer",
    "the king's missing crown",
    "a friendly volcano",
    "a bridge between two worlds",
    "a clockmaker's apprentice",
    "the quietest concert",
)


@dataclass(frozen=True)
class PlannedRequest:
    """One request: the adapter it names (None = the base model) and the user's message."""

    adapter: str | None
    prompt: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


@dataclass(frozen=True)
class RowPlan:
    """The requests of one result row: `adapters` adapters in use, drawn by `traffic`."""

    adapters: int
    traffic: str
    requests: tuple[PlannedRequest, ...]

    @property
    def adapter_names(self) -> list[str]:
        """The adapters this row may name, whether or not the draw picked each of them."""
        return adapter_names(self.adapters)

    def to_json(self) -> dict[str, Any]:
        return {
            "adapters": self.adapters,
            "traffic": self.traffic,
            "requests": [{"adapter": r.adapter, "prompt": r.prompt} for r in self.requests],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowPlan:
        requests = tuple(PlannedRequest(r["adapter"], r["prompt"]) for r in data["requests"])
        return cls(int(data["adapters"]), str(data["traffic"]), requests)


def adapter_names(count: int) -> list[str]:
    """Names of the first `count` benchmark adapters; a row with N adapters uses the first N."""
    return [f"bench-{index:03d}" for index in range(count)]


def prompt_for(index: int) -> str:
    """The user message of request `index`: the same for every row and system, varied in length."""
    return f"Write a short story about {TOPICS[index % len(TOPICS)]}."


def _weights(count: int, traffic: Traffic) -> list[float]:
    if traffic == "uniform":
        return [1.0] * count
    return [1.0 / (rank**ZIPF_EXPONENT) for rank in range(1, count + 1)]


def plan_row(adapters: int, traffic: Traffic, requests: int, seed: int) -> RowPlan:
    """`requests` requests, each naming one of `adapters` adapters drawn by `traffic`."""
    names = adapter_names(adapters)
    rng = random.Random(f"{seed}/{adapters}/{traffic}")
    drawn = rng.choices(names, weights=_weights(adapters, traffic), k=requests)
    return RowPlan(adapters, traffic, tuple(PlannedRequest(name, prompt_for(i)) for i, name in enumerate(drawn)))


def plan_base_row(requests: int) -> RowPlan:
    """The row with no adapter: the same prompts, all to the base model."""
    return RowPlan(0, BASE_TRAFFIC, tuple(PlannedRequest(None, prompt_for(i)) for i in range(requests)))


def plan_rows(adapter_counts: list[int], traffics: list[Traffic], requests: int, seed: int) -> list[RowPlan]:
    """The base row, then every adapter count with every traffic shape, smallest count first."""
    rows = [plan_base_row(requests)]
    for count in sorted(set(adapter_counts)):
        rows.extend(plan_row(count, traffic, requests, seed) for traffic in traffics)
    return rows


def chat_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids exactly as our server makes them from chat messages.

    The rendered text already holds the template's special tokens, so it is encoded without
    adding them again; the in-process baselines use this so every system reads the same tokens.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))
