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
MIN_WORDED_TEMPLATES = 0.5
"""Share of prompts whose template must keep a word for templates to tell phrasings apart: in a language
written without spaces between words, a "word" is a whole clause, rare, and every template is blank."""
NEAR_COPY_OVERLAP = 0.8
"""A held-out prompt whose own word trigrams are at least this share inside one training prompt is a near-copy."""
COMMON_TRIGRAM = 0.1
"""Trigrams in more than this share of training prompts (a shared instruction, a template) are left out
of the overlap, which then measures the example's own content."""
MIN_OWN_TRIGRAMS = 3
MAX_GROUPS_SHARE = 1 / 3
"""Whole groups never take more than this share of the rows."""


def _tokens(prompt: str) -> list[str]:
    return _TOKEN.findall(prompt)


def _is_word(token: str) -> bool:
    """A lower-case word, or one of a script without case: what a template may keep."""
    return token[0].isalpha() and token == token.lower()


class Templates:
    """The templates of prompts, with the word list of the dataset they were fitted on (`fit`)."""

    def __init__(self, template_words: frozenset[str]) -> None:
        self._words = template_words

    @classmethod
    def fit(cls, prompts: Sequence[str]) -> Templates:
        """Templates as the training prompts `prompts` define them."""
        used_by: Counter[str] = Counter()
        for prompt in prompts:
            used_by.update({token for token in _tokens(prompt) if _is_word(token)})
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

    def keeps_a_word(self, prompt: str) -> bool:
        """Whether the prompt's template keeps any word: else it is punctuation between blanks."""
        return any(token in self._words for token in _tokens(prompt))


@dataclass(frozen=True)
class GroupedSplit:
    """Training rows, held-out rows of whole groups never trained on, and held-out rows drawn at random
    (their groups are trained on: an in-distribution figure); `grouping` says how the groups were found,
    or why there are none (then every held-out row is drawn at random)."""

    train: list[int]
    unseen_groups: list[int]
    in_distribution: list[int]
    grouping: str


def _choose_groups(
    groups: dict[str, list[int]], answers: Sequence[str | None], target: int, most: int, seed: int
) -> list[str]:
    """Whole groups, in a seeded order, until they hold `target` rows; a group that would take the rows
    past `most`, or take more than half of the rows of an answer that several rows share (a label) out
    of training, is passed over; at least two groups stay in training.

    A label the adapter seldom or never trained on would make the grouped figure measure an answer it
    could not learn rather than a phrasing it had not seen."""
    labels = {answer: rows for answer, rows in Counter(a for a in answers if a is not None).items() if rows > 1}
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: list[str] = []
    held = 0
    held_labels: Counter[str] = Counter()
    for key in order:
        if held >= target or len(chosen) + 2 >= len(groups):
            break
        taken = held_labels + Counter(answer for row in groups[key] if (answer := answers[row]) in labels)
        if held + len(groups[key]) <= most and all(2 * rows <= labels[label] for label, rows in taken.items()):
            chosen.append(key)
            held += len(groups[key])
            held_labels = taken
    return chosen if held >= max(1, target // 2) else []


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _why_not_grouped(groups: dict[str, list[int]], rows: int, explicit: bool, worded: float) -> str | None:
    """Why these groups cannot give a held-out estimate of new phrasings; None when they can."""
    if not explicit and not groups:
        return "the examples have no prompts to group"
    if not explicit and worded < MIN_WORDED_TEMPLATES:
        return "the prompts' words could not be told apart (a language written without spaces?)"
    if len(groups) < 3:
        return f"only {_plural(len(groups), 'group' if explicit else 'prompt template')}, too few to hold one out"
    shared = sum(len(members) for members in groups.values() if len(members) > 1)
    if not explicit and shared < rows / 2:
        return "most prompts share no template with another"
    return None


def grouped_split(
    prompts: Sequence[str | None],
    groups: Sequence[str | None],
    answers: Sequence[str | None],
    fraction: float,
    seed: int,
) -> GroupedSplit:
    """Hold out about `fraction` of the rows as whole groups (up to twice that, never over a third of the
    rows), and half as many rows again at random among the groups trained on.

    When any example names its group (`groups`), the groups are those names, and rows without one are
    only ever held out at random; else a row's group is its prompt's template. Rows without a prompt
    (plain text) have neither. Where the groups cannot give an estimate (too few, most prompts their
    own template, no prompts), `fraction` of the rows are held out at random, and `grouping` says why.
    """
    rows = len(prompts)
    target = min(max(1, round(rows * fraction)), rows - 1) if fraction > 0 and rows > 1 else 0
    explicit = any(group is not None for group in groups)
    asked = [prompt for prompt in prompts if prompt is not None]
    templates = Templates.fit(asked)
    worded = sum(map(templates.keeps_a_word, asked)) / len(asked) if asked else 0.0
    members: dict[str, list[int]] = defaultdict(list)
    for row, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
        key = group if explicit else (templates.of(prompt) if prompt is not None else None)
        if key is not None:
            members[key].append(row)
    why_not = _why_not_grouped(members, rows, explicit, worded) if target else "nothing is held out"
    most = min(2 * target, math.floor(rows * MAX_GROUPS_SHARE))
    chosen = [] if why_not else _choose_groups(members, answers, target, most, seed)
    if not why_not and not chosen:
        why_not = "no mix of whole groups holds about the share to hold out"
    held_out = {row for key in chosen for row in members[key]}
    rest = [row for row in range(rows) if row not in held_out]
    random.Random(seed).shuffle(rest)
    in_distribution_rows = target if why_not else min(max(1, round(target / 2)), len(rest) - 1)
    kind = "groups named by the examples" if explicit else "prompt templates"
    return GroupedSplit(
        train=sorted(rest[in_distribution_rows:]),
        unseen_groups=sorted(held_out),
        in_distribution=sorted(rest[:in_distribution_rows]),
        grouping=why_not or f"{len(chosen)} of {len(members)} {kind}",
    )


def _trigrams(prompt: str) -> set[tuple[str, ...]]:
    words = [token.casefold() for token in _tokens(prompt) if token[0].isalnum()]
    return {tuple(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}


def near_copies(train_prompts: Sequence[str], held_out_prompts: Sequence[str]) -> int:
    """How many held-out prompts near-copy a training prompt: the same template (one that keeps a word),
    or at least NEAR_COPY_OVERLAP of their own word trigrams (those of fewer than COMMON_TRIGRAM of the
    training prompts: not a shared instruction or template) inside one training prompt."""
    templates = Templates.fit(train_prompts)
    trained_templates = {templates.of(prompt) for prompt in train_prompts if templates.keeps_a_word(prompt)}
    containing: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, prompt in enumerate(train_prompts):
        for trigram in _trigrams(prompt):
            containing[trigram].append(index)
    common = COMMON_TRIGRAM * len(train_prompts)
    copies = 0
    for prompt in held_out_prompts:
        if templates.of(prompt) in trained_templates:
            copies += 1
            continue
        own = [trigram for trigram in _trigrams(prompt) if len(containing.get(trigram, ())) <= common]
        shared = Counter(index for trigram in own for index in containing.get(trigram, ()))
        if len(own) >= MIN_OWN_TRIGRAMS and shared and max(shared.values()) >= NEAR_COPY_OVERLAP * len(own):
            copies += 1
    return copies
