"""A training job's specification as a validated domain object, with every default filled in.

The servicer builds it from the protobuf JobSpec; the worker receives it as JSON. Defaults live
here once, so a proto field left at zero means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, model_validator

from loraplane.captures import in_utc
from loraplane.releases import TrialPlan
from loraplane.training import TASK_METRICS, Method, PromptFormatChoice, TaskMetric


class LoraParameters(BaseModel):
    rank: int = Field(16, ge=1, le=256)
    alpha: float = Field(0.0, ge=0, description="0 = 2 * rank")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])

    @model_validator(mode="after")
    def _default_alpha(self) -> LoraParameters:
        if self.alpha == 0:
            self.alpha = 2.0 * self.rank
        return self


class TrainingParameters(BaseModel):
    epochs: float = Field(3.0, gt=0, le=100)
    max_steps: int = Field(0, ge=0, le=100_000, description="0 = derived from epochs")
    batch_size: int = Field(8, ge=1, le=512)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    max_seq_length: int = Field(512, ge=8, le=32_768)
    eval_every_steps: int = Field(0, ge=0, description="0 = about ten evaluations over the run")
    early_stopping_patience: int = Field(
        3, ge=0, description="evaluations without improvement before stopping; 0 = never stop early"
    )
    early_stopping_min_delta: float = Field(
        0.0,
        ge=0,
        description="the least fall in validation loss (nats per token) that counts as an improvement; 0 = any fall",
    )
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    replay_fraction: float = Field(
        0.1,
        ge=0,
        le=0.5,
        description="share of the training set added as the base model's own answers to general questions "
        "(supervised jobs; trainer_svc/worker/replay.py); 0 = none",
    )


CPU_QUANTITY = r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$"
MEMORY_QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$"


class WorkerResources(BaseModel):
    """What the job's worker asks the cluster for (the kubernetes executor); None = the trainer's default."""

    cpu: str | None = Field(None, pattern=CPU_QUANTITY, description='CPU cores as Kubernetes writes them: "2", "500m"')
    memory: str | None = Field(None, pattern=MEMORY_QUANTITY, description='memory: "8Gi", "16G"')
    gpus: int | None = Field(None, ge=0, le=16)
    nodes: int | None = Field(None, ge=1, le=64, description="pods to train on; more than 1 = a Kubeflow TrainJob")

    @property
    def requested(self) -> bool:
        return any(value is not None for value in (self.cpu, self.memory, self.gpus, self.nodes))

    @property
    def multi_node(self) -> bool:
        return (self.nodes or 1) > 1


class DpoParameters(BaseModel):
    """Preference tuning's own setting (the rest are the training parameters)."""

    beta: float = Field(
        0.1, gt=0, le=10, description="strength of DPO's implicit KL penalty towards the base model; 0 = default"
    )


class CaptureSource(BaseModel):
    """An adapter's captured requests as a job's training data (trainer_svc.captured_data says how)."""

    adapter: str
    since: Annotated[datetime | None, AfterValidator(in_utc)] = None
    """Only requests answered at or after this time (UTC unless it says otherwise); None: every capture kept."""
    good_score: float = Field(0.75, ge=0, le=1, description="the score from which an uncorrected answer is kept")
    held_out_share: float = Field(0.2, ge=0, lt=1, description="corrected captures held out as the test set")
    parent_data_share: float = Field(
        0.3, ge=0, lt=1, description="share of the training examples drawn from the parent version's own data"
    )


class DatasetSource(BaseModel):
    """Exactly one of inline JSONL text, a URI in the trainer's store, or an adapter's captures.

    Once a job is accepted its inline text is replaced by `inline_sha256`: the examples live in
    the job's folder, and every stored event carries the spec, which must stay small.
    """

    inline_jsonl: str | None = None
    uri: str | None = None
    inline_sha256: str | None = None
    captures: CaptureSource | None = None

    def without_inline_text(self) -> DatasetSource:
        if self.inline_jsonl is None:
            return self
        return DatasetSource(inline_sha256=f"sha256:{hashlib.sha256(self.inline_jsonl.encode()).hexdigest()}")


DPO_LEARNING_RATE = 5e-5
"""A DPO job's learning rate unless it sets one. Preference tuning moves a model with far smaller steps
than supervised tuning (TRL's LoRA recipe: 5e-6 over tens of thousands of pairs); a job of a few hundred
pairs takes a few dozen steps, and 5e-5 moves a LoRA adapter measurably within them."""


class JobSpec(BaseModel):
    base_model: str
    adapter_name: str
    training_data: DatasetSource
    validation_data: DatasetSource | None = None
    method: Method = Method.LORA
    prompt_format: PromptFormatChoice = "auto"
    test_data: DatasetSource | None = None
    task_metrics: list[TaskMetric] = Field(default_factory=lambda: list(TASK_METRICS), min_length=1)
    refuse_leakage: bool = False
    lora: LoraParameters = Field(default_factory=LoraParameters)
    training: TrainingParameters = Field(default_factory=TrainingParameters)
    dpo: DpoParameters = Field(default_factory=DpoParameters)
    resources: WorkerResources = Field(default_factory=WorkerResources)
    labels: dict[str, str] = Field(default_factory=dict)
    release: TrialPlan | None = None
    """Start the published version as its adapter's release candidate; None: publish only."""
    parent: str | None = None
    """`name@vN` (or `name`, its newest version) to continue training from: the job starts from that version's
    weights, with its LoRA shape and prompt format (trainer_svc.parent); None: a fresh adapter."""

    @model_validator(mode="after")
    def _method_defaults(self) -> JobSpec:
        if self.method.learns_preferences and "learning_rate" not in self.training.model_fields_set:
            self.training.learning_rate = DPO_LEARNING_RATE
        return self

    def without_inline_text(self) -> JobSpec:
        """The spec as stored once its examples are in the job's folder."""
        validation = self.validation_data.without_inline_text() if self.validation_data else None
        test = self.test_data.without_inline_text() if self.test_data else None
        return self.model_copy(
            update={
                "training_data": self.training_data.without_inline_text(),
                "validation_data": validation,
                "test_data": test,
            }
        )
