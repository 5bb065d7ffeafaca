"""The kubernetes executor against a FAKE Kubernetes API server (tests/support/fake_kube.py; no
cluster can run here): the exact Job it sends, the log it follows, cancel, re-attaching after a
trainer restart, and a pod that fails or is evicted. The store is a real file store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from loraplane.auth import ANONYMOUS
from loraplane.errors import ErrorCode, FailedPrecondition, StartupError
from loraplane.storage import FileStore
from tests.support.fake_kube import FakeKubernetes, running_fake_kubernetes
from trainer_svc import staged_input
from trainer_svc.executors import create_executor, kubernetes_config
from trainer_svc.executors.kube_manifests import WorkerTemplate, job_manifest, job_name
from trainer_svc.executors.kubeflow import trainjob_manifest
from trainer_svc.executors.kubernetes import KubernetesExecutor
from trainer_svc.job_store import SqliteJobStore
from trainer_svc.metrics import TrainerMetrics
from trainer_svc.progress import ErrorEvent, PhaseEvent, ProgressEvent, WorkerEvent, format_event
from trainer_svc.server import job_service
from trainer_svc.settings import TrainerSettings
from trainer_svc.spec import JobSpec, WorkerResources
from trainer_svc.worker_input import WorkerInput

JOB_ID = "job-0123456789abcdef"
NAME = job_name(JOB_ID)


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with running_fake_kubernetes() as fake:
        yield fake


@pytest.fixture
def settings(tmp_path: Path, fake: FakeKubernetes) -> TrainerSettings:
    return TrainerSettings(
        data_dir=tmp_path,
        trainer_executor="kubernetes",
        kubernetes_api_server=fake.url,
        kubernetes_namespace="training",
        kubernetes_worker_image="registry.example/loraplane:0.1.0-gpu",
        kubernetes_worker_gpus=1,
        kubernetes_job_deadline_seconds=7200,
    )


@pytest.fixture
def worker_input(tmp_path: Path, settings: TrainerSettings) -> WorkerInput:
    work = tmp_path / "trainer" / "jobs" / JOB_ID
    work.mkdir(parents=True)
    for name in ("train.jsonl", "validation.jsonl"):
        (work / name).write_text(f'{{"line": 1, "example": {{"text": "{name}"}}}}\n')
    return WorkerInput(
        job_id=JOB_ID,
        spec=JobSpec(base_model="smollm2", adapter_name="support-bot", training_data={"inline_sha256": "sha256:0"}),
        base_model_path=Path("/models/smollm2-135m-instruct"),
        train_file=work / "train.jsonl",
        validation_file=work / "validation.jsonl",
        store_uri=settings.store_uri,
        work_dir=work,
    )


def _pinned_template(settings: TrainerSettings) -> WorkerTemplate:
    """The worker template of a trainer whose settings name the worker image."""
    return WorkerTemplate.from_image(kubernetes_config(settings).worker)


def _store(settings: TrainerSettings) -> FileStore:
    return FileStore.from_uri(settings.store_uri)


async def _run(executor: KubernetesExecutor, worker_input: WorkerInput) -> tuple[Any, list[WorkerEvent]]:
    events: list[WorkerEvent] = []

    async def on_event(event: WorkerEvent) -> None:
        events.append(event)

    return await executor.run(worker_input, on_event), events


async def _started(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> tuple[KubernetesExecutor, asyncio.Task[tuple[Any, list[WorkerEvent]]], str]:
    """An executor running `worker_input`, and the name of its pod, started."""
    executor = KubernetesExecutor(kubernetes_config(settings))
    running = asyncio.create_task(_run(executor, worker_input))
    pod = await asyncio.to_thread(fake.pod_of, NAME)
    fake.start(pod)
    return executor, running, pod


def test_the_setting_picks_the_kubernetes_executor_which_needs_a_store_its_pods_reach(
    settings: TrainerSettings,
) -> None:
    on_s3 = settings.model_copy(update={"store_uri": "s3://loraplane/"})
    assert isinstance(create_executor(on_s3), KubernetesExecutor)
    with pytest.raises(StartupError, match="LORAPLANE_STORE_URI to an s3:// bucket"):
        create_executor(settings)  # a file:// folder on the trainer


async def test_a_job_runs_as_the_exact_job_sent_and_its_log_is_its_progress(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    _, running, pod = await _started(fake, settings, worker_input)
    # The input is staged before the Job exists, with the paths the pod will use.
    staged = WorkerInput.model_validate_json(_store(settings).get_bytes(f"jobs/{JOB_ID}/worker-input.json"))
    assert staged.train_file == Path("/var/lib/loraplane/job/train.jsonl") and staged.test_file is None
    assert _store(settings).get_bytes(f"jobs/{JOB_ID}/train.jsonl") == worker_input.train_file.read_bytes()
    fake.write(
        pod,
        format_event(PhaseEvent(phase="training")).strip(),
        "Some library warning on stderr",
        format_event(
            ProgressEvent(
                step=1, total_steps=2, epoch=0.5, loss=2.0, learning_rate=1e-4, elapsed_seconds=1.0, eta_seconds=1.0
            )
        ).strip(),
    )
    fake.exit(pod, 0)
    outcome, events = await asyncio.wait_for(running, 20)

    assert (outcome.exit_code, outcome.cancelled) == (0, False)
    assert [type(event) for event in events] == [PhaseEvent, ProgressEvent]
    assert list(_store(settings).list_keys("jobs/")) == []  # the staged input is gone with the run
    [sent] = fake.created
    labels = {
        "app.kubernetes.io/name": "loraplane-worker",
        "app.kubernetes.io/part-of": "loraplane",
        "app.kubernetes.io/managed-by": "loraplane-trainer",
        "loraplane.dev/job-id": JOB_ID,
    }
    assert sent["metadata"] == {"name": NAME, "labels": labels, "annotations": {"loraplane.dev/adapter": "support-bot"}}
    assert {key: sent["spec"][key] for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished")} == {
        "backoffLimit": 0,
        "activeDeadlineSeconds": 7200,
        "ttlSecondsAfterFinished": 3600,
    }
    template = sent["spec"]["template"]
    assert template["metadata"]["labels"] == labels
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["volumes"] == [{"name": "work", "emptyDir": {}}]
    [container] = template["spec"]["containers"]
    assert container["image"] == "registry.example/loraplane:0.1.0-gpu"
    assert container["command"] == ["python", "-m", "trainer_svc.worker", "--from-store", settings.store_uri, JOB_ID]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi"},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "loraplane-config"}}]
    assert [variable["name"] for variable in container["env"]] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    assert container["env"][0]["valueFrom"] == {"secretKeyRef": {"name": "loraplane-s3", "key": "access-key-id"}}
    assert container["volumeMounts"] == [{"name": "work", "mountPath": "/var/lib/loraplane/job"}]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True}


async def test_cancel_deletes_the_job_with_its_pod(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    executor, running, pod = await _started(fake, settings, worker_input)
    fake.write(pod, format_event(PhaseEvent(phase="training")).strip())
    await asyncio.to_thread(fake.wait_until_read, pod)  # the worker is under way
    await executor.cancel(JOB_ID)
    outcome, events = await asyncio.wait_for(running, 20)
    assert outcome.cancelled
    assert fake.deleted == [(NAME, "Background")]
    assert NAME not in fake.jobs and pod not in fake.pods
    assert [type(event) for event in events] == [PhaseEvent]


async def test_a_restarted_trainer_follows_the_job_still_running_instead_of_starting_it_again(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    # An earlier trainer created the Job and staged its input, then died; the pod runs on.
    staged_input.stage(_store(settings), worker_input, Path("/var/lib/loraplane/job"))
    pod = fake.add_job(job_manifest(kubernetes_config(settings), worker_input, _pinned_template(settings)).to_dict())
    fake.start(pod)
    fake.write(pod, format_event(PhaseEvent(phase="training", message="resuming")).strip())

    executor = KubernetesExecutor(kubernetes_config(settings))  # the new trainer's
    running = asyncio.create_task(_run(executor, worker_input))
    await asyncio.to_thread(fake.wait_until_read, pod)
    fake.exit(pod, 0)
    outcome, events = await asyncio.wait_for(running, 20)
    assert outcome.exit_code == 0
    assert fake.created == []  # nothing submitted twice
    assert [(type(event), getattr(event, "message", None)) for event in events] == [(PhaseEvent, "resuming")]


async def test_a_failing_pod_gives_its_exit_code_and_error_event_with_its_log_tail(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    _, running, pod = await _started(fake, settings, worker_input)
    error = ErrorEvent(code=ErrorCode.FAILED_PRECONDITION, message="cannot load the base model")
    fake.write(pod, "Traceback (most recent call last):", "OSError: no file", format_event(error).strip())
    fake.exit(pod, 1)
    outcome, events = await asyncio.wait_for(running, 20)
    assert outcome.exit_code == 1 and not outcome.cancelled
    assert events == [error]
    assert outcome.log_tail.splitlines() == ["Traceback (most recent call last):", "OSError: no file"]


async def test_an_evicted_pod_ends_the_run_saying_why(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    _, running, pod = await _started(fake, settings, worker_input)
    fake.write(pod, format_event(PhaseEvent(phase="training")).strip())
    fake.evict(pod)
    outcome, _ = await asyncio.wait_for(running, 20)
    assert outcome.exit_code == -1 and not outcome.cancelled
    assert "the pod was stopped: Evicted: The node was low on resource: memory." in outcome.log_tail


async def test_without_an_image_setting_workers_run_the_trainers_own_image_and_configuration(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = {
        "name": "trainer",
        "image": "registry.example/loraplane:0.2.0-cpu",
        "envFrom": [{"configMapRef": {"name": "loraplane-config-5f8h2c"}}],  # kustomize's hashed name
        "env": [{"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": "id"}}}],
    }
    fake.add_pod("loraplane-trainer-7d9f-abcde", trainer)
    monkeypatch.setenv("HOSTNAME", "loraplane-trainer-7d9f-abcde")
    own_image = settings.model_copy(update={"kubernetes_worker_image": ""})
    _, running, pod = await _started(fake, own_image, worker_input)
    fake.exit(pod, 0)
    await asyncio.wait_for(running, 20)
    [worker] = fake.created[0]["spec"]["template"]["spec"]["containers"]
    shared = ("image", "envFrom", "env")
    assert {key: worker[key] for key in shared} == {key: trainer[key] for key in shared}

    monkeypatch.setenv("HOSTNAME", "not-in-a-pod")
    with pytest.raises(FailedPrecondition, match="LORAPLANE_KUBERNETES_WORKER_IMAGE"):
        await KubernetesExecutor(kubernetes_config(own_image)).run(
            worker_input.model_copy(update={"job_id": "job-other"}), _ignore
        )
    assert list(_store(settings).list_keys("jobs/")) == []  # a run that could not start leaves nothing staged


async def _ignore(event: WorkerEvent) -> None:
    return None


async def test_a_pod_that_can_never_start_fails_the_run_with_the_reason_and_its_job_is_deleted(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    executor = KubernetesExecutor(kubernetes_config(settings))
    running = asyncio.create_task(_run(executor, worker_input))
    pod = await asyncio.to_thread(fake.pod_of, NAME)
    fake.cannot_start(pod, "ImagePullBackOff")
    outcome, events = await asyncio.wait_for(running, 20)
    assert (outcome.exit_code, outcome.cancelled, events) == (-1, False, [])
    assert "the worker pod cannot start: ImagePullBackOff" in outcome.log_tail
    assert fake.deleted == [(NAME, "Background")]


async def test_a_log_stream_cut_while_the_worker_runs_is_opened_again_without_repeating_lines(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    _, running, pod = await _started(fake, settings, worker_input)
    first, second = PhaseEvent(phase="training"), PhaseEvent(phase="evaluating")
    fake.write(pod, format_event(first).strip())
    await asyncio.to_thread(fake.wait_until_read, pod)
    fake.cut_log_streams(pod)
    fake.write(pod, format_event(second).strip())
    await asyncio.to_thread(fake.wait_until_read, pod)
    fake.exit(pod, 0)
    outcome, events = await asyncio.wait_for(running, 20)
    assert outcome.exit_code == 0
    assert events == [first, second]


async def test_a_cancel_before_the_job_exists_starts_nothing(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    executor = KubernetesExecutor(kubernetes_config(settings))
    await executor.cancel(JOB_ID)  # as the service does when a cancel beats the runner to it
    outcome, events = await asyncio.wait_for(_run(executor, worker_input), 20)
    assert outcome.cancelled and events == []
    assert fake.created == [] and fake.jobs == {}
    assert list(_store(settings).list_keys("jobs/")) == []


async def test_a_run_that_breaks_deletes_its_job_so_nothing_runs_on_unfollowed(
    fake: FakeKubernetes, settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    async def broken(event: WorkerEvent) -> None:
        raise RuntimeError("the job store is gone")

    executor = KubernetesExecutor(kubernetes_config(settings))
    running = asyncio.create_task(executor.run(worker_input, broken))
    pod = await asyncio.to_thread(fake.pod_of, NAME)
    fake.start(pod)
    fake.write(pod, format_event(PhaseEvent(phase="training")).strip())
    with pytest.raises(RuntimeError, match="job store"):
        await asyncio.wait_for(running, 20)
    assert NAME not in fake.jobs and fake.deleted[-1] == (NAME, "Background")
    assert list(_store(settings).list_keys("jobs/")) == []


def test_a_jobs_own_resources_take_the_place_of_the_trainers_defaults(
    settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    spec = worker_input.spec.model_copy(update={"resources": WorkerResources(cpu="4", memory="16Gi", gpus=0)})
    manifest = job_manifest(
        kubernetes_config(settings), worker_input.model_copy(update={"spec": spec}), _pinned_template(settings)
    )
    [container] = manifest.to_dict()["spec"]["template"]["spec"]["containers"]
    # gpus 0 is asked for explicitly: no GPU, though the trainer's default is one.
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}


def test_a_base_model_on_a_volume_of_the_trainers_is_mounted_read_only_and_nothing_else(
    settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    trainer_pod = Pod.from_dict(
        {
            "metadata": {"name": "loraplane-trainer-0"},
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "image": "registry.example/loraplane:0.2.0-cpu",
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/loraplane"},
                            {"name": "models", "mountPath": "/models"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "loraplane-trainer-data"}},
                    {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
                ],
            },
        }
    )
    on_volume = worker_input.model_copy(update={"base_model_path": Path("/models/llama-3.1-8b")})
    pod = job_manifest(kubernetes_config(settings), on_volume, WorkerTemplate.from_pod(trainer_pod)).to_dict()["spec"][
        "template"
    ]["spec"]
    assert pod["volumes"] == [
        {"name": "work", "emptyDir": {}},
        {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
    ]
    assert pod["containers"][0]["volumeMounts"][1:] == [{"name": "models", "mountPath": "/models", "readOnly": True}]
    # A model in the image (not under any volume) mounts nothing of the trainer's.
    in_image = worker_input.model_copy(update={"base_model_path": Path("/opt/models/smollm2")})
    pod = job_manifest(kubernetes_config(settings), in_image, WorkerTemplate.from_pod(trainer_pod)).to_dict()["spec"][
        "template"
    ]["spec"]
    assert [volume["name"] for volume in pod["volumes"]] == ["work"]


def test_a_job_with_several_gpus_runs_one_worker_process_per_gpu_under_torchrun(
    settings: TrainerSettings, worker_input: WorkerInput
) -> None:
    spec = worker_input.spec.model_copy(update={"resources": WorkerResources(gpus=4)})
    manifest = job_manifest(
        kubernetes_config(settings), worker_input.model_copy(update={"spec": spec}), _pinned_template(settings)
    )
    [container] = manifest.to_dict()["spec"]["template"]["spec"]["containers"]
    assert container["command"][:5] == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "trainer_svc.worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"


@pytest.fixture
def multi_node(settings: TrainerSettings, worker_input: WorkerInput) -> tuple[TrainerSettings, WorkerInput]:
    """A trainer on a cluster with Kubeflow Trainer, and a job on 3 nodes of 2 GPUs each."""
    with_operator = settings.model_copy(
        update={"kubernetes_trainjob_runtime": "torch-distributed", "s3_endpoint_url": "http://rgw.example:80"}
    )
    spec = worker_input.spec.model_copy(update={"resources": WorkerResources(nodes=3, gpus=2, memory="32Gi")})
    return with_operator, worker_input.model_copy(update={"spec": spec})


async def test_a_job_on_several_nodes_is_the_exact_trainjob_sent_and_its_first_node_is_followed(
    fake: FakeKubernetes, multi_node: tuple[TrainerSettings, WorkerInput]
) -> None:
    settings, worker_input = multi_node
    executor, running, pod = await _started(fake, settings, worker_input)
    assert fake.pods[pod].manifest["metadata"]["labels"]["jobset.sigs.k8s.io/jobset-name"] == NAME
    fake.write(pod, format_event(PhaseEvent(phase="training")).strip())
    fake.exit(pod, 0)
    outcome, events = await asyncio.wait_for(running, 20)
    assert (outcome.exit_code, outcome.cancelled) == (0, False)
    assert [type(event) for event in events] == [PhaseEvent]

    [sent] = fake.created
    assert (sent["apiVersion"], sent["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert sent["metadata"]["labels"]["loraplane.dev/job-id"] == JOB_ID
    spec = sent["spec"]
    assert spec["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    trainer = spec["trainer"]
    # A bare torchrun: the runtime's PET_* variables give it the nodes, this node's rank and the rendezvous.
    assert trainer["command"] == ["torchrun", "-m", "trainer_svc.worker", "--from-store", settings.store_uri, JOB_ID]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "2", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"},
    }
    assert [variable["name"] for variable in trainer["env"]] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "LORAPLANE_S3_ENDPOINT_URL",  # a TrainJob takes no envFrom: the endpoint is passed by value
    ]
    [override] = spec["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    assert override["volumes"] == [{"name": "work", "emptyDir": {}}]
    assert override["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "work", "mountPath": "/var/lib/loraplane/job"}]}
    ]


async def test_cancelling_a_job_on_several_nodes_deletes_its_trainjob(
    fake: FakeKubernetes, multi_node: tuple[TrainerSettings, WorkerInput]
) -> None:
    settings, worker_input = multi_node
    executor, running, pod = await _started(fake, settings, worker_input)
    fake.write(pod, format_event(PhaseEvent(phase="training")).strip())
    await asyncio.to_thread(fake.wait_until_read, pod)
    await executor.cancel(JOB_ID)
    outcome, _ = await asyncio.wait_for(running, 20)
    assert outcome.cancelled
    assert fake.deleted == [(NAME, "Background")] and NAME not in fake.jobs and pod not in fake.pods


async def test_a_restarted_trainer_follows_a_trainjob_still_running(
    fake: FakeKubernetes, multi_node: tuple[TrainerSettings, WorkerInput]
) -> None:
    settings, worker_input = multi_node
    staged_input.stage(_store(settings), worker_input, Path("/var/lib/loraplane/job"))
    manifest = trainjob_manifest(kubernetes_config(settings), worker_input, _pinned_template(settings)).to_dict()
    pod = fake.add_job({"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", **manifest})
    fake.start(pod)
    running = asyncio.create_task(_run(KubernetesExecutor(kubernetes_config(settings)), worker_input))
    fake.write(pod, format_event(PhaseEvent(phase="training", message="resuming")).strip())
    await asyncio.to_thread(fake.wait_until_read, pod)
    fake.exit(pod, 0)
    outcome, events = await asyncio.wait_for(running, 20)
    assert outcome.exit_code == 0 and fake.created == []
    assert [getattr(event, "message", None) for event in events] == ["resuming"]


async def test_a_job_on_several_nodes_is_refused_where_no_training_runtime_is_configured(
    settings: TrainerSettings, tmp_path: Path
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    jobs = job_service(settings, store, KubernetesExecutor(kubernetes_config(settings)), TrainerMetrics(store))
    spec = JobSpec(
        base_model="",
        adapter_name="wide",
        training_data={"inline_jsonl": '{"prompt": "a", "completion": "b"}\n'},
        resources=WorkerResources(nodes=2),
    )
    with pytest.raises(FailedPrecondition, match="LORAPLANE_KUBERNETES_TRAINJOB_RUNTIME") as refused:
        await jobs.create(spec, "", ANONYMOUS)
    assert refused.value.field == "spec.resources.nodes"
    assert store.count_unfinished("") == 0  # nothing stored
