"""Prefect flows: train, sweep, evaluate, promote and the retrain loop that chains them.

* ``train_flow`` — one recipe from a YAML preset (+ overrides) through :func:`run_recipe`;
* ``sweep_flow`` — the Ray Tune sweep (:mod:`robustdx.flows.tune`) inside a task;
* ``evaluate_flow`` — a bundle against the serving model on validation (clean, robust at the
  serving ε, attribution), cached on (bundle hash, serving tag, settings): the scores are
  deterministic given those;
* ``promote_flow`` — :func:`robustdx.flows.release.promote` (gates, store, pointer, audit), then builds
  the promoted model's Bento (:mod:`robustdx.flows.bento`) and optionally asks the running service to reload;
* ``rollback_flow`` — production back to the previous tag;
* ``retrain_flow`` — sweep → train the best configuration in full → promote (which evaluates).

Parameters are the pydantic models of :mod:`robustdx.flows.params`, so the Prefect UI shows them
as forms. Training retries on
transient failures only (a bad config or missing data fails at once) and resumes from its last
epoch checkpoint, so a retry does not start over. Every flow leaves Markdown/table artifacts (keys:
lowercase and dashes) and, when ``$ROBUSTDX_PUSHGATEWAY`` is set, pushes its outcome for Grafana.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from robustdx.core.config import RunConfig, apply_overrides, load_config, parse_config
from robustdx.core.errors import BundleError, ConfigError, DataError
from robustdx.core.evaluation.scoring import SCORE_KEYS
from robustdx.core.release.bundle import WEIGHTS, verify_bundle
from robustdx.core.release.pointer import read_production
from robustdx.core.util import markdown_table
from robustdx.flows import metrics as flow_metrics
from robustdx.flows import release, tracking
from robustdx.flows.params import PromoteParams, RetrainParams, SweepParams, TrainParams
from robustdx.flows.snapshots import FeedbackSettings, freeze_snapshot, snapshot_markdown

PERMANENT_ERRORS = (ConfigError, DataError, BundleError, ValueError, TypeError, KeyError, FileNotFoundError)


def _transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry condition: not for errors that a retry cannot fix (bad config, missing data, tampered bundle)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, PERMANENT_ERRORS)


def _key(text: str) -> str:
    """An artifact key: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100] or "run"


def _link(text: str) -> str:
    """A Markdown link for an MLflow UI URL; a local database's run stays a plain sentence."""
    return f"[{text}]({text})" if text.startswith(("http://", "https://")) else text


def _sweep_run_line(folder: Any) -> str:
    """Where the sweep's parent MLflow run is (its id is kept in the sweep folder), or nothing when untracked."""
    from robustdx.flows.tune.driver import MLFLOW_RUN_FILE

    run_file = Path(folder) / MLFLOW_RUN_FILE
    uri = tracking.tracking_uri()
    if not run_file.is_file() or uri is None:
        return ""
    return f"\nTracked in MLflow: parent run `{run_file.read_text().strip()}` in `{uri}` (a child run per trial)\n"


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


