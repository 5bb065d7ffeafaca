"""Where an interrupted run of a job goes on from: its newest complete checkpoint.

A trainer killed mid-job (kill -9, a lost node) queues the job again when it restarts, and the
job's scratch folder still holds the checkpoints the interrupted run saved. Handed one as
`resume_from_checkpoint`, the Trainer restores the adapter, the optimizer, the schedule, the RNG
states and the early-stopping state, and skips the batches already trained on, so the run ends
with the adapter it would have produced without the interruption.

The Trainer writes `trainer_state.json` last when it saves, so a checkpoint without it was cut
short and is passed over for the one before. A run cannot go on over another base model: the
folder records the fingerprint the run began on, and a changed one fails the job with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from loraplane.errors import FailedPrecondition

RUN_RECORD = "run.json"
"""What the run began on, written before its first step."""
_COMPLETE_MARK = "trainer_state.json"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def resume_point(output_dir: Path, base_model_fingerprint: str) -> Path | None:
    """The checkpoint to go on from, or None for a fresh start (recorded for a later resume).
    Checkpoints cut short, and on a fresh start every checkpoint, are deleted.

    Raises FailedPrecondition when checkpoints exist but were made on another base model.
    """
    checkpoints = complete_checkpoints(output_dir)
    for leftover in set(output_dir.glob("checkpoint-*")) - set(checkpoints):
        shutil.rmtree(leftover, ignore_errors=True)
    record = output_dir / RUN_RECORD
    began_on = _recorded_fingerprint(record)
    if not checkpoints or began_on is None:
        for checkpoint in checkpoints:
            shutil.rmtree(checkpoint, ignore_errors=True)
        _write_record(record, base_model_fingerprint)
        return None
    if began_on != base_model_fingerprint:
        step = checkpoint_step(checkpoints[-1])
        raise FailedPrecondition(
            f"cannot resume this job: its checkpoint at step {step} was trained on the base model with fingerprint "
            f"{began_on}, and the base model is now {base_model_fingerprint}; resubmit the job to train it anew"
        )
    return checkpoints[-1]


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """The run's checkpoints the Trainer finished saving, oldest first."""
    found = [path for path in output_dir.glob("checkpoint-*") if _CHECKPOINT.fullmatch(path.name)]
    return sorted((path for path in found if (path / _COMPLETE_MARK).is_file()), key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a checkpoint was saved at."""
    return int(checkpoint.name.removeprefix("checkpoint-"))


def _recorded_fingerprint(record: Path) -> str | None:
    try:
        value = json.loads(record.read_text()).get("base_model_fingerprint")
    except (OSError, ValueError, AttributeError):  # missing, or cut short before the rename below
        return None
    return value if isinstance(value, str) else None


def _write_record(record: Path, base_model_fingerprint: str) -> None:
    record.parent.mkdir(parents=True, exist_ok=True)
    partial = record.with_suffix(f".{os.getpid()}.partial")  # the ranks of a distributed run all write it
    partial.write_text(json.dumps({"base_model_fingerprint": base_model_fingerprint}))
    os.replace(partial, record)
