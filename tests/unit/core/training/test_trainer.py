"""The training engine (core/training/trainer.py) on in-memory data: the files a stage writes, a finished
stage is not retrained, a crash after any epoch resumes to the same weights, and a non-finite loss stops
training with the regime and step named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from robustdx.core.config import RunConfig, parse_config
from robustdx.core.training.trainer import StagePlan, StageResult, Trainer
from tests.support.classifiers import tiny_model
from tests.support.configs import tiny_raw
from tests.support.splits import tensor_splits

pytestmark = pytest.mark.unit


def _cfg(tmp_path: Path, **over: object) -> RunConfig:
    raw = tiny_raw(tmp_path / "unused", tmp_path / "runs", device="cpu", recipe="adv_ce", **over)
    raw["pretrain"].update(epochs=3, max_steps_per_epoch=2)
    return parse_config(raw)


def _fit(cfg: RunConfig, folder: Path, callbacks: tuple = ()) -> tuple[StageResult, torch.nn.Module]:
    model = tiny_model(0).train()
    trainer = Trainer(cfg, StagePlan(regime="adv_ce", stage=cfg.pretrain, folder=folder), tensor_splits(n=40), callbacks)
    return trainer.fit(model), model


def test_a_stage_writes_its_files_and_keeps_the_best_epoch(tmp_path: Path) -> None:
    seen: list[dict] = []
    result, model = _fit(_cfg(tmp_path), tmp_path / "stage", callbacks=(seen.append,))
    folder = tmp_path / "stage"
    assert sorted(p.name for p in folder.iterdir()) == ["best.safetensors", "last.pt", "metrics.jsonl", "result.json"]
    assert [m["epoch"] for m in seen] == [1, 2, 3] and [m["stage"] for m in seen] == ["adv_ce"] * 3
    assert all("train_loss" in m and "train_adv_loss" in m and "val_acc" in m for m in seen)
    assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert result.monitor == "val_acc" and result.best_score == max(m["val_acc"] for m in seen)
    assert seen[result.best_epoch - 1]["val_acc"] == result.best_score
    best = load_file(str(folder / "best.safetensors"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best.items()), "the best weights are left loaded"


def test_a_finished_stage_loads_its_result_instead_of_training(tmp_path: Path) -> None:
    first, _ = _fit(_cfg(tmp_path), tmp_path / "stage")
    seen: list[dict] = []
    again, model = _fit(_cfg(tmp_path), tmp_path / "stage", callbacks=(seen.append,))
    assert seen == [] and again == StageResult(**json.loads(json.dumps(first.to_json())))
    best = load_file(str(tmp_path / "stage" / "best.safetensors"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best.items())


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_after", [1, 2])
def test_resuming_after_a_crash_gives_the_uninterrupted_weights(tmp_path: Path, crash_after: int) -> None:
    ref, ref_model = _fit(_cfg(tmp_path), tmp_path / "ref")

    def crash(metrics: dict) -> None:
        if metrics["epoch"] == crash_after:
            raise _Crash

    with pytest.raises(_Crash):
        _fit(_cfg(tmp_path), tmp_path / "crashed", callbacks=(crash,))
    assert not (tmp_path / "crashed" / "result.json").exists()
    resumed, model = _fit(_cfg(tmp_path), tmp_path / "crashed")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ref_model.state_dict().items())
    strip = lambda h: [{k: v for k, v in m.items() if k != "seconds"} for m in h]  # noqa: E731
    assert strip(resumed.history) == strip(ref.history)
    assert (resumed.best_score, resumed.best_epoch) == (ref.best_score, ref.best_epoch)


def test_robust_validation_adds_the_score_that_robust_mean_selects_on(tmp_path: Path) -> None:
    result, _ = _fit(_cfg(tmp_path, val_robust_n=8, monitor="robust_mean"), tmp_path / "stage")
    assert result.monitor == "val_score"
    for m in result.history:
        assert m["val_score"] == pytest.approx((m["val_acc"] + m["val_robust_acc"]) / 2)


def test_a_non_finite_loss_names_the_regime_and_the_step(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    splits = tensor_splits(n=40)
    splits.train.tensors[0][:] = float("nan")
    trainer = Trainer(cfg, StagePlan(regime="adv_ce", stage=cfg.pretrain, folder=tmp_path / "nan"), splits)
    with pytest.raises(FloatingPointError, match=r"adv_ce: non-finite loss nan at epoch 1, step 0"):
        trainer.fit(tiny_model(0))


# ------------------------------------------------------------------------------- model selection

SCRIPT = [  # per epoch: each metric peaks at another epoch
    {"val_acc": 0.90, "val_bal_acc": 0.50, "val_auc": 0.60},
    {"val_acc": 0.60, "val_bal_acc": 0.80, "val_auc": 0.70},
    {"val_acc": 0.70, "val_bal_acc": 0.70, "val_auc": 0.90},
]


def _scripted_fit(cfg: RunConfig, folder: Path, regime: str = "adv_ce", script: list[dict] = SCRIPT) -> tuple[StageResult, list]:
    """Fit with validation replaced by ``script`` (one entry per epoch); return the result and each epoch's weights."""
    weights: list[dict[str, torch.Tensor]] = []
    model = tiny_model(0).train()
    trainer = Trainer(cfg, StagePlan(regime=regime, stage=cfg.pretrain, folder=folder), tensor_splits(n=40))
    epochs = iter(script)
    trainer.strategy.validate = lambda *a, **k: dict(next(epochs))  # type: ignore[method-assign]
    trainer.callbacks.append(lambda m: weights.append({k: v.clone() for k, v in model.state_dict().items()}))
    return trainer.fit(model), weights


