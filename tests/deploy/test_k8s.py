"""Every Kubernetes overlay renders, every object validates against the Kubernetes schemas
(kubernetes-validate --strict, offline), the probes, drain and GPU settings say what the docs promise,
and the llmops config inside each ConfigMap passes `llmops config check`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmops.cli import main
from llmops.settings import Settings
from tests.deploy.kustomize_lite import render as render_lite
from tests.helpers import tool

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = ["cpu", "gpu", "vllm", "keda", "spot"]
CRDS = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}  # not in the Kubernetes schemas: checked below
KEDA_SCHEMA = K8S / "schemas" / "keda-scaledobject-v1alpha1.json"


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = tool("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                             text=True, check=True).stdout
        return [o for o in yaml.safe_load_all(out) if o]
    return render_lite(K8S / "overlays" / overlay)


def by_kind(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, tmp_path: Path) -> None:
    validate = tool("kubernetes-validate")
    if validate is None:
        pytest.skip("kubernetes-validate not installed")
    objs = render(overlay)
    files = []
    for i, obj in enumerate(objs):
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            assert obj["spec"]["endpoints"][0]["port"] == "http"
            continue
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            validate_keda(obj)
            continue
        path = tmp_path / f"{i}-{obj['kind']}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    out = subprocess.run([validate, "--strict", "--kubernetes-version", "1.30.0", *files], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_probes_drain_and_rollout(overlay: str) -> None:
    objs = render(overlay)
    dep = by_kind(objs, "Deployment", "llmops-api")
    spec = dep["spec"]["template"]["spec"]
    api = next(c for c in spec["containers"] if c["name"] == "api")
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["startupProbe"]["httpGet"]["path"] == "/health"
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "preStop" in api["lifecycle"]
    config = yaml.safe_load(by_kind(objs, "ConfigMap", "llmops-config")["data"]["config.yaml"])
    assert spec["terminationGracePeriodSeconds"] > config["shutdown"]["drain_timeout_s"] + 5
    assert all(o["metadata"].get("namespace") == "llmops" for o in objs if o["kind"] != "Namespace")
    kinds = {o["kind"] for o in objs}
    assert {"Service", "ConfigMap", "Secret", "PersistentVolumeClaim", "PodDisruptionBudget", "ServiceMonitor",
            "NetworkPolicy", "Ingress", "StatefulSet"} <= kinds
    # one autoscaler owns the replica count: the HPA, or KEDA's ScaledObject (which makes its own HPA)
    assert ("HorizontalPodAutoscaler" in kinds) != ("ScaledObject" in kinds)
    admin = next(e for e in api["env"] if e["name"] == "LLMOPS_AUTH__ADMIN_KEY")
    assert admin["valueFrom"]["secretKeyRef"]["name"] == "llmops-admin"
    assert not any(o["kind"] == "Deployment" and o["metadata"]["name"] == "redis" for o in objs)


def test_gpu_overlay_asks_for_a_gpu_on_gpu_nodes() -> None:
    spec = by_kind(render("gpu"), "Deployment", "llmops-api")["spec"]["template"]["spec"]
    api = spec["containers"][0]
    assert api["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_vllm_overlay_puts_llmops_in_front_of_vllm() -> None:
    objs = render("vllm")
    assert by_kind(objs, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "vllm/vllm-openai")
    config = yaml.safe_load(by_kind(objs, "ConfigMap", "llmops-config")["data"]["config.yaml"])
    upstream = next(m for m in config["models"] if m["engine"] == "upstream")
    assert upstream["options"]["base_url"] == "http://vllm:8000/v1"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_is_valid(overlay: str, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(by_kind(render(overlay), "ConfigMap", "llmops-config")["data"]["config.yaml"])
    assert main(["config", "check", "--config", str(cfg)]) == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_lite_renderer_matches_kubectl(overlay: str) -> None:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: nothing to compare the small renderer with")

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    real = sorted(render(overlay), key=key)
    lite = sorted(render_lite(K8S / "overlays" / overlay), key=key)
    assert [key(o) for o in real] == [key(o) for o in lite]
    for a, b in zip(real, lite, strict=True):
        assert a["spec" if "spec" in a else "metadata"] == b["spec" if "spec" in b else "metadata"], key(a)


def validate_keda(obj: dict[str, Any]) -> None:
    """Against KEDA's ScaledObject schema, vendored in deploy/k8s/schemas (unknown fields refused)."""
    import jsonschema

    jsonschema.validate(obj, json.loads(KEDA_SCHEMA.read_text()))


