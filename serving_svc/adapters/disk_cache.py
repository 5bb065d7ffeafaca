"""Verified copies of adapter versions on local disk, bounded in bytes, least recently used out first.

A copy is written whole or not at all: `ArtifactRepository.fetch` downloads into a temporary
folder beside it, checks every file against the manifest's sha256, and renames the folder into
place (manifest last), so a crash leaves no partial copy that later counts as cached. A copy
this process did not write (one left by an earlier run) is checked against the manifest again
before its first use, and fetched anew when a file differs. Verifying a copy also checks its
`adapter_config.json` (`check_adapter_config`) and parses its drift profile, once: whoever
uses the version gets the profile object, so nothing reads the cache folder later and trimming
needs to know only which copies are held.

Files are read and written on the caller's (worker) thread; a lock guards what threads share.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path

from loraplane.artifact import MANIFEST, PROFILE_FILE, ArtifactRepository, sha256_file
from loraplane.drift import Profile
from serving_svc.adapter_config import check_adapter_config
from serving_svc.adapters.resolver import ResolvedAdapter
from serving_svc.metrics import LoadSource, ServingMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifiedCopy:
    """One version's files on disk, checked against its manifest, with its drift reference parsed."""

    path: Path
    profile: Profile | None
    """The training profile drift compares live traffic with; None when it cannot be parsed (the
    version is served, its traffic not profiled)."""


def _copy_bytes(copy: Path) -> int:
    """Bytes of one version's verified copy (a flat folder of files)."""
    return sum(f.stat().st_size for f in copy.iterdir())


class DiskCache:
    def __init__(
        self, repository: ArtifactRepository, root: Path, *, max_bytes: int, max_rank: int, metrics: ServingMetrics
    ) -> None:
        """`max_bytes`: the bound on the copies' total size (0: none); `max_rank`: the highest LoRA rank
        an adapter's config may ask for."""
        self._repository = repository
        self._root = root
        self._max_bytes = max_bytes
        self._max_rank = max_rank
        self._metrics = metrics
        self._lock = threading.Lock()  # `_verified` and `_fetching`; held while trimming
        self._verified: dict[Path, VerifiedCopy] = {}  # copies checked by this process
        self._fetching: set[Path] = set()  # copies being fetched or checked: trimming leaves them

    def path_of(self, adapter: ResolvedAdapter) -> Path:
        """Where the copy of `adapter` lies, whether it is there or not."""
        # The digest in the folder name keeps a copy from an older store (same name@vN, other bytes) out.
        manifest = adapter.manifest
        return self._root / manifest.name / f"v{manifest.version}-{adapter.manifest_sha256[:16]}"

    def fetch(self, adapter: ResolvedAdapter, held: Set[Path]) -> tuple[VerifiedCopy, LoadSource]:
        """The verified copy of `adapter` and whether it was on disk or came from the store; FailedPrecondition
        when its files do not match its manifest or its config is refused.

        `held`: the copies in use (their versions in the engine or host memory), which trimming keeps.
        """
        destination = self.path_of(adapter)
        with self._lock:
            self._fetching.add(destination)
        try:
            copy, source = self._verified_copy(adapter, destination)
            os.utime(destination)  # the copy's last use, for the cache's LRU order (kept across restarts)
        finally:
            with self._lock:
                self._fetching.discard(destination)
        if source == "store":
            self.trim(held | {destination})
        return copy, source

    def _verified_copy(self, adapter: ResolvedAdapter, destination: Path) -> tuple[VerifiedCopy, LoadSource]:
        with self._lock:
            known = self._verified.get(destination)
        on_disk = (destination / MANIFEST).is_file()
        if known is not None and on_disk:
            self._metrics.cache_lookup("disk", hit=True)
            return known, "disk"
        cached = on_disk and self._whole_or_deleted(adapter, destination)
        self._metrics.cache_lookup("disk", hit=cached)
        path = self._repository.fetch(adapter.manifest, destination)  # reuses a copy that matched
        check_adapter_config(path / "adapter_config.json", adapter.key, self._max_rank)
        copy = VerifiedCopy(path, self._profile(adapter, path))
        with self._lock:
            self._verified[destination] = copy
        return copy, "disk" if cached else "store"

    @staticmethod
    def _whole_or_deleted(adapter: ResolvedAdapter, copy: Path) -> bool:
        """True when a copy this process did not write holds the manifest's files; otherwise the copy
        is deleted (False), so the store's is fetched in its place."""
        for name, expected in adapter.manifest.files.items():
            file = copy / name
            if not file.is_file() or sha256_file(file) != expected:
                log.warning("the cached copy of %s has a damaged %s: fetching it again", adapter.key, name)
                shutil.rmtree(copy, ignore_errors=True)
                return False
        return True

    @staticmethod
    def _profile(adapter: ResolvedAdapter, copy: Path) -> Profile | None:
        try:
            return Profile.load(copy / PROFILE_FILE)
        except (OSError, ValueError) as exc:
            log.warning(
                "%s has no usable drift reference (%s): its traffic is not profiled",
                adapter.key,
                str(exc).splitlines()[0],
            )
            return None

    def trim(self, keep: Set[Path]) -> None:
        """Delete the least recently used copies until the cache fits its bound; copies in `keep` or
        being fetched stay (a deleted copy is fetched from the store again when next needed)."""
        with self._lock:
            copies = sorted(
                (p for p in self._root.glob("*/v*") if (p / MANIFEST).is_file()), key=lambda p: p.stat().st_mtime
            )
            sizes = {copy: _copy_bytes(copy) for copy in copies}
            total = sum(sizes.values())
            for copy in copies:
                if not self._max_bytes or total <= self._max_bytes:
                    break
                if copy in keep or copy in self._fetching:
                    continue
                shutil.rmtree(copy, ignore_errors=True)
                self._verified.pop(copy, None)
                total -= sizes.pop(copy)
                self._metrics.evicted("disk")
            self._metrics.resident("disk", len(sizes))
            self._metrics.disk_cache_bytes(total)

    def size_of(self, adapter: ResolvedAdapter) -> int | None:
        """Bytes of the copy of `adapter`; None when there is none on disk."""
        copy = self.path_of(adapter)
        return _copy_bytes(copy) if (copy / MANIFEST).is_file() else None
