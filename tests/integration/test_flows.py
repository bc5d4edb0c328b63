"""``retrain_flow`` end to end against a real Prefect server (test harness) and a real local Ray:
a two-trial sweep → the best configuration trained (adversarial SupCon + fine-tuning) → evaluated and
promoted into a temporary BentoML store; every step leaves its artifact. A second retrain of the same
configuration matches the serving model and is promoted again (ties pass), and a gate that
cannot be met rejects it with the reason recorded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from robustdx.core.release.gates import GateConfig
from robustdx.core.release.pointer import read_production
from robustdx.core.release.store import list_models
from robustdx.flows.params import RetrainParams, SweepParams
from robustdx.flows.pipeline import retrain_flow
from robustdx.flows.release import EvaluationSettings
from tests.support.configs import write_tiny_sweep

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sweep_file(learnable_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sweep(tmp_path_factory.mktemp("retrain_sweep"), learnable_root, "retrain-test")


async def _artifact_keys() -> set[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return {a.key for a in await client.read_latest_artifacts()}


async def _flow_runs() -> dict[str, str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        runs = await client.read_flow_runs()
        flows = {f.id: f.name for f in await client.read_flows()}
        # runs started here, not the deployment runs other tests' triggers leave scheduled on the shared server
        return {f"{flows[r.flow_id]}:{r.name}": r.state.type.value for r in runs if r.deployment_id is None}


def test_retrain_flow_sweeps_trains_and_promotes(sweep_file: Path, tmp_path: Path, prefect_server: str) -> None:
    home = tmp_path / "bentoml"
    params = RetrainParams(
        sweep=SweepParams(config=str(sweep_file), name="rt"),  # later retrains resume (reuse) this finished sweep
        output_dir=str(tmp_path / "retrain"),
        bentoml_home=str(home),
        evaluation=EvaluationSettings(n_robust=32, n_attr=4),
        reason="test",
    )
    out = retrain_flow(params)
    sweep, trained, promotion = out["sweep"], out["train"], out["promotion"]
    assert Path(sweep["path"], "trials.csv").is_file() and Path(sweep["path"], "score_vs_params.png").is_file()
    assert sweep["best_params"]["eps"] in (2 / 255, 4 / 255)
    assert Path(trained["bundle"], "manifest.json").is_file() and Path(trained["report"]).is_file()
    assert promotion["promoted"], promotion["summary"]
    assert read_production(home).tag == promotion["tag"]
    assert promotion["production"] is None  # first model: only the floors applied
    assert promotion["bento"] == f"robustdx:{promotion['tag'].partition(':')[2]}"  # promote_flow built its Bento

    keys = asyncio.run(_artifact_keys())
    assert {"promotion-decision", "sweep-rt", "sweep-rt-best"} <= keys, keys
    assert any(k.startswith("train-retrain-") for k in keys), keys
    states = asyncio.run(_flow_runs())
    assert {name.split(":")[0] for name in states} >= {"retrain", "sweep", "promote"}
    assert all(state == "COMPLETED" for state in states.values()), states

    # the same sweep (finished: resumed, no trial reruns) and the same full training again: a tie passes
    again = retrain_flow(params.model_copy(update={"build_bento": False}))
    assert again["promotion"]["promoted"], again["promotion"]["summary"]
    assert "bento" not in again["promotion"]  # switched off: promoted, no Bento built
    assert again["promotion"]["production_tag"] == promotion["tag"]

    # a floor no model meets: rejected, production unchanged, reason recorded
    strict = params.model_copy(update={"gates": GateConfig(min_robust_acc=1.0), "build_bento": False})
    rejected = retrain_flow(strict)["promotion"]
    assert not rejected["promoted"] and "robust_acc" in rejected["summary"] and "floor 1" in rejected["summary"]
    assert read_production(home).tag == again["promotion"]["tag"]
    assert len(list_models(home)) == 2
