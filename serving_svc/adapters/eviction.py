"""Which version leaves a full tier: the policy as an object of its own, as SGLang's LoRA memory pool has it.

A tier tells its policy when a version is used and when it leaves; when the tier is full it asks
for a victim among the versions that may go (not in use, not pinned), so the rule for choosing
is kept apart from the rules for what may be chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Collection


class EvictionPolicy(ABC):
    @abstractmethod
    def mark_used(self, key: str) -> None:
        """Version `key` entered the tier or served a request."""

    @abstractmethod
    def mark_idle(self, key: str) -> None:
        """Version `key` entered the tier for work that yields to callers (shadow requests): the first to go."""

    @abstractmethod
    def select_victim(self, candidates: Collection[str]) -> str | None:
        """The version among `candidates` to evict next; None when there are none."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Version `key` left the tier; nothing if it is unknown."""

    @abstractmethod
    def order(self) -> list[str]:
        """Every version in the tier, the next to be evicted first (what listings show)."""


class LRUEvictionPolicy(EvictionPolicy):
    """The least recently used version goes first."""

    def __init__(self) -> None:
        self._used: OrderedDict[str, None] = OrderedDict()  # least recently used first

    def mark_used(self, key: str) -> None:
        self._used[key] = None
        self._used.move_to_end(key)

    def mark_idle(self, key: str) -> None:
        self._used[key] = None
        self._used.move_to_end(key, last=False)

    def select_victim(self, candidates: Collection[str]) -> str | None:
        return next((key for key in self._used if key in candidates), None)

    def remove(self, key: str) -> None:
        self._used.pop(key, None)

    def order(self) -> list[str]:
        return list(self._used)