@pytest.mark.parametrize(
    ("monitor", "key", "best_epoch"), [("acc", "val_acc", 1), ("bal_acc", "val_bal_acc", 2), ("auc", "val_auc", 3)]
)
def test_the_best_epoch_follows_the_chosen_monitor(tmp_path: Path, monitor: str, key: str, best_epoch: int) -> None:
    result, weights = _scripted_fit(_cfg(tmp_path, monitor=monitor), tmp_path / "stage")
    assert (result.monitor, result.best_epoch, result.best_score) == (key, best_epoch, SCRIPT[best_epoch - 1][key])
    best = load_file(str(tmp_path / "stage" / "best.safetensors"))
    assert all(torch.equal(v, weights[best_epoch - 1][k]) for k, v in best.items()), "best.safetensors is that epoch's"


def test_supcon_stages_keep_their_centroid_monitor(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, monitor="bal_acc")
    trainer = Trainer(cfg, StagePlan(regime="supcon", stage=cfg.pretrain, folder=tmp_path / "s"), tensor_splits(two_views=True))
    assert trainer.monitor == "val_centroid_acc"


def test_real_validation_reports_what_bal_acc_and_auc_select_on(tmp_path: Path) -> None:
    result, _ = _fit(_cfg(tmp_path, monitor="auc"), tmp_path / "stage")
    assert result.monitor == "val_auc"
    assert result.best_score == max(m["val_auc"] for m in result.history)
    assert all(0 <= m["val_bal_acc"] <= 1 for m in result.history)


def test_a_nan_monitor_names_the_metric_and_the_fix(tmp_path: Path) -> None:
    script = [{"val_acc": 0.5, "val_bal_acc": 0.5, "val_auc": float("nan")}] * 3
    with pytest.raises(ValueError, match=r"adv_ce: the monitored val_auc is NaN at epoch 1 .*monitor=bal_acc"):
        _scripted_fit(_cfg(tmp_path, monitor="auc"), tmp_path / "stage", script=script)


# ------------------------------------------------------------------------------------ class weights


def _imbalanced(n0: int, n1: int):
    splits = tensor_splits(n=40)
    splits.train = TensorDataset(torch.rand(n0 + n1, 3, 16, 16), torch.tensor([0] * n0 + [1] * n1), torch.zeros(n0 + n1).long())
    return splits


def test_the_trainer_weights_the_loss_by_the_training_split(tmp_path: Path) -> None:
    raw_cfg = _cfg(tmp_path)
    balanced = raw_cfg.model_copy(update={"pretrain": raw_cfg.pretrain.model_copy(update={"class_weights": "balanced"})})
    plan = StagePlan(regime="adv_ce", stage=balanced.pretrain, folder=tmp_path / "w")
    weights = Trainer(balanced, plan, _imbalanced(30, 10)).class_weights()
    assert weights is not None and weights.tolist() == pytest.approx([40 / 60, 40 / 20])
    assert Trainer(raw_cfg, StagePlan("adv_ce", raw_cfg.pretrain, tmp_path / "n"), _imbalanced(30, 10)).class_weights() is None
    trainer, seen = Trainer(balanced, plan, _imbalanced(30, 10)), []
    loss = trainer.strategy.loss
    trainer.strategy.loss = lambda model, x, y, adv, ctx: seen.append(ctx.class_weights) or loss(model, x, y, adv, ctx)  # type: ignore[method-assign]
    result = trainer.fit(tiny_model(0))
    assert len(result.history) == 3 and all(np.isfinite(m["train_loss"]) for m in result.history)
    assert len(seen) == 3 * 2 * 2 and all(w is not None and w.tolist() == weights.tolist() for w in seen), (
        "every step, both passes"
    )
