"""Gated promotion of a model bundle into the BentoML store, and rollback.

The steps, all under :func:`robustdx.core.release.pointer.promotion_lock` so that two promotions at once
cannot both compare against the same serving model:

1. score the candidate *and* the serving model on the candidate's validation split, at the serving
   ε (the serving bundle's ``eval_attack.eps``: the ε its robustness probe watches in production);
2. :func:`robustdx.core.release.gates.decide` — clean, robust and attribution gates;
3. on success: save the bundle into the store (its SHA-256 manifest kept), move the production
   pointer atomically (the old tag becomes the rollback target), append to the audit log;
   on rejection: only the audit log.

Plain functions (no Prefect) so that the CLI, the flows and tests share them; the Prefect flows in
:mod:`robustdx.flows.pipeline` wrap them with artifacts, retries and metrics.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from robustdx.core.contracts import ENV_SERVICE_HOSTS
from robustdx.core.data import build_splits
from robustdx.core.evaluation.scoring import REPORT_KEYS, ScoringSettings, validation_scores
from robustdx.core.release.bundle import Bundle, load_bundle, weights_sha256
from robustdx.core.release.gates import Decision, GateConfig, decide
from robustdx.core.release.pointer import Pointer, append_audit, promotion_lock, read_production, write_production
from robustdx.core.release.store import load_bundle_from_store, save_bundle_to_store
from robustdx.core.util import resolve_device
from robustdx.flows import tracking


class EvaluationSettings(BaseModel):
    """How candidate and serving model are scored on validation (same images, same attack)."""

    model_config = ConfigDict(extra="forbid")

    eps: float | None = Field(None, ge=0, le=1, description="Serving ε in pixel units; default: the serving bundle's.")
    n_robust: int = Field(256, ge=1, description="Validation images attacked with PGD.")
    n_attr: int = Field(16, ge=0, description="Validation images explained with IG for the attribution score (0: skip).")


@dataclass(frozen=True)
class Evaluation:
    candidate: dict[str, Any]
    production: dict[str, Any] | None
    production_tag: str | None
    eps: float


@dataclass(frozen=True)
class PromotionResult:
    decision: Decision
    evaluation: Evaluation
    tag: str | None  # the new production tag when promoted
    previous: str | None  # the tag it replaced

    def to_json(self) -> dict[str, Any]:
        return {
            "promoted": self.decision.promote,
            "tag": self.tag,
            "previous": self.previous,
            "eps": self.evaluation.eps,
            "candidate": self.evaluation.candidate,
            "production": self.evaluation.production,
            "production_tag": self.evaluation.production_tag,
            **self.decision.to_json(),
        }


def score_rows(candidate: dict[str, Any], production: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Candidate and serving model side by side, one row per reported validation score."""
    return [{"metric": k, "candidate": candidate.get(k), "serving": (production or {}).get(k)} for k in REPORT_KEYS]


def serving_bundle(home: Path | str | None) -> tuple[str, Bundle] | None:
    """The serving model's tag and hash-verified bundle, or None before the first promotion."""
    pointer = read_production(home)
    if pointer is None:
        return None
    return pointer.tag, load_bundle_from_store(pointer.tag, home)


def evaluate_against_production(
    bundle_dir: Path | str, home: Path | str | None = None, settings: EvaluationSettings | None = None
) -> Evaluation:
    """Score the candidate and the serving model on the candidate's validation split."""
    settings = settings or EvaluationSettings()
    candidate = load_bundle(bundle_dir)
    current = serving_bundle(home)
    eps = settings.eps
    if eps is None:
        eps = (current[1] if current else candidate).config.eval_attack.eps
    cfg = candidate.config
    splits = build_splits(cfg.data)
    device = resolve_device(cfg.device)
    scoring = ScoringSettings(eps=eps, n_robust=settings.n_robust, n_attr=settings.n_attr)

    def score(bundle: Bundle) -> dict[str, Any]:
        return validation_scores(bundle.model, cfg, splits, device, scoring)

    return Evaluation(score(candidate), score(current[1]) if current else None, current[0] if current else None, eps)


