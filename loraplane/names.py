"""Adapter names and `name@vN` references: the only way request text reaches a store path."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loraplane.errors import InvalidArgument

ADAPTER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSION_RE = re.compile(r"^v([1-9][0-9]{0,8})$")


def validate_adapter_name(name: str, *, field: str = "adapter_name") -> str:
    """Return `name` if it is a legal adapter name, else raise InvalidArgument saying why."""
    if not ADAPTER_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"adapter name {name!r} is invalid: use 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit",
            field=field,
        )
    if ".." in name:
        raise InvalidArgument(f"adapter name {name!r} must not contain '..'", field=field)
    return name


@dataclass(frozen=True)
class AdapterSpec:
    """What a request asks for: an adapter name and optionally a pinned version."""

    name: str
    version: int | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@v{self.version}"


def parse_adapter_spec(text: str, *, field: str = "adapter") -> AdapterSpec:
    """Parse "name" or "name@vN"; raise InvalidArgument naming `field` for anything else."""
    name, sep, version_text = text.partition("@")
    validate_adapter_name(name, field=field)
    if not sep:
        return AdapterSpec(name)
    match = _VERSION_RE.fullmatch(version_text)
    if not match:
        raise InvalidArgument(
            f"adapter version {version_text!r} in {text!r} is invalid: write name@vN with N >= 1, "
            "or just the name for the newest version",
            field=field,
        )
    return AdapterSpec(name, int(match.group(1)))


def whole_adapter_name(text: str, subject: str) -> str:
    """The adapter a release, a capture or a retraining policy (the `subject`) is about: a name, never
    `name@vN` (each is about all its versions); InvalidArgument naming `adapter` otherwise."""
    if not text:
        raise InvalidArgument(f"name the adapter whose {subject} this is", field="adapter")
    if "@" in text:
        raise InvalidArgument(
            f"{text!r} names a version; a {subject} is about the adapter's name: give it without '@vN'", field="adapter"
        )
    return validate_adapter_name(text, field="adapter")
