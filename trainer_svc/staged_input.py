"""A worker's input handed over through the object store, for workers on other machines.

A worker the local executor starts reads its input from the trainer's job folder. A worker in a
Kubernetes pod cannot see that folder, so the trainer stages the input in the store, under
`jobs/{job_id}/`: the examples files, then `worker-input.json` (last: its presence means the rest
is there), with every path rewritten to where the pod keeps them. The pod's worker fetches it all
back (`python -m trainer_svc.worker --from-store STORE_URI JOB_ID`). The store is already the one
thing both sides share, and the examples can be tens of megabytes, past a ConfigMap's 1 MiB.
"""

from __future__ import annotations

from pathlib import Path

from loraplane.storage import ObjectStore
from trainer_svc.worker_input import WorkerInput

INPUT_FILE = "worker-input.json"


def staging_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def stage(store: ObjectStore, worker_input: WorkerInput, remote_work_dir: Path) -> None:
    """Upload `worker_input`'s examples and the input itself, its paths under `remote_work_dir`."""
    prefix = staging_prefix(worker_input.job_id)
    remote: dict[str, Path | None] = {}
    for field in ("train_file", "validation_file", "test_file"):
        local: Path | None = getattr(worker_input, field)
        remote[field] = None if local is None else remote_work_dir / local.name
        if local is not None:
            store.put_file(prefix + local.name, local)
    staged = worker_input.model_copy(update={**remote, "work_dir": remote_work_dir})
    store.put_bytes(prefix + INPUT_FILE, staged.model_dump_json().encode())


def fetch(store: ObjectStore, job_id: str) -> WorkerInput:
    """The staged input, its examples downloaded to the paths it names."""
    prefix = staging_prefix(job_id)
    worker_input = WorkerInput.model_validate_json(store.get_bytes(prefix + INPUT_FILE))
    worker_input.work_dir.mkdir(parents=True, exist_ok=True)
    for path in (worker_input.train_file, worker_input.validation_file, worker_input.test_file):
        if path is not None:
            store.download_file(prefix + path.name, path)
    return worker_input


def discard(store: ObjectStore, job_id: str) -> None:
    """Delete what `stage` uploaded, once the job has ended."""
    for key in list(store.list_keys(staging_prefix(job_id))):
        store.delete(key)
