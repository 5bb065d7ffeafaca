"""The Dockerfiles name only what exists: files they copy, commands they run, ports they expose,
settings they set. No container engine runs here, so this (and hadolint in scripts/test.sh) is what
keeps the images from drifting away from the package."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from loraplane.cli import Service
from serving_svc.settings import ServingSettings
from trainer_svc.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
SETTINGS: list[type[BaseSettings]] = [TrainerSettings, ServingSettings]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _env(dockerfile: Path) -> dict[str, str]:
    values = {}
    for instruction, arguments in _instructions(dockerfile):
        if instruction == "ENV":
            values.update(pair.split("=", 1) for pair in shlex.split(arguments))
    return values


def test_there_is_a_cpu_and_a_gpu_image() -> None:
    assert [path.name for path in DOCKERFILES] == ["cpu.Dockerfile", "gpu.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_every_copied_path_exists_and_the_build_context_holds_it(dockerfile: Path) -> None:
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] == "!"]
    for instruction, arguments in _instructions(dockerfile):
        if instruction != "COPY" or arguments.startswith("--from="):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
            assert source.rstrip("/").removeprefix("./") in allowed, f".dockerignore leaves {source} out"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_commands_are_entry_points_and_the_health_check_names_a_service(dockerfile: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    instructions = dict(_instructions(dockerfile))  # the last of each kind, as Docker uses it
    assert shlex.split(instructions["CMD"].strip("[]").replace(",", " "))[0] in scripts
    healthcheck = instructions["HEALTHCHECK"]
    assert "loraplane status --service" in healthcheck.replace('\\"', "")
    assert _env(dockerfile)["LORAPLANE_SERVICE"] in {service.value for service in Service}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_exposed_ports_are_the_services_ports_and_they_listen_beyond_loopback(dockerfile: Path) -> None:
    env = {name.removeprefix("LORAPLANE_").lower(): value for name, value in _env(dockerfile).items()}
    trainer = TrainerSettings(**{k: v for k, v in env.items() if k in TrainerSettings.model_fields})
    serving = ServingSettings(**{k: v for k, v in env.items() if k in ServingSettings.model_fields})
    ports = {
        port_of(trainer.trainer_address),
        trainer.trainer_metrics_port,
        trainer.trainer_http_port,
        port_of(serving.serving_address),
        serving.serving_metrics_port,
        serving.serving_http_port,
    }
    exposed = {
        int(port) for instruction, args in _instructions(dockerfile) if instruction == "EXPOSE" for port in args.split()
    }
    assert exposed == ports
    assert trainer.trainer_address.startswith("0.0.0.0:") and serving.serving_address.startswith("0.0.0.0:")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_every_setting_is_real_and_the_base_model_is_the_one_built_in_and_the_manifests_name(
    dockerfile: Path,
) -> None:
    fields = {name for settings in SETTINGS for name in settings.model_fields}
    env = _env(dockerfile)
    for name in env:
        if name.startswith("LORAPLANE_") and name != "LORAPLANE_SERVICE":
            assert name.removeprefix("LORAPLANE_").lower() in fields, f"{dockerfile.name} sets unknown {name}"
    assert f"--dest {env['LORAPLANE_BASE_MODEL']}" in dockerfile.read_text()
    env_file = (ROOT / "k8s/base/loraplane.env").read_text().splitlines()
    k8s_env = dict(line.split("=", 1) for line in env_file if line.strip() and not line.startswith("#"))
    assert k8s_env["LORAPLANE_BASE_MODEL"] == env["LORAPLANE_BASE_MODEL"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.stem)
def test_the_image_runs_as_a_non_root_user(dockerfile: Path) -> None:
    users = [arguments for instruction, arguments in _instructions(dockerfile) if instruction == "USER"]
    assert users and users[-1] not in {"root", "0"}
