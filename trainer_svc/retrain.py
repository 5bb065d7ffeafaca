"""Retraining: a job that continues an adapter's serving version on the traffic it captured.

A retrain job is an ordinary job the trainer writes itself: it continues the version that answers the
adapter's name (the release's stable version, else the newest), its training data is the captures of
the adapter since that version was published (or since a time the caller gives), made into examples by
trainer_svc.captured_data with the parent's data mixed in, and a version that passes its gate against
the parent starts as the adapter's canary candidate, which the serving replicas promote or roll back on
live evidence. Two triggers: by hand (`loraplane retrain`, gRPC `Retrain`, HTTP), and an alert that
reaches the trainer's Alertmanager webhook for an adapter whose retraining policy is on. At most one
retrain job per adapter is unfinished at a time; after one, alerts wait out the policy's cooldown.

    retraining/{name}/policy.json     whether alerts retrain the adapter, the cooldown, the canary share
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from loraplane.artifact import ArtifactRepository, Manifest
from loraplane.auth import Caller, Role
from loraplane.errors import FailedPrecondition, LoraplaneError, NotFound
from loraplane.names import AdapterSpec, validate_adapter_name
from loraplane.policies import changed_policy, read_policy, write_policy
from loraplane.releases import ReleaseLog, TrialPlan
from loraplane.training import RetrainOutcome, RetrainTrigger
from trainer_svc.jobs import Job
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.service import JobService
from trainer_svc.spec import CaptureSource, DatasetSource, JobSpec, TrainingParameters

TRIGGER_LABEL = "loraplane.trigger"
"""The label a retrain job carries: how it was started (`manual` or `alert`)."""
ALERT_LABEL = "loraplane.alert"
"""The alert that started it, where one did."""


class RetrainPolicy(BaseModel):
    """Whether alerts retrain an adapter, how often at most, and how its passing versions are tried."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    """Alerts start retrain jobs (retraining by hand needs no policy)."""
    cooldown_seconds: float = Field(3600.0, ge=0)
    """After a retrain job starts, alerts start no other for this long."""
    canary_share: float = Field(0.1, gt=0, le=1)
    """The share of the name's traffic a version that passes its gate takes as a canary."""
    training: TrainingParameters = Field(default_factory=TrainingParameters)
    """How retrain jobs train."""
    actor: str = ""
    at: datetime | None = None


