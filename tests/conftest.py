"""Fixtures shared by every tier live in tests/support/ and are registered here; so is the rule that a
test's tier is its folder.

The tiers, selected with `-m`:
- tests/unit: seconds, no model, no server (`-m "not integration and not e2e"`);
- tests/integration, marked `integration` here: the tiny model, real engines and servers (`-m integration`);
- tests/e2e, marked `e2e` here: the services as processes, whole user journeys (`-m e2e`).

The marker comes from the folder, in this one place, so a new test file cannot land in the fast tier
by forgetting a `pytestmark` line; markers of their own (`s3`) stay in the files that need them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = ["tests.support.tiny_model", "tests.support.ceph"]

TESTS = Path(__file__).resolve().parent
TIER_MARKERS = {"integration": pytest.mark.integration, "e2e": pytest.mark.e2e}
"""Folder under tests/ -> the marker every test in it carries."""
MODEL_FIXTURES = frozenset({"tiny_model_dir"})
"""Fixtures that load a model: a unit test may not ask for them."""


def tier_of(path: Path) -> str | None:
    """The folder under tests/ that `path` lies in; None outside tests/."""
    resolved = path.resolve()
    return resolved.relative_to(TESTS).parts[0] if resolved.is_relative_to(TESTS) else None


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by `-m`
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item.path)
        if tier in TIER_MARKERS:
            item.add_marker(TIER_MARKERS[tier])
        elif tier == "unit" and MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} loads a model: it belongs in tests/integration")
