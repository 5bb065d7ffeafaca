"""Which checkpoint an interrupted run goes on from, on folders laid out as the Trainer leaves them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraplane.errors import FailedPrecondition
from trainer_svc.worker.resume import RUN_RECORD, complete_checkpoints, resume_point

BASE = "sha256:" + "a" * 64
OTHER_BASE = "sha256:" + "b" * 64


def _checkpoint(output_dir: Path, step: int, *, complete: bool = True) -> Path:
    path = output_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "adapter_model.safetensors").write_bytes(b"weights")
    if complete:
        (path / "trainer_state.json").write_text("{}")
    return path


def test_a_fresh_run_records_its_base_model_and_starts_from_nothing(tmp_path: Path) -> None:
    assert resume_point(tmp_path / "checkpoints", BASE) is None
    assert json.loads((tmp_path / "checkpoints" / RUN_RECORD).read_text()) == {"base_model_fingerprint": BASE}


def test_the_newest_complete_checkpoint_is_resumed_and_one_cut_short_is_deleted(tmp_path: Path) -> None:
    resume_point(tmp_path, BASE)
    _checkpoint(tmp_path, 8)
    newest = _checkpoint(tmp_path, 12)
    cut_short = _checkpoint(tmp_path, 16, complete=False)
    _checkpoint(tmp_path, 100, complete=True).rename(tmp_path / "checkpoint-100-old")  # not the Trainer's name

    assert resume_point(tmp_path, BASE) == newest
    assert not cut_short.exists()
    assert [path.name for path in complete_checkpoints(tmp_path)] == ["checkpoint-8", "checkpoint-12"]


def test_checkpoints_without_a_readable_record_are_a_fresh_start(tmp_path: Path) -> None:
    old = _checkpoint(tmp_path, 4)
    (tmp_path / RUN_RECORD).write_text('{"base_model_fing')  # cut short

    assert resume_point(tmp_path, BASE) is None
    assert not old.exists(), "a fresh start must not mix with an earlier run's checkpoints"
    assert json.loads((tmp_path / RUN_RECORD).read_text())["base_model_fingerprint"] == BASE


def test_a_run_begun_on_another_base_model_cannot_resume(tmp_path: Path) -> None:
    resume_point(tmp_path, BASE)
    kept = _checkpoint(tmp_path, 8)

    with pytest.raises(FailedPrecondition, match=r"checkpoint at step 8 .* resubmit the job"):
        resume_point(tmp_path, OTHER_BASE)
    assert kept.exists()
