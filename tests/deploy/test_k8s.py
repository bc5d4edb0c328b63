"""deploy/k8s: the Kubernetes manifests parse and reference each other consistently.

No cluster is reachable from here, so these are the checks ``kubectl apply`` and the first rollout would
otherwise make: every object is well formed and namespaced; Services select the pods they front and
target ports those pods name; probes hit the service's real health endpoints; ServiceMonitors select a
Service and a port it has; the AlertmanagerConfig's webhook is the receiver Service's port and path; the
RayCluster's head ports are the ones the compose stack and the sweep instructions use; commands are the
tested deploy/bin scripts, run as the image's uid; and the generated PrometheusRule is the rule files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement

from robustdx.flows.alerts import DEFAULT_PORT
from tests.deploy.dockerfile import parse, requirements_of
from tests.deploy.stack import BIN, DEPLOY, REPO, RULES_DIR, load_yaml

pytestmark = pytest.mark.unit

K8S = DEPLOY / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "prefect-worker-values.yaml")
OBJECTS = [(p.name, doc) for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text()) if doc]
UID = int(parse().stages["serve"].last("USER").args.split(":")[0])


def kind(name: str) -> list[dict[str, Any]]:
    return [doc for _, doc in OBJECTS if doc["kind"] == name]


def one(kind_name: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in kind(kind_name) if o["metadata"]["name"] == name]
    return obj


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for dep in kind("Deployment"):
        yield dep["metadata"]["name"], dep["spec"]["template"]["spec"]
    for cluster in kind("RayCluster"):
        yield f"{cluster['metadata']['name']}-head", cluster["spec"]["headGroupSpec"]["template"]["spec"]
        for group in cluster["spec"]["workerGroupSpecs"]:
            yield f"{cluster['metadata']['name']}-{group['groupName']}", group["template"]["spec"]
    for job in kind("RayJob"):
        yield job["metadata"]["name"], job["spec"]["submitterPodTemplate"]["spec"]


def test_every_object_is_well_formed_and_namespaced() -> None:
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ServiceMonitor", "AlertmanagerConfig", "RayCluster", "RayJob"} <= {
        d["kind"] for _, d in OBJECTS
    }
    for file, doc in OBJECTS:
        assert doc["apiVersion"] and doc["metadata"]["name"], file
        assert doc["metadata"]["namespace"] == "robustdx", (file, doc["metadata"]["name"])
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "robustdx", (file, doc["metadata"]["name"])


def test_services_select_deployments_and_target_named_ports() -> None:
    for svc in kind("Service"):
        selector = svc["spec"]["selector"]
        (dep,) = [d for d in kind("Deployment") if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert dep["spec"]["selector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        named = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named, (svc["metadata"]["name"], port)


def test_service_probes_and_ports_are_the_services() -> None:
    (container,) = one("Deployment", "robustdx-service")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {p["containerPort"] for p in container["ports"]} == {int(env["ROBUSTDX_SERVE_PORT"])} == {3000}
    claim = one("Deployment", "robustdx-service")["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert mount == env["BENTOML_HOME"] and one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_pods_run_the_tested_scripts_as_the_images_user() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == UID, name
        for container in spec["containers"]:
            for word in container.get("command", []):
                if word.startswith("/app/deploy/bin/"):
                    assert (BIN / Path(word).name).exists(), (name, word)
            image = container["image"]
            assert "/robustdx-serve:" in image or "/robustdx-train:" in image, (name, image)
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])


def test_service_monitors_select_a_service_port() -> None:
    for monitor in kind("ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in kind("Service") if wanted.items() <= s["metadata"]["labels"].items()]
        ports = {p["name"] for p in svc["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics", monitor["metadata"]["name"]
    relabel = one("ServiceMonitor", "robustdx-service")["spec"]["endpoints"][0]["relabelings"]
    assert {"targetLabel": "job", "replacement": "robustdx-service"} in relabel  # what every rule selects on


def test_alertmanager_config_routes_retrain_alerts_to_the_receiver_service() -> None:
    config = one("AlertmanagerConfig", "robustdx-retrain")["spec"]
    assert {"name": "retrain", "value": "true", "matchType": "="} in config["route"]["matchers"]
    (receiver,) = config["receivers"]
    assert receiver["name"] == config["route"]["receiver"]
    (hook,) = receiver["webhookConfigs"]
    url = urlparse(hook["url"])
    svc = one("Service", "robustdx-alert-receiver")
    assert url.hostname == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert url.port == svc["spec"]["ports"][0]["port"] == DEFAULT_PORT and url.path == "/alerts"
    shipped = load_yaml(DEPLOY / "alertmanager" / "alertmanager.yml")["route"]["routes"][0]
    assert config["route"]["repeatInterval"] == shipped["repeat_interval"]


def test_ray_head_ports_match_the_compose_head_and_the_instructions() -> None:
    cluster = one("RayCluster", "robustdx")
    (ray,) = [r for r in requirements_of("orchestrate") if r.startswith("ray")]
    assert cluster["spec"]["rayVersion"] == str(Requirement(ray).specifier).removeprefix("==")
    head = cluster["spec"]["headGroupSpec"]
    (container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dashboard"] == 8265 and ports["client"] == 10001
    assert int(head["rayStartParams"]["metrics-export-port"]) == ports["metrics"] == 8080
    readme = (K8S / "README.md").read_text()
    assert "ray job submit --address http://localhost:8265 -- robustdx sweep --config configs/sweeps/" in readme
    assert any(
        g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        for g in cluster["spec"]["workerGroupSpecs"]
    )


def test_rayjob_submits_an_existing_sweep_to_the_cluster() -> None:
    job = one("RayJob", "robustdx-sweep-demo")["spec"]
    assert job["clusterSelector"] == {"ray.io/cluster": one("RayCluster", "robustdx")["metadata"]["name"]}
    words = job["entrypoint"].split()
    assert words[:2] == ["robustdx", "sweep"]
    assert (REPO / words[words.index("--config") + 1]).exists()


def test_generated_prometheus_rule_is_the_rule_files() -> None:
    out = subprocess.run(
        [sys.executable, str(K8S / "prometheusrule.py"), "--label", "release=kps"], capture_output=True, text=True, check=True
    ).stdout
    rule = yaml.safe_load(out)
    assert rule["kind"] == "PrometheusRule" and rule["metadata"]["labels"]["release"] == "kps"
    expected = [g for path in sorted(RULES_DIR.glob("*.yml")) for g in load_yaml(path)["groups"]]
    assert rule["spec"]["groups"] == expected


def test_prefect_worker_values_poll_a_kubernetes_pool() -> None:
    values = load_yaml(K8S / "prefect-worker-values.yaml")["worker"]
    assert values["config"]["type"] == "kubernetes" and values["config"]["workPool"] == "robustdx-k8s"
    assert values["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")
    import prefect

    assert values["image"]["prefectTag"].startswith(prefect.__version__ + "-")


# ------------------------------------------------------------------------------------------------
# closed by default
# ------------------------------------------------------------------------------------------------
def test_every_pod_runs_with_seccomp_and_a_read_only_root() -> None:
    for name, spec in pod_specs():
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        tmp = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in tmp, f"{name}: a read-only root needs an emptyDir at /tmp"


def test_every_probe_has_a_timeout_above_the_default() -> None:
    for name, spec in pod_specs():
        for container in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in container:
                    assert container[probe].get("timeoutSeconds", 1) >= 3, (name, probe)


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()


def test_network_policies_deny_by_default_and_open_only_what_is_used() -> None:
    policies = kind("NetworkPolicy")
    deny = one("NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for dep in kind("Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        allowed = [p for p in policies if p["spec"]["podSelector"] and _selects(p, labels)]
        assert allowed, f"{dep['metadata']['name']}: no policy lets anything reach it"
        ports = {c["containerPort"] for cont in dep["spec"]["template"]["spec"]["containers"] for c in cont["ports"]}
        for rule in (r for p in allowed for r in p["spec"]["ingress"]):
            assert {p["port"] for p in rule.get("ports", [])} <= ports
    receiver = one("NetworkPolicy", "robustdx-alert-receiver")["spec"]["ingress"]
    assert [r["from"] for r in receiver] == [
        [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    ]
    ray = one("NetworkPolicy", "robustdx-ray")["spec"]
    assert ray["podSelector"]["matchLabels"] == {"ray.io/cluster": one("RayCluster", "robustdx")["metadata"]["name"]}
    assert all("namespaceSelector" in src or src == {"podSelector": {}} for r in ray["ingress"] for src in r["from"])


def test_alert_receiver_requires_the_secret_alertmanager_sends() -> None:
    spec = one("Deployment", "robustdx-alert-receiver")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if env["ROBUSTDX_ALERT_TOKEN_FILE"].startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    (hook,) = one("AlertmanagerConfig", "robustdx-retrain")["spec"]["receivers"][0]["webhookConfigs"]
    credentials = hook["httpConfig"]["authorization"]["credentials"]
    assert volume["secret"]["secretName"] == credentials["name"]
    assert volume["secret"]["items"] == [{"key": credentials["key"], "path": Path(env["ROBUSTDX_ALERT_TOKEN_FILE"]).name}]
    assert env["ROBUSTDX_ALERTS_HOST"] == "0.0.0.0"  # the script's default is loopback; a pod must listen on its IP


def test_the_service_logs_to_postgres_and_keeps_images_on_a_shared_claim() -> None:
    dep = one("Deployment", "robustdx-service")["spec"]["template"]["spec"]
    (container,) = dep["containers"]
    env = {e["name"]: e for e in container["env"]}
    db = env["ROBUSTDX_INFERENCE_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert db == {"name": "robustdx-inference-db", "key": "url"}, "required: replicas must not share a SQLite file"
    assert env["ROBUSTDX_CLINICIAN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "robustdx-clinician"
    folder = env["ROBUSTDX_FEEDBACK_DIR"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
    (volume,) = [v for v in dep["volumes"] if v["name"] == mount["name"]]
    claim = one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    from robustdx.service.settings import ServiceSettings

    assert {"ROBUSTDX_FEEDBACK_DIR", "ROBUSTDX_INFERENCE_DB_URL", "ROBUSTDX_CLINICIAN_TOKEN"} <= {
        f"ROBUSTDX_{name.upper()}" for name in ServiceSettings.model_fields
    }, "the variables are the service's settings"
    assert "robustdx-feedback" in (K8S / "README.md").read_text() and "robustdx-inference-db" in (K8S / "README.md").read_text()
