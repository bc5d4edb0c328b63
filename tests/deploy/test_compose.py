"""deploy/compose.yaml, validated without Docker (``docker compose config`` cannot run here).

What ``docker compose up`` would trip over, checked statically: every service has a pinned image or a
build target that exists in the Dockerfile; every bind-mounted file exists; every ``host:port`` that one
service uses to reach another (env values, Prometheus targets, the Alertmanager webhook, Grafana's
datasource, healthchecks) names a compose service and a port it listens on; named volumes are declared,
and those mounted into our images are folders the image creates for its non-root user; and every
environment variable is one that the code, the scripts or the named tool actually reads. State lives in
PostgreSQL (the Prefect server's and MLflow's databases; tests/integration/test_postgres.py runs both servers
on a real one the way compose does).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustdx.core import contracts
from robustdx.flows.alerts import DEFAULT_PORT
from robustdx.service.settings import ServiceSettings, env_name
from tests.deploy.dockerfile import parse
from tests.deploy.stack import ALERTMANAGER_YML, BIN, DEPLOY, PROMETHEUS_DIR, REPO, load_yaml
from tests.support.postgres import statements

pytestmark = pytest.mark.unit

COMPOSE = load_yaml(DEPLOY / "compose.yaml")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DOCKER = parse()
EXPECTED = {
    "postgres",
    "prefect-server",
    "mlflow",
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


def option(cmd: list[str], name: str) -> str:
    """The value after ``name`` in a command."""
    return cmd[cmd.index(name) + 1]


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


DEFAULT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "pushgateway": 9091, "grafana": 3000, "postgres": 5432}


def endpoints() -> Iterator[tuple[str, str, int]]:
    """(where, host, port) for every host:port that a component uses to reach another (``localhost``:
    a port published on the host, for URLs a browser opens)."""
    pattern = re.compile(r"(?:^|//|@)([a-z][a-z0-9-]*):(\d+)")
    for name, spec in SERVICES.items():
        for key, value in env(name).items():
            for host, port in pattern.findall(value):
                yield f"{name} env {key}", host, int(port)
        for word in command(name):
            for host, port in pattern.findall(word):
                yield f"{name} command", host, int(port)
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
        # PostgreSQL versions are major.minor (15.18), on the Debian release the tests' package comes from
        version = r"\d+\.\d+-bookworm" if image == "postgres" else r"v?\d+\.\d+\.\d+"
        assert image and re.fullmatch(version, tag), f"{name}: pin the image by version, got {spec['image']}"


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
    assert "127.0.0.1:5000:5000" in SERVICES["mlflow"]["ports"] and option(command("mlflow"), "--port") == "5000"


# ------------------------------------------------------------------------------------------------
# closed by default (issue: unauthenticated control planes published on every interface)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_published_ports_bind_loopback_only(name: str) -> None:
    for mapping in SERVICES[name].get("ports", []):
        assert str(mapping).startswith("127.0.0.1:"), f"{name}: {mapping} is published on every interface"


def test_code_execution_and_push_planes_are_not_published() -> None:
    for name in ("ray-head", "pushgateway", "alert-receiver", "prefect-worker", "postgres"):
        assert not SERVICES[name].get("ports"), f"{name} must not be published"


def test_prometheus_has_no_lifecycle_api() -> None:
    assert not [w for w in SERVICES["prometheus"]["command"] if "lifecycle" in w]


SECRET_VARIABLES = {
    "ROBUSTDX_ADMIN_TOKEN", "ROBUSTDX_CLINICIAN_TOKEN", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
}  # fmt: skip


def test_secrets_are_required_not_defaulted() -> None:
    """Compose refuses to start without them (``${VAR:?...}``), rather than running open."""
    required = re.compile(r"^\$\{[A-Z_]+:\?.+\}$")
    for name in SERVICES:
        for key, value in env(name).items():
            if key in SECRET_VARIABLES:
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
    assert set(dotenv) == {"PREFECT_AUTH_STRING", "ROBUSTDX_ADMIN_TOKEN", "ROBUSTDX_CLINICIAN_TOKEN"}
    assert dotenv["ROBUSTDX_CLINICIAN_TOKEN"] != dotenv["ROBUSTDX_ADMIN_TOKEN"], "two tokens, two roles"
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
# state in PostgreSQL: the Prefect server and MLflow
# ------------------------------------------------------------------------------------------------
DB_URL = re.compile(r"postgresql\+(\w+)://([^@/]+)@postgres:5432/(\w+)")


def database_urls(name: str) -> list[re.Match[str]]:
    """The PostgreSQL URLs a service is given, in its environment or on its command line."""
    return [m for word in [*env(name).values(), *command(name)] for m in DB_URL.finditer(word)]


POSTGRES_CLIENTS = sorted(name for name in SERVICES if database_urls(name))


def test_prefect_server_mlflow_and_the_service_are_the_postgres_clients() -> None:
    assert POSTGRES_CLIENTS == ["mlflow", "prefect-server", "service"]
    (log,) = database_urls("service")
    assert log.group(1, 2, 3) == ("psycopg", "robustdx", "robustdx"), "the inference log: psycopg 3 (the serve extra)"
    assert env("service")["ROBUSTDX_INFERENCE_DB_URL"] == log.group(0)
    (prefect,) = database_urls("prefect-server")
    assert prefect.group(1, 2, 3) == ("asyncpg", "robustdx", "prefect"), "Prefect's server needs the async driver"
    (mlflow,) = database_urls("mlflow")
    assert mlflow.group(1, 2, 3) == ("psycopg", "robustdx", "mlflow"), "psycopg 3 is what the orchestrate extra installs"
    assert option(command("mlflow"), "--backend-store-uri") == mlflow.group(0)


def test_no_sqlite_is_left_in_the_stack() -> None:
    for name in SERVICES:
        for word in [*env(name).values(), *command(name)]:
            assert "sqlite" not in word.lower(), f"{name}: {word}"


def test_prefect_reads_the_database_url_from_the_variable_compose_sets() -> None:
    """Prefect 3.9's name for it is PREFECT_SERVER_DATABASE_CONNECTION_URL (PREFECT_API_... is a legacy alias)."""
    from prefect.settings import Settings

    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PREFECT_")]:
            mp.delenv(key)
        for key, value in env("prefect-server").items():
            mp.setenv(key, value)
        url = Settings().server.database.connection_url
    assert url is not None and url.get_secret_value() == database_urls("prefect-server")[0].group(0)


