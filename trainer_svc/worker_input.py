"""What the trainer hands a worker: one JSON file, so local and Kubernetes runs see the same input."""

from __future__ import annotations

import signal
from pathlib import Path

from pydantic import BaseModel

from trainer_svc.spec import JobSpec

PARENT_PID_ENV = "LORAPLANE_WORKER_PARENT_PID"
PREEMPT_SIGNAL = signal.SIGUSR1
"""What a stopping trainer sends its workers: save a checkpoint now, then exit (SIGTERM cancels)."""
"""Set by the local executor to its own pid, so a worker can tell it was orphaned at birth."""


class WorkerInput(BaseModel):
    job_id: str
    spec: JobSpec
    base_model_path: Path
    # Training and validation examples, validated and normalised by the service (dataset.py),
    # one JSON object per line.
    train_file: Path
    validation_file: Path
    # Held-out examples the task metrics are computed on; None: the validation examples.
    test_file: Path | None = None
    store_uri: str
    s3_endpoint_url: str | None = None
    # Scratch space for checkpoints and the adapter before publishing.
    work_dir: Path
