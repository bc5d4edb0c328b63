"""What a Ray worker does for a trial (:mod:`robustdx.flows.tune.trainable`): the run folder put back in step with
Tune's checkpoint, and only final-stage epochs reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdx.core.config import RunConfig
from robustdx.core.config.sweep import Objective
from robustdx.flows.tune.space import epochs_on_disk
from robustdx.flows.tune.trainable import _TuneReporter, restore_run_dir
from tests.support.sweeps import run_base

pytestmark = pytest.mark.unit


def _fake_run(cfg: RunConfig, pre_epochs: int, ft_epochs: int | None) -> None:
    pre, ft = cfg.run_dir / "1-adv_supcon", cfg.run_dir / "2-finetune"
    pre.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text("x")
    (pre / "metrics.jsonl").write_text("{}\n" * pre_epochs)
    if pre_epochs == cfg.pretrain.epochs:
        (pre / "result.json").write_text("{}")
    if ft_epochs is not None:
        ft.mkdir()
        (ft / "metrics.jsonl").write_text("{}\n" * ft_epochs)
        if ft_epochs == cfg.finetune.epochs:
            (ft / "result.json").write_text("{}")


class _Checkpoint:
    """Stands in for ray.tune.Checkpoint: a folder whose contents are copied out."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def to_directory(self, target: str) -> None:
        import shutil

        shutil.copytree(self.path, target, dirs_exist_ok=True)


def test_restore_run_dir_follows_the_checkpoint_or_redoes_the_final_stage(tmp_path: Path) -> None:
    cfg = run_base(tmp_path, pretrain__epochs=2, finetune__epochs=3)
    _fake_run(cfg, 2, 3)  # the worker got further (finished fine-tuning) than Tune recorded
    assert epochs_on_disk(cfg) == 5
    ckpt_cfg = cfg.model_copy(update={"output_dir": tmp_path / "ckpt"})
    _fake_run(ckpt_cfg, 2, 1)
    restore_run_dir(cfg, _Checkpoint(ckpt_cfg.run_dir))
    assert epochs_on_disk(cfg) == 3, "the checkpoint replaces the folder"

    (cfg.run_dir / "bundle").mkdir()
    (cfg.run_dir / "metrics.json").write_text("{}")
    restore_run_dir(cfg, None)  # no checkpoint: Tune restarts at iteration 0, so the final stage starts over
    assert epochs_on_disk(cfg) == 2 and (cfg.run_dir / "1-adv_supcon" / "result.json").is_file()
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["1-adv_supcon", "config.yaml"]
    partial = cfg.model_copy(update={"output_dir": tmp_path / "partial"})
    _fake_run(partial, 1, None)  # killed during pretraining: its progress is kept
    restore_run_dir(partial, None)
    assert epochs_on_disk(partial) == 1


def test_reporter_reports_final_stage_epochs_with_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    from ray import tune

    sent: list[tuple[dict[str, Any], Any]] = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: sent.append((metrics, checkpoint)))
    monkeypatch.setattr(tune.Checkpoint, "from_directory", staticmethod(lambda path: path))
    cfg = run_base(tmp_path, pretrain__epochs=3, finetune__epochs=2)
    reporter = _TuneReporter(cfg, Objective.ROBUST_MEAN, session_start=1)
    reporter({"stage": "adv_supcon", "epoch": 2, "val_centroid_acc": 0.9})
    assert sent == [], "pretraining epochs are not reported"
    reporter({"stage": "finetune", "epoch": 1, "val_acc": 0.8, "val_robust_acc": 0.4, "val_score": 0.6, "lr": 1e-3})
    metrics, checkpoint = sent[0]
    assert metrics == {
        "score": 0.6,
        "stage": "finetune",
        "epoch": 1,
        "epochs_done": 4,
        "session_start_epochs": 1,
        "val_acc": 0.8,
        "val_robust_acc": 0.4,
        "val_score": 0.6,
    }
    assert checkpoint == str(cfg.run_dir)
