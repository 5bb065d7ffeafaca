"""Which examples share a phrasing: so a held-out estimate can hold whole phrasings out, and can tell when
the caller's held-out prompts are near-copies of training prompts.

A dataset made from a handful of sentence templates ("Esther Cohen, 34, lives in Lyon.", "Lyon is home
to ...") scores 1.0 on validation rows drawn at random from it, since every phrasing a validation row
uses was trained on; a test set of new phrasings can then find the adapter no better than its base
model. Holding out whole groups (as scikit-learn's GroupShuffleSplit does, and a careful user does by
hand) measures what new phrasings will get.

A prompt's template is what is left once the words that vary between examples are blanked: numbers,
capitalised words (names, places, months) and words that few prompts of the dataset use. The frequent
lower-case words and the punctuation stay, so "Esther Cohen, 34, lives in Lyon." and "Tom Li, 51,
lives in Oslo." share the template "A , # , lives in A .".
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

_TOKEN = re.compile(r"\w+|[^\w\s]")
MIN_SHARED_PROMPTS = 0.02
"""A lower-case word stays in templates when at least this share of the training prompts (and at least
two) use it: a word of a template, not of one example's content."""
NEAR_COPY_OVERLAP = 0.8
"""A held-out prompt whose word trigrams are at least this share inside one training prompt is a near-copy."""
NEAR_COPY_WARNING = 0.5
"""Share of near-copies among the caller's held-out prompts from which the job warns."""


def _tokens(prompt: str) -> list[str]:
    return _TOKEN.findall(prompt)


class Templates:
    """The templates of prompts, with the word list of the dataset they were fitted on (`fit`)."""

    def __init__(self, template_words: frozenset[str]) -> None:
        self._words = template_words

    @classmethod
    def fit(cls, prompts: Sequence[str]) -> Templates:
        """Templates as the training prompts `prompts` define them."""
        used_by: Counter[str] = Counter()
        for prompt in prompts:
            used_by.update({token for token in _tokens(prompt) if token.islower()})
        least = max(2, math.ceil(MIN_SHARED_PROMPTS * len(prompts)))
        return cls(frozenset(word for word, count in used_by.items() if count >= least))

    def of(self, prompt: str) -> str:
        """The prompt's template: each run of blanked words is one slot ('#' numbers, 'A' capitalised, '_' rare)."""
        parts: list[str] = []
        for token in _tokens(prompt):
            if not token[0].isalnum() and token[0] != "_" or token in self._words:
                part = token  # punctuation, or a word of the template
            elif any(ch.isdigit() for ch in token):
                part = "#"
            elif token[0].isupper():
                part = "A"
            else:
                part = "_"
            if not (parts and part == parts[-1] and part in "#A_"):
                parts.append(part)
        return " ".join(parts)


@dataclass(frozen=True)
class GroupedSplit:
    """Training rows, held-out rows of whole groups never trained on, and held-out rows drawn at random
    (their groups are trained on: an in-distribution figure); `grouping` says how the groups were found,
    or why there are none (then every held-out row is drawn at random)."""

    train: list[int]
    unseen_groups: list[int]
    in_distribution: list[int]
    groups_held_out: int
    grouping: str


def _choose_groups(groups: dict[str, list[int]], target: int, seed: int) -> list[str]:
    """Whole groups, in a seeded order, until they hold `target` rows; a group that would take more than
    twice the target is passed over, and at least two groups stay in training."""
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: list[str] = []
    held = 0
    for key in order:
        if held >= target or len(chosen) + 2 >= len(groups):
            break
        if held + len(groups[key]) <= 2 * target:
            chosen.append(key)
            held += len(groups[key])
    return chosen if held >= max(1, target // 2) else []


def _why_not_grouped(groups: dict[str, list[int]], rows: int, explicit: bool) -> str | None:
    """Why these groups cannot give a held-out estimate of new phrasings; None when they can."""
    if len(groups) < 3:
        return f"only {len(groups)} {'groups' if explicit else 'prompt templates'}, too few to hold one out"
    shared = sum(len(members) for members in groups.values() if len(members) > 1)
    if not explicit and shared < rows / 2:
        return "most prompts share no template with another"
    return None


def grouped_split(
    prompts: Sequence[str | None], groups: Sequence[str | None], fraction: float, seed: int
) -> GroupedSplit:
    """Hold out about `fraction` of the rows as whole groups, and half as many again at random.

    A row's group is the one its example names (`groups`), else its prompt's template; rows without a
    prompt (plain text) have neither and are split at random. Where the groups cannot give an
    estimate (too few, or nearly every prompt its own template), `fraction` of the rows are held out
    at random, and `grouping` says why.
    """
    rows = len(prompts)
    target = min(max(1, round(rows * fraction)), rows - 1) if fraction > 0 and rows > 1 else 0
    explicit = any(group is not None for group in groups)
    templates = Templates.fit([prompt for prompt in prompts if prompt is not None])
    members: dict[str, list[int]] = defaultdict(list)
    for row, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
        key = group if explicit else (templates.of(prompt) if prompt is not None else None)
        if key is not None:
            members[key].append(row)
    why_not = _why_not_grouped(members, rows, explicit) if target else "nothing is held out"
    chosen = [] if why_not else _choose_groups(members, target, seed)
    if not why_not and not chosen:
        why_not = "no mix of whole groups holds about the share to hold out"
    held_out = {row for key in chosen for row in members[key]}
    rest = [row for row in range(rows) if row not in held_out]
    random.Random(seed).shuffle(rest)
    in_distribution_rows = target if why_not else min(max(1, round(target / 2)), len(rest) - 1)
    grouping = why_not or (
        f"{len(chosen)} of {len(members)} {'groups named by the examples' if explicit else 'prompt templates'}"
    )
    return GroupedSplit(
        train=sorted(rest[in_distribution_rows:]),
        unseen_groups=sorted(held_out),
        in_distribution=sorted(rest[:in_distribution_rows]),
        groups_held_out=len(chosen),
        grouping=grouping,
    )


def _trigrams(prompt: str) -> set[tuple[str, ...]]:
    words = [token.casefold() for token in _tokens(prompt) if token[0].isalnum()]
    return {tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}


def near_copies(train_prompts: Sequence[str], held_out_prompts: Sequence[str]) -> int:
    """How many held-out prompts near-copy a training prompt: the same template, or at least
    NEAR_COPY_OVERLAP of their word trigrams inside one training prompt."""
    templates = Templates.fit(train_prompts)
    trained_templates = {templates.of(prompt) for prompt in train_prompts}
    containing: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, prompt in enumerate(train_prompts):
        for trigram in _trigrams(prompt):
            containing[trigram].append(index)
    copies = 0
    for prompt in held_out_prompts:
        if templates.of(prompt) in trained_templates:
            copies += 1
            continue
        trigrams = _trigrams(prompt)
        shared = Counter(index for trigram in trigrams for index in containing.get(trigram, ()))
        if shared and max(shared.values()) >= NEAR_COPY_OVERLAP * len(trigrams):
            copies += 1
    return copies
