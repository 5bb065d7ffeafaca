"""The README's configuration reference lists every setting the services read."""

from pathlib import Path

import pytest

from serving_svc.settings import ServingSettings
from trainer_svc.settings import TrainerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted({*TrainerSettings.model_fields, *ServingSettings.model_fields}), ids=str)
def test_setting_is_documented(name: str) -> None:
    assert f"`LORAPLANE_{name.upper()}`" in README


def test_readme_gives_the_two_commands() -> None:
    assert "bash scripts/demo.sh" in README and "bash scripts/test.sh" in README
