"""The version a continued job starts from: fetched from the store and verified, and its weights copied
into the job's adapter.

The trainer has checked that the parent fits the job (trainer_svc.parent): the same base model, and the
parent's LoRA shape is the job's, so the fresh adapter the job creates has exactly the parent's tensors
and the parent's values are copied into it before the first step. Any tensor missing or left over means
the shapes differ after all, and the job fails rather than train a half-initialised adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from loraplane.artifact import ADAPTER_WEIGHTS, ArtifactRepository, Manifest
from loraplane.errors import FailedPrecondition
from loraplane.names import parse_adapter_spec
from loraplane.storage import open_store
from trainer_svc.dataset import SourcedExample
from trainer_svc.intake import VALIDATION_DATA
from trainer_svc.worker_input import WorkerInput


@dataclass(frozen=True)
class Parent:
    """The version a job continues: its manifest, its verified copy on disk, its weights and held-out data."""

    manifest: Manifest
    folder: Path
    weights: dict[str, torch.Tensor]
    held_out: list[SourcedExample]
    """The validation examples its own job kept: the old task the new version must not fall behind on."""

    @property
    def name(self) -> str:
        return str(self.manifest.spec)


def fetch_parent(worker_input: WorkerInput) -> Parent | None:
    """The job's parent version, its files checked against its manifest; None without a parent."""
    parent = worker_input.spec.parent
    if parent is None:
        return None
    repository = ArtifactRepository(open_store(worker_input.store_uri, s3_endpoint_url=worker_input.s3_endpoint_url))
    manifest, _ = repository.resolve(parse_adapter_spec(parent, field="spec.parent"))
    folder = repository.fetch(manifest, worker_input.work_dir / "parent")
    held_out: list[SourcedExample] = []
    if VALIDATION_DATA in manifest.data_files:
        lines = repository.read_data(manifest, VALIDATION_DATA).decode().split("\n")
        held_out = [SourcedExample.model_validate_json(line) for line in lines if line]
    return Parent(manifest, folder, load_file(str(folder / ADAPTER_WEIGHTS)), held_out)


def start_from(model: PeftModel, parent: Parent) -> None:
    """Copy the parent's weights into `model`'s adapter; FailedPrecondition when a tensor of either has no
    match."""
    try:
        result: Any = set_peft_model_state_dict(model, parent.weights)  # torch's load result: missing, unexpected
    except RuntimeError as exc:  # a tensor of another shape
        message = f"the weights of {parent.name} do not fit the job's adapter: {exc}"
        raise FailedPrecondition(message, field="spec.parent") from None
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing or result.unexpected_keys:
        raise FailedPrecondition(
            f"the weights of {parent.name} do not fit the job's adapter ({len(missing)} tensors missing, "
            f"{len(result.unexpected_keys)} left over, such as {(missing or result.unexpected_keys)[0]})",
            field="spec.parent",
        )
