"""The job service admits what its executor states it can give, whatever the executor is: a new executor
needs no change there. The executor here is a FAKE that states its capabilities and is never asked to run
(the service's runners are not started); the job store and the dataset intake are the real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraplane.auth import ANONYMOUS
from loraplane.errors import FailedPrecondition, InvalidArgument
from loraplane.training import JobState
from trainer_svc.executors.base import EventHandler, Executor, RunOutcome
from trainer_svc.executors.config import ExecutorCapabilities
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.server import job_service
from trainer_svc.service import JobService
from trainer_svc.settings import TrainerSettings
from trainer_svc.spec import JobSpec, WorkerResources
from trainer_svc.worker_input import WorkerInput


class FakeExecutor(Executor):
    """States the capabilities it is given; running a worker is no part of these tests."""

    def __init__(self, capabilities: ExecutorCapabilities) -> None:
        self._capabilities = capabilities

    @property
    def capabilities(self) -> ExecutorCapabilities:
        return self._capabilities

    async def run(self, worker_input: WorkerInput, on_event: EventHandler) -> RunOutcome:
        raise AssertionError("no runner is started in these tests")

    async def cancel(self, job_id: str) -> None:
        raise AssertionError("nothing is cancelled in these tests")

    async def preempt_all(self) -> set[str]:
        return set()


def _service(tmp_path: Path, capabilities: ExecutorCapabilities) -> tuple[JobService, SqliteJobStore]:
    base_model = tmp_path / "models" / "tiny"
    base_model.mkdir(parents=True)
    (base_model / "config.json").write_text("{}")  # prepared, as far as admission looks
    settings = TrainerSettings(data_dir=tmp_path, base_model=base_model, base_model_name="tiny")
    store = SqliteJobStore(settings.trainer_db_path)
    return job_service(settings, store, FakeExecutor(capabilities), TrainerMetrics(store)), store


def _spec(resources: WorkerResources) -> JobSpec:
    data = "".join(f'{{"prompt": "q{n}", "completion": "a{n}"}}\n' for n in range(4))
    return JobSpec(base_model="", adapter_name="wide", training_data={"inline_jsonl": data}, resources=resources)


async def test_resources_the_executor_states_it_gives_are_admitted_and_the_job_queued(tmp_path: Path) -> None:
    jobs, _ = _service(tmp_path, ExecutorCapabilities(per_job_resources=True, multi_node=True))
    job = await jobs.create(_spec(WorkerResources(nodes=2, gpus=4)), "", ANONYMOUS)
    assert job.state is JobState.QUEUED
    assert job.spec.base_model == "tiny" and job.spec.resources.nodes == 2
    assert (tmp_path / "trainer" / "jobs" / job.id / "validation.jsonl").is_file()  # the intake wrote its examples


@pytest.mark.parametrize(
    ("capabilities", "resources", "error"),
    [
        (ExecutorCapabilities(per_job_resources=False, multi_node=False), WorkerResources(cpu="2"), InvalidArgument),
        (ExecutorCapabilities(per_job_resources=True, multi_node=False), WorkerResources(nodes=2), FailedPrecondition),
    ],
)
async def test_resources_the_executor_cannot_give_are_refused_and_nothing_is_stored(
    tmp_path: Path, capabilities: ExecutorCapabilities, resources: WorkerResources, error: type[Exception]
) -> None:
    jobs, store = _service(tmp_path, capabilities)
    with pytest.raises(error):
        await jobs.create(_spec(resources), "", ANONYMOUS)
    assert store.count_unfinished("") == 0
