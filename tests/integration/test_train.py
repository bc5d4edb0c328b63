"""Real training runs of a tiny model: every regime and recipe, fine-tuning modes, determinism,
exact resume after ``kill -9``, and behaviour (beats chance; adversarial training buys robustness)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from robustdx.core.config import ConfigError, Recipe, parse_config
from robustdx.core.release.bundle import load_bundle
from robustdx.core.training.recipes import RECIPES, has_classifier, run_recipe
from tests.support.activations import training_conv_activations
from tests.support.configs import tiny_raw

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_training_runs_fp32_in_the_configured_memory_format(channels_last: bool, camelyon_root: Path, tmp_path: Path) -> None:
    """The CPU half of the fast-path check (tests/integration/test_gpu.py does CUDA): no autocast on the CPU
    (no bf16 units here), and ``channels_last`` reaches the activations exactly when configured."""
    raw = tiny_raw(camelyon_root, tmp_path, recipe="adv_ce", device="cpu", channels_last=channels_last)
    raw["data"]["image_size"] = 32
    raw["pretrain"]["epochs"] = 1
    with training_conv_activations() as seen:
        run_recipe(parse_config(raw))
    assert seen
    assert {a.dtype for a in seen} == {torch.float32}
    assert {a.channels_last for a in seen} == {channels_last}


@pytest.mark.parametrize("recipe", [r.value for r in Recipe])
def test_every_recipe_trains_bundles_and_reports(recipe: str, camelyon_root: Path, tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(camelyon_root, tmp_path, recipe=recipe, name=recipe))
    result = run_recipe(cfg)
    assert len(result.stages) == len(RECIPES[Recipe(recipe)])
    for stage in result.stages:
        assert len(stage.history) == 2
        for h in stage.history:
            assert all(torch.isfinite(torch.tensor(v)) for k, v in h.items() if k.startswith("train_"))
        adversarial = stage.regime.startswith("adv_")
        assert ("train_adv_loss" in stage.history[0]) == adversarial
        assert "train_loss" in stage.history[0]  # the paper's clean pass precedes the adversarial one
    bundle = load_bundle(result.bundle)
    assert bundle.config.recipe == recipe
    if has_classifier(Recipe(recipe)):
        assert 0.0 <= result.metrics["test"]["acc"] <= 1.0
        assert 0.0 <= result.metrics["robust"]["robust_acc"] <= result.metrics["robust"]["clean_acc"] + 1e-9
        assert bundle.reference["probs"].shape[1] == 2
    else:
        assert "centroid_acc" in result.metrics["test"]
    assert bundle.reference["embeddings"].shape == (32, 64)
    assert "Test results" in result.report.read_text()


def test_adversarial_only_schedule_skips_the_clean_pass(camelyon_root: Path, tmp_path: Path) -> None:
    raw = tiny_raw(camelyon_root, tmp_path, recipe="adv_ce")
    raw["pretrain"]["schedule"] = "adversarial"
    result = run_recipe(parse_config(raw))
    assert "train_loss" not in result.stages[0].history[0]
    assert "train_adv_loss" in result.stages[0].history[0]


@pytest.mark.parametrize("mode", ["full", "linear", "adversarial"])
def test_finetune_modes(mode: str, camelyon_root: Path, tmp_path: Path) -> None:
    raw = tiny_raw(camelyon_root, tmp_path, recipe="supcon_ft")
    raw["finetune"]["finetune_mode"] = mode
    cfg = parse_config(raw)
    result = run_recipe(cfg)
    pre = load_file(str(cfg.run_dir / "1-supcon" / "best.safetensors"))
    post = load_file(str(cfg.run_dir / "2-finetune" / "best.safetensors"))
    enc = [k for k in pre if k.startswith("encoder.") and k.endswith("weight")]
    unchanged = all(torch.equal(pre[k], post[k]) for k in enc)
    running = [k for k in pre if k.startswith("encoder.") and k.endswith("running_mean")]
    if mode == "linear":
        assert unchanged, "a linear probe must not change the encoder"
        assert all(torch.equal(pre[k], post[k]) for k in running), "a frozen encoder keeps its BatchNorm statistics"
    else:
        assert not unchanged
    assert ("train_adv_loss" in result.stages[1].history[0]) == (mode == "adversarial")
    head = [k for k in post if k.startswith("classifier.") and k.endswith("weight")]
    assert any(not torch.equal(pre[k], post[k]) for k in head)


def test_same_seed_same_weights_and_different_seed_differs(camelyon_root: Path, tmp_path: Path) -> None:
    def weights(seed: int, out: str) -> dict[str, torch.Tensor]:
        cfg = parse_config(tiny_raw(camelyon_root, tmp_path / out, recipe="adv_ce", seed=seed))
        run_recipe(cfg)
        return load_file(str(cfg.run_dir / "bundle" / "model.safetensors"))

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_resuming_a_run_with_another_config_is_refused(camelyon_root: Path, tmp_path: Path) -> None:
    raw = tiny_raw(camelyon_root, tmp_path, recipe="ce")
    run_recipe(parse_config(raw))
    raw["pretrain"]["lr"] = 0.1
    with pytest.raises(ConfigError, match="different configuration.*pretrain"):
        run_recipe(parse_config(raw))


def _write_cfg(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _robustdx(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustdx.cli", *args]


def test_exact_resume_after_kill_9(camelyon_root: Path, tmp_path: Path) -> None:
    """Kill the CLI with SIGKILL mid-run, rerun it: final weights and metrics equal an uninterrupted run."""
    raw = tiny_raw(camelyon_root, tmp_path / "ref", recipe="adv_supcon_ft", name="resume")
    raw["pretrain"].update(epochs=4, max_steps_per_epoch=None)
    raw["finetune"].update(epochs=3, max_steps_per_epoch=None)
    ref_cfg = _write_cfg(tmp_path / "ref.yaml", raw)
    subprocess.run(_robustdx("train", "-c", str(ref_cfg), "--no-progress"), check=True, capture_output=True)

    raw["output_dir"] = str(tmp_path / "killed")
    cfg = _write_cfg(tmp_path / "killed.yaml", raw)
    stage_metrics = tmp_path / "killed" / "resume" / "1-adv_supcon" / "metrics.jsonl"
    proc = subprocess.Popen(
        _robustdx("train", "-c", str(cfg), "--no-progress"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if stage_metrics.is_file() and len(stage_metrics.read_text().splitlines()) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "resume" / "bundle").exists(), "killed too late to test resumption"
    epochs_done = len(stage_metrics.read_text().splitlines())
    assert 2 <= epochs_done < 4

    out = subprocess.run(_robustdx("train", "-c", str(cfg), "--no-progress"), check=True, capture_output=True, text=True)
    assert "bundle" in out.stdout

    ref_dir, res_dir = tmp_path / "ref" / "resume", tmp_path / "killed" / "resume"
    a = load_file(str(ref_dir / "bundle" / "model.safetensors"))
    b = load_file(str(res_dir / "bundle" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    ma, mb = json.loads((ref_dir / "metrics.json").read_text()), json.loads((res_dir / "metrics.json").read_text())
    for key in ("test", "val", "robust"):
        assert ma[key] == mb[key]
    ha = (ref_dir / "1-adv_supcon" / "metrics.jsonl").read_text().splitlines()
    hb = (res_dir / "1-adv_supcon" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert [strip(x) for x in ha] == [strip(x) for x in hb]


def test_robust_validation_and_robust_mean_selection(camelyon_root: Path, tmp_path: Path) -> None:
    """val_robust_n adds PGD validation accuracy to every classifier epoch (what sweeps optimise),
    and monitor=robust_mean selects the best epoch on the mean of clean and robust accuracy."""
    seen: list[dict] = []
    cfg = parse_config(tiny_raw(camelyon_root, tmp_path, val_robust_n=16, monitor="robust_mean"))
    result = run_recipe(cfg, callbacks=[seen.append])
    pre, ft = result.stages
    assert pre.monitor == "val_centroid_acc" and ft.monitor == "val_score"
    fine = [m for m in seen if m["stage"] == "finetune"]
    assert fine and all("val_robust_acc" not in m for m in seen if m["stage"] != "finetune")
    for m in fine:
        assert 0 <= m["val_robust_acc"] <= 1
        assert m["val_score"] == pytest.approx((m["val_acc"] + m["val_robust_acc"]) / 2)
    assert ft.best_score == pytest.approx(max(m["val_score"] for m in fine))


def test_robust_mean_needs_robust_validation(camelyon_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="val_robust_n > 0"):
        parse_config(tiny_raw(camelyon_root, tmp_path, monitor="robust_mean"))


def test_a_run_saved_before_new_fields_existed_still_resumes(camelyon_root: Path, tmp_path: Path) -> None:
    cfg = parse_config(tiny_raw(camelyon_root, tmp_path))
    run_recipe(cfg)
    saved = cfg.run_dir / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["val_robust_n"], old["monitor"]  # as written by an older version
    saved.write_text(yaml.safe_dump(old))
    assert run_recipe(cfg).bundle.is_dir()
