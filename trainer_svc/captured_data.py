"""A job's data made from an adapter's captured traffic (loraplane.captures), by fixed rules.

- a captured answer with a correction teaches the correction: a supervised example (prompt, correction),
  or for a DPO job a preference pair (chosen: the correction, rejected: the answer given);
- an answer without a correction, scored at or above `good_score`, teaches itself (supervised jobs only:
  a pair needs a worse answer);
- every other capture is left out: an answer scored under `good_score` without a correction (nothing
  says what was right), and an answer nobody scored.

A share of the corrected captures is held out (`held_out_share`, whole prompts, drawn with the job's
seed) as the job's test set: what the job's report, and the gate against the parent, score on the new
traffic. Where the job continues a version, `parent_data_share` of its training examples come from that
version's own training data, kept with it, so the old task is not forgotten (supervised jobs whose
parent learnt from supervised examples). The job's usual checks follow: duplicates, leakage, lengths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from loraplane.captures import Capture, CapturedTurn
from trainer_svc.dataset import ChatExample, ChatTurn, Example, PreferenceExample, PromptCompletion, SourcedExample
from trainer_svc.spec import CaptureSource

_ROLES = {"system", "user", "assistant"}


@dataclass
class CapturedExamples:
    """The examples made from captures, and how many captures each rule took or left."""

    train: list[SourcedExample] = field(default_factory=list)
    held_out: list[SourcedExample] = field(default_factory=list)
    corrected: int = 0
    rated_good: int = 0
    left_out: int = 0
    """Captures that teach nothing: scored low without a correction, not scored, or not expressible."""
    parent_examples: int = 0

    def metrics(self) -> dict[str, float]:
        return {
            "capture_corrected": float(self.corrected),
            "capture_rated_good": float(self.rated_good),
            "capture_left_out": float(self.left_out),
            "parent_examples": float(self.parent_examples),
        }

    def summary(self) -> str:
        return (
            f"from captures: {self.corrected} corrected, {self.rated_good} rated good, {self.left_out} left out "
            f"(scored low without a correction, or not scored); {len(self.held_out)} corrected held out as the "
            f"test set; {self.parent_examples} examples of the parent's data mixed in"
        )


def _turns(prompt: str | list[CapturedTurn]) -> list[ChatTurn] | None:
    """The captured conversation as training turns; None when it cannot be one (an unknown role)."""
    if isinstance(prompt, str):
        return [ChatTurn(role="user", content=prompt)]
    if not prompt or any(turn.role not in _ROLES for turn in prompt) or prompt[-1].role != "user":
        return None
    return [ChatTurn(role=turn.role, content=turn.content) for turn in prompt]  # type: ignore[arg-type]


def _example(capture: Capture, answer: str, rejected: str | None) -> Example | None:
    """The capture's prompt with `answer` (and `rejected`, for a pair); None when the prompt cannot be one."""
    prompt = capture.request.prompt
    turns = _turns(prompt)
    if turns is None or not answer.strip() or (rejected is not None and rejected.strip() == answer.strip()):
        return None
    if rejected is not None:
        return PreferenceExample(prompt=prompt if isinstance(prompt, str) else turns, chosen=answer, rejected=rejected)
    if isinstance(prompt, str):
        return PromptCompletion(prompt=prompt, completion=answer)
    return ChatExample(messages=[*turns, ChatTurn(role="assistant", content=answer)])


def captured_examples(
    captures: list[Capture], source: CaptureSource, *, preferences: bool, seed: int
) -> CapturedExamples:
    """The training and held-out examples `captures` make by the rules above (`preferences`: a DPO job)."""
    made = CapturedExamples()
    corrected: list[Example] = []
    good: list[Example] = []
    for capture in captures:
        feedback = capture.feedback
        example: Example | None = None
        if feedback is not None and feedback.correction is not None:
            example = _example(capture, feedback.correction, capture.request.answer if preferences else None)
            if example is not None:
                corrected.append(example)
        elif feedback is not None and feedback.score >= source.good_score and not preferences:
            example = _example(capture, capture.request.answer, None)
            if example is not None:
                good.append(example)
        made.left_out += example is None
    made.corrected, made.rated_good = len(corrected), len(good)
    held_out, trained = _hold_out(corrected, source.held_out_share, seed)
    made.train = [SourcedExample(line=n, example=e) for n, e in enumerate([*trained, *good], start=1)]
    made.held_out = [SourcedExample(line=n, example=e) for n, e in enumerate(held_out, start=1)]
    return made


def _hold_out(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """`share` of `examples` held out by whole prompts (a prompt asked twice is on one side only), drawn with
    `seed`, and the rest; at least one prompt stays on the training side."""
    by_prompt: dict[str, list[Example]] = {}
    for example in examples:
        by_prompt.setdefault(_prompt_key(example), []).append(example)
    prompts = list(by_prompt)
    random.Random(seed).shuffle(prompts)
    held: list[Example] = []
    for prompt in prompts[: max(len(prompts) - 1, 0)]:
        if len(held) >= round(len(examples) * share):
            break
        held += by_prompt[prompt]
    held_keys = {_prompt_key(example) for example in held}
    return held, [example for example in examples if _prompt_key(example) not in held_keys]


def _prompt_key(example: Example) -> str:
    """What the example asks, case and spacing aside."""
    if isinstance(example, ChatExample):
        asked = "\x1f".join(f"{turn.role}:{turn.content}" for turn in example.messages[:-1])
    elif isinstance(example, PreferenceExample):
        prompt = example.prompt
        asked = prompt if isinstance(prompt, str) else "\x1f".join(f"{t.role}:{t.content}" for t in prompt)
    else:
        asked = example.prompt if isinstance(example, PromptCompletion) else ""
    return " ".join(asked.casefold().split())


def mix_in_parent_data(
    made: CapturedExamples, parent_data: list[SourcedExample], share: float, seed: int
) -> CapturedExamples:
    """`made` with the parent's examples added, so they are `share` of the training examples (as many as the
    parent has, at most)."""
    if not parent_data or share <= 0 or not made.train:
        return made
    wanted = min(len(parent_data), round(len(made.train) * share / (1 - share)))
    drawn = random.Random(seed).sample(parent_data, wanted)
    start = len(made.train) + 1
    made.train += [SourcedExample(line=start + n, example=e.example) for n, e in enumerate(drawn)]
    made.parent_examples = wanted
    return made
