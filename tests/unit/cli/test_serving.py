"""``robustdx explain IMAGE`` and ``robustdx serve``'s refusals, on a tiny untrained bundle (no service started:
``bentoml serve`` itself is exercised by tests/integration/test_service.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from robustdx.cli.app import app
from robustdx.core.config import parse_config
from robustdx.core.models import build_model
from robustdx.core.release.bundle import save_bundle
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit

CLASSES = ["normal", "tumor"]


def _flat(output: str) -> str:
    """The output without rich's box drawing and line breaks (usage errors are drawn in a box)."""
    return re.sub(r"[│╭╮╰╯─\s]+", " ", output)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    cfg = parse_config(tiny_raw(tmp_path, tmp_path / "runs", model={"arch": "test_cnn", "proj_dim": 8, "head_hidden": 8}))
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    ref = {"embeddings": torch.randn(8, 64), "probs": torch.rand(8, 2), "labels": torch.arange(8) % 2}
    return save_bundle(tmp_path / "bundle", model, cfg, {"note": "untrained"}, {"classes": CLASSES}, ref)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "patch.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_explain_writes_the_prediction_and_both_heatmaps(bundle: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "explained"
    args = ["explain", str(image), "--bundle", str(bundle), "--out", str(out), "--attack-eps", "8/255", "--ig-steps", "16"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    result = json.loads((out / "explanation.json").read_text())
    clean, attack = result["clean"], result["attack"]
    assert clean["label"] in CLASSES and sum(clean["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert attack["eps"] == pytest.approx(8 / 255) and attack["flipped"] == (attack["label"] != clean["label"])
    for name in ("heatmap.png", "heatmap_attacked.png", "attacked.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 8, name
    with Image.open(out / "attacked.png") as adv, Image.open(image) as src:
        assert adv.size == (16, 16) and src.size == (48, 40)  # the model's input, after the service's preprocessing


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--attack-eps", "8"], "did you mean 8/255"),
        (["--baseline", "zeros"], "black, blur, noise"),
    ],
)
def test_explain_refuses_bad_options(bundle: Path, image: Path, tmp_path: Path, extra: list[str], needle: str) -> None:
    done = CliRunner().invoke(app, ["explain", str(image), "--bundle", str(bundle), "--out", str(tmp_path / "o"), *extra])
    assert done.exit_code == 2 and needle in _flat(done.output), done.output
    assert not (tmp_path / "o").exists()


def test_explain_refuses_what_is_not_an_image_and_a_missing_model(bundle: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    done = CliRunner().invoke(app, ["explain", str(text), "--bundle", str(bundle), "--out", str(tmp_path / "o")])
    assert done.exit_code == 2 and "error:" in done.output and "Traceback" not in done.output, done.output
    empty_home = ["explain", str(text), "--home", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
    done = CliRunner().invoke(app, empty_home, env={"ROBUSTDX_MODEL_TAG": ""})
    assert done.exit_code == 2 and "error:" in done.output, done.output


def test_serve_refuses_to_start_without_a_model(tmp_path: Path) -> None:
    done = CliRunner().invoke(app, ["serve", "--home", str(tmp_path / "empty")], env={"ROBUSTDX_MODEL_TAG": ""})
    assert done.exit_code == 2 and "make demo" in done.output, done.output
