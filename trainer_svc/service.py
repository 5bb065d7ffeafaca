"""The trainer's domain logic: accept, queue, run, cancel and follow jobs.

The servicer translates protobuf to calls here; admission decides whether a job is taken; the
intake reads and checks its datasets; the executor runs workers; the job store keeps every change
durable. A job is never lost: jobs that were queued or running when the trainer stopped are
queued again when it starts. A job belongs to the caller that created it: another caller gets
NOT_FOUND for it, as for a job that does not exist, unless it is an admin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from loraplane.auth import Caller
from loraplane.errors import ErrorCode, FailedPrecondition, InvalidArgument, LoraplaneError, NotFound
from loraplane.training import JobState
from trainer_svc import intake
from trainer_svc.admission import JobAdmission
from trainer_svc.executors import Executor, RunOutcome
from trainer_svc.intake import DatasetIntake, ExampleFiles
from trainer_svc.job_store import JobStore
from trainer_svc.jobs import Job, JobError, JobEvent, JobProgress, utcnow
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.progress import ErrorEvent, EvalEvent, PhaseEvent, ProgressEvent, ResultEvent, WorkerEvent
from trainer_svc.spec import JobSpec
from trainer_svc.worker_input import WorkerInput

log = logging.getLogger(__name__)

_WATCH_POLL_SECONDS = 5.0
_RECORD_TIMEOUT_SECONDS = 10.0
"""How long stopping waits for a preempted job's new state to be stored."""


@dataclass(frozen=True)
class JobRuns:
    """What running a job reads of the trainer's settings: where its files go, how many run at once, and
    what its worker is told of the base model and the store."""

    work_dir: Path
    max_concurrent: int
    base_model_path: Callable[[str], Path]
    """The folder of the base model a job names ("" = the default)."""
    store_uri: str
    s3_endpoint_url: str | None


