"""The vocabulary of training jobs, shared by the trainer, the published manifests, the client and
the CLI: each defined here once (the proto enums are their wire form, mapped in `loraplane.wire`)."""

from __future__ import annotations

import enum
from typing import Literal, get_args

from loraplane.answers import AnswerMetric


class Method(enum.StrEnum):
    """How an adapter is trained: supervised LoRA, LoRA on a 4-bit quantized base (QLoRA) or DoRA, or
    preference tuning (DPO) of a LoRA adapter on pairs of a better and a worse answer."""

    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    DPO = "dpo"

    @property
    def learns_preferences(self) -> bool:
        """Whether the method trains on preference pairs rather than on examples of the answer."""
        return self is Method.DPO


class RetrainTrigger(enum.StrEnum):
    """What started a retrain job (trainer_svc.retrain)."""

    MANUAL = "manual"
    ALERT = "alert"


class RetrainOutcome(enum.StrEnum):
    """What a request to retrain an adapter did."""

    STARTED = "started"
    IN_FLIGHT = "in_flight"
    """A retrain job of the adapter is unfinished: nothing new started."""
    COOLING_DOWN = "cooling_down"
    """An alert came within the policy's cooldown after the last retrain job."""
    POLICY_OFF = "policy_off"
    """An alert for an adapter whose retraining policy is off."""
    REFUSED = "refused"
    """The job could not be made (no published version, captures that make no example, a limit reached): the
    message says why."""


class JobState(enum.StrEnum):
    VALIDATING = "VALIDATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class HeldOutSet(enum.StrEnum):
    """Which held-out prompts a job's task scores were measured on, and so what they can say."""

    TEST = "test"
    """The caller's test data."""
    VALIDATION = "validation"
    """The caller's validation data."""
    UNSEEN_GROUPS = "unseen_groups"
    """Whole groups (prompt templates, or the groups the examples name) the trainer held out of training:
    what prompts phrased in a new way get."""
    IN_DISTRIBUTION = "in_distribution"
    """Rows the trainer held out at random: their phrasings were trained on, so they say little about new ones."""

    @property
    def described(self) -> str:
        """What the prompts are, for a report a person reads."""
        return {
            HeldOutSet.TEST: "the test data",
            HeldOutSet.VALIDATION: "the validation data",
            HeldOutSet.UNSEEN_GROUPS: "phrasings held out of training",
            HeldOutSet.IN_DISTRIBUTION: "rows like the training data (in-distribution)",
        }[self]


NEAR_COPY_WARNING = 0.5
"""Share of the caller's scored held-out prompts that near-copy training prompts from which a job warns
that their scores say little about new phrasings (`held_out_near_copy_share`)."""


PromptFormat = Literal["chat", "raw"]
"""How an adapter was trained on prompt/completion examples, and so how serving sends it a plain
prompt: as the user turn of the base model's chat template, or as it is."""

PromptFormatChoice = Literal["auto"] | PromptFormat
"""What a job asks for; auto: chat when the base model has a chat template, else raw."""

TaskMetric = Literal[AnswerMetric, "rouge_l", "bleu", "chrf"]
"""A score of generated answers against the dataset's answers: the comparisons of `loraplane.answers`
(exact, normalised, as JSON, per JSON field) and the similarity scores ROUGE-L, BLEU and chrF."""
TASK_METRICS: tuple[TaskMetric, ...] = get_args(TaskMetric)
