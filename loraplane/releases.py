"""Release state per adapter: which version answers its name, which version is on trial and how.

    releases/{name}/{sequence:010d}.json     one record per change, created once, never rewritten

Every change to an adapter's release is a new record at the next sequence number, written with the
store's create-only put: two writers cannot both take a number, and the one that loses reads the
winner's record and applies its own change on top of it (or is refused when its change no longer
makes sense, say a promote of a candidate another caller rolled back). The newest record is the
state every replica routes by; the records before it are the audit trail: who changed what, when,
why, and the figures that decided. An adapter without records has no release: its name resolves
to its newest complete version, as before releases existed.

Once an adapter has a release, its name answers with the `stable` version however many newer
versions are published; a new version reaches callers only as a `candidate`, tried as a canary (a
share of the name's traffic, split deterministically by the caller's key so a user stays on one
version) or in the shadow of `stable` (run on the same requests, its answers recorded and never
returned), and then promoted or rolled back. `name@vN` still pins any version.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loraplane.artifact import ArtifactRepository
from loraplane.errors import FailedPrecondition, InternalError, InvalidArgument
from loraplane.names import AdapterSpec, validate_adapter_name
from loraplane.storage import ObjectStore

ANONYMOUS_ACTOR = "anonymous"
"""The actor of a change made without a name: by a caller while authentication is off."""
_MAX_WRITE_TRIES = 50
"""Records another writer may slip in before one change gives up (each try is one list and one put)."""


class ReleaseMode(enum.StrEnum):
    """How a candidate is tried: on a share of real traffic, or alongside `stable` without answering."""

    CANARY = "canary"
    SHADOW = "shadow"


class ReleaseAction(enum.StrEnum):
    """What a release record did."""

    START = "start"
    """A candidate began its trial, or the running trial's mode or share changed."""
    PROMOTE = "promote"
    """The candidate became stable."""
    ROLLBACK = "rollback"
    """The candidate was withdrawn; with no candidate, stable went back to the version before it."""
    PAUSE = "pause"
    """The candidate stays named but takes no traffic (canary) and no shadow requests."""
    RESUME = "resume"


class VersionRole(enum.StrEnum):
    """Why a request was answered by the version that answered it."""

    LATEST = "latest"
    """No release: the name's newest version."""
    STABLE = "stable"
    CANDIDATE = "candidate"
    PINNED = "pinned"
    """The caller named the version (`name@vN`)."""


class Guardrail(enum.StrEnum):
    ERROR_RATE = "error_rate"
    """Share of the requests routed to the version that failed (not by the caller's fault); margin: absolute."""
    TTFT_P50 = "ttft_p50"
    """Median time to first token; margin: relative to stable's (0.25 = 25% slower)."""
    LATENCY_P50 = "latency_p50"
    LATENCY_P99 = "latency_p99"
    FEEDBACK_SCORE = "feedback_score"
    """Callers' mean score in [0, 1]; margin: absolute."""
    DRIFT = "drift_statistics_over"
    """Drift statistics over, each version against its own training data; margin: a count."""
    FORM_SHARE = "form_share"
    """Share of answers in the form the version was trained to answer in; margin: absolute."""
    SHADOW_AGREEMENT = "shadow_agreement"
    """In shadow mode: mean ROUGE-L of the candidate's answers against stable's; margin: how far below 1."""


DEFAULT_MARGINS: Mapping[Guardrail, float] = {
    Guardrail.ERROR_RATE: 0.02,
    Guardrail.TTFT_P50: 0.5,
    Guardrail.LATENCY_P50: 0.5,
    Guardrail.LATENCY_P99: 1.0,
    Guardrail.FEEDBACK_SCORE: 0.1,
    Guardrail.DRIFT: 1.0,
    Guardrail.FORM_SHARE: 0.1,
    Guardrail.SHADOW_AGREEMENT: 0.5,
}
"""Loose enough for a shared CPU's latency noise and one drift statistic's false alarms; each is a
setting (LORAPLANE_RELEASE_MARGINS)."""


