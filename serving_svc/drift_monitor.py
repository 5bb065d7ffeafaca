"""Live drift per adapter version: a sliding window of requests compared with the version's training profile.

A request costs the monitor one append to a queue (`record`); the windows are brought up to date
by `refresh`, which the replica calls every second on a worker thread, and before every read (a
Prometheus scrape, `GetAdapterStats`), so drift never adds work to the request path: a request's
record (its prompt's buckets, whether its answer kept the trained form) is made there too. Each
adapter version has its own window, so a new version is never judged against an old version's
reference and two versions serving side by side can be compared; an older version's window goes
once it has emptied. The reference comes with each request as a parsed profile (the adapter manager
parses it once, when it verifies the version's copy), so the monitor reads no file and the disk cache
may trim copies without asking drift. The window keeps the last `window_requests` requests no older
than `window_seconds`; below `min_samples` requests the live statistics are withheld. A report is
computed when read and kept until the window changes (drift_statistics.py: p-values by bootstrap).

Outcome drift comes from callers: `record_feedback` takes a score in [0, 1] for a request id
that this replica answered recently.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loraplane.drift import Profile, PromptFrame, Record, Sample, observe
from loraplane.drift_statistics import Calibration, DriftReport, Verdicts, report
from loraplane.errors import NotFound

_REMEMBERED_REQUESTS = 100_000
"""Request ids kept for feedback (about 10 MB); older ones get NOT_FOUND."""
_POOLED_CALIBRATIONS = 32
"""References of pooled windows (several adapters under one label) kept between reads."""

WindowKey = tuple[str, int]
"""An adapter name and version."""


@dataclass(frozen=True)
class DriftPolicy:
    window_requests: int
    window_seconds: float
    min_samples: int
    """Fewest requests (and feedback scores) in a window for its statistics to be reported."""
    prompt_scoring_fraction: float
    """Share of requests whose prompt the engine scores (prompt surprise); it costs a prompt's logits."""
    verdicts: Verdicts
    feedback_score_floor: float


@dataclass(frozen=True)
class FeedbackSummary:
    count: int
    """Scores in the window."""
    score_sum: float
    mean_score: float | None
    """None below the policy's minimum count."""
    rate: float | None
    """Scores per request in the window; None without requests."""


@dataclass(frozen=True)
class AdapterDrift:
    """One adapter version's window against its reference, as exported and as `GetAdapterStats` returns it."""

    adapter: str
    version: int
    reference: Profile
    live: Profile
    report: DriftReport
    """Live statistics are None while the window is below the minimum."""
    feedback: FeedbackSummary
    requests_total: int
    """Requests recorded for this adapter version since the replica started."""
    policy: DriftPolicy
    """What the figures are judged by: false-alarm rate, raw thresholds, minimum samples, feedback floor."""
    changes: int
    """How many records have entered or left the window: a pooled report is kept until this moves."""


@dataclass
class _Window:
    calibration: Calibration
    """The version's reference, its features computed once."""
    records: deque[tuple[float, Record]] = field(default_factory=deque)
    feedback: deque[tuple[float, float]] = field(default_factory=deque)
    requests_total: int = 0
    changes: int = 0
    kept: tuple[int, AdapterDrift] | None = None
    """The last summary, and the number of changes it was made at."""


