"""Gated promotion into a real (temporary) BentoML model store, rollback, two promotions at once,
and the Prefect ``promote_flow`` against a real Prefect server (test harness) with its artifact.

Models: ``good`` is a tiny CNN adversarially trained for 8 epochs; ``worse`` is the same run with a
learning rate of 1e-7 (weights stay at their random initialisation), so it is worse clean, robust
and in attribution by a wide margin (0.81 / 0.43 / 0.34 against 0.46 / 0.46 / 0.20 when measured) —
not by chance. The gates do not look at the recipe, so the cheaper single-stage ``adv_ce`` stands in
for the product's ``adv_supcon_ft`` here; tests/integration/test_flows.py promotes the real one."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from robustdx.core.config import parse_config
from robustdx.core.errors import BundleError
from robustdx.core.release.bundle import verify_bundle
from robustdx.core.release.gates import GateConfig
from robustdx.core.release.pointer import read_audit, read_production
from robustdx.core.release.store import list_models, model_path
from robustdx.core.training.recipes import run_recipe
from robustdx.flows.release import EvaluationSettings, evaluate_against_production, promote, rollback
from tests.support.configs import learnable_raw

pytestmark = [pytest.mark.integration]

FAST = EvaluationSettings(n_robust=48, n_attr=8)
FAST_GATES_OFF = GateConfig(clean_tolerance=1, robust_tolerance=1, attribution_tolerance=1)


@pytest.fixture(scope="module")
def bundles(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    runs = tmp_path_factory.mktemp("promotion_runs")
    good = run_recipe(parse_config(learnable_raw(learnable_root, runs, name="good", recipe="adv_ce", pretrain__epochs=8)))
    worse = run_recipe(parse_config(learnable_raw(learnable_root, runs, name="worse", recipe="adv_ce", pretrain__lr=1e-7)))
    return {"good": str(good.bundle), "worse": str(worse.bundle)}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    return tmp_path / "bentoml"


def test_gates_both_ways_and_rollback(bundles: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracking_uri = f"sqlite:///{home.parent / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    first = promote(bundles["worse"], settings=FAST, home=home)  # empty store: only the (zero) floors apply
    assert first.decision.promote and first.previous is None
    assert read_production(home).tag == first.tag

    better = promote(bundles["good"], settings=FAST, home=home)
    assert better.decision.promote, better.decision.summary
    cand, prod = better.evaluation.candidate, better.evaluation.production
    assert cand["clean_acc"] > prod["clean_acc"] and cand["robust_acc"] > prod["robust_acc"]
    assert better.evaluation.production_tag == first.tag and better.previous == first.tag
    assert cand["eps"] == prod["eps"] == pytest.approx(4 / 255)

    rejected = promote(bundles["worse"], settings=FAST, home=home)
    assert not rejected.decision.promote and rejected.tag is None
    assert any(r.startswith("clean_acc") for r in rejected.decision.reasons), rejected.decision.summary
    assert read_production(home).tag == better.tag  # production untouched
    assert len(list_models(home)) == 2  # a rejected candidate is not stored

    back = rollback(home)
    assert back.tag == first.tag and back.previous == better.tag
    actions = [r["action"] for r in read_audit(home)]
    assert actions == ["promoted", "promoted", "rejected", "rolled_back"]
    assert "clean_acc" in read_audit(home)[2]["summary"]

    # every decision is an MLflow run with both models' scores (oldest first)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("robustdx-promote")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["decision"] for r in runs] == ["promoted", "promoted", "rejected"]
    assert [r.data.tags.get("tag") for r in runs] == [first.tag, better.tag, None]
    assert runs[1].data.metrics["candidate.clean_acc"] == pytest.approx(cand["clean_acc"])
    assert runs[1].data.metrics["serving.robust_acc"] == pytest.approx(prod["robust_acc"])
    assert "serving.clean_acc" not in runs[0].data.metrics  # nothing was serving yet


def test_rollback_refuses_a_tampered_previous_bundle(bundles: dict[str, str], home: Path) -> None:
    a = promote(bundles["worse"], settings=FAST, home=home)
    b = promote(bundles["good"], settings=FAST, home=home)
    metrics = model_path(a.tag, home) / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"acc"', '"acd"', 1))
    with pytest.raises(BundleError):
        rollback(home)
    assert read_production(home).tag == b.tag


def test_rollback_with_nothing_to_roll_back_to(home: Path) -> None:
    with pytest.raises(LookupError, match="nothing to roll back to"):
        rollback(home)


def _promote_in_process(bundle: str, home: str, out: str) -> None:
    result = promote(bundle, settings=FAST, home=home)
    Path(out).write_text(json.dumps(result.to_json(), default=str))


def test_two_promotions_at_once_do_not_corrupt_the_store(bundles: dict[str, str], home: Path, tmp_path: Path) -> None:
    """Two real processes promote at the same moment: the lock serialises them, so the second
    compares against the first's result; every stored model still passes its hash check."""
    ctx = mp.get_context("spawn")
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    procs = [
        ctx.Process(target=_promote_in_process, args=(bundles["good"], str(home), str(outs[0]))),
        ctx.Process(target=_promote_in_process, args=(bundles["good"], str(home), str(outs[1]))),
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    results = [json.loads(o.read_text()) for o in outs]
    assert all(r["promoted"] for r in results)  # the same model matches itself
    first, second = sorted(results, key=lambda r: r["production_tag"] is not None)
    assert first["production_tag"] is None and second["production_tag"] == first["tag"]  # serialised
    pointer = read_production(home)
    assert pointer.tag == second["tag"] and pointer.previous == first["tag"]
    for model in list_models(home):
        verify_bundle(model.path)
    assert [r["action"] for r in read_audit(home)] == ["promoted", "promoted"]


def test_promote_flow_records_the_decision(bundles: dict[str, str], home: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client

    from robustdx.flows.params import PromoteParams
    from robustdx.flows.pipeline import promote_flow

    promote_flow(PromoteParams(bundle=bundles["good"], evaluation=FAST, bentoml_home=str(home), build_bento=False))
    out = promote_flow(PromoteParams(bundle=bundles["worse"], evaluation=FAST, bentoml_home=str(home), build_bento=False))
    assert not out["promoted"] and out["summary"].startswith("rejected")

    async def latest() -> str:
        async with get_client() as client:
            art = await client.read_latest_artifacts()
            return next(a.data for a in art if a.key == "promotion-decision")

    import asyncio

    markdown = asyncio.run(latest())
    assert "# Promotion: REJECTED" in markdown and "clean_acc" in markdown and "**no**" in markdown


def test_attribution_score_can_be_skipped(bundles: dict[str, str], home: Path) -> None:
    """n_attr=0 ("0: skip") scores clean and robust accuracy only, and the attribution gate has nothing to compare."""
    skip = EvaluationSettings(n_robust=16, n_attr=0)
    promote(bundles["worse"], settings=skip, home=home)
    ev = evaluate_against_production(bundles["good"], home, skip)
    assert ev.candidate["attribution"] is None and ev.production["attribution"] is None
    assert ev.candidate["region"] == "centre" and ev.candidate["n_robust"] == 16


def test_dry_runs_decide_as_a_promotion_would_and_write_nothing(
    bundles: dict[str, str], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    tracking_uri = f"sqlite:///{home.parent / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    from robustdx.cli.app import app

    runner = CliRunner()
    promote_dry = ["promote", bundles["good"], "--dry-run", "--home", str(home), "--n-robust", "48"]
    done = runner.invoke(app, promote_dry)
    assert done.exit_code == 0 and "would promote" in done.output, done.output
    assert not (home / "models").exists() and read_production(home) is None and read_audit(home) == []

    first = promote(bundles["good"], settings=FAST, home=home)
    done = runner.invoke(app, ["promote", bundles["worse"], "--dry-run", "--home", str(home), "--n-robust", "48"])
    assert done.exit_code == 1 and "clean_acc" in done.output, done.output  # the same verdict a promotion gives
    done = runner.invoke(app, ["promote", "--rollback", "--dry-run", "--home", str(home)])
    assert done.exit_code == 2 and "nothing to roll back to" in done.output
    promote(bundles["worse"], FAST_GATES_OFF, FAST, home)
    done = runner.invoke(app, ["promote", "--rollback", "--dry-run", "--home", str(home)])
    assert done.exit_code == 0 and f"would serve {first.tag} again" in done.output, done.output
    assert read_production(home).previous == first.tag and len(read_audit(home)) == 2  # unchanged by the dry runs
    client = MlflowClient(tracking_uri=tracking_uri)  # and not tracked: the two real promotions are
    assert len(client.search_runs([client.get_experiment_by_name("robustdx-promote").experiment_id])) == 2
