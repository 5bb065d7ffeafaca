"""The committed generated code matches the protos, the protos lint clean, and messages round-trip."""

import shutil
import subprocess
import sys
from pathlib import Path

from loraplane.proto import common_pb2, serving_pb2, trainer_pb2

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


def test_job_event_round_trips() -> None:
    event = trainer_pb2.JobEvent(
        sequence=7,
        message="step 3/10",
        job=trainer_pb2.Job(
            id="job-1",
            state=trainer_pb2.JOB_STATE_RUNNING,
            progress=trainer_pb2.JobProgress(step=3, total_steps=10, loss=0.5),
        ),
    )
    assert trainer_pb2.JobEvent.FromString(event.SerializeToString()) == event