class ReleaseState(BaseModel):
    """Which versions of one adapter answer its name, after a record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stable: int = Field(ge=1)
    candidate: int | None = Field(None, ge=1)
    mode: ReleaseMode | None = None
    """Set exactly when there is a candidate."""
    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    """The share of the name's traffic the candidate answers in canary mode; 0 in shadow mode."""
    paused: bool = False
    previous_stable: int | None = Field(None, ge=1)
    """Right after a promotion, the stable version before it, which a rollback without a candidate returns
    to; None once anything else has happened since (so a second rollback never demotes stable)."""
    trial: int | None = Field(None, ge=1)
    """The sequence number of the record that started the candidate's trial: the figures of a trial are
    kept under it, so a version tried twice starts from nothing the second time. None without a candidate."""

    def route(self, name: str, key: str) -> tuple[int, VersionRole]:
        """The version that answers a request for `name` whose caller's key is `key`, and its role."""
        if (
            self.candidate is not None
            and self.mode is ReleaseMode.CANARY
            and not self.paused
            and canary_point(name, key) < self.canary_share
        ):
            return self.candidate, VersionRole.CANDIDATE
        return self.stable, VersionRole.STABLE

    @property
    def shadow(self) -> int | None:
        """The version that runs in the shadow of stable on every request for the name, if any."""
        if self.candidate is not None and self.mode is ReleaseMode.SHADOW and not self.paused:
            return self.candidate
        return None

    def describe(self) -> str:
        """One line for people: `stable v2, candidate v3 (canary 10%)`."""
        text = f"stable v{self.stable}"
        if self.previous_stable is not None and self.candidate is None:
            text += f" (after v{self.previous_stable})"
        if self.candidate is not None:
            trial = f"canary {self.canary_share:.0%}" if self.mode is ReleaseMode.CANARY else "shadow"
            text += f", candidate v{self.candidate} ({trial}{', paused' if self.paused else ''})"
        return text


class TrialPlan(BaseModel):
    """How a new version is to be tried as its adapter's candidate: a training job's plan for the version
    it publishes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ReleaseMode = ReleaseMode.CANARY
    canary_share: float = Field(0.1, ge=0.0, le=1.0)
    """In canary mode: the candidate's share of the name's requests."""

    def start(self, candidate: int) -> ReleaseChange:
        return ReleaseChange(
            action=ReleaseAction.START, candidate=candidate, mode=self.mode, canary_share=self.canary_share
        )


def canary_point(name: str, key: str) -> float:
    """The caller's fixed point in [0, 1) for `name`: under the canary share means the candidate answers.

    A hash, so every replica puts a key on the same side without sharing anything, a key stays on
    its side while the share stays put (and only moves to the candidate as the share grows), and
    keys fall evenly, so the candidate's share of many callers is within binomial bounds of the
    setting. The name is hashed in, so one caller is not in the canary of every adapter at once.
    """
    digest = hashlib.sha256(f"{name}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ReleaseRecord(BaseModel):
    """One change of an adapter's release, as kept in the store."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = 1
    adapter: str
    sequence: int = Field(ge=1)
    action: ReleaseAction
    state: ReleaseState
    """The release after this change."""
    actor: str
    """Who made the change: a token's name, a training job, or `auto` for the analysis."""
    reason: str = ""
    figures: dict[str, float] = Field(default_factory=dict)
    """The measurements that decided, by name (for an automatic decision, every guardrail's)."""
    at: datetime