class RetrainPolicyChange(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool
    cooldown_seconds: float | None = None
    canary_share: float | None = None
    training: TrainingParameters | None = None

    def apply(self, current: RetrainPolicy, *, actor: str, at: datetime) -> RetrainPolicy:
        """The policy after this change; InvalidArgument naming the field out of range."""
        return changed_policy(current, self, actor=actor, at=at)


@dataclass(frozen=True)
class Retrain:
    """What a retrain request did: its outcome, the job it started or found running, and why, for people."""

    outcome: RetrainOutcome
    adapter: str
    job: Job | None
    message: str


def _policy_key(name: str) -> str:
    return f"retraining/{name}/policy.json"


class Retrainer:
    """Starts retrain jobs through the job service, by hand or on alerts."""

    def __init__(
        self,
        jobs: JobService,
        open_repository: Callable[[], ArtifactRepository],
        metrics: TrainerMetrics,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._jobs = jobs
        self._open_repository = open_repository
        self._metrics = metrics
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    # -- policies ---------------------------------------------------------------------------

    def policy(self, name: str) -> RetrainPolicy:
        """`name`'s retraining policy; off when nobody has set one (blocking)."""
        validate_adapter_name(name, field="adapter")
        return read_policy(self._open_repository().store, _policy_key(name), RetrainPolicy)

    def change_policy(self, name: str, change: RetrainPolicyChange, *, actor: str) -> RetrainPolicy:
        """Apply `change` to `name`'s policy and write it (blocking)."""
        policy = change.apply(self.policy(name), actor=actor, at=self._clock())
        write_policy(self._open_repository().store, _policy_key(name), policy)
        return policy

    # -- retraining ----------------------------------------------------------------------------

    async def retrain(
        self, name: str, *, trigger: RetrainTrigger, caller: Caller, since: datetime | None = None, alert: str = ""
    ) -> Retrain:
        """Start a retrain job of adapter `name`, unless one is unfinished (or, for an alert, the policy is
        off or cooling down). By hand, an unfinished one is FAILED_PRECONDITION naming it."""
        validate_adapter_name(name, field="adapter")
        try:
            async with self._locks.setdefault(name, asyncio.Lock()):  # two alerts at once start one job
                retrain = await self._retrain(name, trigger, caller, since, alert)
        except LoraplaneError as exc:
            self._metrics.retrain(trigger, RetrainOutcome.REFUSED)
            if trigger is RetrainTrigger.MANUAL:
                raise
            return Retrain(RetrainOutcome.REFUSED, name, None, f"retraining {name!r} was refused: {exc.message}")
        self._metrics.retrain(trigger, retrain.outcome)
        if trigger is RetrainTrigger.MANUAL and retrain.outcome is RetrainOutcome.IN_FLIGHT:
            raise FailedPrecondition(retrain.message, field="adapter")
        return retrain

    async def _retrain(
        self, name: str, trigger: RetrainTrigger, caller: Caller, since: datetime | None, alert: str
    ) -> Retrain:
        policy = await asyncio.to_thread(self.policy, name)
        if trigger is RetrainTrigger.ALERT and not policy.enabled:
            return Retrain(RetrainOutcome.POLICY_OFF, name, None, f"retraining of {name!r} on alerts is off")
        recent = await self._recent_retrains(name)
        running = next((job for job in recent if not job.state.terminal), None)
        if running is not None:
            message = f"retrain job {running.id} of {name!r} is {running.state.lower()}; it must end first"
            return Retrain(RetrainOutcome.IN_FLIGHT, name, running, message)
        cooldown = timedelta(seconds=policy.cooldown_seconds)
        if trigger is RetrainTrigger.ALERT and recent and self._clock() - recent[0].created_at < cooldown:
            message = f"the last retrain job of {name!r} ({recent[0].id}) started less than {cooldown} ago"
            return Retrain(RetrainOutcome.COOLING_DOWN, name, recent[0], message)
        parent = await asyncio.to_thread(self._serving_version, name)
        spec = self._spec(name, parent, since or parent.created_at, policy, trigger, alert)
        # The trainer writes this job on the caller's behalf: its data is captured traffic, which only the
        # retraining machinery (set up by an admin) may train on, so the job is admitted as an admin's.
        trusted = Caller(name=caller.name, roles=frozenset({*caller.roles, Role.ADMIN}))
        job = await self._jobs.create(spec, f"retrain-{uuid.uuid4().hex}", trusted)
        message = f"retrain job {job.id} continues {parent.spec} on the captures since {spec_since(spec)}"
        return Retrain(RetrainOutcome.STARTED, name, job, message)

    async def _recent_retrains(self, name: str) -> list[Job]:
        """The adapter's unfinished retrain jobs and its newest ones, newest first."""
        unfinished = await asyncio.to_thread(self._jobs.store.unfinished)
        newest, _ = await asyncio.to_thread(
            self._jobs.store.list_jobs, owner=None, state=None, adapter_name=name, page_size=50, page_token=""
        )
        found = {job.id: job for job in [*unfinished, *newest] if job.spec.adapter_name == name}
        retrains = [job for job in found.values() if TRIGGER_LABEL in job.spec.labels]
        return sorted(retrains, key=lambda job: job.created_at, reverse=True)

    def _serving_version(self, name: str) -> Manifest:
        """The version that answers `name`: its release's stable version, else its newest."""
        repository = self._open_repository()
        record = ReleaseLog(repository).current(name)
        version = record.state.stable if record is not None else None
        try:
            manifest, _ = repository.resolve(AdapterSpec(name, version))
        except NotFound as exc:
            raise NotFound(f"{exc.message}: a retrain job continues a published version", field="adapter") from None
        return manifest

    @staticmethod
    def _spec(
        name: str, parent: Manifest, since: datetime, policy: RetrainPolicy, trigger: RetrainTrigger, alert: str
    ) -> JobSpec:
        labels = {TRIGGER_LABEL: trigger.value, **({ALERT_LABEL: alert} if alert else {})}
        return JobSpec(
            base_model=parent.base_model.name,
            adapter_name=name,
            training_data=DatasetSource(captures=CaptureSource(adapter=name, since=since)),
            parent=str(parent.spec),
            release=TrialPlan(canary_share=policy.canary_share),
            training=policy.training,
            labels=labels,
        )


def spec_since(spec: JobSpec) -> str:
    captures = spec.training_data.captures
    return captures.since.isoformat(timespec="seconds") if captures and captures.since else "the first"
