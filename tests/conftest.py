"""Fixtures shared by every tier live in tests/support/ and are registered here."""

pytest_plugins: list[str] = ["tests.support.tiny_model", "tests.support.ceph"]
