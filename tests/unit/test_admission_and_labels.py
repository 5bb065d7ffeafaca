"""Back-pressure (Admission), bounded adapter labels (AdapterLabels) and how ServingMetrics uses them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from contextlib import nullcontext

import pytest
from prometheus_client.metrics import MetricWrapperBase

from loraplane.errors import FailedPrecondition, InvalidArgument, LoraplaneError, ResourceExhausted
from serving_svc.adapter_labels import OTHER_LABEL, AdapterLabels
from serving_svc.admission import Admission
from serving_svc.metrics import BASE_MODEL, BASE_MODEL_LABEL, ServingMetrics, VersionLabels

TIMEOUT = 5.0
"""Seconds a test waits for what should happen at once, so a regression fails instead of hanging."""

# -- Admission ------------------------------------------------------------------------------


async def _hold(admission: Admission, entered: list[int], index: int, release: asyncio.Event) -> None:
    async with admission.place():
        entered.append(index)
        await release.wait()


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.mark.parametrize(("max_concurrent", "max_queued"), [(1, 0), (1, 1), (2, 1), (3, 4)])
async def test_admission_runs_max_concurrent_queues_max_queued_and_refuses_the_rest(
    max_concurrent: int, max_queued: int
) -> None:
    admission = Admission(max_concurrent, max_queued, max_per_caller=100)
    release = asyncio.Event()
    entered: list[int] = []
    tasks = [asyncio.create_task(_hold(admission, entered, i, release)) for i in range(max_concurrent + max_queued)]
    await _settle()
    assert entered == list(range(max_concurrent))
    assert admission.queued == max_queued

    async def one_more() -> None:
        async with admission.place():
            pytest.fail("admitted past both bounds")

    with pytest.raises(ResourceExhausted, match=f"{max_concurrent} requests generating and {max_queued} waiting"):
        await asyncio.wait_for(one_more(), TIMEOUT)  # refused at once, never queued
    assert admission.queued == max_queued

    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert sorted(entered) == list(range(max_concurrent + max_queued))
    assert admission.queued == 0


async def test_a_cancelled_waiter_leaves_the_queue_and_makes_room() -> None:
    admission = Admission(1, 1, max_per_caller=100)
    release = asyncio.Event()
    entered: list[int] = []
    running = asyncio.create_task(_hold(admission, entered, 0, release))
    waiting = asyncio.create_task(_hold(admission, entered, 1, release))
    await _settle()
    assert admission.queued == 1

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.queued == 0
    late = asyncio.create_task(_hold(admission, entered, 2, release))  # the queue has room again
    await _settle()
    assert admission.queued == 1

    release.set()
    await asyncio.wait_for(asyncio.gather(running, late), TIMEOUT)
    assert entered == [0, 2]


async def test_a_waiter_cancelled_just_as_its_place_frees_gives_the_place_back() -> None:
    admission = Admission(1, 1, max_per_caller=100)
    holder = admission.place()
    await holder.__aenter__()
    entered: list[int] = []
    waiting = asyncio.create_task(_hold(admission, entered, 1, asyncio.Event()))
    await _settle()
    assert admission.queued == 1

    await holder.__aexit__(None, None, None)  # wakes the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert entered == []
    assert admission.queued == 0

    async def enter() -> None:
        async with admission.place():
            pass

    await asyncio.wait_for(enter(), TIMEOUT)


async def test_one_caller_at_its_limit_is_refused_while_others_are_admitted() -> None:
    admission = Admission(1, 8, max_per_caller=2)
    release = asyncio.Event()
    entered: list[int] = []

    async def hold(caller: str, index: int) -> None:
        async with admission.place(caller):
            entered.append(index)
            await release.wait()

    greedy = [asyncio.create_task(hold("greedy", i)) for i in range(2)]  # one generating, one waiting
    await _settle()
    with pytest.raises(ResourceExhausted, match="caller 'greedy' already has 2 requests in flight"):
        await asyncio.wait_for(hold("greedy", 2), TIMEOUT)
    polite = asyncio.create_task(hold("polite", 3))  # another caller still gets a place in the queue
    await _settle()
    assert admission.queued == 2

    release.set()
    await asyncio.wait_for(asyncio.gather(*greedy, polite), TIMEOUT)
    assert sorted(entered) == [0, 1, 3]
    await asyncio.wait_for(hold("greedy", 4), TIMEOUT)  # its requests ended: room again

    release.clear()
    anonymous = [asyncio.create_task(hold("", i)) for i in range(5, 9)]  # auth off: the replica's limits only
    await _settle()
    assert admission.queued == 3
    release.set()
    await asyncio.wait_for(asyncio.gather(*anonymous), TIMEOUT)


# -- AdapterLabels --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _labels(limit: int, *, half_life_seconds: float = 300.0) -> tuple[AdapterLabels, FakeClock, list[str]]:
    clock = FakeClock()
    demoted: list[str] = []
    labels = AdapterLabels(limit, demoted.append, half_life_seconds=half_life_seconds, clock=clock)
    return labels, clock, demoted


def _requests_until_labelled(labels: AdapterLabels, name: str, most: int = 100) -> int:
    for count in range(1, most + 1):
        if labels.label(name) == name:
            return count
    raise AssertionError(f"{name} never got a label of its own")


def test_first_adapters_own_labels_and_newcomers_count_as_other() -> None:
    labels, _, demoted = _labels(2)
    assert [labels.label(n) for n in ("a", "b", "a", "c", "b", "d")] == ["a", "b", "a", OTHER_LABEL, "b", OTHER_LABEL]
    assert labels.owners() == {"a", "b"}
    assert demoted == []


@pytest.mark.parametrize(("owner_requests", "needed"), [(1, 3), (2, 5), (5, 11)])
def test_a_newcomer_takes_a_label_once_twice_as_busy_as_the_quietest_owner(owner_requests: int, needed: int) -> None:
    labels, _, demoted = _labels(1)
    for _ in range(owner_requests):
        labels.label("a")
    assert _requests_until_labelled(labels, "b") == needed
    assert demoted == ["a"]
    assert labels.owners() == {"b"}
    assert labels.label("a") == OTHER_LABEL  # the demoted adapter counts under "_other" from then on


@pytest.mark.parametrize(
    ("half_life", "elapsed", "needed"),
    [(10.0, 0.0, 9), (10.0, 10.0, 5), (10.0, 20.0, 3), (10.0, 30.0, 2), (10.0, 100.0, 1), (None, 600.0, 3)],
)
def test_counts_decay_with_the_half_life(half_life: float | None, elapsed: float, needed: int) -> None:
    clock = FakeClock()
    demoted: list[str] = []
    if half_life is None:  # the default: five minutes
        labels = AdapterLabels(1, demoted.append, clock=clock)
        half_life = 300.0
    else:
        labels = AdapterLabels(1, demoted.append, half_life_seconds=half_life, clock=clock)
    for _ in range(4):
        labels.label("a")
    clock.now += elapsed  # a's count is now 4 / 2 ** (elapsed / half_life)
    assert _requests_until_labelled(labels, "b") == needed
    assert demoted == ["a"]


def test_the_quietest_owner_is_demoted_and_ties_go_by_name() -> None:
    labels, _, demoted = _labels(3)
    for name, count in (("busy", 5), ("q2", 1), ("q1", 1)):
        for _ in range(count):
            labels.label(name)
    assert _requests_until_labelled(labels, "new") == 3
    assert demoted == ["q1"]
    assert _requests_until_labelled(labels, "newer") == 3
    assert demoted == ["q1", "q2"]
    assert labels.owners() == {"busy", "new", "newer"}


def test_two_equally_busy_adapters_do_not_swap_labels() -> None:
    labels, _, demoted = _labels(1)
    results = [labels.label(name) for _ in range(50) for name in ("a", "b")]
    assert set(results[0::2]) == {"a"}
    assert set(results[1::2]) == {OTHER_LABEL}
    assert demoted == []


def test_every_request_is_counted_under_exactly_one_label_and_owners_stay_bounded() -> None:
    rng = random.Random(7)
    labels, clock, demoted = _labels(3, half_life_seconds=5.0)
    names = [f"adapter-{i}" for i in range(12)]
    weights = [2.0**-i for i in range(12)]
    owners = set[str]()
    for _ in range(2000):
        clock.now += rng.expovariate(20.0)
        if rng.random() < 0.01:  # traffic shifts now and then
            rng.shuffle(weights)
        name = rng.choices(names, weights)[0]
        already_demoted = len(demoted)
        label = labels.label(name)
        new_owners = set(labels.owners())
        assert len(new_owners) <= 3
        assert label == (name if name in new_owners else OTHER_LABEL)
        assert demoted[already_demoted:] == sorted(owners - new_owners)  # each loss reported, once
        assert new_owners - owners <= {name}
        owners = new_owners
    assert demoted, "traffic shifts should have demoted someone"


# -- ServingMetrics -------------------------------------------------------------------------


def _value(metrics: ServingMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_demotion_removes_every_series_of_the_demoted_adapter_only() -> None:
    metrics = ServingMetrics(adapter_labels=2)
    for name in ("a", "b"):
        with metrics.track("Generate") as record:
            served = metrics.version_labels(name, 1)
            record.adapter, record.version = served
            metrics.prompt_tokens(served, 5)
            metrics.first_token(served, 0.1)
    metrics.prompt_tokens(BASE_MODEL, 7)
    metrics.adapter_label("a")  # b is now the quietest
    assert metrics.adapter_label("c") == OTHER_LABEL
    metrics.adapter_label("c")  # exactly twice b's count: the real clock's decay decides this one
    assert metrics.adapter_label("c") == "c"

    for name in ("loraplane_serving_prompt_tokens_total", "loraplane_serving_time_to_first_token_seconds_count"):
        assert _value(metrics, name, adapter="b", version="1") is None
        assert _value(metrics, name, adapter="a", version="1") is not None
    requests = "loraplane_serving_requests_total"
    assert _value(metrics, requests, rpc="Generate", adapter="b", version="1", status="OK") is None
    assert _value(metrics, requests, rpc="Generate", adapter="a", version="1", status="OK") == 1
    assert _value(metrics, "loraplane_serving_prompt_tokens_total", adapter=BASE_MODEL_LABEL, version="") == 7


VERSIONED = tuple(
    f"loraplane_serving_{name}"
    for name in ("prompt_tokens", "time_to_first", "inter_token", "generated_tokens", "generation_latency", "feedback")
)
"""The request families that carry a `version` label next to `adapter`."""


def _v1(adapter: str) -> VersionLabels:
    """An intent method handed the adapter's own name, as if it owned a label, version 1."""
    return VersionLabels(adapter, "1")


