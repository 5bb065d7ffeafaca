"""Live drift per adapter: a sliding window of requests compared with the adapter's training profile.

A request costs the monitor one append to a queue (`record`); the windows are brought up to date
by `refresh`, which the replica calls every second on a worker thread, and before every read (a
Prometheus scrape, `GetAdapterStats`), so drift never adds work to the request path. Each
adapter name has one window, reset when a new version (with its own reference profile) starts
answering. The reference comes with each request as a parsed profile (the adapter manager parses
it once, when it verifies the version's copy), so the monitor reads no file and the disk cache
may trim copies without asking drift. The window keeps the last
`window_requests` requests no older than `window_seconds`; below `min_samples` requests the
live statistics are withheld, since a handful of requests gives noise rather than drift.

Outcome drift comes from callers: `record_feedback` takes a score in [0, 1] for a request id
that this replica answered recently.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from loraplane.drift import DriftReport, DriftStatistic, Profile, ProfileBuilder, PromptFrame, Sample, compare
from loraplane.errors import NotFound

_REMEMBERED_REQUESTS = 100_000
"""Request ids kept for feedback (about 10 MB); older ones get NOT_FOUND."""


@dataclass(frozen=True)
class DriftPolicy:
    window_requests: int
    window_seconds: float
    min_samples: int
    """Fewest requests (and feedback scores) in a window for its statistics to be reported."""
    prompt_scoring_fraction: float
    """Share of requests whose prompt the engine scores (prompt surprise); it costs a prompt's logits."""
    thresholds: Mapping[DriftStatistic, float]
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
    """One adapter's window against its reference, as exported and as `GetAdapterStats` returns it."""

    adapter: str
    version: int
    reference: Profile
    live: Profile
    report: DriftReport
    """Live statistics are None while the window is below the minimum."""
    feedback: FeedbackSummary
    requests_total: int
    """Requests recorded for this adapter name since the replica started."""
    policy: DriftPolicy
    """What the figures are judged by: thresholds, minimum samples, feedback floor."""


@dataclass
class _Window:
    version: int
    reference: Profile
    builder: ProfileBuilder
    """Counts prompts as `reference` does: without the template's frame, or whole for an older reference."""
    samples: deque[tuple[float, Sample]] = field(default_factory=deque)
    feedback: deque[tuple[float, float]] = field(default_factory=deque)


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
        when the first window opens, since the tokenizer exists only once the engine has started."""
        self.policy = policy
        self._prompt_frame = functools.cache(prompt_frame)
        self._clock = clock
        self._draw = draw
        self._pending: deque[tuple[float, str, int, Profile | None, Sample]] = deque()  # appends are thread-safe
        self._lock = threading.Lock()  # the windows; held while a refresh folds the queue in
        self._requests_lock = threading.Lock()  # the request ids only, so recording never waits on a refresh
        self._windows: dict[str, _Window] = {}
        self._totals: dict[str, int] = {}
        self._requests: OrderedDict[str, tuple[str, int]] = OrderedDict()  # request id -> (adapter, version)

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

    def record_feedback(self, request_id: str, score: float) -> str:
        """Count a caller's score for an answered request; returns its adapter's name."""
        with self._requests_lock:
            entry = self._requests.get(request_id)
        if entry is None:
            raise NotFound(
                f"no recent request {request_id!r} on this replica: feedback takes the request_id of a "
                f"Generate response from the last {_REMEMBERED_REQUESTS} requests",
                field="request_id",
            )
        adapter, version = entry
        with self._lock:
            self._drain()
            window = self._windows.get(adapter)
            if window is not None and window.version == version:
                window.feedback.append((self._clock(), score))
            return adapter

    # -- readers ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Count the requests recorded since the last refresh into their windows."""
        with self._lock:
            self._drain()

    def adapters(self) -> list[AdapterDrift]:
        """Every adapter with a window, brought up to date."""
        with self._lock:
            self._drain()
            return [self._summarise(name, window) for name, window in sorted(self._windows.items())]

    def adapter(self, name: str) -> AdapterDrift:
        with self._lock:
            self._drain()
            window = self._windows.get(name)
            if window is None:
                raise NotFound(
                    f"adapter {name!r} has answered no request on this replica since it started, so it has no "
                    "drift window yet",
                    field="adapter",
                )
            return self._summarise(name, window)

    def report(self, reference: Profile, live: Profile) -> DriftReport:
        """`compare`, withholding the live statistics of a window below the minimum."""
        report = compare(reference, live)
        if live.sample_count < self.policy.min_samples:
            report = report.model_copy(
                update={
                    "statistics": dict.fromkeys(DriftStatistic),
                    "output_confidence": None,
                    "prompt_surprise": None,
                }
            )
        return report

    def _summarise(self, name: str, window: _Window) -> AdapterDrift:
        live = window.builder.build()
        feedback = self._feedback(window, live.sample_count)
        return AdapterDrift(
            adapter=name,
            version=window.version,
            reference=window.reference,
            live=live,
            report=self.report(window.reference, live),
            feedback=feedback,
            requests_total=self._totals.get(name, 0),
            policy=self.policy,
        )

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
            window = self._windows.get(adapter)
            if window is None or window.version != version:
                builder = ProfileBuilder(self._prompt_frame(), prompt_tokens=reference.prompt_tokens)
                window = self._windows[adapter] = _Window(version, reference, builder)
            window.builder.add(sample)
            window.samples.append((at, sample))
            self._totals[adapter] = self._totals.get(adapter, 0) + 1
        horizon = self._clock() - self.policy.window_seconds
        for window in self._windows.values():
            while window.samples and (
                len(window.samples) > self.policy.window_requests or window.samples[0][0] < horizon
            ):
                window.builder.remove(window.samples.popleft()[1])
            while window.feedback and (
                len(window.feedback) > self.policy.window_requests or window.feedback[0][0] < horizon
            ):
                window.feedback.popleft()
