"""What the serving side and the flows share: the model name, the production pointer and the
Prometheus metric names (pure Python; no BentoML or prometheus_client import here).

* :data:`MODEL_NAME` — the BentoML model-store name every promoted bundle is saved under.
* The *production pointer* — ``$BENTOML_HOME/robustdx/production.json`` — holds the exact model tag
  that promotion chose and the previous one (for rollback). The promotion flow writes it with
  :func:`write_production`; the service reads it with :func:`read_production` at start-up and on
  ``POST /admin/reload``. Writes are atomic (temporary file + ``os.replace``), so a reader never sees
  half a file. The service never falls back to a bare ``:latest``.
* Metric names and label names (:data:`METRICS`) — fixed here so dashboards and alert rules can rely
  on them; the README lists them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

MODEL_NAME = "robustdx-classifier"
POINTER_DIR = "robustdx"
POINTER_FILE = "production.json"
LOCK_FILE = "promotion.lock"
AUDIT_FILE = "promotions.jsonl"
ENV_MODEL_TAG = "ROBUSTDX_MODEL_TAG"

# --- Prometheus metric names (the exporter adds ``_total`` / ``_bucket`` suffixes as usual) -----
PREDICTIONS = "robustdx_predictions"  # counter -> robustdx_predictions_total{class}
CONFIDENCE = "robustdx_confidence"  # histogram: top-class probability
MARGIN = "robustdx_margin"  # histogram: top-1 minus top-2 probability
REFERRALS = "robustdx_referrals"  # counter -> robustdx_referrals_total: below the confidence threshold
DRIFT_MMD = "robustdx_drift_mmd"  # gauge: unbiased MMD² live window vs reference embeddings
DRIFT_MMD_P = "robustdx_drift_mmd_p_value"  # gauge: its permutation p-value
DRIFT_KS = "robustdx_drift_ks_statistic"  # gauge: KS statistic on the positive-class score
DRIFT_KS_P = "robustdx_drift_ks_p_value"  # gauge: its p-value
DRIFT_PSI = "robustdx_drift_psi"  # gauge: PSI on the positive-class score
DRIFT_WINDOW = "robustdx_drift_window_size"  # gauge: live samples in the sliding window
ADV_FLIP_RATE = "robustdx_adversarial_flip_rate"  # gauge: fraction of sampled requests whose label PGD flips
ROBUST_MARGIN = "robustdx_robust_margin"  # gauge: mean logit margin of the predicted class after PGD
ROBUST_SAMPLES = "robustdx_robustness_samples"  # counter -> robustdx_robustness_samples_total
IG_DELTA = "robustdx_ig_convergence_delta"  # histogram: |IG convergence delta| (logit units)
MODEL_INFO = "robustdx_model_info"  # gauge = 1 for the serving model {version, regime, dataset, tag}

# --- pushed by the flows to a Prometheus Pushgateway (job "robustdx-flows"), when one is configured ---
FLOW_LAST_RUN = "robustdx_flow_last_run_timestamp_seconds"  # gauge {flow, outcome}
FLOW_DURATION = "robustdx_flow_duration_seconds"  # gauge {flow}: wall time of the last run
PROMOTION_LAST = "robustdx_promotion_last_timestamp_seconds"  # gauge {decision}: promoted / rejected / rolled_back
CANDIDATE_SCORE = "robustdx_candidate_score"  # gauge {metric}: last candidate's validation scores
PRODUCTION_SCORE = "robustdx_production_score"  # gauge {metric}: the serving model's scores in the same evaluation
PUSH_JOB = "robustdx-flows"
ENV_PUSHGATEWAY = "ROBUSTDX_PUSHGATEWAY"

LABEL_CLASS = "class"
INFO_LABELS = ("version", "regime", "dataset", "tag")

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    PREDICTIONS: ("counter", (LABEL_CLASS,), "Predictions served, by predicted class."),
    CONFIDENCE: ("histogram", (), "Top-class probability of each prediction."),
    MARGIN: ("histogram", (), "Top-1 minus top-2 class probability of each prediction."),
    REFERRALS: ("counter", (), "Predictions below the confidence threshold (refer to clinician)."),
    DRIFT_MMD: ("gauge", (), "Unbiased MMD^2 between the live embedding window and the bundle's reference."),
    DRIFT_MMD_P: ("gauge", (), "Permutation p-value of the MMD test (small = drift)."),
    DRIFT_KS: ("gauge", (), "Two-sample KS statistic of the positive-class score, live window vs reference."),
    DRIFT_KS_P: ("gauge", (), "p-value of the KS test."),
    DRIFT_PSI: ("gauge", (), "Population stability index of the positive-class score."),
    DRIFT_WINDOW: ("gauge", (), "Live samples in the drift window."),
    ADV_FLIP_RATE: ("gauge", (), "Fraction of sampled live images whose prediction a PGD attack at the serving eps flips."),
    ROBUST_MARGIN: ("gauge", (), "Mean logit margin of the predicted class on the PGD-attacked sample (< 0 = flipped)."),
    ROBUST_SAMPLES: ("counter", (), "Live images attacked by the background robustness probe."),
    IG_DELTA: ("histogram", (), "Absolute Integrated-Gradients convergence delta of /explain (logit units)."),
    MODEL_INFO: ("gauge", INFO_LABELS, "1 for the model being served."),
}

FLOW_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    FLOW_LAST_RUN: ("gauge", ("flow", "outcome"), "Unix time a flow last finished, by outcome (completed / failed)."),
    FLOW_DURATION: ("gauge", ("flow",), "Wall time of the flow's last run in seconds."),
    PROMOTION_LAST: ("gauge", ("decision",), "Unix time of the last promotion decision, by decision."),
    CANDIDATE_SCORE: ("gauge", ("metric",), "Validation scores of the last promotion candidate."),
    PRODUCTION_SCORE: ("gauge", ("metric",), "Validation scores of the serving model in the same evaluation."),
}


class PointerError(ValueError):
    """The production pointer exists but cannot be read."""


@dataclass(frozen=True)
class Pointer:
    """The production pointer: the exact model tag to serve and the one it replaced."""

    tag: str
    previous: str | None
    updated: str


def bentoml_home(home: Path | str | None = None) -> Path:
    """``home``, else ``$BENTOML_HOME``, else BentoML's default ``~/bentoml``."""
    if home is not None:
        return Path(home)
    env = os.environ.get("BENTOML_HOME")
    return Path(env) if env else Path.home() / "bentoml"


