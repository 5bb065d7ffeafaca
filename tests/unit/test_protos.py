"""The committed generated code matches the protos, the protos lint clean, and messages survive the wire as
the services fill them."""

import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from loraplane.proto import common_pb2, serving_pb2, trainer_pb2
from loraplane.training import JobState
from trainer_svc.convert import event_to_proto, spec_from_proto
from trainer_svc.jobs import Job, JobEvent, JobProgress

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_buf_lint_passes() -> None:
    buf = shutil.which("buf") or str(ROOT / ".tools/node_modules/.bin/buf")
    assert Path(buf).exists(), "buf is missing: scripts/install.sh --test installs it"
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generate_request_round_trips_with_optional_sampling_fields() -> None:
    request = serving_pb2.GenerateRequest(
        adapter="acme@v2",
        messages=serving_pb2.ChatMessages(messages=[common_pb2.ChatMessage(role="user", content="hi")]),
        sampling=serving_pb2.SamplingParameters(temperature=0.0, max_tokens=16, stop=["\n"], logprobs=True),
    )
    parsed = serving_pb2.GenerateRequest.FromString(request.SerializeToString())
    assert parsed == request
    assert parsed.WhichOneof("input") == "messages"
    assert parsed.sampling.HasField("temperature") and not parsed.sampling.HasField("top_p")


def test_a_job_event_goes_on_the_wire_with_its_sequence_time_and_the_job_as_it_stood() -> None:
    """What WatchJob streams: the trainer's event, converted, then serialized and parsed as a client would."""
    spec = spec_from_proto(
        trainer_pb2.JobSpec(
            adapter_name="acme", training_data=trainer_pb2.Dataset(uri="file:///data/train.jsonl"), labels={"t": "1"}
        )
    )
    progress = JobProgress(step=3, total_steps=10, loss=0.5, eta_seconds=70.0)
    job = Job(id="job-1", spec=spec, state=JobState.RUNNING, progress=progress)
    at = datetime(2025, 3, 1, 12, 0, 5, 250_000, tzinfo=UTC)
    event = JobEvent(job_id=job.id, sequence=7, time=at, message="step 3/10", job=job)

    sent = trainer_pb2.JobEvent.FromString(event_to_proto(event).SerializeToString())

    assert (sent.sequence, sent.message) == (7, "step 3/10")
    assert sent.time.ToDatetime(tzinfo=UTC) == at
    assert (sent.job.id, sent.job.state) == ("job-1", trainer_pb2.JOB_STATE_RUNNING)
    assert (sent.job.progress.step, sent.job.progress.total_steps) == (3, 10)
    assert (sent.job.progress.loss, sent.job.progress.eta_seconds) == (0.5, 70.0)
    assert sent.job.spec.adapter_name == "acme" and dict(sent.job.spec.labels) == {"t": "1"}
    assert not sent.job.HasField("adapter") and not sent.job.HasField("error")
