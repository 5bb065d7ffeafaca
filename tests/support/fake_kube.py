"""A FAKE Kubernetes API server, for testing the kubernetes executor where no cluster can run.

It serves, over real HTTP on loopback, just the endpoints the executor calls: create, list and
delete batch/v1 Jobs and Kubeflow Trainer TrainJobs (as a cluster with that operator does), list and
read core/v1 Pods, and follow a pod's log; any other path is a 404 Status, as from a real API
server. Nothing is scheduled or run: creating a Job makes one Pending pod, a TrainJob the Pending pod
of its first node (labelled as JobSet labels it), and the test plays that pod (start it, write log
lines, end it with an exit code, evict it). Every manifest received and every deletion is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

TRAINJOB_VERSION = "trainer.kubeflow.org/v1alpha1"


def job_list_kind(manifest: dict[str, Any]) -> str:
    return "TrainJobList" if manifest.get("kind") == "TrainJob" else "JobList"


@dataclass
class FakePod:
    manifest: dict[str, Any]
    log: list[str] = field(default_factory=list)
    log_closed: bool = False
    lines_read: int = 0
    streams_cut: int = 0


class FakeKubernetes:
    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, FakePod] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._names = itertools.count()
        self.url = ""

    # -- what the test does to the pods --------------------------------------------------------

    def pod_of(self, job_name: str, timeout: float = 10.0) -> str:
        """The name of the (newest) pod of `job_name`, waiting until the Job exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                names = [
                    n for n, p in self.pods.items() if p.manifest["metadata"]["labels"].get("job-name") == job_name
                ]
            if names:
                return names[-1]
            time.sleep(0.02)
        raise TimeoutError(f"no pod of Job {job_name}")

    def wait_until_read(self, pod: str, timeout: float = 10.0) -> None:
        """Wait until a log reader has been sent every line written to `pod` so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.pods[pod].lines_read == len(self.pods[pod].log):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"nobody read the log of {pod}")

    def start(self, pod: str) -> None:
        self._set(pod, phase="Running", state={"running": {}})

    def write(self, pod: str, *lines: str) -> None:
        with self._lock:
            self.pods[pod].log.extend(lines)

    def exit(self, pod: str, code: int) -> None:
        self._set(pod, phase="Succeeded" if code == 0 else "Failed", state={"terminated": {"exitCode": code}})
        with self._lock:
            self.pods[pod].log_closed = True

    def cannot_start(self, pod: str, reason: str) -> None:
        """The container waits for something that will not come (an image that cannot be pulled)."""
        self._set(pod, phase="Pending", state={"waiting": {"reason": reason, "message": f"{reason} for the image"}})

    def cut_log_streams(self, pod: str) -> None:
        """End the log streams open now, as a connection dropped by a proxy would; the pod runs on."""
        with self._lock:
            self.pods[pod].streams_cut += 1

    def evict(self, pod: str) -> None:
        self._set(pod, phase="Failed", state=None, reason="Evicted", message="The node was low on resource: memory.")
        with self._lock:
            self.pods[pod].log_closed = True

    def add_pod(self, name: str, container: dict[str, Any]) -> None:
        """A pod of something else (the trainer itself) with one `container`."""
        with self._lock:
            self.pods[name] = FakePod(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "loraplane-trainer"}},
                    "spec": {"containers": [container]},
                    "status": {"phase": "Running"},
                }
            )

    def add_job(self, manifest: dict[str, Any]) -> str:
        """A Job that exists before the test's trainer starts (one an earlier trainer created); its pod's name."""
        with self._lock:
            return self._create(manifest)

    def _set(self, pod: str, *, phase: str, state: dict[str, Any] | None, **status: str) -> None:
        with self._lock:
            manifest = self.pods[pod].manifest
            manifest["status"] = {"phase": phase, **status}
            if state is not None:
                container = manifest["spec"]["containers"][0]
                manifest["status"]["containerStatuses"] = [
                    {
                        "name": container["name"],
                        "ready": phase == "Running",
                        "restartCount": 0,
                        "image": container["image"],
                        "imageID": "",
                        "state": state,
                    }
                ]

    # -- the API ---------------------------------------------------------------------------------

    def _create(self, manifest: dict[str, Any]) -> str:
        name = manifest["metadata"]["name"]
        self.jobs[name] = manifest
        template = copy.deepcopy(manifest["spec"]["template"]) if "template" in manifest["spec"] else None
        if template is None:  # a TrainJob: the operator's JobSet runs its first node's pod so
            trainer = manifest["spec"]["trainer"]
            container = {"name": "node", "image": trainer["image"], "command": trainer["command"]}
            labels = {"jobset.sigs.k8s.io/jobset-name": name, "batch.kubernetes.io/job-completion-index": "0"}
            template = {"metadata": {"labels": labels}, "spec": {"containers": [container]}}
        pod = f"{name}-{next(self._names):05d}"
        labels = {**template["metadata"].get("labels", {}), "job-name": name}
        self.pods[pod] = FakePod(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": labels, "creationTimestamp": "2026-11-24T00:00:00Z"},
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            }
        )
        return pod

    @staticmethod
    def _selected(labels: dict[str, str], selector: str) -> bool:
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)
        return all(labels.get(key) == value for key, value in wanted.items())

    @staticmethod
    def _not_found(kind: str, name: str) -> JSONResponse:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
            "message": f'{kind} "{name}" not found',
        }
        return JSONResponse(body, status_code=404)

    async def _create_job(self, request: Request) -> Response:
        manifest = await request.json()
        with self._lock:
            self.created.append(copy.deepcopy(manifest))
            self._create(manifest)
        return JSONResponse(manifest, status_code=201)

    async def _list(self, request: Request) -> Response:
        selector = request.query_params.get("labelSelector", "")
        with self._lock:
            if request.url.path.endswith(("/jobs", "/trainjobs")):
                kind, version = (
                    ("TrainJobList", TRAINJOB_VERSION) if "trainjobs" in request.url.path else ("JobList", "batch/v1")
                )
                items = [
                    job
                    for job in self.jobs.values()
                    if self._selected(job["metadata"]["labels"], selector) and job_list_kind(job) == kind
                ]
            else:
                kind, version = "PodList", "v1"
                items = [
                    pod.manifest
                    for pod in self.pods.values()
                    if self._selected(pod.manifest["metadata"]["labels"], selector)
                ]
            body = {
                "kind": kind,
                "apiVersion": version,
                "metadata": {"resourceVersion": "1"},
                "items": copy.deepcopy(items),
            }
        return JSONResponse(body)

    async def _delete_job(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        policy = (
            (await request.json()).get("propagationPolicy") if body else request.query_params.get("propagationPolicy")
        )
        kind = "TrainJobList" if request.url.path.rsplit("/", 2)[-2] == "trainjobs" else "JobList"
        with self._lock:
            if name not in self.jobs or job_list_kind(self.jobs[name]) != kind:
                return self._not_found("jobs", name)
            self.deleted.append((name, policy))
            job = self.jobs.pop(name)
            for pod_name in [n for n, p in self.pods.items() if p.manifest["metadata"]["labels"]["job-name"] == name]:
                self.pods.pop(pod_name).log_closed = True
        return JSONResponse(job)

    async def _get_pod(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            if name not in self.pods:
                return self._not_found("pods", name)
            return JSONResponse(copy.deepcopy(self.pods[name].manifest))

    async def _log(self, request: Request) -> Response:
        name = request.path_params["name"]
        with self._lock:
            pod = self.pods.get(name)
        if pod is None:
            return self._not_found("pods", name)

        async def lines() -> AsyncIterator[bytes]:
            sent, cut_at_start = 0, pod.streams_cut
            while True:
                with self._lock:
                    new, closed = pod.log[sent:], pod.log_closed or pod.streams_cut != cut_at_start
                for line in new:
                    yield (line + "\n").encode()
                sent += len(new)
                with self._lock:
                    pod.lines_read = max(pod.lines_read, sent)
                if closed and not new:
                    return
                await asyncio.sleep(0.02)

        return StreamingResponse(lines(), media_type="text/plain")

    def app(self) -> Starlette:
        pods = "/api/v1/namespaces/{namespace}/pods"
        routes = [
            Route(pods, self._list, methods=["GET"]),
            Route(pods + "/{name}", self._get_pod, methods=["GET"]),
            Route(pods + "/{name}/log", self._log, methods=["GET"]),
        ]
        for jobs in (
            "/apis/batch/v1/namespaces/{namespace}/jobs",
            f"/apis/{TRAINJOB_VERSION}/namespaces/{{namespace}}/trainjobs",
        ):
            routes += [
                Route(jobs, self._create_job, methods=["POST"]),
                Route(jobs, self._list, methods=["GET"]),
                Route(jobs + "/{name}", self._delete_job, methods=["DELETE"]),
            ]

        async def no_such_resource(request: Request, exc: Exception) -> Response:
            return self._not_found("resource", request.url.path)

        return Starlette(routes=routes, exception_handlers={404: no_such_resource})


@contextlib.contextmanager
def running_fake_kubernetes() -> Iterator[FakeKubernetes]:
    """The fake on a free loopback port, served by uvicorn on a thread of its own."""
    fake = FakeKubernetes()
    sock = socket.create_server(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
