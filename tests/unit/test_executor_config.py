"""Executors get the values they read, built from the settings at the entry point; and what each one
states it can give a job is what the job service admits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loraplane.errors import FailedPrecondition, InvalidArgument
from trainer_svc.executors import kubernetes_config, local_config
from trainer_svc.executors.config import ExecutorCapabilities, KubernetesConfig, LocalConfig, PodDefaults, WorkerImage
from trainer_svc.executors.kubernetes import KubernetesExecutor
from trainer_svc.executors.local import LocalExecutor
from trainer_svc.settings import TrainerSettings
from trainer_svc.spec import WorkerResources


def test_the_local_config_carries_the_grace_periods_of_the_settings(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=tmp_path, trainer_cancel_grace_seconds=3, trainer_stop_grace_seconds=7)
    assert local_config(settings) == LocalConfig(cancel_grace_seconds=3, stop_grace_seconds=7)


def test_the_kubernetes_config_carries_every_kubernetes_setting(tmp_path: Path) -> None:
    settings = TrainerSettings(
        data_dir=tmp_path,
        store_uri="s3://bucket/prefix",
        s3_endpoint_url="http://rgw:80",
        kubernetes_api_server="http://127.0.0.1:8001",
        kubernetes_namespace="training",
        kubernetes_worker_image="registry.example/loraplane:1",
        kubernetes_config_map="config",
        kubernetes_s3_secret="keys",
        kubernetes_worker_cpu="4",
        kubernetes_worker_memory="16Gi",
        kubernetes_worker_gpus=2,
        kubernetes_job_deadline_seconds=600,
        kubernetes_job_ttl_seconds=60,
        kubernetes_trainjob_runtime="torch-distributed",
    )
    assert kubernetes_config(settings) == KubernetesConfig(
        api_server="http://127.0.0.1:8001",
        namespace="training",
        store_uri="s3://bucket/prefix",
        s3_endpoint_url="http://rgw:80",
        worker=WorkerImage(image="registry.example/loraplane:1", config_map="config", s3_secret="keys"),
        pods=PodDefaults(cpu="4", memory="16Gi", gpus=2, deadline_seconds=600, ttl_seconds=60),
        trainjob_runtime="torch-distributed",
    )


def test_each_executor_states_what_it_can_give_a_job(tmp_path: Path) -> None:
    settings = TrainerSettings(data_dir=tmp_path)
    assert LocalExecutor(local_config(settings)).capabilities == ExecutorCapabilities(
        per_job_resources=False, multi_node=False
    )
    kubernetes = kubernetes_config(settings)
    assert KubernetesExecutor(kubernetes).capabilities == ExecutorCapabilities(per_job_resources=True, multi_node=False)
    with_runtime = KubernetesExecutor(dataclasses.replace(kubernetes, trainjob_runtime="torch-distributed"))
    assert with_runtime.capabilities.multi_node


@pytest.mark.parametrize(
    ("capabilities", "resources", "error", "field"),
    [
        (ExecutorCapabilities(False, False), WorkerResources(gpus=1), InvalidArgument, "spec.resources"),
        (ExecutorCapabilities(False, False), WorkerResources(nodes=2), InvalidArgument, "spec.resources"),
        (ExecutorCapabilities(True, False), WorkerResources(nodes=2), FailedPrecondition, "spec.resources.nodes"),
    ],
)
def test_resources_an_executor_cannot_give_are_refused_naming_the_field(
    capabilities: ExecutorCapabilities, resources: WorkerResources, error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as refused:
        capabilities.check(resources)
    assert refused.value.field == field  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("capabilities", "resources"),
    [
        (ExecutorCapabilities(False, False), WorkerResources()),
        (ExecutorCapabilities(True, False), WorkerResources(gpus=4, cpu="8")),
        (ExecutorCapabilities(True, True), WorkerResources(nodes=3)),
    ],
)
def test_resources_an_executor_can_give_pass(capabilities: ExecutorCapabilities, resources: WorkerResources) -> None:
    capabilities.check(resources)
