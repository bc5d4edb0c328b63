"""The local stack and its alert bridge: ``stack up / down / status`` and ``alert-receiver``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robustdx.cli.common import fail

stack_app = typer.Typer(
    help="The robustdx stack as local processes on 127.0.0.1 under supervisord (make up / make down): Prefect server and "
    "UI, the MLflow tracking server and UI, the retrain deployments, bentoml serve with the production model, Prometheus, "
    "Alertmanager, the Pushgateway and the alert receiver. No Docker needed; all state lives under --root.",
    no_args_is_help=True,
)
RootOpt = Annotated[Path | None, typer.Option("--root", help="State folder (default: runs/stack).")]


@stack_app.callback()
def _stack(ctx: typer.Context, root: RootOpt = None) -> None:
    ctx.obj = root  # `robustdx stack --root R up` and `robustdx stack up --root R` both work


def _root(ctx: typer.Context, root: Path | None) -> Path:
    from robustdx.flows.stackconf import DEFAULT_ROOT

    return root or ctx.obj or DEFAULT_ROOT


def _ports(values: list[str]) -> dict[str, int]:
    from robustdx.flows.stackconf import DEFAULT_PORTS, parse_port

    try:
        return {**DEFAULT_PORTS, **dict(parse_port(v) for v in values)}
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--port") from None


@stack_app.command()
def up(
    ctx: typer.Context,
    root: RootOpt = None,
    port: Annotated[list[str] | None, typer.Option(metavar="NAME=PORT", help="Override a port (repeatable).")] = None,
    sweep: Annotated[Path, typer.Option(help="Sweep file of the retrains.")] = Path("configs/sweeps/demo.yaml"),
    num_samples: Annotated[int | None, typer.Option(min=1, help="Trials per sweep (default: the sweep file's).")] = None,
    run_set: Annotated[
        list[str] | None, typer.Option("--run-set", metavar="KEY=VALUE", help="Override of every trial's run config.")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Data set folder (default: the sweep's; the demo set is synthesised if missing).")
    ] = None,
    fast_alerts: Annotated[
        bool, typer.Option("--fast-alerts", help="1 s scrape/evaluation intervals and Alertmanager waits (tests).")
    ] = False,
    first_model_timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the first model.")] = 3600.0,
    mlflow_store: Annotated[
        Path, typer.Option(help="MLflow's database and artifacts (the command line's default tracking store).")
    ] = Path("runs/mlflow"),
) -> None:
    """Write <root>/supervisord.conf, start supervisord and every program in order, each once the previous one is
    ready, print their URLs and logs (a first model is retrained when none is promoted yet). Exit code 1 when the
    stack cannot start; supervisord is shut down again. The monitoring binaries come from
    deploy/bin/install-tools.sh monitoring (make up runs it)."""
    from robustdx.flows.localstack import StackError, UpOptions
    from robustdx.flows.localstack import up as stack_up
    from robustdx.flows.stackconf import ToolsUnavailable

    opts = UpOptions(
        root=_root(ctx, root),
        ports=_ports(port or []),
        sweep=sweep,
        num_samples=num_samples,
        run_set=run_set or [],
        data=data,
        fast_alerts=fast_alerts,
        first_model_timeout=first_model_timeout,
        mlflow_store=mlflow_store,
    )
    try:
        code = stack_up(opts)
    except (StackError, ToolsUnavailable) as err:
        fail(err, code=1)
    raise typer.Exit(code)


@stack_app.command()
def down(
    ctx: typer.Context,
    root: RootOpt = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for supervisord to exit.")] = 150.0,
) -> None:
    """supervisorctl shutdown: stop every program (SIGTERM to its process group, SIGKILL after 15 s), then supervisord."""
    from robustdx.flows.localstack import StackError
    from robustdx.flows.localstack import down as stack_down

    try:
        code = stack_down(_root(ctx, root), timeout)
    except StackError as err:
        fail(err, code=1)
    raise typer.Exit(code)


@stack_app.command()
def status(ctx: typer.Context, root: RootOpt = None) -> None:
    """supervisorctl status: each program's state, pid and uptime. Exit code 0 when all run."""
    from robustdx.flows.localstack import StackError
    from robustdx.flows.localstack import status as stack_status

    try:
        code = stack_status(_root(ctx, root))
    except StackError as err:
        fail(err, code=1)
    raise typer.Exit(code)


def alert_receiver(
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to listen on (default 9095).")] = None,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Accept alerts without a bearer secret; only allowed with a loopback --host "
            "(default: ROBUSTDX_ALERT_TOKEN_FILE or ROBUSTDX_ALERT_TOKEN required).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="critical, error, warning, info or debug.")] = "info",
) -> None:
    """Alertmanager webhook receiver: every firing alert labelled retrain="true" (POST /alerts) becomes the Prefect
    event robustdx.drift.detected, which starts the retrain/on-drift deployment.

    Point Alertmanager's webhook_configs url at http://HOST:PORT/alerts. Environment: PREFECT_API_URL (required), the
    Prefect server's API; ROBUSTDX_ALERT_TOKEN_FILE (a file holding the bearer secret) or ROBUSTDX_ALERT_TOKEN, which
    Alertmanager sends via http_config.authorization. Endpoints: POST /alerts, GET /healthz, GET /metrics.
    """
    from robustdx.flows.alerts import DEFAULT_PORT, ReceiverError, check_receiver, run_receiver

    if log_level not in ("critical", "error", "warning", "info", "debug"):
        raise typer.BadParameter(f"{log_level!r} is not one of critical, error, warning, info, debug", param_hint="--log-level")
    try:
        token, api = check_receiver(host, no_auth)
    except ReceiverError as err:
        fail(err)
    run_receiver(host, port or DEFAULT_PORT, token, api, log_level)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(stack_app, name="stack")
    app.command("alert-receiver")(alert_receiver)
