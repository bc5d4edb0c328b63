"""deploy/compose.yaml, validated without Docker (``docker compose config`` cannot run here).

What ``docker compose up`` would trip over, checked statically: every service has a pinned image or a
build target that exists in the Dockerfile; every bind-mounted file exists; every ``host:port`` that one
service uses to reach another (env values, Prometheus targets, the Alertmanager webhook, Grafana's
datasource, healthchecks) names a compose service and a port it listens on; named volumes are declared,
and those mounted into our images are folders the image creates for its non-root user; and every
environment variable is one that the code, the scripts or the named tool actually reads.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustdx.core import contracts
from robustdx.flows.alerts import DEFAULT_PORT
from robustdx.service.settings import ServiceSettings, env_name
from tests.deploy.dockerfile import parse
from tests.deploy.stack import ALERTMANAGER_YML, BIN, DEPLOY, PROMETHEUS_DIR, REPO, load_yaml

pytestmark = pytest.mark.unit

COMPOSE = load_yaml(DEPLOY / "compose.yaml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKER = parse()
EXPECTED = {
    "prefect-server",
    "prefect-worker",
    "ray-head",
    "service",
    "pushgateway",
    "prometheus",
    "alertmanager",
    "alert-receiver",
    "grafana",
}


def env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def command(service: str) -> list[str]:
    """The service's command, or the CMD of the image target it builds."""
    spec = SERVICES[service]
    if "command" in spec:
        return spec["command"]
    target = spec.get("build", {}).get("target")
    cmd = DOCKER.stages[target].last("CMD") if target else None
    return cmd.exec_form() if cmd else []


def script_defaults(script: Path) -> dict[str, str]:
    """``${NAME:-default}`` of a deploy/bin script."""
    return dict(re.findall(r"\$\{(\w+):-([^}]*)\}", script.read_text()))


def listening(service: str) -> set[int]:
    """Container ports a service listens on: published / exposed ports, ``--port`` options of its
    command, and the port defaults of the deploy/bin script it runs (overridden by its environment)."""
    spec, ports = SERVICES[service], set()
    for mapping in spec.get("ports", []):
        ports.add(int(str(mapping).split(":")[-1].split("/")[0]))
    ports |= {int(p) for p in spec.get("expose", [])}
    cmd = command(service)
    ports |= {int(cmd[i + 1]) for i, word in enumerate(cmd[:-1]) if word == "--port"}
    for word in cmd:
        if word.startswith("/app/deploy/bin/"):
            defaults = {**script_defaults(BIN / Path(word).name), **env(service)}
            ports |= {int(v) for k, v in defaults.items() if k.endswith("_PORT") and v.isdigit()}
    return ports


DEFAULT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "pushgateway": 9091, "grafana": 3000}