class ReleaseChange(BaseModel):
    """A change one caller asks for; applied to whatever state is newest when it is written."""

    model_config = ConfigDict(frozen=True)

    action: ReleaseAction
    candidate: int | None = Field(None, ge=1)
    """START: the version to try."""
    mode: ReleaseMode = ReleaseMode.CANARY
    """START: how to try it."""
    canary_share: float = Field(0.1, ge=0.0, le=1.0)
    """START in canary mode: the candidate's share of traffic."""
    stable: int | None = Field(None, ge=1)
    """START on an adapter without a release: the stable version (default: the newest other than
    the candidate)."""
    expected_candidate: int | None = None
    """Act only if this is still the candidate (so a verdict about v3 never promotes a v4 that replaced
    it); None acts on whatever is the candidate."""
    expected_sequence: int | None = None
    """Act only if the newest record is still this one (the analysis sets it to the record it judged, so
    a pause, a new trial or any other change since makes its decision void); None: whatever is newest."""

    def apply(self, name: str, current: ReleaseState | None, *, sequence: int) -> ReleaseState:
        """The state after this change, written as record `sequence`; FailedPrecondition saying why when it
        does not apply to `current`."""
        if self.action is ReleaseAction.START:
            return self._start(name, current, sequence)
        if current is None:
            raise FailedPrecondition(
                f"adapter {name!r} has no release to {self.action}: start one with a candidate first"
            )
        if self.expected_candidate is not None and current.candidate != self.expected_candidate:
            raise FailedPrecondition(
                f"{name}@v{self.expected_candidate} is no longer the candidate ({current.describe()})"
            )
        match self.action:
            case ReleaseAction.PROMOTE:
                if current.candidate is None:
                    raise FailedPrecondition(f"adapter {name!r} has no candidate to promote ({current.describe()})")
                return ReleaseState(stable=current.candidate, previous_stable=current.stable)
            case ReleaseAction.ROLLBACK:
                if current.candidate is not None:
                    return ReleaseState(stable=current.stable)
                if current.previous_stable is None:
                    raise FailedPrecondition(
                        f"adapter {name!r} has no candidate on trial, and its last change was not a promotion to "
                        f"undo ({current.describe()}): start the version to go back to as a candidate instead"
                    )
                return ReleaseState(stable=current.previous_stable)
            case ReleaseAction.PAUSE | ReleaseAction.RESUME:
                if current.candidate is None:
                    raise FailedPrecondition(f"adapter {name!r} has no candidate to {self.action}")
                return current.model_copy(update={"paused": self.action is ReleaseAction.PAUSE})
        raise InternalError(f"release action {self.action} has no transition")

    def _start(self, name: str, current: ReleaseState | None, sequence: int) -> ReleaseState:
        if self.candidate is None:
            raise InvalidArgument("starting a release needs a candidate version", field="candidate")
        share = self.canary_share if self.mode is ReleaseMode.CANARY else 0.0
        if current is None:
            if self.stable is None:
                raise InvalidArgument(f"adapter {name!r} has no release yet: name its stable version", field="stable")
            stable = self.stable
        else:
            if self.stable is not None and self.stable != current.stable:
                raise FailedPrecondition(
                    f"adapter {name!r} is released with stable v{current.stable}; promote or roll back to change it"
                )
            if current.candidate is not None and current.candidate != self.candidate:
                raise FailedPrecondition(
                    f"{name}@v{current.candidate} is already on trial ({current.describe()}): promote it or roll it "
                    "back first"
                )
            stable = current.stable
        if self.candidate == stable:
            raise FailedPrecondition(f"{name}@v{stable} is the stable version; a candidate must be another version")
        running = current is not None and current.candidate == self.candidate
        return ReleaseState(
            stable=stable,
            candidate=self.candidate,
            mode=self.mode,
            canary_share=share,
            paused=running and current is not None and current.paused,
            trial=current.trial if running and current is not None else sequence,
        )


def _prefix(name: str) -> str:
    return f"releases/{name}/"


def _key(name: str, sequence: int) -> str:
    return f"{_prefix(name)}{sequence:010d}.json"


