"""The demo's choice of model: a forced bundle goes through force_production (lock + audit record);
without one, the production model, or a clear error when there is none."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustdx.core.config import ModelConfig, parse_config
from robustdx.core.models import build_model
from robustdx.core.release.bundle import save_bundle
from robustdx.core.release.pointer import read_audit, read_production, write_production
from robustdx.service.demo import model_to_serve
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.unit

OLD = "robustdx-classifier:old"


def test_no_production_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert model_to_serve(None, tmp_path) is None
    assert "no model to serve" in capsys.readouterr().err


def test_production_model_is_served_as_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_production(tmp_path, OLD)
    assert model_to_serve(None, tmp_path) == OLD
    assert f"serving production model {OLD}" in capsys.readouterr().out and read_audit(tmp_path) == []


def test_a_forced_bundle_is_stored_pointed_at_and_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("BENTOML_HOME", str(home))  # the store is passed explicitly; never the user's ~/bentoml
    monkeypatch.setenv("BENTOML_DO_NOT_TRACK", "True")
    cfg = parse_config(tiny_raw(tmp_path, tmp_path / "runs"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="test_cnn", proj_dim=16, head_hidden=16)).eval()
    reference = {"embeddings": torch.randn(8, 64), "probs": torch.rand(8, 2), "labels": torch.arange(8) % 2}
    bundle = save_bundle(tmp_path / "bundle", model, cfg, {"val": {"acc": 0.5}}, {"classes": ["normal", "tumor"]}, reference)
    write_production(home, OLD)

    tag = model_to_serve(bundle, home)

    pointer = read_production(home)
    assert tag is not None and (pointer.tag, pointer.previous) == (tag, OLD)
    (record,) = read_audit(home)
    assert record["action"] == "forced" and str(bundle) in record["reason"] and record["previous"] == OLD
    assert "without the gates" in capsys.readouterr().out
