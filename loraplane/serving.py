"""The vocabulary of serving, shared by the replica, the client and the CLI: each defined here once
(the proto enums are their wire form, mapped in `loraplane.wire`)."""

from __future__ import annotations

from typing import Literal

LoadedTier = Literal["engine", "cpu"]
"""Where a replica holds a loaded version: in an engine slot, or its weights in host memory."""
CacheTier = Literal["disk"] | LoadedTier
"""A tier a replica holds versions in: the verified copies on disk, or a loaded tier."""
AdapterTier = Literal["store"] | CacheTier
"""Where a replica holds a version: only in the store, a verified copy on disk, its weights in host
memory, or loaded in the engine."""

FinishReason = Literal["stop", "length"]
"""stop: the model ended its answer or hit a stop string; length: max_tokens or the context ran out."""