def pointer_path(home: Path | str | None = None) -> Path:
    return bentoml_home(home) / POINTER_DIR / POINTER_FILE


def _check_tag(tag: str) -> str:
    name, sep, version = str(tag).partition(":")
    if not sep or not name or not version or version == "latest":
        raise ValueError(f"production tag must be an exact 'name:version' tag, got {tag!r} (never ':latest')")
    return str(tag)


def read_production(home: Path | str | None = None) -> Pointer | None:
    """The pointer, or None when promotion has not written one yet.

    Raises:
        PointerError: the file exists but is not a valid pointer (names the file and the problem).
    """
    path = pointer_path(home)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise PointerError(f"{path}: unreadable production pointer ({err})") from None
    try:
        return Pointer(tag=_check_tag(raw["tag"]), previous=raw.get("previous"), updated=str(raw.get("updated", "")))
    except (KeyError, TypeError, ValueError) as err:
        raise PointerError(f"{path}: invalid production pointer ({err})") from None


def write_production(home: Path | str | None, tag: str) -> Pointer:
    """Point production at ``tag`` (atomically); the old tag becomes ``previous`` (rollback target)."""
    tag = _check_tag(tag)
    path = pointer_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = read_production(home)
    except PointerError:
        old = None
    previous = old.previous if old is not None and old.tag == tag else (old.tag if old else None)
    pointer = Pointer(tag=tag, previous=previous, updated=datetime.now(UTC).isoformat())
    fd, tmp = tempfile.mkstemp(prefix=".production.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(pointer), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pointer


def resolve_tag(home: Path | str | None = None, env: dict[str, Any] | None = None) -> str:
    """The tag to serve: ``$ROBUSTDX_MODEL_TAG`` when set, else the production pointer.

    Raises:
        LookupError: neither is set (says how to promote a model).
    """
    env = os.environ if env is None else env
    if env.get(ENV_MODEL_TAG):
        return _check_tag(env[ENV_MODEL_TAG])
    pointer = read_production(home)
    if pointer is None:
        raise LookupError(
            f"no model to serve: set {ENV_MODEL_TAG}=<{MODEL_NAME}:version> or promote a model "
            f"(writes {pointer_path(home)}); a bare ':latest' is never served"
        )
    return pointer.tag


@contextmanager
def promotion_lock(home: Path | str | None = None, timeout: float = 900.0) -> Iterator[None]:
    """Serialise promotions and rollbacks on one BentoML home (an OS file lock, so it holds across
    processes and Prefect workers on one machine or a shared POSIX volume).

    Why: a promotion reads the serving model, compares, saves and moves the pointer; two at once
    could both compare against the same serving model and the loser's pointer write would silently
    drop the winner from the rollback history.

    Raises:
        TimeoutError: another promotion held the lock for ``timeout`` seconds.
    """
    path = bentoml_home(home) / POINTER_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"another promotion holds {path} for more than {timeout:g} s") from None


def append_audit(home: Path | str | None, record: dict[str, Any]) -> Path:
    """Append one promotion / rejection / rollback record to ``promotions.jsonl`` (call under the lock)."""
    path = bentoml_home(home) / POINTER_DIR / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps({"time": datetime.now(UTC).isoformat(), **record}, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_audit(home: Path | str | None = None) -> list[dict[str, Any]]:
    """Every audit record, oldest first (empty before the first promotion)."""
    path = bentoml_home(home) / POINTER_DIR / AUDIT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