ADAPTER_INTENTS: list[tuple[Callable[[ServingMetrics, str], None], str, float]] = [
    (lambda metrics, adapter: metrics.prompt_tokens(_v1(adapter), 3), "loraplane_serving_prompt_tokens_total", 3),
    (
        lambda metrics, adapter: metrics.first_token(_v1(adapter), 0.2),
        "loraplane_serving_time_to_first_token_seconds_count",
        1,
    ),
    (
        lambda metrics, adapter: metrics.inter_token(_v1(adapter), 0.01, 2),
        "loraplane_serving_inter_token_latency_seconds_count",
        2,
    ),
    (
        lambda metrics, adapter: metrics.tokens_generated(_v1(adapter), 4),
        "loraplane_serving_generated_tokens_total",
        4,
    ),
    (
        lambda metrics, adapter: metrics.generation_finished(_v1(adapter), 1.0),
        "loraplane_serving_generation_latency_seconds_count",
        1,
    ),
    (lambda metrics, adapter: metrics.feedback(_v1(adapter)), "loraplane_serving_feedback_total", 1),
    (
        lambda metrics, adapter: metrics.adapter_loaded(adapter, "disk", 0.5),
        "loraplane_serving_adapter_loads_total",
        1,
    ),
    (lambda metrics, adapter: metrics.load_failed(adapter), "loraplane_serving_adapter_load_failures_total", 1),
]


