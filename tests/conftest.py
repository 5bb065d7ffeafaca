"""Fixtures shared by every tier live in tests/support/ and are registered here."""

pytest_plugins: list[str] = []
