"""kill -9 of a real trainer-svc process mid-job: the restarted trainer queues the job again, its
worker resumes from the interrupted run's last checkpoint rather than step 0, and the job ends
with one published adapter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loraplane.client import LoraplaneClient
from loraplane.proto import trainer_pb2
from tests.support.stack import memorise_jsonl

pytestmark = pytest.mark.integration

EVAL_EVERY = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _trainer_process(data_dir: Path, base_model: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """trainer-svc as deployed: its console script, settings from the environment; killed at the end if still up."""
    env = {
        **os.environ,
        "LORAPLANE_DATA_DIR": str(data_dir),
        "LORAPLANE_BASE_MODEL": str(base_model),
        "LORAPLANE_BASE_MODEL_NAME": "tiny",
        "LORAPLANE_TRAINER_ADDRESS": f"127.0.0.1:{port}",
        "LORAPLANE_TRAINER_METRICS_PORT": "0",
        "LORAPLANE_AUTH": "off",
        "HF_HUB_OFFLINE": "1",
    }
    command = [str(Path(sys.executable).with_name("trainer-svc"))]
    with open(data_dir / f"trainer-{port}.log", "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_job_survives_kill_9_of_the_trainer_and_resumes_from_its_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text(memorise_jsonl())
    # Early stopping off: the run goes to its last step, whichever checkpoint is best.
    params = trainer_pb2.TrainingParameters(
        max_steps=40, batch_size=2, learning_rate=1e-2, eval_every_steps=EVAL_EVERY, early_stopping_patience=0
    )
    port = _free_port()
    address = f"127.0.0.1:{port}"
    with _trainer_process(tmp_path, tiny_model_dir, port) as first, LoraplaneClient(trainer=address) as client:
        assert client.wait_until_serving("trainer", 60)
        job = client.jobs.create(adapter_name="survivor", training_file=data, training=params)
        for event in client.jobs.watch(job.id):
            if event.job.progress.step > 2 * EVAL_EVERY:  # a checkpoint is saved
                break
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL

    with _trainer_process(tmp_path, tiny_model_dir, port), LoraplaneClient(trainer=address) as client:
        assert client.wait_until_serving("trainer", 60)
        events = list(client.jobs.watch(job.id))
    messages = [event.message for event in events]
    assert "trainer restarted; job queued again" in messages
    resumed = [message for message in messages if message.startswith("resuming from the checkpoint at step ")]
    assert resumed, messages
    resumed_at = int(resumed[-1].rsplit(" ", 1)[1])
    assert resumed_at >= 2 * EVAL_EVERY and resumed_at % EVAL_EVERY == 0
    after_resume = events[messages.index(resumed[-1]) :]
    steps_after = [event.job.progress.step for event in after_resume if event.job.progress.step]
    assert steps_after and min(steps_after) == resumed_at + 1, "training went on from the checkpoint, not from step 0"
    final = events[-1].job
    assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.adapter.version == 1 and final.metrics.steps == 40
