"""The trainer over real gRPC on loopback: bad input gets the right status and nothing is lost.

Jobs that train end to end are in test_e2e.py; these need only the tiny base model's files.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.request import urlopen

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from loraplane.artifact import ArtifactRepository
from loraplane.client import LoraplaneClient
from loraplane.errors import FailedPrecondition, InvalidArgument, NotFound
from loraplane.fingerprint import base_model_fingerprint
from loraplane.storage import open_store
from loraplane.training import JobState, Method
from loraplane.types import Job, LoraParameters, TrainingParameters, WorkerResources
from tests.support.adapters import RANK, make_adapter, publish_adapter
from tests.support.servers import running
from tests.support.trainer_settings import tiny_trainer_settings
from trainer_svc.server import TrainerServer, create_server

GOOD_LINE = '{"prompt": "ping", "completion": "pong"}\n'


@pytest.fixture(scope="module")
def trainer(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerServer]:
    settings = tiny_trainer_settings(tiny_model_dir, tmp_path_factory.mktemp("trainer"))
    with running(lambda: create_server(settings)) as server:
        yield server


@pytest.fixture
def client(trainer: TrainerServer) -> Iterator[LoraplaneClient]:
    with LoraplaneClient(trainer=f"127.0.0.1:{trainer.port}") as client:
        assert client.wait_until_serving("trainer", 10)
        yield client


def _create(client: LoraplaneClient, tmp_path: Path, text: str, **kwargs: object) -> Job:
    data = tmp_path / "train.jsonl"
    data.write_text(text)
    return client.jobs.create(training_file=data, **{"adapter_name": "acme", **kwargs})  # type: ignore[arg-type]


PAIR_LINE = '{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n'


@pytest.mark.parametrize(
    ("text", "method", "message"),
    [
        ("", Method.LORA, "no examples"),
        (GOOD_LINE + GOOD_LINE + '{"prompt": "x"\n', Method.LORA, "line 3 is not valid JSON"),
        (GOOD_LINE + '{"prompt": "x"}\n', Method.LORA, "line 2: completion"),
        (GOOD_LINE + PAIR_LINE, Method.LORA, 'line 2: this line is a preference example.*method "dpo"'),
        (PAIR_LINE + GOOD_LINE, Method.DPO, "line 2: this line is a prompt/completion example.*preference pair"),
        (PAIR_LINE + '{"prompt": "x", "chosen": "y"}\n', Method.DPO, "line 2: rejected: Field required"),
    ],
)
def test_bad_dataset_is_invalid_argument_naming_the_line(
    client: LoraplaneClient, tmp_path: Path, text: str, method: Method, message: str
) -> None:
    before = len(list(client.jobs.list()))
    with pytest.raises(InvalidArgument, match=message) as info:
        _create(client, tmp_path, text, method=method)
    assert info.value.field == "spec.training_data"
    assert len(list(client.jobs.list())) == before, "a rejected job must not be stored"
    assert client.wait_until_serving("trainer", 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"adapter_name": "../x"}, InvalidArgument, "spec.adapter_name"),
        ({"adapter_name": ""}, InvalidArgument, "spec.adapter_name"),
        ({"base_model": "gpt-9"}, InvalidArgument, "spec.base_model"),
        ({"lora": LoraParameters(rank=4096)}, InvalidArgument, "spec.lora.rank"),
        (
            {"training": TrainingParameters(learning_rate=5.0)},
            InvalidArgument,
            "spec.training.learning_rate",
        ),
        ({"training_uri": "file:///etc/passwd", "training_file": None}, InvalidArgument, "spec.training_data"),
        ({"training_uri": "{store}/adapters/a/v1/manifest.json"}, InvalidArgument, "spec.training_data"),
        ({"resources": WorkerResources(gpus=1)}, InvalidArgument, "spec.resources"),
        ({"parent": "nobody@v1"}, NotFound, "spec.parent"),
    ],
)
def test_bad_spec_is_invalid_argument_naming_the_field(
    client: LoraplaneClient,
    trainer: TrainerServer,
    tmp_path: Path,
    kwargs: dict[str, object],
    error: type[Exception],
    field: str,
) -> None:
    with pytest.raises(error) as info:
        if "training_uri" in kwargs:
            uri = str(kwargs["training_uri"]).format(store=trainer.settings.store_uri)
            client.jobs.create(adapter_name="acme", training_uri=uri)
        else:
            _create(client, tmp_path, GOOD_LINE, **kwargs)
    assert info.value.field == field  # type: ignore[attr-defined]


def test_a_continued_job_names_the_version_it_continues_with_its_shape(
    client: LoraplaneClient, trainer: TrainerServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    repository = ArtifactRepository(open_store(trainer.settings.store_uri))
    fingerprint = base_model_fingerprint(tiny_model_dir)
    publish_adapter(repository, make_adapter(tiny_model_dir, tmp_path / "blue", 1), "blue", fingerprint, "lora", "chat")
    job = _create(client, tmp_path, GOOD_LINE, parent="blue")
    client.jobs.cancel(job.id)
    assert job.spec.parent == "blue@v1", "the newest version, pinned so a resumed run starts from it too"
    assert (job.spec.lora.rank, job.spec.prompt_format) == (RANK, "chat")


def test_repeats_are_removed_and_leaks_counted_or_refused(client: LoraplaneClient, tmp_path: Path) -> None:
    train = GOOD_LINE + GOOD_LINE.replace("ping", "PING ") + '{"prompt": "a", "completion": "b"}\n'
    validation = tmp_path / "validation.jsonl"
    validation.write_text('{"prompt": "c", "completion": "d"}\n{"prompt": "a", "completion": "b"}\n')
    before = len(list(client.jobs.list()))
    with pytest.raises(InvalidArgument, match=r"1 examples also appear in the training data \(lines 2\)") as info:
        _create(client, tmp_path, train, validation_file=validation, refuse_leakage=True)
    assert info.value.field == "spec.validation_data"
    assert len(list(client.jobs.list())) == before, "a refused job must not be stored"

    job = _create(client, tmp_path, train, validation_file=validation)
    assert (job.metrics.duplicates_removed, job.metrics.leaked_examples) == (1, 1)
    accepted = next(event.message for event in client.jobs.watch(job.id) if event.message.startswith("dataset valid"))
    assert "2 training, 2 validation examples; 1 duplicates removed, 1 held-out examples also in training" in accepted
    with contextlib.suppress(FailedPrecondition):  # it may have ended already
        client.jobs.cancel(job.id)


def test_missing_dataset_uri_in_the_store_is_not_found(client: LoraplaneClient, trainer: TrainerServer) -> None:
    with pytest.raises(NotFound) as info:
        client.jobs.create(adapter_name="acme", training_uri=f"{trainer.settings.store_uri}/datasets/none.jsonl")
    assert info.value.field == "spec.training_data"


def test_unknown_job_is_not_found_everywhere(client: LoraplaneClient) -> None:
    for call in (client.jobs.retrieve, client.jobs.cancel, lambda j: list(client.jobs.watch(j))):
        with pytest.raises(NotFound, match="job-none"):
            call("job-none")


def test_request_id_makes_create_idempotent(client: LoraplaneClient, tmp_path: Path) -> None:
    first = _create(client, tmp_path, GOOD_LINE * 4, request_id="req-1", adapter_name="idem")
    again = _create(client, tmp_path, GOOD_LINE * 4, request_id="req-1", adapter_name="idem")
    assert again.id == first.id
    stored = client.jobs.retrieve(first.id).spec.training_data.inline_jsonl
    assert stored is not None and stored.startswith("<inline JSONL, sha256:"), (
        "accepted jobs keep a digest, not the dataset"
    )
    assert len(list(client.jobs.list(adapter_name="idem"))) == 1
    with pytest.raises(InvalidArgument):
        _create(client, tmp_path, GOOD_LINE * 5, request_id="req-1", adapter_name="idem")
    client.jobs.cancel(first.id)


def test_cancel_queued_or_running_then_cancel_again_is_failed_precondition(
    client: LoraplaneClient, tmp_path: Path
) -> None:
    job = _create(
        client,
        tmp_path,
        GOOD_LINE * 8,
        adapter_name="to-cancel",
        training=TrainingParameters(max_steps=10_000),
    )
    cancelled = client.jobs.cancel(job.id)
    assert cancelled.state == JobState.CANCELLED
    with pytest.raises(FailedPrecondition, match="already ended"):
        client.jobs.cancel(job.id)
    events = list(client.jobs.watch(job.id))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].job.state == JobState.CANCELLED
    replay = list(client.jobs.watch(job.id, after_sequence=events[-2].sequence))
    assert [e.sequence for e in replay] == [events[-1].sequence]


def test_list_filters_by_state_and_pages(client: LoraplaneClient, tmp_path: Path) -> None:
    ids = [_create(client, tmp_path, GOOD_LINE * 2, adapter_name="paged").id for _ in range(3)]
    for job_id in ids:
        client.jobs.cancel(job_id)
    listed = [j.id for j in client.jobs.list(adapter_name="paged", page_size=2)]
    assert listed == ids[::-1]
    cancelled = {j.id for j in client.jobs.list(state=JobState.CANCELLED)}
    assert set(ids) <= cancelled


def test_metrics_count_jobs_by_state(client: LoraplaneClient, trainer: TrainerServer, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        _create(client, tmp_path, "not json\n", adapter_name="metered")
    job = _create(client, tmp_path, GOOD_LINE * 2, adapter_name="metered")
    client.jobs.cancel(job.id)
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline and 'loraplane_trainer_jobs{state="cancelled"}' not in text:
        text = urlopen(f"http://127.0.0.1:{trainer.metrics_port}/metrics").read().decode()
    assert 'loraplane_trainer_jobs{state="cancelled"}' in text
    assert 'loraplane_trainer_job_transitions_total{state="queued"}' in text
    assert 'loraplane_trainer_rejected_jobs_total{code="INVALID_ARGUMENT"}' in text


def test_a_job_running_when_the_trainer_stops_runs_again_after_restart(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_trainer_settings(tiny_model_dir, tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text(GOOD_LINE * 8)
    params = TrainingParameters(max_steps=3, batch_size=4, learning_rate=1e-2)
    with (
        running(lambda: create_server(settings)) as first,
        LoraplaneClient(trainer=f"127.0.0.1:{first.port}") as client,
    ):
        job = client.jobs.create(adapter_name="survivor", training_file=data, training=params)
        for event in client.jobs.watch(job.id):
            if event.job.state == JobState.RUNNING:
                break
    with (
        running(lambda: create_server(settings)) as second,
        LoraplaneClient(trainer=f"127.0.0.1:{second.port}") as client,
    ):
        events = list(client.jobs.watch(job.id))
    messages = [e.message for e in events]
    requeued = {  # its worker preempted as the trainer stopped, or (still starting) requeued at the restart
        "the trainer is stopping; the job is queued again and resumes from its checkpoint",
        "trainer restarted; job queued again",
    }
    assert requeued & set(messages), messages
    assert events[-1].job.state == JobState.SUCCEEDED, events[-1].job.error
    adapter = events[-1].job.adapter
    assert adapter is not None and adapter.version == 1, "the interrupted run must not have published"


def test_reflection_lists_the_services(trainer: TrainerServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {"loraplane.v1.Trainer", "grpc.health.v1.Health"} <= set(services)


def test_a_dataset_uri_over_the_size_limit_is_refused_before_it_is_read(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = tiny_trainer_settings(tiny_model_dir, tmp_path, trainer_max_dataset_bytes=1024)
    store = open_store(settings.store_uri)
    store.put_bytes("datasets/big.jsonl", GOOD_LINE.encode() * 100)
    with (
        running(lambda: create_server(settings)) as server,
        LoraplaneClient(trainer=f"127.0.0.1:{server.port}") as client,
        pytest.raises(InvalidArgument, match="limit is 1024") as info,
    ):
        client.jobs.create(adapter_name="big", training_uri=store.uri_for("datasets/big.jsonl"))
    assert info.value.field == "spec.training_data"
