"""The feedback loop end to end: a real ``bentoml serve`` of model A, a stream of stain-shifted images, the drift
test rejecting, clinicians' feedback on them, the ``retrain`` flow on a real Prefect server training on the new
data snapshot, and model B promoted and reloaded — B must beat A on held-out shifted images by a stated margin and
stay within tolerance on the base distribution.

The shift is a stain outside the training hospitals' range that A cannot read (its accuracy on it is near chance)
but whose morphology a model can learn from a few hundred labelled examples. The alert → Alertmanager → Prefect
event → deployment path is tests/integration/test_alert_to_event.py's; here the drift test's own verdict (the
alert rule's condition, MMD p < 0.01) is checked on the service's metrics.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from robustdx.core.config import parse_config
from robustdx.core.data import build_splits
from robustdx.core.data.synthetic import apply_stain, histology_patch
from robustdx.core.evaluation.metrics import predict
from robustdx.core.release.bundle import load_bundle
from robustdx.core.release.gates import GateConfig
from robustdx.core.release.pointer import read_production, write_production
from robustdx.core.training.recipes import run_recipe
from robustdx.core.util import wait_until
from robustdx.flows.params import RetrainParams, SweepParams
from robustdx.flows.release import EvaluationSettings
from robustdx.flows.snapshots import FeedbackSettings
from tests.integration.service_harness import Server
from tests.support.configs import learnable_raw

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHIFT = (np.array([0.7, 0.7, 0.7]), -0.15)  # a dark, faded stain none of the training hospitals has
MARGIN = 0.15  # B's accuracy on held-out shifted images must beat A's by at least this much (seen: 0.50 -> 0.78)
BASE_TOLERANCE = 0.06  # and stay within this of A's on the base validation set (37 images: 2 images = 5.4 pp)
CLINICIAN, ADMIN = "loop-clinician", "loop-admin"
EPOCHS = 20  # A and B alike


def shifted_png(seed: int) -> tuple[bytes, str]:
    """A shifted 32 px patch and its true label (odd seeds are tumour, as in the synthetic generator)."""
    img = apply_stain(histology_patch(np.random.default_rng(seed), bool(seed % 2), 32), *SHIFT)
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), "tumor" if seed % 2 else "normal"


def accuracy(model: torch.nn.Module, seeds: range) -> float:
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(shifted_png(s)[0])), dtype=np.float32) / 255)
                     .permute(2, 0, 1) for s in seeds])  # fmt: skip
    y = np.array([s % 2 for s in seeds])
    with torch.no_grad():
        return float((model.eval()(x).argmax(1).numpy() == y).mean())


def base_accuracy(model: torch.nn.Module, raw: dict) -> float:
    probs, labels, _ = predict(model, DataLoader(build_splits(parse_config(raw).data).val, batch_size=64), torch.device("cpu"))
    return float((probs.argmax(1) == labels).mean())


def test_feedback_on_shifted_images_retrains_a_model_that_reads_them(
    learnable_root: Path, tmp_path: Path, prefect_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "bentoml"
    monkeypatch.setenv("BENTOML_HOME", str(home))  # the flows' model store and feedback folder
    monkeypatch.setenv("ROBUSTDX_ADMIN_TOKEN", ADMIN)
    from robustdx.core.release.store import save_bundle_to_store
    from robustdx.flows.pipeline import retrain_flow

    # model A, trained on the base hospitals only, serving
    raw_a = learnable_raw(learnable_root, tmp_path / "runs", name="A", recipe="ce", pretrain__epochs=EPOCHS)
    model_a = run_recipe(parse_config(raw_a))
    write_production(home, save_bundle_to_store(model_a.bundle, home))
    a = load_bundle(model_a.bundle).model

    env = {"BENTOML_HOME": str(home), "ROBUSTDX_CLINICIAN_TOKEN": CLINICIAN, "ROBUSTDX_ADMIN_TOKEN": ADMIN,
           "ROBUSTDX_CPU": "1", "ROBUSTDX_DRIFT_WINDOW": "32", "ROBUSTDX_DRIFT_EVERY": "8",
           "ROBUSTDX_ROBUST_SAMPLE_RATE": "0", "ROBUSTDX_POINTER_POLL_SECONDS": "0"}  # fmt: skip
    with Server(env, tmp_path / "serve.log") as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        # production sees shifted images; A cannot read them, and the drift test rejects
        answered = []
        for start in range(6000, 6200, 4):
            batch = [shifted_png(s) for s in range(start, start + 4)]
            r = client.post("/predict", files=[("images", (f"{i}.png", png, "image/png")) for i, (png, _) in enumerate(batch)],
                            data={"store_image": "true"})  # fmt: skip
            assert r.status_code == 200, r.text[:300]
            answered += [(p, label) for p, (_png, label) in zip(r.json(), batch, strict=True)]
        served_acc = np.mean([p["label"] == label for p, label in answered])

        def mmd_p() -> float:
            lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith("robustdx_drift_mmd_p_value ")]
            return float(lines[0].split()[-1]) if lines else 1.0

        assert wait_until(mmd_p, 60, "the drift test to reject", ok=lambda p: p < 0.01) < 0.01

        # clinicians label what they were shown
        headers = {"Authorization": f"Bearer {CLINICIAN}"}
        for pred, label in answered:
            body = {"request_id": pred["request_id"], "label": label, "reviewer": "dr.loop"}
            assert client.post("/feedback", json=body, headers=headers).status_code == 200
        stats = client.get("/feedback/stats").json()
        assert stats["feedback"] == 200 and stats["agreement"] == pytest.approx(served_acc)

        # the retrain flow freezes a snapshot with the feedback and trains B on it
        base = tmp_path / "sweep-base.yaml"
        base.write_text(yaml.safe_dump(learnable_raw(learnable_root, tmp_path / "runs", name="trial", recipe="ce",
                                                     pretrain__epochs=2)))  # fmt: skip
        sweep = tmp_path / "sweep.yaml"
        sweep.write_text(yaml.safe_dump({
            "name": "loop", "base": str(base), "space": {"lr": {"choices": [0.003]}}, "num_samples": 1,
            "search": "random", "scheduler": "fifo", "val_robust_n": 16, "num_cpus": 2,
            "storage_path": str(tmp_path / "sweeps"),
        }))  # fmt: skip
        out = retrain_flow(
            RetrainParams(
                sweep=SweepParams(config=str(sweep)),
                # each labelled production image three times an epoch: 150 of them beside 333 base images
                train_overrides=[f"pretrain.epochs={EPOCHS}", "data.feedback_repeat=3"],
                output_dir=str(tmp_path / "retrain"),
                bentoml_home=str(home),
                # B is judged on clean accuracy, base (tolerance: two of its 37 images) and recent; neither
                # model was trained adversarially, so the robust and attribution gates are opened
                gates=GateConfig(clean_tolerance=BASE_TOLERANCE, robust_tolerance=1.0, attribution_tolerance=1.0),
                evaluation=EvaluationSettings(n_robust=16, n_attr=0),
                build_bento=False,
                feedback=FeedbackSettings(min_labelled=150, wait_seconds=0),
                reason="feedback loop test",
            )
        )
        snap, promotion = out["snapshot"], out["promotion"]
        assert snap["feedback"] == 200 and snap["recent_labelled"] == 200 and not snap["short"]
        assert promotion["promoted"], promotion["summary"]
        assert promotion["candidate"]["n_recent"] == sum(snap["per_class"]["recent"].values()) > 0
        assert promotion["candidate"]["n_val"] == 37 and promotion["production"]["recent_clean_acc"] < 0.7
        card = json.loads(Path(out["train"]["bundle"], "data_card.json").read_text())
        assert card["snapshot"]["id"] == snap["id"], "the bundle names the data it learned from"
        assert card["snapshot"]["feedback_repeat"] == 3

        # the service picks B up and reads the shifted images now
        assert client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        assert client.get("/model").json()["tag"] == read_production(home).tag == promotion["tag"]

    b = load_bundle(out["train"]["bundle"]).model
    held_out = range(5000, 5200)  # never sent to the service, never labelled
    acc_a, acc_b = accuracy(a, held_out), accuracy(b, held_out)
    base_a, base_b = base_accuracy(a, raw_a), base_accuracy(b, raw_a)
    print(f"shifted: A {acc_a:.3f} B {acc_b:.3f}; base validation: A {base_a:.3f} B {base_b:.3f}")
    assert acc_b >= acc_a + MARGIN, (acc_a, acc_b)
    assert base_b >= base_a - BASE_TOLERANCE, (base_a, base_b)
    assert os.environ["BENTOML_HOME"] == str(home)
