"""A job on several nodes as a Kubeflow Trainer TrainJob: its manifest, and the pod that reports.

A job whose spec.resources.nodes > 1 runs on the training runtime the settings name
(`torch-distributed`, say): the operator starts one pod per node with the rendezvous variables
torchrun reads (PET_*), so the same worker command runs as one data-parallel run across the nodes,
its first rank reporting. The trainer follows the first node's pod as it follows a Job's.
"""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from trainer_svc.executors.config import KubernetesConfig
from trainer_svc.executors.kube_manifests import (
    PodResources,
    WorkerTemplate,
    job_name,
    work_volume,
    worker_args,
    worker_labels,
    worker_metadata,
)
from trainer_svc.worker_input import WorkerInput

TrainJob = create_namespaced_resource("trainer.kubeflow.org", "v1alpha1", "TrainJob", "trainjobs")
"""Kubeflow Trainer's job on several nodes (its CRD, where the operator is installed)."""
TRAINJOB_NODE = "node"
"""The replicated job, and its container, that Kubeflow's torch runtimes run the trainer in."""


def first_node_labels(job_id: str) -> dict[str, str]:
    """The labels of a TrainJob's first node's pod (JobSet's): the one whose worker reports."""
    return {"jobset.sigs.k8s.io/jobset-name": job_name(job_id), "batch.kubernetes.io/job-completion-index": "0"}


def trainjob_manifest(
    config: KubernetesConfig, worker_input: WorkerInput, template: WorkerTemplate
) -> GenericNamespacedResource:
    """The TrainJob that trains `worker_input`'s job on spec.resources.nodes pods of the configured runtime.

    The runtime sets the rendezvous (PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR...) that a bare
    `torchrun` reads; the pods get the trainer's image, its environment variables (a TrainJob takes no
    envFrom, so the S3 endpoint is passed by value) and the volumes a Job's pod gets.
    """
    resources = PodResources.of(config.pods, worker_input)
    model_volumes, model_mounts = template.model_volumes(worker_input.base_model_path)
    volume, mount = work_volume()
    env = [variable.to_dict() for variable in template.env]
    if config.s3_endpoint_url:
        env.append({"name": "LORAPLANE_S3_ENDPOINT_URL", "value": config.s3_endpoint_url})
    spec: dict[str, Any] = {
        "runtimeRef": {
            "apiGroup": "trainer.kubeflow.org",
            "kind": "ClusterTrainingRuntime",
            "name": config.trainjob_runtime,
        },
        "trainer": {
            "image": template.image,
            "command": ["torchrun", *worker_args(worker_input)],
            "numNodes": worker_input.spec.resources.nodes,
            "numProcPerNode": max(resources.gpus, 1),
            "resourcesPerNode": resources.requirements().to_dict(),
            "env": env,
        },
        "labels": worker_labels(worker_input.job_id),
        "podSpecOverrides": [
            {
                "targetJobs": [{"name": TRAINJOB_NODE}],
                "volumes": [v.to_dict() for v in (volume, *model_volumes)],
                "containers": [{"name": TRAINJOB_NODE, "volumeMounts": [m.to_dict() for m in (mount, *model_mounts)]}],
            }
        ],
    }
    return TrainJob(metadata=worker_metadata(worker_input), spec=spec)
