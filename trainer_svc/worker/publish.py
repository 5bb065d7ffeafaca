"""Save the trained adapter with its profile and publish it as the next version of its name."""

from __future__ import annotations

from peft import PeftModel

from loraplane.artifact import (
    PROFILE_FILE,
    ArtifactRepository,
    BaseModelInfo,
    DatasetInfo,
    GateVerdict,
    ManifestDraft,
    PromptFormat,
    manifest_digest,
)
from loraplane.drift import Profile
from loraplane.errors import LoraplaneError, Unavailable
from loraplane.fingerprint import base_model_fingerprint
from loraplane.releases import ReleaseLog, TrialPlan
from loraplane.storage import open_store
from trainer_svc.progress import PublishedAdapter
from trainer_svc.worker_input import WorkerInput


def _repository(worker_input: WorkerInput) -> ArtifactRepository:
    return ArtifactRepository(open_store(worker_input.store_uri, s3_endpoint_url=worker_input.s3_endpoint_url))


def publish(
    model: PeftModel,
    profile: Profile,
    metrics: dict[str, float],
    dataset: DatasetInfo,
    prompt_format: PromptFormat,
    worker_input: WorkerInput,
    gate: GateVerdict | None = None,
) -> PublishedAdapter:
    """Write adapter_config.json, adapter_model.safetensors and profile.json, then publish them with the job's
    training and validation examples."""
    spec = worker_input.spec
    adapter_dir = worker_input.work_dir / "adapter"
    # The adapter names its base by the job's model id, not by the worker's local folder.
    for config in model.peft_config.values():
        config.base_model_name_or_path = spec.base_model
    # The vocabulary is never resized, so the base model's embeddings never need saving (and
    # peft's "auto" would look the model id up on the Hugging Face Hub to decide).
    model.save_pretrained(str(adapter_dir), safe_serialization=True, save_embedding_layers=False)
    profile.save(adapter_dir / PROFILE_FILE)
    repository = _repository(worker_input)
    hyperparameters = {**spec.lora.model_dump(), **spec.training.model_dump()}
    if spec.method.learns_preferences:
        hyperparameters["dpo_beta"] = spec.dpo.beta
    draft = ManifestDraft(
        name=spec.adapter_name,
        base_model=BaseModelInfo(
            name=spec.base_model, fingerprint=base_model_fingerprint(worker_input.base_model_path)
        ),
        method=spec.method,
        hyperparameters=hyperparameters,
        metrics=metrics,
        dataset=dataset,
        job_id=worker_input.job_id,
        prompt_format=prompt_format,
        parent=spec.parent,
        gate=gate,
    )
    data_files = [worker_input.train_file, worker_input.validation_file]  # a later job may mix them back in
    try:
        manifest, manifest_bytes = repository.publish(adapter_dir, draft, data_files)
    except Unavailable as exc:  # the store's client has already retried with backoff
        raise Unavailable(
            f"could not publish {spec.adapter_name}: {exc.message}. No version was made visible (a manifest is "
            "written last); submit the job again once the store is reachable"
        ) from exc
    return PublishedAdapter(
        name=manifest.name,
        version=manifest.version,
        uri=repository.version_uri(manifest.name, manifest.version),
        manifest_sha256=manifest_digest(manifest_bytes),
    )


def start_trial(adapter: PublishedAdapter, plan: TrialPlan, worker_input: WorkerInput) -> str:
    """Start the published version as its adapter's release candidate, as the job asked; what happened, in
    a line for the job's events. The version stays published whatever happens here: a release that cannot
    take it (another candidate on trial, the store gone) is reported as a warning, not a failed job."""
    version = f"{adapter.name}@v{adapter.version}"
    try:
        record = ReleaseLog(_repository(worker_input)).change(
            adapter.name,
            plan.start(adapter.version),
            actor=f"job {worker_input.job_id}",
            reason=f"published by job {worker_input.job_id}",
        )
    except LoraplaneError as exc:  # whatever stops the release, the version is out: the job succeeded
        return f"warning: {version} is published but not on trial: {exc.message}"
    return f"release of {adapter.name}: {record.state.describe()}"
