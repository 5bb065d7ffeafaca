"""Adapters on a serving replica: names resolved to versions, verified copies on disk, engine and host slots.

`AdapterManager` (manager.py) is the face the rest of serving uses; behind it, each with one job:
`resolver.py` (names to versions), `disk_cache.py` (verified copies and their drift profiles),
`slots.py` (engine and host tiers, pins, draining, single flight) with `eviction.py` (which
version leaves a full tier), and `keyed_locks.py` (single flight per key).
"""

from serving_svc.adapters.disk_cache import DiskCache, VerifiedCopy
from serving_svc.adapters.manager import AdapterManager, AdapterPolicy, AdapterStatus, AdapterUsage
from serving_svc.adapters.resolver import AdapterResolver, ResolvedAdapter, ServableCheck
from serving_svc.adapters.slots import AdapterSlots, NoIdleSlot

__all__ = [
    "AdapterManager",
    "AdapterPolicy",
    "AdapterResolver",
    "AdapterSlots",
    "AdapterStatus",
    "AdapterUsage",
    "DiskCache",
    "NoIdleSlot",
    "ResolvedAdapter",
    "ServableCheck",
    "VerifiedCopy",
]
