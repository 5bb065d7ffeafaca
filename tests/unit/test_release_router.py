"""ReleaseRouter over the real file store: routes by the newest record, the TTL, the store outage."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loraplane.artifact import ArtifactRepository
from loraplane.errors import Unavailable
from loraplane.names import AdapterSpec
from loraplane.releases import ReleaseAction, ReleaseChange, ReleaseLog, ReleaseMode, VersionRole
from loraplane.storage import FileStore
from serving_svc.release_metrics import ReleaseCollector
from serving_svc.releases import ReleaseRouter, Route, _Known
from tests.support.fake_engine import publish_fake_adapter
from tests.support.outage_store import Clock, FakeOutageStore

TTL = 10.0
NAME = "alpha"
EVERY_CALLER = ReleaseChange(action=ReleaseAction.START, candidate=2, stable=1, canary_share=1.0)


@pytest.fixture
def store(tmp_path: Path) -> FakeOutageStore:
    store = FakeOutageStore(FileStore(tmp_path / "store"))
    repository = ArtifactRepository(store)
    for _ in range(2):
        publish_fake_adapter(repository, tmp_path / "sources", NAME)
    return store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(store: FakeOutageStore) -> ReleaseLog:
    return ReleaseLog(ArtifactRepository(store))


@pytest.fixture
def router(log: ReleaseLog, clock: Clock) -> ReleaseRouter:
    return ReleaseRouter(log, TTL, clock=clock)


async def test_without_a_release_the_name_stays_unpinned_and_a_pin_is_kept(router: ReleaseRouter) -> None:
    assert await router.route(AdapterSpec(NAME), "u") == Route(AdapterSpec(NAME), VersionRole.LATEST)
    pinned = AdapterSpec(NAME, 1)
    assert await router.route(pinned, "u") == Route(pinned, VersionRole.PINNED)


async def test_another_replicas_change_is_followed_within_the_ttl(
    router: ReleaseRouter, log: ReleaseLog, clock: Clock
) -> None:
    assert (await router.route(AdapterSpec(NAME), "u")).role is VersionRole.LATEST
    log.change(NAME, EVERY_CALLER, actor="other replica")
    clock.now += TTL - 1
    assert (await router.route(AdapterSpec(NAME), "u")).role is VersionRole.LATEST, "read once per TTL"
    clock.now += 1
    assert await router.route(AdapterSpec(NAME), "u") == Route(AdapterSpec(NAME, 2), VersionRole.CANDIDATE, trial=1)


async def test_a_change_through_this_replica_applies_here_at_once(router: ReleaseRouter) -> None:
    assert (await router.route(AdapterSpec(NAME), "u")).role is VersionRole.LATEST
    await router.change(NAME, EVERY_CALLER, actor="ops", reason="")
    assert (await router.route(AdapterSpec(NAME), "u")).spec == AdapterSpec(NAME, 2)


async def test_shadow_mode_routes_to_stable_and_names_the_shadow(router: ReleaseRouter) -> None:
    shadow = ReleaseChange(action=ReleaseAction.START, candidate=2, stable=1, mode=ReleaseMode.SHADOW)
    await router.change(NAME, shadow, actor="ops", reason="")
    route = await router.route(AdapterSpec(NAME), "u")
    assert route == Route(AdapterSpec(NAME, 1), VersionRole.STABLE, shadow=AdapterSpec(NAME, 2), trial=1)


async def test_through_a_store_outage_the_last_known_release_holds_and_is_reported_stale(
    router: ReleaseRouter, store: FakeOutageStore, clock: Clock
) -> None:
    await router.change(NAME, EVERY_CALLER, actor="ops", reason="")
    store.down = True
    clock.now += TTL
    assert (await router.route(AdapterSpec(NAME), "u")).spec == AdapterSpec(NAME, 2)
    assert router.stale_names() == [NAME]
    view = await router.view(NAME, history_limit=5)
    assert view.stale and view.current is not None and view.current.state.candidate == 2
    with pytest.raises(Unavailable):
        await router.change(NAME, ReleaseChange(action=ReleaseAction.PROMOTE), actor="ops", reason="")
    store.down = False
    clock.now += TTL
    assert (await router.route(AdapterSpec(NAME), "u")).spec == AdapterSpec(NAME, 2)
    assert router.stale_names() == []


async def test_a_name_never_read_routes_unpinned_through_an_outage(
    router: ReleaseRouter, store: FakeOutageStore
) -> None:
    store.down = True
    assert await router.route(AdapterSpec(NAME), "u") == Route(AdapterSpec(NAME), VersionRole.LATEST)


async def test_the_releases_routed_by_are_exported_within_the_label_bound(
    router: ReleaseRouter, store: FakeOutageStore, clock: Clock
) -> None:
    registry = CollectorRegistry()
    registry.register(ReleaseCollector(router, owns_label=lambda name: name == NAME))
    await router.change(NAME, EVERY_CALLER, actor="ops", reason="")
    assert registry.get_sample_value("loraplane_release_stable_version", {"adapter": NAME}) == 1
    assert registry.get_sample_value("loraplane_release_candidate_version", {"adapter": NAME}) == 2
    assert registry.get_sample_value("loraplane_release_canary_share", {"adapter": NAME}) == 1.0
    assert registry.get_sample_value("loraplane_release_state_stale", {"adapter": NAME}) == 0
    store.down = True
    clock.now += TTL
    await router.route(AdapterSpec(NAME), "u")
    assert registry.get_sample_value("loraplane_release_state_stale", {"adapter": NAME}) == 1
    router_without_label = ReleaseCollector(router, owns_label=lambda name: False)
    assert all(not family.samples for family in router_without_label.collect())


async def test_a_read_that_ends_after_a_newer_change_here_does_not_undo_it(
    router: ReleaseRouter, log: ReleaseLog, clock: Clock
) -> None:
    old = log.change(NAME, EVERY_CALLER, actor="ops")
    newer = await router.change(NAME, ReleaseChange(action=ReleaseAction.PAUSE), actor="ops", reason="")
    router._remember(NAME, _Known(clock(), old))  # a read begun before the pause, ending after it
    assert await router.current(NAME) == newer
