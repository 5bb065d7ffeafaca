"""DiskCache over the real file store: verified copies, their parsed profiles, a damaged copy fetched again,
and trimming by bytes that never deletes a held copy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from loraplane.artifact import ADAPTER_FILES, MANIFEST, PROFILE_FILE, ArtifactRepository, manifest_digest, sha256_file
from loraplane.errors import FailedPrecondition
from loraplane.storage import FileStore
from serving_svc.adapters.disk_cache import DiskCache
from serving_svc.adapters.resolver import ResolvedAdapter
from serving_svc.metrics import ServingMetrics
from tests.support.artifact_contract import make_draft
from tests.support.fake_engine import publish_fake_adapter, reference_profile, sample

LOOKUPS = "loraplane_serving_adapter_cache_lookups_total"
WEIGHTS = "adapter_model.safetensors"


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.repository = ArtifactRepository(FileStore(tmp_path / "store"))
        self.root = tmp_path / "cache"

    def publish(self, name: str, **kwargs: Any) -> ResolvedAdapter:
        manifest = publish_fake_adapter(self.repository, self.tmp_path / "sources", name, **kwargs)
        return self.resolved(manifest.name, manifest.version)

    def resolved(self, name: str, version: int) -> ResolvedAdapter:
        manifest, raw = self.repository.read_manifest(name, version)
        return ResolvedAdapter(manifest, manifest_digest(raw), self.repository.version_uri(name, version))

    def cache(self, max_bytes: int = 0) -> tuple[DiskCache, ServingMetrics]:
        """A disk cache over the same folder, as a fresh process would open it."""
        metrics = ServingMetrics(adapter_labels=8)
        return DiskCache(self.repository, self.root, max_bytes=max_bytes, max_rank=16, metrics=metrics), metrics

    def copies(self) -> set[str]:
        return {path.parent.name for path in self.root.glob("*/v*")}


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_fetched_copy_is_whole_verified_and_yields_its_parsed_profile(setup: Setup) -> None:
    profile = reference_profile(prompt_tokens=5, samples=7)
    alpha = setup.publish("alpha", profile=profile)
    cache, metrics = setup.cache()

    copy, source = cache.fetch(alpha, set())

    assert (copy.path, source) == (cache.path_of(alpha), "store")
    assert sorted(f.name for f in copy.path.iterdir()) == sorted([*ADAPTER_FILES, MANIFEST])
    assert all(sha256_file(copy.path / name) == digest for name, digest in alpha.manifest.files.items())
    assert copy.profile == profile
    assert list(setup.root.glob("*/.*")) == [], "no temporary folder is left beside the copy"
    again, source = cache.fetch(alpha, set())
    assert (again, source) == (copy, "disk")
    assert (
        sample(metrics, LOOKUPS, tier="disk", result="miss"),
        sample(metrics, LOOKUPS, tier="disk", result="hit"),
    ) == (
        1,
        1,
    )
    assert cache.size_of(alpha) == sum(f.stat().st_size for f in copy.path.iterdir())


@pytest.mark.parametrize(
    ("damage", "source"),
    [
        (None, "disk"),
        (lambda copy: (copy / WEIGHTS).write_bytes(b"flipped bits"), "store"),
        (lambda copy: (copy / "adapter_config.json").unlink(), "store"),
        (lambda copy: (copy / PROFILE_FILE).write_text("{}"), "store"),
    ],
    ids=["intact", "damaged-weights", "missing-config", "damaged-profile"],
)
def test_a_copy_left_by_an_earlier_process_is_checked_and_a_damaged_one_fetched_again(
    setup: Setup, damage: Any, source: str
) -> None:
    alpha = setup.publish("alpha")
    earlier, _ = setup.cache()
    path = earlier.fetch(alpha, set())[0].path
    if damage is not None:
        damage(path)

    cache, metrics = setup.cache()  # a new process over the same folder
    copy, fetched_from = cache.fetch(alpha, set())

    assert fetched_from == source
    assert all(sha256_file(copy.path / name) == digest for name, digest in alpha.manifest.files.items())
    assert copy.profile == reference_profile()
    assert sample(metrics, LOOKUPS, tier="disk", result="hit" if source == "disk" else "miss") == 1


def test_a_copy_whose_files_the_store_got_wrong_is_refused_and_leaves_nothing_on_disk(setup: Setup) -> None:
    alpha = setup.publish("alpha")
    (setup.tmp_path / "store/adapters/alpha/v1" / WEIGHTS).write_bytes(b"not the published weights")
    cache, _ = setup.cache()
    with pytest.raises(FailedPrecondition, match="sha256"):
        cache.fetch(alpha, set())
    assert list(setup.root.glob("*/*")) == []


def test_a_refused_config_is_refused_at_every_fetch(setup: Setup) -> None:
    bad = setup.publish("bad", config_rank=32)
    cache, metrics = setup.cache()
    for _ in range(2):
        with pytest.raises(FailedPrecondition, match="LoRA rank 32"):
            cache.fetch(bad, set())
    assert sample(metrics, LOOKUPS, tier="disk", result="miss") == 1
    assert sample(metrics, LOOKUPS, tier="disk", result="hit") == 1, "the files were whole; the config is not"


def test_a_version_whose_profile_cannot_be_parsed_is_served_without_one(setup: Setup) -> None:
    source = setup.tmp_path / "odd"
    source.mkdir()
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "target_modules": ["q_proj"]}
    (source / "adapter_config.json").write_text(json.dumps(config))
    (source / WEIGHTS).write_bytes(b"0" * 64)
    (source / PROFILE_FILE).write_text('{"prompt_length": [1, 2, 3]}')
    manifest, _ = setup.repository.publish(source, make_draft("odd"))
    cache, _ = setup.cache()
    copy, source_name = cache.fetch(setup.resolved("odd", manifest.version), set())
    assert (copy.profile, source_name) == (None, "store")


@pytest.mark.parametrize(
    ("held", "kept"),
    [
        ((), {"beta", "gamma"}),  # alpha, used longest ago, goes
        (("alpha",), {"alpha", "gamma"}),  # alpha is held: beta, the next oldest, goes
        (("alpha", "beta"), {"alpha", "beta"}),  # both held: gamma goes, though used last
        (("alpha", "beta", "gamma"), {"alpha", "beta", "gamma"}),  # all held: over the bound rather than delete one
    ],
)
def test_trimming_deletes_the_least_recently_used_copies_down_to_the_bound_and_never_a_held_one(
    setup: Setup, held: tuple[str, ...], kept: set[str]
) -> None:
    adapters = {name: setup.publish(name) for name in ("alpha", "beta", "gamma")}
    sizing, _ = setup.cache()
    sizes: dict[str, int] = {}
    for used_at, (name, adapter) in enumerate(adapters.items()):  # alpha used first, gamma last
        sizing.fetch(adapter, set())
        sizes[name] = sizing.size_of(adapter) or 0
        os.utime(sizing.path_of(adapter), (1000.0 + used_at, 1000.0 + used_at))
    bound = sizes["alpha"] + sizes["beta"] + sizes["gamma"] // 2  # room for two copies and a half
    cache, metrics = setup.cache(max_bytes=bound)

    cache.trim({cache.path_of(adapters[name]) for name in held})

    assert setup.copies() == kept
    assert (sample(metrics, "loraplane_serving_adapter_evictions_total", tier="disk") or 0) == 3 - len(kept)
    assert sample(metrics, "loraplane_serving_adapters_resident", tier="disk") == len(kept)
    assert sample(metrics, "loraplane_serving_adapter_cache_bytes") == sum(sizes[name] for name in kept)


def test_fetching_from_the_store_trims_and_keeps_the_copy_it_fetched(setup: Setup) -> None:
    adapters = {name: setup.publish(name) for name in ("alpha", "beta")}
    one_copy = setup.cache()[0]
    one_copy.fetch(adapters["alpha"], set())
    cache, metrics = setup.cache(max_bytes=1)  # too small for any copy

    copy, _ = cache.fetch(adapters["beta"], set())

    assert setup.copies() == {"beta"}, "alpha, not held, is deleted; beta was just fetched for a load"
    assert cache.size_of(adapters["alpha"]) is None
    assert copy.path.is_dir()
    assert cache.fetch(adapters["alpha"], {copy.path})[1] == "store", "fetched again once deleted"
    assert setup.copies() == {"alpha", "beta"}
    assert sample(metrics, "loraplane_serving_adapter_evictions_total", tier="disk") == 1


def test_the_folder_names_the_version_and_its_manifest(setup: Setup) -> None:
    """A store rebuilt with other bytes under the same name@vN gets a copy of its own."""
    alpha = setup.publish("alpha")
    cache, _ = setup.cache()
    assert cache.path_of(alpha) == setup.root / "alpha" / f"v1-{alpha.manifest_sha256[:16]}"
    assert cache.size_of(alpha) is None