@contextmanager
def _pushed(flow_name: str, extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Push the flow's outcome (and whatever the body put in ``extra``) to the Pushgateway at the end."""
    t0, outcome = time.perf_counter(), "failed"
    try:
        yield extra
        outcome = "completed"
    finally:
        flow_metrics.push_metrics(flow_name, outcome, time.perf_counter() - t0, **extra)


# ------------------------------------------------------------------------------------------------
# tasks
# ------------------------------------------------------------------------------------------------
@task(retries=2, retry_delay_seconds=10, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def train_task(cfg: RunConfig) -> dict[str, Any]:
    """Train (or resume) ``cfg``; returns where the bundle and report are and the test metrics."""
    logger = get_run_logger()
    result, run = tracking.train_tracked(cfg.model_copy(update={"progress": False}), log=logger.info)
    report = result.report.read_text()
    if run.link:
        report += f"\n\nTracked in MLflow: {_link(run.link)}\n"
    create_markdown_artifact(report, key=_key(f"train-{cfg.name}"), description=f"Training report of {cfg.run_dir}")
    return {
        "run_dir": str(result.run_dir),
        "bundle": str(result.bundle),
        "report": str(result.report),
        "metrics": result.metrics,
        "mlflow_run": run.run_id,
    }


@task(retries=1, retry_delay_seconds=10, retry_condition_fn=_transient, cache_policy=NO_CACHE)
def sweep_task(params: SweepParams) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the best configuration and the trial table."""
    from robustdx.flows.tune import driver as tune

    cfg, _base = tune.load_sweep(params.config, params.overrides, params.run_overrides)
    update: dict[str, Any] = {}
    if params.num_samples is not None:
        update["num_samples"] = params.num_samples
    if params.name is not None:
        update["name"] = params.name
    cfg = cfg.model_copy(update=update)
    result = tune.run_sweep(cfg, resume=True, log=get_run_logger().info)
    rows = [{k: v for k, v in row.items() if not isinstance(v, dict | list)} for row in result.rows]
    create_table_artifact(rows, key=_key(f"sweep-{cfg.name}"), description=f"Trials of sweep {cfg.name}")
    create_markdown_artifact(
        f"# Sweep {cfg.name}\n\nbest score **{result.best_score:.4f}** ({cfg.objective}) with "
        f"`{json.dumps(result.best_params)}`\n\n{result.total_trial_epochs} trial-epochs in {result.wall_seconds:.0f} s; "
        f"results in `{result.results_dir}`\n{_sweep_run_line(result.results_dir)}",
        key=_key(f"sweep-{cfg.name}-best"),
    )
    return {
        "best_config": result.best_config.model_dump(mode="json"),
        "best_params": result.best_params,
        "best_score": result.best_score,
        "path": str(result.results_dir),
        "total_trial_epochs": result.total_trial_epochs,
    }


def _evaluation_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key: the bundle's weights hash, the serving tag and the settings — all the scores depend on."""
    home = parameters.get("home")
    pointer = read_production(home)
    manifest = verify_bundle(parameters["bundle"])
    settings: release.EvaluationSettings = parameters["settings"]
    parts = [manifest["files"][WEIGHTS]["sha256"], pointer.tag if pointer else "-", settings.model_dump_json()]
    return "evaluate-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@task(cache_key_fn=_evaluation_key, cache_expiration=timedelta(days=7), persist_result=True)
def evaluate_task(bundle: str, home: str | None, settings: release.EvaluationSettings) -> dict[str, Any]:
    ev = release.evaluate_against_production(bundle, home, settings)
    with tracking.tracked_run(tracking.PROMOTE, f"evaluate {bundle}", tags={"action": "evaluate"}) as run:
        tracking.log_decision(run, ev.candidate, ev.production, bundle=bundle, serving=ev.production_tag, eps=ev.eps)
    return {"candidate": ev.candidate, "production": ev.production, "production_tag": ev.production_tag, "eps": ev.eps}


@task(cache_policy=NO_CACHE)
def bento_task(tag: str, home: str | None) -> dict[str, Any]:
    """The promoted model as a Bento; the promotion stands when the build fails (the local service serves the
    production pointer, not the Bento), and the failure is recorded with it."""
    from robustdx.flows.bento import BentoBuildError, build_bento

    try:
        bento = build_bento(tag, home)
    except BentoBuildError as err:
        get_run_logger().warning("promoted %s, but its Bento was not built: %s", tag, err)
        return {"bento": None, "bento_error": str(err)}
    get_run_logger().info("built Bento %s (bentoml serve %s / bentoml containerize %s)", bento, bento, bento)
    return {"bento": bento}


@task(cache_policy=NO_CACHE)
def snapshot_task(settings: FeedbackSettings, sweep: SweepParams, home: str | None, output_dir: str) -> dict[str, Any]:
    """Freeze the data snapshot the retrain trains on (the sweep's base data + accepted feedback)."""
    from robustdx.flows.tune import driver as tune

    _cfg, base = tune.load_sweep(sweep.config, sweep.overrides, sweep.run_overrides)
    snap = freeze_snapshot(settings, base.data, home, output_dir, log=get_run_logger().info)
    create_markdown_artifact(snapshot_markdown(snap), key=_key(f"snapshot-{snap['id']}"), description=f"snapshot {snap['id']}")
    return snap


@task(cache_policy=NO_CACHE)
def promote_task(params: PromoteParams) -> dict[str, Any]:
    result = release.promote(params.bundle, params.gates, params.evaluation, params.bentoml_home)
    return result.to_json()


# ------------------------------------------------------------------------------------------------
# artifacts
# ------------------------------------------------------------------------------------------------
def _decision_markdown(outcome: dict[str, Any]) -> str:
    verdict = "PROMOTED" if outcome["promoted"] else "REJECTED"
    lines = [
        f"# Promotion: {verdict}",
        "",
        f"- candidate bundle: `{outcome.get('bundle', '')}`",
        f"- serving before: `{outcome.get('production_tag') or 'none'}`; "
        f"after: `{outcome.get('tag') or outcome.get('production_tag') or 'none'}`",
        f"- scored on validation at the serving ε = {outcome['eps'] * 255:.1f}/255",
        *([f"- Bento: `{outcome['bento']}` (`bentoml serve {outcome['bento']}`)"] if outcome.get("bento") else []),
        *([f"- Bento **not built**: {outcome['bento_error'][:500]}"] if outcome.get("bento_error") else []),
        "",
        "## Gates",
        "",
        markdown_table(
            [
                {
                    "gate": c["name"],
                    "candidate": c["candidate"],
                    "serving": c["production"],
                    "threshold": c["threshold"],
                    "passed": "yes" if c["passed"] else "**no**",
                }
                for c in outcome["checks"]
            ],
            ["gate", "candidate", "serving", "threshold", "passed"],
        ),
        "",
        "## Scores",
        "",
        markdown_table(release.score_rows(outcome["candidate"], outcome["production"]), ["metric", "candidate", "serving"]),
        "",
        f"Why: {outcome['summary']}",
    ]
    return "\n".join(lines)


def _scores_for_push(outcome: dict[str, Any]) -> dict[str, Any]:
    def clean(d: dict[str, Any] | None) -> dict[str, float]:
        return {k: float(d[k]) for k in SCORE_KEYS if d and d.get(k) is not None}

    return {"candidate": clean(outcome["candidate"]), "production": clean(outcome["production"])}


# ------------------------------------------------------------------------------------------------
# flows
# ------------------------------------------------------------------------------------------------
@flow(name="train", log_prints=True)
def train_flow(params: TrainParams = TrainParams()) -> dict[str, Any]:  # noqa: B008 - pydantic defaults are immutable here
    """Train one recipe from a preset; leaves the report as an artifact."""
    with _pushed("train", {}):
        return train_task(load_config(params.config, params.overrides))


@flow(name="sweep", log_prints=True)
def sweep_flow(params: SweepParams = SweepParams()) -> dict[str, Any]:  # noqa: B008
    """Ray Tune sweep over ε, PGD steps and learning rate; leaves the trial table as an artifact."""
    with _pushed("sweep", {}):
        return sweep_task(params)


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    bundle: str,
    settings: release.EvaluationSettings = release.EvaluationSettings(),  # noqa: B008
    bentoml_home: str | None = None,
) -> dict[str, Any]:
    """Score a bundle and the serving model on validation, side by side."""
    with _pushed("evaluate", {}):
        out = evaluate_task(bundle, bentoml_home, settings)
        create_table_artifact(
            release.score_rows(out["candidate"], out["production"]),
            key="evaluation",
            description=f"{bundle} vs serving {out['production_tag'] or '(none)'} at eps {out['eps']:.5f}",
        )
        return out


@flow(name="promote", log_prints=True)
def promote_flow(params: PromoteParams) -> dict[str, Any]:
    """Promote a bundle if it passes the clean, robust and attribution gates; the decision and why
    are recorded as an artifact and in the audit log."""
    logger = get_run_logger()
    with _pushed("promote", {}) as extra:
        outcome = {**promote_task(params), "bundle": params.bundle}
        extra.update(decision="promoted" if outcome["promoted"] else "rejected", **_scores_for_push(outcome))
        if outcome["promoted"] and params.build_bento:
            outcome.update(bento_task(outcome["tag"], params.bentoml_home))
        create_markdown_artifact(_decision_markdown(outcome), key="promotion-decision", description=outcome["summary"])
        logger.info(outcome["summary"])
        if outcome["promoted"] and params.service_url:
            try:
                outcome["reload"] = release.reload_service(params.service_url)
                logger.info("service at %s now serves %s", params.service_url, outcome["reload"].get("tag"))
            except RuntimeError as err:  # the promotion stands: a service (re)started later loads the pointer
                outcome["reload"] = {"error": str(err)}
                logger.warning("promoted, but could not reload %s: %s", params.service_url, err)
        return outcome


@flow(name="rollback", log_prints=True)
def rollback_flow(bentoml_home: str | None = None, service_url: str | None = None) -> dict[str, Any]:
    """Point production back at the previous model (and reload the service when given)."""
    with _pushed("rollback", {"decision": "rolled_back"}):
        pointer = release.rollback(bentoml_home)
        out: dict[str, Any] = {"tag": pointer.tag, "previous": pointer.previous}
        if service_url:
            out["reload"] = release.reload_service(service_url)
        create_markdown_artifact(f"# Rollback\n\nserving `{pointer.tag}` again (was `{pointer.previous}`)", key="rollback")
        return out


def best_run_config(best: dict[str, Any], overrides: list[str], output_dir: str, name: str) -> RunConfig:
    """The sweep's best configuration, renamed into ``output_dir`` with the full-training overrides."""
    raw = apply_overrides({**best, "output_dir": output_dir, "name": name, "progress": False}, overrides)
    return parse_config(raw)


@flow(name="retrain", log_prints=True)
def retrain_flow(params: RetrainParams = RetrainParams()) -> dict[str, Any]:  # noqa: B008
    """Sweep → train the best configuration in full → evaluate and promote (gated)."""
    logger = get_run_logger()
    stamp = _stamp()
    logger.info("retrain %s (reason: %s)", stamp, params.reason)
    with _pushed("retrain", {}):
        sweep_params = params.sweep.model_copy(update={"name": params.sweep.name or f"retrain-{stamp}"})
        train_overrides, snap = list(params.train_overrides), None
        if params.feedback.use:
            snap = snapshot_task(params.feedback, sweep_params, params.bentoml_home, params.output_dir)
            data_override = f"data.snapshot={snap['path']}"
            sweep_params = sweep_params.model_copy(update={"run_overrides": [*sweep_params.run_overrides, data_override]})
            train_overrides.append(data_override)
        sweep = sweep_flow(sweep_params)
        cfg = best_run_config(sweep["best_config"], train_overrides, params.output_dir, f"retrain-{stamp}")
        best, score = sweep["best_params"], sweep["best_score"]
        logger.info("best trial %s (score %.4f); training it in full as %s", best, score, cfg.run_dir)
        trained = train_task(cfg)
        outcome = promote_flow(
            PromoteParams(
                bundle=trained["bundle"],
                gates=params.gates,
                evaluation=params.evaluation,
                bentoml_home=params.bentoml_home,
                service_url=params.service_url,
                build_bento=params.build_bento,
            )
        )
        return {"reason": params.reason, "snapshot": snap, "sweep": sweep, "train": trained, "promotion": outcome}


FLOWS: dict[str, Callable[..., Any]] = {
    "train": train_flow,
    "sweep": sweep_flow,
    "evaluate": evaluate_flow,
    "promote": promote_flow,
    "rollback": rollback_flow,
    "retrain": retrain_flow,
}