def endpoints() -> Iterator[tuple[str, str, int]]:
    """(where, host, port) for every host:port that a component uses to reach another (``localhost``:
    a port published on the host, for URLs a browser opens)."""
    pattern = re.compile(r"(?:^|//|@)([a-z][a-z0-9-]*):(\d+)")
    for name, spec in SERVICES.items():
        for key, value in env(name).items():
            for host, port in pattern.findall(value):
                yield f"{name} env {key}", host, int(port)
        for word in (spec.get("healthcheck") or {}).get("test", []):
            for _host, port in re.findall(r"//(127\.0\.0\.1|localhost):(\d+)", word):
                yield f"{name} healthcheck", name, int(port)
    prom = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    for job in prom["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host, port = target.split(":")
                yield f"prometheus job {job['job_name']}", "prometheus" if host == "localhost" else host, int(port)
    for am in prom["alerting"]["alertmanagers"]:
        for target in am["static_configs"][0]["targets"]:
            host, port = target.split(":")
            yield "prometheus alerting", host, int(port)
    for receiver in load_yaml(ALERTMANAGER_YML)["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            (host, port), *_ = pattern.findall(hook["url"])
            yield f"alertmanager receiver {receiver['name']}", host, int(port)
    for source in load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]:
        (host, port), *_ = pattern.findall(source["url"])
        yield f"grafana datasource {source['name']}", host, int(port)


ENDPOINTS = list(endpoints())


def test_the_stack_has_every_component() -> None:
    assert set(SERVICES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_service_has_a_pinned_image_or_a_dockerfile_target(name: str) -> None:
    spec = SERVICES[name]
    if "build" in spec:
        build = spec["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO / "Dockerfile"
        assert build["target"] in {"serve", "train"} and build["target"] in DOCKER.stages
        assert spec["image"].endswith(":local"), "name our images so the four train services share one build"
    else:
        image, _, tag = spec["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin the image by version, got {spec['image']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mounted_files_exist_and_volumes_are_declared(name: str) -> None:
    declared = set(COMPOSE["volumes"])
    for mount in SERVICES[name].get("volumes", []):
        source, target, *_ = mount.split(":")
        if source.startswith("."):
            assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
            assert "ro" in mount.split(":")[2:], f"{name}: mount configuration read-only ({mount})"
        else:
            assert source in declared, f"{name}: volume {source} not declared"
            target_stage = SERVICES[name].get("build", {}).get("target")
            if target_stage:  # our images run as uid 10001: the folder must exist in the image, owned by it
                assert target in DOCKER.created_dirs(target_stage), f"{name}: {target} is not created in the {target_stage} image"


def test_every_declared_volume_is_used() -> None:
    used = {m.split(":")[0] for s in SERVICES.values() for m in s.get("volumes", [])}
    assert set(COMPOSE["volumes"]) <= used


@pytest.mark.parametrize(("where", "host", "port"), ENDPOINTS, ids=[f"{w}->{h}:{p}" for w, h, p in ENDPOINTS])
def test_every_endpoint_names_a_service_and_a_port_it_listens_on(where: str, host: str, port: int) -> None:
    if host == "localhost":  # a URL for your browser (Prefect UI's API, Grafana in Ray's dashboard): a published port
        published = {int(str(m).split(":")[-2]) for spec in SERVICES.values() for m in spec.get("ports", [])}
        assert port in published, f"{where}: no service publishes port {port} on the host"
        return
    assert host in SERVICES, f"{where}: {host} is not a compose service"
    ports = listening(host) | ({DEFAULT_PORTS[host]} if host in DEFAULT_PORTS else set())
    assert port in ports, f"{where}: {host} listens on {sorted(ports)}, not {port}"


def test_ports_agree_with_the_code() -> None:
    assert "127.0.0.1:3000:3000" in SERVICES["service"]["ports"]
    assert script_defaults(BIN / "serve.sh")["ROBUSTDX_SERVE_PORT"] == "3000"
    assert env("alert-receiver")["ROBUSTDX_ALERTS_PORT"] == str(DEFAULT_PORT)
    assert "127.0.0.1:3001:3000" in SERVICES["grafana"]["ports"]
    assert {"8265", "10001"} <= {str(p) for p in SERVICES["ray-head"]["expose"]}
    assert env("prefect-worker")[contracts.ENV_PUSHGATEWAY] == "pushgateway:9091"


# ------------------------------------------------------------------------------------------------
# closed by default (issue: unauthenticated control planes published on every interface)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_ports_bind_loopback_only(name: str) -> None:
    for mapping in SERVICES[name].get("ports", []):
        assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping} is published on every interface"


def test_code_execution_and_push_planes_are_not_published() -> None:
    for name in ("ray-head", "pushgateway", "alert-receiver", "prefect-worker"):
        assert not SERVICES[name].get("ports"), f"{name} must not be published"


def test_prometheus_has_no_lifecycle_api() -> None:
    assert not [w for w in SERVICES["prometheus"]["command"] if "lifecycle" in w]


def test_secrets_are_required_not_defaulted() -> None:
    """Compose refuses to start without them (``${VAR:?...}``), rather than running open."""
    required = re.compile(r"^\$\{[A-Z_]+:\?.+\}$")
    for name in SERVICES:
        for key, value in env(name).items():
            if key in {"ROBUSTDX_ADMIN_TOKEN", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"}:
                assert required.match(value), f"{name}: {key}={value} must be required"


def test_prefect_api_needs_auth_and_every_client_sends_it() -> None:
    assert env("prefect-server")["PREFECT_SERVER_API_AUTH_STRING"]
    for name in SERVICES:
        if "PREFECT_API_URL" in env(name):
            assert env(name)["PREFECT_API_AUTH_STRING"] == env("prefect-server")["PREFECT_SERVER_API_AUTH_STRING"], name
    prom = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "prefect-server"]
    assert job["basic_auth"]["password_file"] == "/run/secrets/prefect-password"
    assert "prefect-password" in SERVICES["prometheus"]["secrets"]


def test_grafana_has_no_anonymous_access_and_a_secret_admin_password() -> None:
    assert env("grafana")["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env("grafana")["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    assert "grafana-admin-password" in SERVICES["grafana"]["secrets"]


def test_alertmanager_and_the_receiver_share_the_bearer_secret() -> None:
    (hook,) = [h for r in load_yaml(ALERTMANAGER_YML)["receivers"] for h in r.get("webhook_configs", [])]
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer"
    assert auth["credentials_file"] == env("alert-receiver")["ROBUSTDX_ALERT_TOKEN_FILE"] == "/run/secrets/alert-token"
    assert "alert-token" in SERVICES["alertmanager"]["secrets"] and "alert-token" in SERVICES["alert-receiver"]["secrets"]


def test_pushgateway_series_cannot_pose_as_another_job() -> None:
    prom = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "pushgateway"]
    assert {"source_labels": ["job"], "regex": contracts.PUSH_JOB, "action": "keep"} in job["metric_relabel_configs"]


def test_make_secrets_creates_every_compose_secret_once(tmp_path: Path) -> None:
    script = tmp_path / "make-secrets.sh"
    script.write_bytes((DEPLOY / "make-secrets.sh").read_bytes())
    script.chmod(0o755)
    first = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    made = {name: (tmp_path / spec["file"]).read_text() for name, spec in COMPOSE["secrets"].items()}
    assert all(len(value.strip()) >= 32 for value in made.values()), "every compose secret file exists"
    dotenv = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    assert set(dotenv) == {"PREFECT_AUTH_STRING", "ROBUSTDX_ADMIN_TOKEN"}
    assert dotenv["PREFECT_AUTH_STRING"] == "robustdx:" + made["prefect-password"].strip()
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700 and (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert "created" in first.stdout and not any(v.strip() in first.stdout for v in made.values()), "never printed"
    second = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert second.stdout == "" and {n: (tmp_path / s["file"]).read_text() for n, s in COMPOSE["secrets"].items()} == made


def test_scripts_used_by_compose_exist() -> None:
    for name in SERVICES:
        for word in command(name):
            if word.startswith("/app/deploy/bin/"):
                assert (BIN / Path(word).name).exists(), f"{name}: {word}"


def test_model_store_is_shared_by_the_worker_and_the_service() -> None:
    for name in ("prefect-worker", "service"):
        home = env(name)["BENTOML_HOME"]
        assert f"bentoml-store:{home}" in SERVICES[name]["volumes"], name


def test_grafana_mounts_what_provisioning_reads() -> None:
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "robustdx.yml")["providers"][0]
    mounts = dict(m.split(":")[:2] for m in SERVICES["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    home = env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).exists()


def test_grafana_reads_the_dashboards_the_ray_head_writes() -> None:
    """Ray writes its Grafana dashboards to <temp dir>/session_latest/metrics/grafana/dashboards (an absolute
    symlink to the session folder), so Grafana mounts the head's temp dir at the same path."""
    (ray,) = [p for p in load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "robustdx.yml")["providers"]
              if p["name"] == "ray"]  # fmt: skip
    head = dict(m.split(":")[:2] for m in SERVICES["ray-head"]["volumes"])
    grafana = dict(m.split(":")[:2] for m in SERVICES["grafana"]["volumes"])
    assert head["ray-session"] == grafana["ray-session"] == "/tmp/ray"
    assert ray["options"]["path"] == "/tmp/ray/session_latest/metrics/grafana/dashboards"
    assert "ray-session:/tmp/ray:ro" in SERVICES["grafana"]["volumes"], "Grafana only reads them"


# ------------------------------------------------------------------------------------------------
# environment variables: each is read by something
# ------------------------------------------------------------------------------------------------
def _site_packages() -> Path:
    import prefect

    return Path(prefect.__file__).resolve().parents[1]


def _mentioned(name: str, folders: list[Path]) -> bool:
    for folder in folders:
        for path in folder.rglob("*.py"):
            if name in path.read_text(errors="ignore"):
                return True
    return False


def _is_prefect_setting(name: str, value: str) -> bool:
    """Prefect's settings accept the variable (it changes some setting)."""
    from prefect.settings import Settings

    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PREFECT_")]:
            mp.delenv(key)
        base = Settings().to_environment_variables(exclude_unset=True)
        mp.setenv(name, value)
        return Settings().to_environment_variables(exclude_unset=True) != base


ALL_ENV = sorted({(k, v) for name in SERVICES for k, v in env(name).items()})
OURS = [REPO / "core", REPO / "flows", REPO / "service"]
GRAFANA_ENV = {
    "GF_AUTH_ANONYMOUS_ENABLED",
    "GF_SECURITY_ADMIN_PASSWORD__FILE",
    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
    "GF_ANALYTICS_REPORTING_ENABLED",
}


@pytest.mark.parametrize(("key", "value"), ALL_ENV, ids=[k for k, _ in ALL_ENV])
def test_environment_variable_is_read_by_something(key: str, value: str) -> None:
    scripts = "\n".join(p.read_text() for p in [*BIN.glob("*.sh"), REPO / "prefect.yaml"])
    if key.startswith("ROBUSTDX_"):
        known = {env_name(f) for f in ServiceSettings.model_fields} | {v for v in vars(contracts).values() if isinstance(v, str)}
        assert key in scripts or key in known or _mentioned(key, OURS), f"nothing reads {key}"
    elif key.startswith("PREFECT_"):
        assert key in scripts or _is_prefect_setting(key, value), f"{key} is neither a Prefect setting nor read by deploy/bin"
    elif key.startswith("BENTOML_"):
        assert _mentioned(key, [_site_packages() / "bentoml"]), f"BentoML does not read {key}"
    elif key.startswith("RAY_"):
        assert key in scripts or _mentioned(key, [REPO / "flows", _site_packages() / "ray" / "dashboard"]), f"nothing reads {key}"
    elif key.startswith("GF_"):
        assert key in GRAFANA_ENV, f"{key}: add it to the reviewed Grafana settings list (cannot be checked offline)"
    else:
        pytest.fail(f"{key}: unexpected variable")
