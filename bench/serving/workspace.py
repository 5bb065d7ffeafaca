"""The benchmark's inputs on disk: base model, random LoRA adapters and the store serving reads.

Everything is cached in the work directory and built only when missing: the model once per
name, adapters once per model (a row with N adapters uses the first N, so the largest count
covers every row), and each adapter published once to a file store laid out as the trainer
publishes. Adapter folders are keyed by the model's fingerprint, so a changed model never meets
adapters made for another one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from bench.serving.traffic import adapter_names
from loraplane.artifact import ADAPTER_FILES, ArtifactRepository, BaseModelInfo, DatasetInfo, ManifestDraft
from loraplane.fingerprint import base_model_fingerprint
from loraplane.models import is_complete_model, prepare_smollm2
from loraplane.storage import FileStore

log = logging.getLogger("bench.serving")

ModelName = Literal["tiny", "smollm2"]
RANK: Final = 8
ALPHA = 16
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
COLD_TARGETS: Final = {"all-linear": TARGET_MODULES, "q,v": ["q_proj", "v_proj"]}
"""The cold-load adapters' shapes: the benchmark's own (9.8 MB on SmolLM2) and peft's default
targets for Llama models (1.8 MB on SmolLM2, the size of adapter the cold-load target names)."""
LORA_B_STD = 0.05
"""Scale of the random B matrices: enough to change greedy outputs, small enough to stay sane text."""
COLD_SEED_BASE = 10_000
"""Seeds of the cold-load adapters, far from the benchmark adapters' 0..N-1."""


@dataclass(frozen=True)
class Workspace:
    """The prepared inputs of one benchmark run."""

    model: ModelName
    model_dir: Path
    fingerprint: str
    store_root: Path
    adapter_dirs: dict[str, Path]
    cold_dirs: dict[str, list[Path]]
    """Unpublished adapters for the cold-load measurement, by target modules (`COLD_TARGETS`)."""

    @property
    def repository(self) -> ArtifactRepository:
        return ArtifactRepository(FileStore(self.store_root))

    @property
    def store_uri(self) -> str:
        return self.store_root.resolve().as_uri()

    def publish(self, source: Path, name: str) -> None:
        """Publish `source` as the next version of `name`, as the trainer would."""
        draft = ManifestDraft(
            name=name,
            base_model=BaseModelInfo(name=self.model, fingerprint=self.fingerprint),
            method="lora",
            hyperparameters={"rank": RANK, "alpha": ALPHA},
            metrics={"train_loss": 0.0},
            dataset=DatasetInfo(fingerprint="sha256:bench", train_examples=0, validation_examples=0),
            job_id=f"bench-{name}",
        )
        self.repository.publish(source, draft)

    def unpublish(self, name: str) -> None:
        """Remove every version of `name` from the store: cold-load adapters are single-use."""
        shutil.rmtree(self.store_root / "adapters" / name, ignore_errors=True)


@contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A scratch folder beside `dest` that becomes `dest` only if the block completes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield staging
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_model(model: ModelName, work_dir: Path) -> Path:
    """The base model folder, built on first use: the tiny random Llama or SmolLM2-135M-Instruct."""
    dest = work_dir / "models" / model
    if is_complete_model(dest):
        return dest
    log.info("preparing the %s base model in %s", model, dest)
    if model == "smollm2":
        return prepare_smollm2(dest)
    from tests.support.tiny_model import build_tiny_model

    shutil.rmtree(dest, ignore_errors=True)
    with _staging(dest) as staging:
        build_tiny_model(staging)
    return dest


def adapter_bytes(folder: Path) -> int:
    """The size of an adapter's weights file."""
    return (folder / "adapter_model.safetensors").stat().st_size


def _is_complete_adapter(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ADAPTER_FILES)


def make_adapters(model_dir: Path, targets: list[tuple[Path, int]], target_modules: list[str]) -> None:
    """Write a random LoRA adapter on `target_modules` for each (folder, seed), loading the base model once for all.

    lora_A is drawn like peft's own initialisation (Kaiming-uniform bound 1/sqrt(fan_in)) and
    lora_B is random instead of peft's zeros, so every adapter really changes the model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=target_modules)
    peft_model = get_peft_model(model, config)
    for dest, seed in targets:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_A" in name:
                    bound = 1.0 / parameter.shape[1] ** 0.5
                    parameter.copy_((torch.rand(parameter.shape, generator=generator) * 2 - 1) * bound)
                elif "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * LORA_B_STD)
        with _staging(dest) as staging:
            peft_model.save_pretrained(str(staging))
            (staging / "profile.json").write_text(json.dumps({"seed": seed}))


def _published_for(repository: ArtifactRepository, name: str, fingerprint: str) -> bool:
    versions = repository.versions(name)
    if not versions:
        return False
    manifest, _ = repository.read_manifest(name, versions[-1])
    return manifest.base_model.fingerprint == fingerprint


def prepare(model: ModelName, work_dir: Path, adapter_count: int, cold_count: int) -> Workspace:
    """Model, `adapter_count` published adapters and `cold_count` unpublished ones, cached."""
    work_dir = work_dir.expanduser().resolve()
    model_dir = prepare_model(model, work_dir)
    fingerprint = base_model_fingerprint(model_dir)
    key = f"{model}-{fingerprint.removeprefix('sha256:')[:12]}"
    adapters_root = work_dir / "adapters" / key
    adapter_dirs = {name: adapters_root / name for name in adapter_names(adapter_count)}
    cold_dirs = {
        shape: [adapters_root / f"cold-{shape.replace(',', '-')}-{index}" for index in range(cold_count)]
        for shape in COLD_TARGETS
    }
    made: list[tuple[list[str], list[tuple[Path, int]]]] = [
        (TARGET_MODULES, [(path, seed) for seed, path in enumerate(adapter_dirs.values())])
    ]
    made += [
        (COLD_TARGETS[shape], [(path, COLD_SEED_BASE + index) for index, path in enumerate(paths)])
        for shape, paths in cold_dirs.items()
    ]
    for target_modules, seeds in made:
        missing = [(path, seed) for path, seed in seeds if not _is_complete_adapter(path)]
        if missing:
            log.info("making %d random LoRA adapters on %s in %s", len(missing), target_modules, adapters_root)
            for path, _ in missing:
                shutil.rmtree(path, ignore_errors=True)
            make_adapters(model_dir, missing, target_modules)
    workspace = Workspace(model, model_dir, fingerprint, work_dir / "stores" / key, adapter_dirs, cold_dirs)
    repository = workspace.repository
    unpublished = [name for name in adapter_dirs if not _published_for(repository, name, fingerprint)]
    if unpublished:
        log.info("publishing %d adapters to %s", len(unpublished), workspace.store_root)
        for name in unpublished:
            workspace.publish(adapter_dirs[name], name)
    return workspace