@pytest.mark.parametrize(
    ("intent", "sample_name", "per_call"),
    ADAPTER_INTENTS,
    ids=[name.removeprefix("loraplane_serving_") for _, name, _ in ADAPTER_INTENTS],
)
def test_adapters_beyond_the_label_bound_fold_into_other_whatever_name_the_caller_passes(
    intent: Callable[[ServingMetrics, str], None], sample_name: str, per_call: float
) -> None:
    """Two labels, four adapters: each intent method is handed the adapter's own name, and still only
    the two owners get series; the other two are summed under `_other`."""
    metrics = ServingMetrics(adapter_labels=2)
    for name in "abcd":
        metrics.adapter_label(name)  # the request that brings it
        intent(metrics, name)
    series = {
        (sample.labels["adapter"], sample.labels.get("version")): sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == sample_name
    }
    version = "1" if sample_name.startswith(VERSIONED) else None
    other = OTHER_LABEL if version else None  # a folded adapter's version folds with it: the bound holds for both
    assert series == {("a", version): per_call, ("b", version): per_call, (OTHER_LABEL, other): 2 * per_call}


def test_no_prometheus_family_is_reachable_without_an_intent_method() -> None:
    metrics = ServingMetrics(adapter_labels=2)
    public = {name: value for name, value in vars(metrics).items() if not name.startswith("_")}
    assert not [name for name, value in public.items() if isinstance(value, MetricWrapperBase)]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "OK"),
        (InvalidArgument("bad", field="x"), "INVALID_ARGUMENT"),
        (FailedPrecondition("no"), "FAILED_PRECONDITION"),
        (ResourceExhausted("full"), "RESOURCE_EXHAUSTED"),
        (asyncio.CancelledError(), "CANCELLED"),
        (GeneratorExit(), "CANCELLED"),
        (RuntimeError("boom"), "INTERNAL"),
    ],
)
def test_track_counts_each_rpc_with_the_status_its_error_maps_to(error: BaseException | None, status: str) -> None:
    metrics = ServingMetrics(adapter_labels=2)
    with pytest.raises(type(error)) if error else nullcontext(), metrics.track("Generate") as record:
        record.adapter, record.version = metrics.version_labels("a", 3)
        if error:
            raise error
    requests = "loraplane_serving_requests_total"
    assert _value(metrics, requests, rpc="Generate", adapter="a", version="3", status=status) == 1
    assert _value(metrics, "loraplane_serving_request_duration_seconds_count", rpc="Generate") == 1
    if isinstance(error, LoraplaneError):
        assert error.code.name == status