class JobService:
    def __init__(
        self,
        runs: JobRuns,
        store: JobStore,
        executor: Executor,
        admission: JobAdmission,
        datasets: DatasetIntake,
        metrics: TrainerMetrics,
    ) -> None:
        self._runs = runs
        self.store = store
        self.executor = executor
        self.datasets = datasets
        self.metrics = metrics
        self._admission = admission
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._runners: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._stopping = False
        self._runs_ended: dict[str, asyncio.Event] = {}
        """Set when `_run` of a job is over: what stopping waits for after preempting its worker."""
        # Serialises "is it still queued?" checks with the writes that act on the answer, so a
        # cancel and a runner picking the job up cannot both win.
        self._dispatch_lock = asyncio.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Queue again what an earlier run left unfinished, then start the runners."""
        for job in await asyncio.to_thread(self.store.unfinished):
            if job.state is JobState.VALIDATING and not intake.examples_ready(self._work_dir(job.id)):
                await self._finish(
                    job,
                    JobState.FAILED,
                    "the trainer stopped while validating; resubmit the job",
                    JobError(code=ErrorCode.ABORTED, message="interrupted during validation; resubmit"),
                )
                continue
            if job.state is not JobState.QUEUED:
                job.progress, job.metrics, job.started_at = JobProgress(), {}, None
                await self._enter(job, JobState.QUEUED, "trainer restarted; job queued again")
            self._queue.put_nowait(job.id)
        self._runners = [
            asyncio.create_task(self._run_forever(), name=f"job-runner-{i}") for i in range(self._runs.max_concurrent)
        ]

    async def stop(self) -> None:
        """Preempt the running workers (each saves a checkpoint and its job is queued again), then stop."""
        self._stopping = True  # a runner whose job ends now takes no other
        preempted = await self.executor.preempt_all()
        ends = [self._runs_ended[job_id].wait() for job_id in preempted if job_id in self._runs_ended]
        if ends:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*ends), _RECORD_TIMEOUT_SECONDS)
        for task in self._runners:
            task.cancel()
        for task in self._runners:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- requests --------------------------------------------------------------------------

    async def create(self, spec: JobSpec, request_id: str, caller: Caller) -> Job:
        """Validate `spec` and its data, store the job and queue it. Nothing is stored on bad input."""
        try:
            spec = await self._admission.admit(spec, caller)
            data = await asyncio.to_thread(self.datasets.read, spec)
        except LoraplaneError as exc:
            self.metrics.rejected_jobs.labels(exc.error_code).inc()
            raise
        job = Job(
            id=f"job-{uuid.uuid4().hex[:16]}",
            request_id=request_id,
            owner=caller.name,
            spec=spec.without_inline_text(),
            dataset_metrics=data.metrics(),
        )
        job, created = await asyncio.to_thread(self.store.create, job, f"job created for adapter {spec.adapter_name}")
        if not created:
            return job
        self.metrics.job_transitions.labels("validating").inc()
        try:
            await asyncio.to_thread(intake.write_examples, self._work_dir(job.id), data)
        except OSError as exc:
            log.exception("cannot write the examples of job %s", job.id)
            message = f"the trainer could not store the dataset ({exc}); retry"
            error = JobError(code=ErrorCode.UNAVAILABLE, message=message)
            return await self._finish(job, JobState.FAILED, error.message, error)
        async with self._dispatch_lock:  # a CancelJob may have come in meanwhile: it wins
            job = await self._load(job.id)
            if job.state.terminal:
                return job
            message = data.summary()
            await self._enter(job, JobState.QUEUED, message)
        self._queue.put_nowait(job.id)
        return job

    async def _load(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.store.get, job_id)

    async def get(self, job_id: str, caller: Caller) -> Job:
        """The job, if `caller` may see it: NOT_FOUND otherwise, so job ids cannot be probed."""
        job = await self._load(job_id)
        if job.owner != caller.name and not caller.sees_every_job:
            raise NotFound(f"job {job_id!r} does not exist", field="job_id")
        return job

    async def list_jobs(
        self, *, caller: Caller, state: JobState | None, adapter_name: str, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """The caller's jobs (an admin's: everyone's), newest first."""
        if page_size > 100:
            raise InvalidArgument("page_size must be at most 100", field="page_size")
        return await asyncio.to_thread(
            self.store.list_jobs,
            owner=None if caller.sees_every_job else caller.name,
            state=state,
            adapter_name=adapter_name,
            page_size=page_size or 20,
            page_token=page_token,
        )

    async def cancel(self, job_id: str, caller: Caller) -> Job:
        async with self._dispatch_lock:
            job = await self.get(job_id, caller)
            if job.state.terminal:
                raise FailedPrecondition(f"job {job_id} already ended ({job.state.value}); nothing to cancel")
            if job.state is not JobState.RUNNING:
                return await self._finish(job, JobState.CANCELLED, "cancelled before it started")
        await self.executor.cancel(job_id)  # the runner records CANCELLED when the worker exits
        return await self._wait_until_ended(job_id)

    async def watch(self, job_id: str, after_sequence: int, caller: Caller) -> AsyncIterator[JobEvent]:
        """The job's events after `after_sequence`, live, until the job has ended."""
        await self.get(job_id, caller)
        async for event in self._events(job_id, after_sequence):
            yield event

    async def _events(self, job_id: str, after_sequence: int) -> AsyncIterator[JobEvent]:
        while True:
            changed = self._changed
            events = await asyncio.to_thread(self.store.events, job_id, after_sequence)
            for event in events:
                yield event
                after_sequence = event.sequence
            if events and events[-1].job.state.terminal:
                return
            if not events and (await self._load(job_id)).state.terminal:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), _WATCH_POLL_SECONDS)

    # -- running ---------------------------------------------------------------------------

    async def _run_forever(self) -> None:
        while not self._stopping:
            job_id = await self._queue.get()
            if self._stopping:  # it stays queued in the store, for the next start
                return
            try:
                await self._run(job_id)
            except LoraplaneError as exc:  # e.g. its base model is no longer offered after a restart
                await self._fail_unless_ended(
                    job_id, JobError(code=exc.error_code, message=exc.message, field=exc.field)
                )
            except Exception:  # noqa: BLE001 - one broken job must not stop the runner
                log.exception("job %s failed in the trainer itself", job_id)
                await self._fail_unless_ended(
                    job_id, JobError(code=ErrorCode.INTERNAL, message="trainer error; see the trainer log")
                )

    async def _fail_unless_ended(self, job_id: str, error: JobError) -> None:
        job = await self._load(job_id)
        if not job.state.terminal:
            await self._finish(job, JobState.FAILED, error.message, error)

    async def _run(self, job_id: str) -> None:
        ended = self._runs_ended[job_id] = asyncio.Event()
        try:
            await self._run_worker(job_id)
        finally:
            ended.set()
            del self._runs_ended[job_id]

    async def _run_worker(self, job_id: str) -> None:
        async with self._dispatch_lock:
            job = await self._load(job_id)
            if job.state is not JobState.QUEUED:  # cancelled while queued
                return
            job.started_at = utcnow()
            await self._enter(job, JobState.RUNNING, "worker started")
        outcome_events: list[ResultEvent | ErrorEvent] = []

        async def on_event(event: WorkerEvent) -> None:
            if isinstance(event, ResultEvent | ErrorEvent):
                outcome_events.append(event)
            else:
                await self._apply_progress(job, event)

        outcome = await self.executor.run(self._worker_input(job), on_event)
        await self._conclude(job, outcome, outcome_events[-1] if outcome_events else None)

    def _worker_input(self, job: Job) -> WorkerInput:
        work_dir = self._work_dir(job.id)
        examples = ExampleFiles.in_folder(work_dir, with_test=job.spec.test_data is not None)
        return WorkerInput(
            job_id=job.id,
            spec=job.spec,
            base_model_path=self._runs.base_model_path(job.spec.base_model),
            train_file=examples.train,
            validation_file=examples.validation,
            test_file=examples.test,
            store_uri=self._runs.store_uri,
            s3_endpoint_url=self._runs.s3_endpoint_url,
            work_dir=work_dir,
        )

    async def _conclude(self, job: Job, outcome: RunOutcome, last: ResultEvent | ErrorEvent | None) -> None:
        """Record how the worker's run ended the job: its result, a cancel, a preemption (queued again) or
        a failure, with its error event or else its log's tail."""
        if isinstance(last, ResultEvent):  # published: a late cancel lost
            job.adapter, job.metrics = last.adapter, last.metrics
            job.task_scores, job.checkpoints = last.task_scores, last.checkpoints
            if "gate_passed" in last.metrics:
                self.metrics.gate_judged(bool(last.metrics["gate_passed"]))
            await self._finish(job, JobState.SUCCEEDED, f"published {last.adapter.name}@v{last.adapter.version}")
        elif outcome.cancelled:
            await self._finish(job, JobState.CANCELLED, "cancelled while running")
        elif outcome.preempted:  # its checkpoints stay: the restarted trainer's worker goes on from them
            job.progress, job.started_at = JobProgress(), None
            message = "the trainer is stopping; the job is queued again and resumes from its checkpoint"
            await self._enter(job, JobState.QUEUED, message)
            return
        elif last is not None:
            error = JobError(code=last.code, message=last.message, field=last.field)
            await self._finish(job, JobState.FAILED, last.message, error)
        else:
            message = f"worker exited with code {outcome.exit_code} without a result: {outcome.log_tail[-2000:]}"
            await self._finish(job, JobState.FAILED, message, JobError(code=ErrorCode.INTERNAL, message=message))
        for scratch in ("adapter", "checkpoints"):  # the job's input and log stay for inspection
            await asyncio.to_thread(shutil.rmtree, self._work_dir(job.id) / scratch, True)

    async def _apply_progress(self, job: Job, event: PhaseEvent | ProgressEvent | EvalEvent) -> None:
        if isinstance(event, PhaseEvent):
            await self._record(job, event.message or event.phase.replace("_", " "))
        elif isinstance(event, ProgressEvent):
            self.metrics.training_steps.inc(max(0, event.step - job.progress.step))
            self.metrics.running_job_loss.labels(job.id, job.spec.adapter_name, "train").set(event.loss)
            job.progress = JobProgress(**event.model_dump(exclude={"kind"}))
            await self._record(job, f"step {event.step}/{event.total_steps} loss {event.loss:.4f}")
        else:
            job.metrics["validation_loss"] = event.validation_loss
            self.metrics.running_job_loss.labels(job.id, job.spec.adapter_name, "eval").set(event.validation_loss)
            await self._record(job, f"step {event.step}: validation loss {event.validation_loss:.4f}")

    # -- bookkeeping -----------------------------------------------------------------------

    async def _finish(self, job: Job, state: JobState, message: str, error: JobError | None = None) -> Job:
        job.error, job.finished_at = error, utcnow()
        self.metrics.job_ended(job.id, job.spec.adapter_name)
        await self._enter(job, state, message)
        if job.started_at is not None:
            duration = (job.finished_at - job.started_at).total_seconds()
            self.metrics.job_duration.labels(state.value.lower()).observe(duration)
        return job

    async def _record(self, job: Job, message: str) -> JobEvent:
        """Store the job's current state with an event, and wake its watchers."""
        event = await asyncio.to_thread(self.store.update, job, message)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return event

    async def _enter(self, job: Job, state: JobState, message: str) -> JobEvent:
        job.state = state
        self.metrics.job_transitions.labels(state.value.lower()).inc()
        log.info("job %s (%s) %s: %s", job.id, job.spec.adapter_name, state.value, message)
        return await self._record(job, message)

    async def _wait_until_ended(self, job_id: str) -> Job:
        async for event in self._events(job_id, 0):
            if event.job.state.terminal:
                return event.job
        return await self._load(job_id)

    def _work_dir(self, job_id: str) -> Path:
        return self._runs.work_dir / job_id
