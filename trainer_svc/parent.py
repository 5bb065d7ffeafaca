"""A job that continues from a published version: which version, checked before the job is accepted.

The job keeps what the version was: the same base model (by fingerprint), the same LoRA shape (rank,
alpha, dropout, target modules, DoRA or not) and the same prompt format; its worker starts from the
version's weights instead of a fresh adapter. `spec.parent` may name `name` (its newest version) or
`name@vN`; the accepted job pins the version, so a resumed run starts from the same one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from loraplane.artifact import ArtifactRepository, Manifest
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound
from loraplane.fingerprint import base_model_fingerprint
from loraplane.names import parse_adapter_spec
from loraplane.training import Method
from trainer_svc.spec import JobSpec, LoraParameters

FIELD = "spec.parent"


def lora_shape(manifest: Manifest) -> LoraParameters:
    """The LoRA shape a version was trained with, from its manifest's hyperparameters."""
    fields = LoraParameters.model_fields
    return LoraParameters(
        **{name: manifest.hyperparameters[name] for name in fields if name in manifest.hyperparameters}
    )


def _same_kind(parent: Method, method: Method) -> bool:
    """Whether an adapter trained by `parent` can go on training by `method`: DoRA's magnitude vectors make
    it a shape of its own; LoRA, QLoRA and DPO all train plain LoRA weights."""
    return (parent is Method.DORA) == (method is Method.DORA)


class ParentVersions:
    """Resolves and checks the version a job continues from."""

    def __init__(
        self, open_repository: Callable[[], ArtifactRepository], base_model_path: Callable[[str], Path]
    ) -> None:
        self._open_repository = open_repository
        self._base_model_path = base_model_path

    def pin(self, spec: JobSpec) -> JobSpec:
        """`spec` with its parent pinned to a version and the parent's LoRA shape and prompt format; unchanged
        without a parent. NotFound for a version that does not exist; InvalidArgument or FailedPrecondition
        naming the field that does not fit the parent."""
        if spec.parent is None:
            return spec
        wanted = parse_adapter_spec(spec.parent, field=FIELD)
        try:
            manifest, _ = self._open_repository().resolve(wanted)
        except NotFound as exc:
            raise NotFound(f"{exc.message}; spec.parent names the version to continue from", field=FIELD) from None
        fingerprint = base_model_fingerprint(self._base_model_path(spec.base_model))
        if manifest.base_model.fingerprint != fingerprint:
            raise FailedPrecondition(
                f"{manifest.spec} was trained on base model {manifest.base_model.name!r}, not on this job's "
                f"{spec.base_model!r} (fingerprints differ); continue on the base it was trained on",
                field=FIELD,
            )
        if not _same_kind(manifest.method, spec.method):
            raise InvalidArgument(
                f"{manifest.spec} is a {manifest.method} adapter, which a {spec.method} job cannot go on training; "
                f"use method {'dora' if manifest.method is Method.DORA else 'lora, qlora or dpo'}",
                field="spec.method",
            )
        if spec.lora != LoraParameters():
            raise InvalidArgument(
                f"a job that continues from {manifest.spec} keeps its LoRA shape; leave spec.lora unset",
                field="spec.lora",
            )
        if spec.prompt_format not in ("auto", manifest.prompt_format):
            raise InvalidArgument(
                f"{manifest.spec} was trained in {manifest.prompt_format} format; leave spec.prompt_format auto "
                f"or set it to {manifest.prompt_format}",
                field="spec.prompt_format",
            )
        return spec.model_copy(
            update={
                "parent": str(manifest.spec),
                "lora": lora_shape(manifest),
                "prompt_format": manifest.prompt_format,
            }
        )