def test_keda_schema_refuses_what_keda_would() -> None:
    good = by_kind(render("keda"), "ScaledObject", "llmops-api")
    validate_keda(good)
    import jsonschema

    for broken in ({**good, "spec": {**good["spec"], "minReplicas": 0}},  # the HPA's field name, not KEDA's
                   {**good, "spec": {k: v for k, v in good["spec"].items() if k != "triggers"}},
                   {**good, "spec": {**good["spec"], "triggers": [{"type": "prometheus", "metadata": {"x": 1}}]}}):
        with pytest.raises(jsonschema.ValidationError):
            validate_keda(broken)


def test_redis_keeps_its_data_on_a_volume_with_aof() -> None:
    for overlay in OVERLAYS:
        redis = by_kind(render(overlay), "StatefulSet", "redis")
        spec = redis["spec"]
        container = spec["template"]["spec"]["containers"][0]
        args = container["args"]
        assert args[args.index("--appendonly") + 1] == "yes"
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/data")
        claim = next(c for c in spec["volumeClaimTemplates"] if c["metadata"]["name"] == mount["name"])
        assert claim["spec"]["resources"]["requests"]["storage"]
        assert not any("emptyDir" in v for v in spec["template"]["spec"].get("volumes", []))


def test_ingress_tls_streaming_and_body_limit() -> None:
    objs = render("cpu")
    ing = by_kind(objs, "Ingress", "llmops-api")
    notes = ing["metadata"]["annotations"]
    assert ing["spec"]["tls"][0]["secretName"] == "llmops-tls"
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"  # tokens reach the client as made
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 300
    config = yaml.safe_load(by_kind(objs, "ConfigMap", "llmops-config")["data"]["config.yaml"])
    limit = Settings.model_validate(config).limits.max_body_bytes
    assert int(notes["nginx.ingress.kubernetes.io/proxy-body-size"]) == limit
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = by_kind(objs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_keda_overlay_scales_to_zero_on_the_queue_metrics() -> None:
    objs = render("keda")
    scaled = by_kind(objs, "ScaledObject", "llmops-api")["spec"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["scaleTargetRef"]["name"] == "llmops-api"
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["triggers"] if t["type"] == "prometheus"}
    assert "llmops_num_requests_waiting" in queries["queue"]
    assert "nginx_ingress_controller_requests" in queries["ingress"]  # the only signal while no pod runs
    assert not any(o["kind"] == "HorizontalPodAutoscaler" for o in objs)


def test_spot_overlay_fits_a_30_second_notice() -> None:
    objs = render("spot")
    spec = by_kind(objs, "Deployment", "llmops-api")["spec"]["template"]["spec"]
    config = yaml.safe_load(by_kind(objs, "ConfigMap", "llmops-config")["data"]["config.yaml"])
    api = next(c for c in spec["containers"] if c["name"] == "api")
    pre_stop = float(api["lifecycle"]["preStop"]["exec"]["command"][-1].split("sleep(")[1].rstrip(")"))
    assert config["shutdown"]["drain_timeout_s"] + pre_stop < spec["terminationGracePeriodSeconds"] < 30
    assert {t["key"] for t in spec["tolerations"]} >= {"cloud.google.com/gke-spot", "karpenter.sh/capacity-type"}
    assert spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    pdb = by_kind(objs, "PodDisruptionBudget", "llmops-api")["spec"]
    assert pdb == {"maxUnavailable": 1, "selector": pdb["selector"]}
    cache = next(v for v in spec["volumes"] if v["name"] == "model-cache")
    assert cache["persistentVolumeClaim"]["claimName"] == "llmops-model-cache"