def promote(
    bundle_dir: Path | str,
    gates: GateConfig | None = None,
    settings: EvaluationSettings | None = None,
    home: Path | str | None = None,
    lock_timeout: float = 900.0,
    dry_run: bool = False,
) -> PromotionResult:
    """Evaluate, gate and — when every gate passes — save and point production at the candidate.

    ``dry_run`` evaluates and decides exactly as a promotion would, and writes nothing: no store entry, no
    pointer change, no audit record (``tag`` stays None)."""
    gates = gates or GateConfig()
    with promotion_lock(home, lock_timeout):
        evaluation = evaluate_against_production(bundle_dir, home, settings)
        decision = decide(evaluation.candidate, evaluation.production, gates)
        tag = previous = None
        if dry_run:
            return PromotionResult(decision, evaluation, tag, evaluation.production_tag)
        if decision.promote:
            tag = save_bundle_to_store(bundle_dir, home)
            pointer = write_production(home, tag, weights_sha256(load_bundle_from_store(tag, home)))
            previous = pointer.previous
        record = {
            "action": "promoted" if decision.promote else "rejected",
            "bundle": str(bundle_dir),
            "tag": tag,
            "previous": previous,
            "production_tag": evaluation.production_tag,
            "eps": evaluation.eps,
            "candidate": evaluation.candidate,
            "production": evaluation.production,
            "summary": decision.summary,
        }
        append_audit(home, record)
    # tracked after the lock is released: MLflow's I/O need not hold up the next promotion
    run_name = f"promote {Path(bundle_dir).resolve().parent.name}"  # the run folder; the bundle folder is "bundle"
    with tracking.tracked_run(tracking.PROMOTE, run_name, tags={"action": "promote"}) as run:
        run.log_params({"gates": gates.model_dump(mode="json"), "eps": evaluation.eps})
        tracking.log_decision(
            run,
            evaluation.candidate,
            evaluation.production,
            decision=record["action"],
            bundle=record["bundle"],
            tag=tag,
            previous=previous,
            serving_before=evaluation.production_tag,
            summary=decision.summary,
        )
    return PromotionResult(decision, evaluation, tag, previous)


def rollback(home: Path | str | None = None, lock_timeout: float = 900.0) -> Pointer:
    """Point production back at the previous tag (which must still be in the store, unaltered).

    Rolling back twice returns to where you started: the tag rolled back from becomes ``previous``.

    Raises:
        LookupError: nothing was promoted yet, or there is no previous tag.
        BundleError: the previous bundle in the store fails its hash check (pointer left unchanged).
    """
    with promotion_lock(home, lock_timeout):
        pointer = read_production(home)
        if pointer is None or not pointer.previous:
            raise LookupError("nothing to roll back to: no previous production model (promote at least twice)")
        previous = load_bundle_from_store(pointer.previous, home)  # refuses a missing or altered bundle
        new = write_production(home, pointer.previous, weights_sha256(previous))
        append_audit(home, {"action": "rolled_back", "tag": new.tag, "previous": new.previous})
    return new


def service_hosts(env: dict[str, str] | None = None) -> set[str]:
    """Hosts the admin token may be sent to: ``$ROBUSTDX_SERVICE_HOSTS`` (comma-separated), else loopback only."""
    env = os.environ if env is None else env
    raw = env.get(ENV_SERVICE_HOSTS, "127.0.0.1,localhost,::1")
    return {h.strip().lower() for h in raw.split(",") if h.strip()}


def reload_service(url: str, token: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Ask a running service to load the production model now (``POST /admin/reload``).

    The admin token goes only to a host of :func:`service_hosts`, over a request that follows no redirect: a
    ``service_url`` typed into a flow form must not be able to send the token anywhere else.

    Raises:
        RuntimeError: a host not allowed, a redirect, an error answer or an unreachable service (the message says which).
    """
    import httpx

    token = token or os.environ.get("ROBUSTDX_ADMIN_TOKEN")
    if not token:
        raise RuntimeError("set ROBUSTDX_ADMIN_TOKEN (the service's admin token) to reload it after promotion")
    target = httpx.URL(url.rstrip("/") + "/admin/reload")
    allowed = service_hosts()
    if target.scheme not in ("http", "https") or target.host.lower() not in allowed:
        raise RuntimeError(
            f"refusing to send the admin token to {target.host!r}: allowed hosts are {sorted(allowed)} "
            f"(set {ENV_SERVICE_HOSTS} to the service's host names)"
        )
    t0 = time.perf_counter()
    try:
        resp = httpx.post(target, json={}, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as err:
        raise RuntimeError(f"could not reach {url}: {err}") from None
    if resp.is_redirect:
        raise RuntimeError(f"{target} answered a redirect ({resp.status_code} to {resp.headers.get('location')!r}): not followed")
    if resp.status_code >= 400:
        raise RuntimeError(f"{target} answered {resp.status_code}: {resp.text[:500]!r}")
    return {**(resp.json() if resp.content else {}), "seconds": time.perf_counter() - t0}