class ReleaseLog:
    """The release records of every adapter in one store.

    Reads go to the store every time (serving caches them for a TTL, see serving_svc.releases);
    records are immutable, so a reader never sees a half-written one.
    """

    def __init__(self, repository: ArtifactRepository) -> None:
        self._repository = repository

    @property
    def _store(self) -> ObjectStore:
        return self._repository.store

    def _sequences(self, name: str) -> list[int]:
        sequences = []
        for key in self._store.list_keys(_prefix(name)):
            stem = key.rsplit("/", 1)[-1].removesuffix(".json")
            if stem.isdigit():
                sequences.append(int(stem))
        return sorted(sequences)

    def _read(self, name: str, sequence: int) -> ReleaseRecord:
        raw = self._store.get_bytes(_key(name, sequence))
        try:
            return ReleaseRecord.model_validate_json(raw)
        except ValidationError as exc:
            raise InternalError(f"release record {_key(name, sequence)} is unreadable: {exc}") from None

    def current(self, name: str) -> ReleaseRecord | None:
        """The newest record of `name`'s release, None when it has none."""
        validate_adapter_name(name, field="adapter")
        sequences = self._sequences(name)
        return self._read(name, sequences[-1]) if sequences else None

    def history(self, name: str, limit: int = 0) -> list[ReleaseRecord]:
        """The records of `name`'s release, oldest first; the newest `limit` only when limit > 0."""
        validate_adapter_name(name, field="adapter")
        sequences = self._sequences(name)
        return [self._read(name, sequence) for sequence in sequences[-limit if limit > 0 else 0 :]]

    def change(
        self,
        name: str,
        change: ReleaseChange,
        *,
        actor: str,
        reason: str = "",
        figures: dict[str, float] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> ReleaseRecord:
        """Apply `change` to the newest state and write it as the next record; the record written.

        NotFound when a version it names is not a complete published version of `name`;
        FailedPrecondition when the change does not apply to the state it meets (which may be a state
        another writer wrote a moment ago).
        """
        validate_adapter_name(name, field="adapter")
        self._check_versions_exist(name, change)
        for _ in range(_MAX_WRITE_TRIES):
            current = self.current(name)
            newest = current.sequence if current else 0
            if change.expected_sequence is not None and newest != change.expected_sequence:
                raise FailedPrecondition(
                    f"the release of {name!r} changed after record {change.expected_sequence}: it is at record "
                    f"{newest} ({current.state.describe() if current else 'no release'})"
                )
            if current is None and change.action is ReleaseAction.START and change.stable is None:
                change = change.model_copy(update={"stable": self._default_stable(name, change.candidate)})
            state = change.apply(name, current.state if current else None, sequence=newest + 1)
            record = ReleaseRecord(
                adapter=name,
                sequence=newest + 1,
                action=change.action,
                state=state,
                actor=actor or ANONYMOUS_ACTOR,
                reason=reason,
                figures=figures or {},
                at=clock(),
            )
            if self._store.put_bytes_if_absent(_key(name, record.sequence), record.model_dump_json().encode()):
                return record
        raise FailedPrecondition(
            f"the release of {name!r} changed {_MAX_WRITE_TRIES} times while this change was being written; try again"
        )

    def _check_versions_exist(self, name: str, change: ReleaseChange) -> None:
        for version in (change.candidate, change.stable):
            if version is not None:
                self._repository.resolve(AdapterSpec(name, version))

    def _default_stable(self, name: str, candidate: int | None) -> int:
        """The newest complete version other than the candidate: what the name answered with until now."""
        others = [version for version in self._repository.versions(name) if version != candidate]
        if not others:
            raise FailedPrecondition(
                f"adapter {name!r} has no version besides v{candidate} to keep as stable: serve v{candidate} "
                "unpinned (no release), or publish another version first"
            )
        return others[-1]


def parse_share(text: str) -> float:
    """`10%` or `0.1` as a share in [0, 1]; InvalidArgument for anything else (a bare `10` is ambiguous)."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        raise InvalidArgument(f"canary share {text!r} is not a number: write 10% or 0.1", field="canary") from None
    share = value / 100 if percent else value
    if not 0.0 <= share <= 1.0:
        raise InvalidArgument(f"canary share {text!r} is outside 0-100%: write 10% or 0.1", field="canary")
    return share