class DriftMonitor:
    def __init__(
        self,
        policy: DriftPolicy,
        *,
        prompt_frame: Callable[[], PromptFrame] = PromptFrame,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """`prompt_frame`: the base model's chat-template frame (`template_frame`), asked for once,
        when the first request is counted, since the tokenizer exists only once the engine has started."""
        self.policy = policy
        self._prompt_frame = functools.cache(prompt_frame)
        self._clock = clock
        self._draw = draw
        self._pending: deque[tuple[float, str, int, Profile | None, Sample]] = deque()  # appends are thread-safe
        self._lock = threading.Lock()  # the windows; held while a refresh folds the queue in
        self._requests_lock = threading.Lock()  # the request ids only, so recording never waits on a refresh
        self._windows: dict[WindowKey, _Window] = {}
        self._pooled: OrderedDict[tuple[WindowKey, ...], tuple[tuple[int, ...], DriftReport, Calibration]] = (
            OrderedDict()
        )
        self._requests: OrderedDict[str, WindowKey] = OrderedDict()

    # -- the request path: O(1) each -------------------------------------------------------

    def wants_prompt_score(self) -> bool:
        """Whether to score this request's prompt: true for a `prompt_scoring_fraction` of requests."""
        return self._draw() < self.policy.prompt_scoring_fraction

    def record(self, request_id: str, adapter: str, version: int, reference: Profile | None, sample: Sample) -> None:
        """One answered request of `adapter` version `version`, whose training profile is `reference`
        (parsed once, when the version's copy was verified); None: the version has no usable profile, so
        its traffic is not profiled, though feedback on the request is still taken."""
        self._pending.append((self._clock(), adapter, version, reference, sample))
        with self._requests_lock:
            self._requests[request_id] = (adapter, version)
            if len(self._requests) > _REMEMBERED_REQUESTS:
                self._requests.popitem(last=False)

    def record_feedback(self, request_id: str, score: float) -> WindowKey:
        """Count a caller's score for an answered request; returns the adapter and version that answered it."""
        with self._requests_lock:
            key = self._requests.get(request_id)
        if key is None:
            raise NotFound(
                f"no recent request {request_id!r} on this replica: feedback takes the request_id of a "
                f"Generate response from the last {_REMEMBERED_REQUESTS} requests",
                field="request_id",
            )
        with self._lock:
            self._drain()
            window = self._windows.get(key)
            if window is not None:
                window.feedback.append((self._clock(), score))
                window.changes += 1
            return key

    # -- readers ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Count the requests recorded since the last refresh into their windows."""
        with self._lock:
            self._drain()

    def adapters(self) -> list[AdapterDrift]:
        """Every adapter version with a window, brought up to date, by name and version."""
        with self._lock:
            self._drain()
            return [self._summarise(key, window) for key, window in sorted(self._windows.items())]

    def adapter(self, name: str) -> list[AdapterDrift]:
        """The windows of every version of `name`, oldest version first."""
        with self._lock:
            self._drain()
            found = [self._summarise(key, window) for key, window in sorted(self._windows.items()) if key[0] == name]
        if not found:
            raise NotFound(
                f"adapter {name!r} has answered no request on this replica since it started, so it has no "
                "drift window yet",
                field="adapter",
            )
        return found

    def pooled_report(self, entries: Sequence[AdapterDrift]) -> DriftReport:
        """The report of several windows counted as one (their references and records together): what a
        metrics label that pools adapters shows. Kept until one of the windows changes."""
        if len(entries) == 1:
            return entries[0].report
        key = tuple((entry.adapter, entry.version) for entry in entries)
        changes = tuple(entry.changes for entry in entries)
        with self._lock:
            kept = self._pooled.get(key)
            if kept is not None:
                self._pooled.move_to_end(key)
                if kept[0] == changes:
                    return kept[1]
        calibration = kept[2] if kept else Calibration(Profile.total(entry.reference for entry in entries))
        live = Profile.total(entry.live for entry in entries)
        pooled = report(calibration, live, self.policy.verdicts, min_samples=self.policy.min_samples)
        with self._lock:
            self._pooled[key] = (changes, pooled, calibration)
            while len(self._pooled) > _POOLED_CALIBRATIONS:
                self._pooled.popitem(last=False)
        return pooled

    def _summarise(self, key: WindowKey, window: _Window) -> AdapterDrift:
        if window.kept is not None and window.kept[0] == window.changes:
            return window.kept[1]
        live = Profile.of_window([record for _, record in window.records])
        summary = AdapterDrift(
            adapter=key[0],
            version=key[1],
            reference=window.calibration.reference,
            live=live,
            report=report(window.calibration, live, self.policy.verdicts, min_samples=self.policy.min_samples),
            feedback=self._feedback(window, live.sample_count),
            requests_total=window.requests_total,
            policy=self.policy,
            changes=window.changes,
        )
        window.kept = (window.changes, summary)
        return summary

    def _feedback(self, window: _Window, requests: int) -> FeedbackSummary:
        count, total = len(window.feedback), sum(score for _, score in window.feedback)
        mean = total / count if count >= self.policy.min_samples else None
        return FeedbackSummary(
            count=count, score_sum=total, mean_score=mean, rate=count / requests if requests else None
        )

    # -- bringing windows up to date (under the lock) --------------------------------------

    def _drain(self) -> None:
        while self._pending:
            at, adapter, version, reference, sample = self._pending.popleft()
            if reference is None:
                continue
            window = self._windows.get((adapter, version))
            if window is None:
                window = self._windows[(adapter, version)] = _Window(Calibration(reference))
            window.records.append((at, observe(sample, self._prompt_frame(), reference.form)))
            window.requests_total += 1
            window.changes += 1
        horizon = self._clock() - self.policy.window_seconds
        newest = {name: version for name, version in sorted(self._windows)}
        for key, window in list(self._windows.items()):
            while window.records and (
                len(window.records) > self.policy.window_requests or window.records[0][0] < horizon
            ):
                window.records.popleft()
                window.changes += 1
            while window.feedback and (
                len(window.feedback) > self.policy.window_requests or window.feedback[0][0] < horizon
            ):
                window.feedback.popleft()
                window.changes += 1
            if not window.records and not window.feedback and newest[key[0]] != key[1]:
                del self._windows[key]  # an older version that no longer answers
