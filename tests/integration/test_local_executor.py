"""LocalExecutor cancellation, including a cancel that arrives before the worker exists."""

import asyncio
from pathlib import Path

import pytest

from trainer_svc.executors.config import LocalConfig
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.progress import WorkerEvent
from trainer_svc.spec import DatasetSource, JobSpec
from trainer_svc.worker_input import WorkerInput


def _input(tmp_path: Path) -> WorkerInput:
    spec = JobSpec(base_model="none", adapter_name="a", training_data=DatasetSource(inline_jsonl="{}"))
    return WorkerInput(
        job_id="job-1",
        spec=spec,
        base_model_path=tmp_path / "no-model",
        train_file=tmp_path / "t.jsonl",
        validation_file=tmp_path / "v.jsonl",
        store_uri=tmp_path.as_uri(),
        work_dir=tmp_path,
    )


async def _ignore(event: WorkerEvent) -> None:
    pass


@pytest.fixture
def executor(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(LocalConfig(cancel_grace_seconds=5, stop_grace_seconds=20))


async def test_cancel_before_the_worker_starts_means_it_never_runs(executor: LocalExecutor, tmp_path: Path) -> None:
    await executor.cancel("job-1")
    outcome = await executor.run(_input(tmp_path), _ignore)
    assert outcome.cancelled
    assert not (tmp_path / "worker.log").exists()


async def test_cancel_while_the_worker_starts_stops_it(executor: LocalExecutor, tmp_path: Path) -> None:
    run = asyncio.create_task(executor.run(_input(tmp_path), _ignore))
    while "job-1" not in executor._processes and not run.done():
        await asyncio.sleep(0)  # the worker process now exists and is importing
    await executor.cancel("job-1")
    outcome = await asyncio.wait_for(run, 30)
    assert outcome.cancelled
    assert outcome.exit_code != 0


async def test_a_worker_that_fails_reports_its_error_event(executor: LocalExecutor, tmp_path: Path) -> None:
    events: list[WorkerEvent] = []

    async def collect(event: WorkerEvent) -> None:
        events.append(event)

    outcome = await executor.run(_input(tmp_path), collect)
    assert not outcome.cancelled and outcome.exit_code == 1
    assert events and events[-1].kind == "error"