@pytest.mark.parametrize("name", POSTGRES_CLIENTS)
def test_postgres_clients_wait_for_it_and_get_the_password_from_the_secret(name: str) -> None:
    spec = SERVICES[name]
    assert spec["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert "postgres-password" in spec["secrets"]
    for url in database_urls(name):
        assert ":" not in url.group(2), f"{name}: no password in a URL (it would show in docker inspect)"
    assert "/run/secrets/postgres-password" in " ".join(spec["entrypoint"]), f"{name}: PGPASSWORD comes from the secret"
    assert not DOCKER.stages[spec["build"]["target"]].all("ENTRYPOINT"), "the image's own ENTRYPOINT would be lost"


def test_postgres_password_and_databases_come_from_the_shipped_files() -> None:
    pg = env("postgres")
    assert pg["POSTGRES_USER"] == "robustdx" == database_urls("mlflow")[0].group(2)
    assert pg["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "postgres-password" in SERVICES["postgres"]["secrets"] and "postgres-password" in COMPOSE["secrets"]
    mounts = dict(m.split(":")[:2] for m in SERVICES["postgres"]["volumes"])
    init = DEPLOY / mounts.pop("./postgres/init.sql").replace("/docker-entrypoint-initdb.d/", "postgres/")
    assert mounts == {"postgres-data": "/var/lib/postgresql/data"}
    created = {m.group(1) for s in statements(init.read_text()) if (m := re.fullmatch(r"CREATE DATABASE (\w+)", s))}
    assert created == {url.group(3) for name in POSTGRES_CLIENTS for url in database_urls(name)}


def test_postgres_is_healthy_only_when_it_answers_over_tcp() -> None:
    """The image's first start runs init.sql on a temporary server that listens on its Unix socket only: a
    socket check would report ready before the databases exist."""
    test = SERVICES["postgres"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and option(test, "-h") == "127.0.0.1" and option(test, "-U") == "robustdx"


def _entrypoint_script() -> str:
    entry = SERVICES["prefect-server"]["entrypoint"]
    assert entry == SERVICES["mlflow"]["entrypoint"] and entry[:2] == ["/bin/sh", "-c"]
    return entry[2].replace("$$", "$")  # compose's escape of a literal $


def test_the_password_entrypoint_exports_pgpassword_and_execs_the_command(tmp_path: Path) -> None:
    secret = tmp_path / "postgres-password"
    secret.write_text("s3cret-value\n")
    script = _entrypoint_script().replace("/run/secrets/postgres-password", str(secret))
    probe = [sys.executable, "-c", "import os, sys; print(os.environ['PGPASSWORD'], sys.argv[1:])", "a b", "--port"]
    done = subprocess.run(["/bin/sh", "-c", script, "name", *probe], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "s3cret-value ['a b', '--port']\n", done.stderr
    secret.unlink()
    done = subprocess.run(["/bin/sh", "-c", script, "name", *probe], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and not done.stdout, "no secret: the server must not start without a password"


def test_mlflow_serves_artifacts_from_its_volume_and_accepts_its_clients_host_names() -> None:
    cmd = command("mlflow")
    assert cmd[:2] == ["mlflow", "server"]
    help_env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    mlflow = str(Path(sys.executable).parent / "mlflow")
    text = subprocess.run([mlflow, "server", "--help"], capture_output=True, text=True, env=help_env, check=True).stdout
    assert {w for w in cmd if w.startswith("--")} <= set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    mounts = dict(m.split(":")[:2] for m in SERVICES["mlflow"]["volumes"])
    assert mounts["mlflow-artifacts"] == option(cmd, "--artifacts-destination")
    # MLflow answers 403 to other Host headers (DNS-rebinding protection; /health is exempt, so the
    # healthcheck would not notice): the name its clients use, and the published port for the browser
    allowed = set(option(cmd, "--allowed-hosts").split(","))
    users = {env(n)["MLFLOW_TRACKING_URI"] for n in SERVICES if "MLFLOW_TRACKING_URI" in env(n)}
    assert users == {"http://mlflow:5000"} and "mlflow:5000" in allowed
    assert {"localhost:5000", "127.0.0.1:5000"} <= allowed


@pytest.mark.parametrize("name", ["prefect-worker", "ray-head"])
def test_training_services_track_to_the_stack_mlflow(name: str) -> None:
    assert env(name)["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert SERVICES[name]["depends_on"]["mlflow"] == {"condition": "service_healthy"}


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
POSTGRES_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD_FILE", "POSTGRES_INITDB_ARGS"}  # the postgres image's entrypoint
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
    elif key.startswith("MLFLOW_"):
        assert _mentioned(key, [REPO / "flows", _site_packages() / "mlflow"]), f"nothing reads {key}"
    elif key.startswith("POSTGRES_"):
        assert key in POSTGRES_ENV, f"{key}: add it to the reviewed postgres image settings (cannot be checked offline)"
    elif key.startswith("GF_"):
        assert key in GRAFANA_ENV, f"{key}: add it to the reviewed Grafana settings list (cannot be checked offline)"
    else:
        pytest.fail(f"{key}: unexpected variable")
