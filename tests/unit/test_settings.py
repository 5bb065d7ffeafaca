from pathlib import Path

import pytest

from loraplane.errors import InvalidArgument
from trainer_svc.settings import TrainerSettings


def test_defaults_derive_from_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAPLANE_DATA_DIR", str(tmp_path))
    settings = TrainerSettings()
    assert settings.store_uri == (tmp_path / "store").as_uri()
    assert settings.base_model == tmp_path / "models" / "smollm2-135m-instruct"
    assert settings.trainer_db_path == tmp_path / "trainer" / "jobs.sqlite3"


def test_env_vars_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORAPLANE_STORE_URI", "s3://bucket/prefix")
    monkeypatch.setenv("LORAPLANE_TRAINER_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("LORAPLANE_TRAINER_BASE_MODELS", f'{{"other": "{tmp_path}"}}')
    settings = TrainerSettings()
    assert settings.store_uri == "s3://bucket/prefix"
    assert settings.trainer_address == "0.0.0.0:6000"
    assert settings.base_model_path("other") == tmp_path
    assert settings.base_model_path("") == settings.base_model


def test_unknown_base_model_lists_the_offered_ones() -> None:
    with pytest.raises(InvalidArgument, match="smollm2-135m-instruct") as info:
        TrainerSettings().base_model_path("gpt-9")
    assert info.value.field == "spec.base_model"


def test_invalid_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLANE_TRAINER_MAX_CONCURRENT_JOBS", "0")
    with pytest.raises(ValueError, match="trainer_max_concurrent_jobs"):
        TrainerSettings()
