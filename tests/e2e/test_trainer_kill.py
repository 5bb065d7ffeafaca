"""A real trainer-svc process stopped mid-job, by kill -9 or by SIGTERM: the restarted trainer runs the
job again, its worker resumes from a checkpoint rather than step 0 (the last periodic one after
kill -9, one saved at the moment of stopping after SIGTERM), and the job ends with one published
adapter."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loraplane.client import LoraplaneClient
from loraplane.training import JobState
from loraplane.types import JobEvent, TrainingParameters
from tests.support.service_process import free_port, service_process
from tests.support.stack import memorise_jsonl

EVAL_EVERY = 4


@contextmanager
def _trainer_process(data_dir: Path, base_model: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    settings = {
        "LORAPLANE_DATA_DIR": str(data_dir),
        "LORAPLANE_BASE_MODEL": str(base_model),
        "LORAPLANE_BASE_MODEL_NAME": "tiny",
        "LORAPLANE_TRAINER_ADDRESS": f"127.0.0.1:{port}",
        "LORAPLANE_TRAINER_METRICS_PORT": "0",
        "LORAPLANE_TRAINER_HTTP_PORT": "0",
        "LORAPLANE_AUTH": "off",
    }
    with service_process("trainer-svc", settings, data_dir / f"trainer-{port}.log") as process:
        yield process


def _interrupted_job(
    tiny_model_dir: Path, tmp_path: Path, *, eval_every: int, past_step: int, stop: signal.Signals
) -> list[JobEvent]:
    """A 40-step job whose trainer gets `stop` once past `past_step`; the job's whole history from the
    trainer started again on the same port and data, to its end."""
    data = tmp_path / "train.jsonl"
    data.write_text(memorise_jsonl())
    # Early stopping off: the run goes to its last step, whichever checkpoint is best.
    params = TrainingParameters(
        max_steps=40, batch_size=2, learning_rate=1e-2, eval_every_steps=eval_every, early_stopping_patience=0
    )
    port = free_port()
    address = f"127.0.0.1:{port}"
    with _trainer_process(tmp_path, tiny_model_dir, port) as first, LoraplaneClient(trainer=address) as client:
        assert client.wait_until_serving("trainer", 60)
        job = client.jobs.create(adapter_name="interrupted", training_file=data, training=params)
        for event in client.jobs.watch(job.id):
            if event.job.progress.step > past_step:
                break
        first.send_signal(stop)
        # SIGTERM: a clean exit within the trainer's grace period.
        assert first.wait(timeout=60) == (0 if stop == signal.SIGTERM else -stop)

    with _trainer_process(tmp_path, tiny_model_dir, port), LoraplaneClient(trainer=address) as client:
        assert client.wait_until_serving("trainer", 60)
        events = list(client.jobs.watch(job.id))
    final = events[-1].job
    assert final.state == JobState.SUCCEEDED, final.error
    assert final.adapter is not None and final.adapter.version == 1 and final.metrics.steps == 40
    return events


def test_a_job_survives_kill_9_of_the_trainer_and_resumes_from_its_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Past two evaluations: a checkpoint is saved.
    events = _interrupted_job(
        tiny_model_dir, tmp_path, eval_every=EVAL_EVERY, past_step=2 * EVAL_EVERY, stop=signal.SIGKILL
    )
    messages = [event.message for event in events]
    assert "trainer restarted; job queued again" in messages
    resumed = [message for message in messages if message.startswith("resuming from the checkpoint at step ")]
    assert resumed, messages
    resumed_at = int(resumed[-1].split("; ")[0].rsplit(" ", 1)[1])
    assert resumed_at >= 2 * EVAL_EVERY and resumed_at % EVAL_EVERY == 0
    after_resume = events[messages.index(resumed[-1]) :]
    steps_after = [event.job.progress.step for event in after_resume if event.job.progress.step]
    assert steps_after and min(steps_after) == resumed_at + 1, "training went on from the checkpoint, not from step 0"


def test_sigterm_checkpoints_the_running_job_at_its_step_and_the_restart_goes_on_from_there(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # No periodic checkpoint before the last step: the only one to resume from is the one the stop saves.
    events = _interrupted_job(tiny_model_dir, tmp_path, eval_every=40, past_step=2, stop=signal.SIGTERM)
    messages = [event.message for event in events]
    saved = [m for m in messages if m.startswith("checkpoint saved at step ")]
    assert saved, messages
    saved_at = int(saved[0].split()[4])
    assert 3 <= saved_at < 40
    requeued = messages.index("the trainer is stopping; the job is queued again and resumes from its checkpoint")
    assert events[requeued].job.state == JobState.QUEUED
    assert f"resuming from the checkpoint at step {saved_at}" in [m.split("; ")[0] for m in messages[requeued:]]
