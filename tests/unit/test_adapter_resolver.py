"""AdapterResolver over the real file store: names to versions, the TTL, the outage fallback, servable checks."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from loraplane.artifact import ArtifactRepository, Manifest
from loraplane.errors import FailedPrecondition, NotFound, Unavailable
from loraplane.names import AdapterSpec
from loraplane.storage import FileStore
from serving_svc.adapters.resolver import AdapterResolver, ServableCheck
from tests.support.fake_engine import FINGERPRINT, OTHER_FINGERPRINT, publish_fake_adapter
from tests.support.outage_store import Clock, FakeOutageStore

TTL = 10.0


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.store = FakeOutageStore(FileStore(tmp_path / "store"))
        self.repository = ArtifactRepository(self.store)
        self.clock = Clock()
        self.workdir = tmp_path / "sources"
        servable = ServableCheck(
            base_model_name="tiny",
            base_model_fingerprint=FINGERPRINT,
            max_rank=16,
            engine_name="test",
            engine_methods=frozenset({"lora", "qlora"}),
        )
        self.resolver = AdapterResolver(self.repository, servable, TTL, clock=self.clock)

    def publish(self, name: str, **kwargs: Any) -> Manifest:
        return publish_fake_adapter(self.repository, self.workdir, name, **kwargs)

    async def key(self, spec: AdapterSpec) -> str:
        return (await self.resolver.resolve(spec)).key


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.mark.parametrize(
    ("elapsed", "resolved", "reads"),
    [(0.0, "alpha@v1", 0), (TTL - 0.01, "alpha@v1", 0), (TTL, "alpha@v2", 1), (10 * TTL, "alpha@v2", 1)],
)
async def test_a_name_is_resolved_again_once_its_answer_is_a_ttl_old(
    setup: Setup, elapsed: float, resolved: str, reads: int
) -> None:
    setup.publish("alpha")
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v1"
    setup.publish("alpha")
    before = setup.store.manifest_reads
    setup.clock.now += elapsed
    assert await setup.key(AdapterSpec("alpha")) == resolved
    assert setup.store.manifest_reads - before == reads
    assert setup.resolver.newest_version("alpha") == int(resolved[-1])


async def test_a_pinned_version_is_read_from_the_store_once(setup: Setup) -> None:
    setup.publish("alpha")
    setup.publish("alpha")
    for _ in range(3):
        assert await setup.key(AdapterSpec("alpha", 1)) == "alpha@v1"
        setup.clock.now += 100 * TTL
    assert setup.store.manifest_reads == 1
    assert setup.resolver.newest_version("alpha") is None, "never asked for unpinned"


async def test_concurrent_first_resolves_of_a_name_read_the_store_once(setup: Setup) -> None:
    setup.publish("alpha")
    keys = await asyncio.gather(*(setup.key(AdapterSpec("alpha")) for _ in range(10)))
    assert keys == ["alpha@v1"] * 10
    assert setup.store.manifest_reads == 1
    assert setup.resolver._locks._locks == {}


async def test_through_an_outage_a_name_keeps_its_last_version_for_a_ttl_at_a_time(setup: Setup) -> None:
    setup.publish("alpha")
    setup.publish("beta")
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v1"
    assert await setup.key(AdapterSpec("beta", 1)) == "beta@v1"
    setup.publish("alpha")
    setup.store.down = True

    setup.clock.now += TTL  # the answer is stale: the store is asked, and is down
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v1"
    setup.store.down = False
    setup.clock.now += TTL - 0.01  # the fallback holds for another TTL without asking the store
    reads = setup.store.manifest_reads
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v1"
    assert setup.store.manifest_reads == reads
    assert await setup.key(AdapterSpec("beta", 1)) == "beta@v1", "a pinned version needs no store"

    setup.clock.now += 0.01  # the store is back and asked again: the new version is served
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v2"


@pytest.mark.parametrize("never_resolved", [AdapterSpec("beta"), AdapterSpec("alpha", 1)])
async def test_during_an_outage_what_was_never_resolved_is_unavailable(
    setup: Setup, never_resolved: AdapterSpec
) -> None:
    setup.publish("alpha")
    setup.publish("alpha")
    setup.publish("beta")
    assert await setup.key(AdapterSpec("alpha")) == "alpha@v2"
    setup.store.down = True
    with pytest.raises(Unavailable, match="cannot reach the store"):
        await setup.resolver.resolve(never_resolved)
    assert await setup.key(AdapterSpec("alpha", 2)) == "alpha@v2", "the version the name resolved to is known"


@pytest.mark.parametrize("spec", [AdapterSpec("nope"), AdapterSpec("alpha", 2)])
async def test_what_the_store_lacks_is_not_found(setup: Setup, spec: AdapterSpec) -> None:
    setup.publish("alpha")
    with pytest.raises(NotFound):
        await setup.resolver.resolve(spec)


@pytest.mark.parametrize(
    ("published", "message"),
    [
        ({"fingerprint": OTHER_FINGERPRINT}, "needs base model 'tiny' \\(fingerprint sha256:b+\\)"),
        ({"rank": 32}, "LoRA rank 32; this replica accepts at most 16"),
        ({"method": "dora"}, "dora adapter, which the test engine cannot serve; it serves lora, qlora"),
    ],
)
async def test_a_version_this_replica_cannot_serve_is_refused_yet_can_be_looked_up(
    setup: Setup, published: dict[str, Any], message: str
) -> None:
    setup.publish("odd", **published)
    with pytest.raises(FailedPrecondition, match=message):
        await setup.resolver.resolve(AdapterSpec("odd"))
    assert (await setup.resolver.lookup(AdapterSpec("odd"))).key == "odd@v1", "unload can still find it"


async def test_published_lists_the_newest_version_of_every_adapter(setup: Setup) -> None:
    setup.publish("alpha")
    setup.publish("alpha")
    setup.publish("foreign", fingerprint=OTHER_FINGERPRINT)
    listed = {adapter.key: adapter for adapter in await setup.resolver.published()}
    assert sorted(listed) == ["alpha@v2", "foreign@v1"]
    assert listed["alpha@v2"].uri == setup.repository.version_uri("alpha", 2)
    assert len(listed["alpha@v2"].manifest_sha256) == 64
