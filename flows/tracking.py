"""Experiment tracking in MLflow: every training, sweep and promotion decision as a run in one UI.

Where the runs go: ``$MLFLOW_TRACKING_URI`` when set (the stack's server on 127.0.0.1:5000, compose's
``http://mlflow:5000``), else a local SQLite database ``runs/mlflow/mlflow.db`` with the artifacts beside it
(``mlflow ui --backend-store-uri sqlite:///runs/mlflow/mlflow.db`` browses it). ``ROBUSTDX_TRACKING=off``
turns tracking off.

Experiments:

* ``robustdx-train`` — one run per trained model: the flattened run config as params, every epoch's
  training and validation metrics (``<stage>/<metric>``, step = epoch across stages), the test metrics,
  and the bundle's path and weights SHA-256 as tags, with its report, metrics and model card as artifacts;
* ``robustdx-sweep`` — one parent run per Ray Tune sweep (space, best trial, ``trials.csv``) and, through
  Ray's ``MLflowLoggerCallback``, one child run per trial with its reported metrics;
* ``robustdx-promote`` — one run per evaluation or promotion decision: candidate and serving scores, the
  gates, the decision and the tags involved.

Why the client API (:class:`mlflow.MlflowClient`) and not ``mlflow.start_run``: no process-wide active run,
so a Prefect task, a Tune driver and the CLI can track side by side. Why tracking never fails the work:
the bundle, ``metrics.json`` and the Prefect artifacts are the record of truth; an unreachable tracking
server costs a warning, not a night's retraining.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from robustdx.core.config import RunConfig
    from robustdx.core.training.recipes import RunResult

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_SWITCH = "ROBUSTDX_TRACKING"
DEFAULT_STORE = Path("runs/mlflow")
TRAIN, SWEEP, PROMOTE = "robustdx-train", "robustdx-sweep", "robustdx-promote"
PARAM_LIMIT = 6000  # MLflow's limit on a param value's length
PARENT_TAG = "mlflow.parentRunId"


def tracking_uri(env: Mapping[str, str] | None = None) -> str | None:
    """The tracking URI: ``$MLFLOW_TRACKING_URI``, else SQLite under ``runs/mlflow``; None when switched off."""
    env = os.environ if env is None else env
    if env.get(ENV_SWITCH, "").strip().lower() in {"0", "off", "false", "no"}:
        return None
    if env.get(ENV_URI):
        return env[ENV_URI]
    return f"sqlite:///{DEFAULT_STORE.resolve() / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local SQLite database; the server decides otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def numeric(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of ``data`` (flattened; booleans and None dropped), as MLflow metrics."""
    return {
        k: float(v) for k, v in flatten(data, prefix).items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


class TrackedRun:
    """One MLflow run, written through the client; every call is a no-op on a null run (tracking off or down)."""

    def __init__(self, client: Any = None, run_id: str | None = None, experiment_id: str | None = None, uri: str = "") -> None:
        self.client, self.run_id, self.experiment_id, self.uri = client, run_id, experiment_id, uri

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    @property
    def link(self) -> str | None:
        """The run's page in the MLflow UI (a server URI), else where to find it (a local database)."""
        if not self.active:
            return None
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"MLflow run {self.run_id} in {self.uri} (browse: mlflow ui --backend-store-uri {self.uri})"

    def _safely(self, what: str, call: Callable[[], Any]) -> None:
        if not self.active:
            return
        try:
            call()
        except Exception as err:  # noqa: BLE001 - tracking must never fail the work it records
            log.warning("MLflow: could not %s for run %s: %s", what, self.run_id, err)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in flatten(params).items()]
        self._safely("log params", lambda: self.client.log_batch(self.run_id, params=items))

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
        self._safely("log metrics", lambda: self.client.log_batch(self.run_id, metrics=items))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:PARAM_LIMIT]) for k, v in tags.items() if v is not None]
        self._safely("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: Path | str, folder: str | None = None) -> None:
        if Path(path).is_file():
            self._safely(f"log {path}", lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def epoch_logger(self, offsets: Mapping[str, int] | None = None) -> Callable[[dict[str, Any]], None]:
        """An epoch callback for the trainer: ``<stage>/<metric>`` at step = the stage's offset + its epoch.

        ``offsets`` (stage → epochs of the stages before it) keeps the steps of a resumed run where the
        interrupted run left them: the trainer calls back only for the epochs it still has to train."""
        offsets = offsets or {}

        def on_epoch(metrics: dict[str, Any]) -> None:
            stage = str(metrics.get("stage", "train"))
            step = offsets.get(stage, 0) + int(metrics.get("epoch", 0))
            self.log_metrics({f"{stage}/{k}": v for k, v in metrics.items() if k not in ("stage", "epoch")}, step)

        return on_epoch


def _reachable(uri: str) -> bool:
    """A tracking server answers /health (a quick probe: MLflow's own client retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


def _open(
    experiment: str, name: str, tags: Mapping[str, str], env: Mapping[str, str] | None, resume: str | None
) -> TrackedRun:
    uri = tracking_uri(env)
    if uri is None:
        return TrackedRun()
    if not _reachable(uri):
        log.warning("MLflow tracking server %s does not answer; %s %r is not tracked", uri, experiment, name)
        return TrackedRun()
    try:
        from mlflow import MlflowClient

        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else client.create_experiment(experiment, artifact_location=artifact_root(uri))
        if resume and _exists(client, resume):
            client.update_run(resume, status="RUNNING")
            return TrackedRun(client, resume, exp_id, uri)
        run = client.create_run(exp_id, run_name=name, tags=dict(tags))
    except Exception as err:  # noqa: BLE001 - see the module docstring
        log.warning("MLflow (%s): could not start a run for %s %r: %s", uri, experiment, name, err)
        return TrackedRun()
    return TrackedRun(client, run.info.run_id, exp_id, uri)


def _exists(client: Any, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MlflowException (deleted, another database) or a transport error
        return False
    return True


@contextmanager
def tracked_run(
    experiment: str,
    name: str,
    tags: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    resume: str | None = None,
) -> Iterator[TrackedRun]:
    """A run in ``experiment`` for the body; FINISHED, FAILED (an exception) or KILLED (an interrupt) at the end.

    ``resume``: the id of an earlier run to continue (a resumed sweep keeps its parent run), when it exists."""
    run = _open(experiment, name, tags or {}, env, resume)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        run._safely("end the run", lambda: run.client.set_terminated(run.run_id, status))


# ------------------------------------------------------------------------------------------------
# what each kind of run records
# ------------------------------------------------------------------------------------------------
def log_training(run: TrackedRun, run_dir: Path, metrics: Mapping[str, Any], bundle: Path, report: Path) -> None:
    """A trained model's test metrics, bundle identity (path, weights SHA-256) and documents."""
    from robustdx.core.release.bundle import MANIFEST, MODEL_CARD, WEIGHTS

    run.log_metrics({k: v for k, v in metrics.items() if k in ("test", "val", "robust")})
    manifest = json.loads((bundle / MANIFEST).read_text()) if (bundle / MANIFEST).is_file() else {}
    run.set_tags(
        {
            "run_dir": str(run_dir),
            "bundle": str(bundle),
            "bundle_weights_sha256": manifest.get("files", {}).get(WEIGHTS, {}).get("sha256"),
        }
    )
    for path in (report, run_dir / "metrics.json", bundle / MODEL_CARD):
        run.log_artifact(path)


def log_decision(run: TrackedRun, candidate: Mapping[str, Any], production: Mapping[str, Any] | None, **tags: Any) -> None:
    """Candidate and serving scores of an evaluation or promotion, and what was decided."""
    run.log_metrics({"candidate": candidate, "serving": production or {}})
    run.set_tags(tags)


def train_tracked(cfg: RunConfig, log: Callable[[str], None] = lambda _m: None) -> tuple[RunResult, TrackedRun]:
    """:func:`robustdx.core.training.recipes.run_recipe` as a tracked ``robustdx-train`` run (CLI and flows)."""
    from robustdx.core.training.recipes import RECIPES, run_recipe

    offsets, done = {}, 0
    for regime, key in RECIPES[cfg.recipe]:
        offsets[str(regime)] = done
        done += getattr(cfg, key).epochs
    with tracked_run(TRAIN, cfg.name, tags={"recipe": str(cfg.recipe)}) as run:
        run.log_params(cfg.model_dump(mode="json", exclude={"progress"}))
        result = run_recipe(cfg, callbacks=[run.epoch_logger(offsets)], log=log)
        log_training(run, result.run_dir, result.metrics, result.bundle, result.report)
    if run.link:
        log(f"tracked as {run.link}")
    return result, run


def tune_callbacks(parent: TrackedRun, sweep: str) -> list[Any]:
    """Ray Tune's MLflow logger: one child run of ``parent`` per trial (none when tracking is off or down)."""
    if not parent.active:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [
        MLflowLoggerCallback(
            tracking_uri=parent.uri, experiment_name=SWEEP, tags={PARENT_TAG: parent.run_id, "sweep": sweep}, save_artifact=False
        )
    ]
