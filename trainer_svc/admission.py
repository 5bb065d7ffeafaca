"""Whether the trainer takes a job from a caller, decided before its data is read: a valid adapter name,
room under the caller's limit of unfinished jobs, resources its executor can give, a base model it
offers and has prepared, and a version to continue from that fits it. A refusal stores nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from loraplane.auth import Caller, Role
from loraplane.errors import FailedPrecondition, PermissionDenied, ResourceExhausted
from loraplane.names import validate_adapter_name
from trainer_svc.executors.config import ExecutorCapabilities
from trainer_svc.job_store import JobStore
from trainer_svc.parent import ParentVersions
from trainer_svc.spec import JobSpec


class JobAdmission:
    def __init__(
        self,
        store: JobStore,
        capabilities: ExecutorCapabilities,
        *,
        base_model_path: Callable[[str], Path],
        default_base_model: str,
        max_unfinished_per_caller: int,
        parents: ParentVersions,
    ) -> None:
        """`base_model_path`: the folder of the base model a job names ("" = the default), InvalidArgument
        for one not offered."""
        self._store = store
        self._capabilities = capabilities
        self._base_model_path = base_model_path
        self._default_base_model = default_base_model
        self._max_unfinished_per_caller = max_unfinished_per_caller
        self._parents = parents

    async def admit(self, spec: JobSpec, caller: Caller) -> JobSpec:
        """`spec` with its base model named, if this trainer takes it from `caller`; its data is checked next."""
        validate_adapter_name(spec.adapter_name, field="spec.adapter_name")
        if spec.training_data.captures is not None and Role.ADMIN not in caller.roles:
            raise PermissionDenied(
                "training on captured traffic needs the admin role (captures hold what users wrote); ask for a "
                "retrain instead (loraplane retrain ADAPTER), which the adapter's retraining machinery runs",
                field="spec.training_data.captures",
            )
        await self._check_caller_room(caller)
        self._capabilities.check(spec.resources)
        base_model_path = self._base_model_path(spec.base_model)
        spec = spec.model_copy(update={"base_model": spec.base_model or self._default_base_model})
        if not (base_model_path / "config.json").is_file():
            raise FailedPrecondition(
                f"base model {spec.base_model!r} is not prepared at {base_model_path}; run "
                "`loraplane prepare-model` on the trainer host"
            )
        return await asyncio.to_thread(self._parents.pin, spec)

    async def _check_caller_room(self, caller: Caller) -> None:
        """Refuse a token that has its limit of unfinished jobs (the anonymous caller of auth off has none)."""
        if not caller.name:
            return
        unfinished = await asyncio.to_thread(self._store.count_unfinished, caller.name)
        if unfinished >= self._max_unfinished_per_caller:
            raise ResourceExhausted(
                f"caller {caller.name!r} has {unfinished} jobs queued or running, its limit "
                "(LORAPLANE_TRAINER_MAX_UNFINISHED_JOBS_PER_CALLER); wait for one to end"
            )
