"""What a training stage leaves on disk (core/training/checkpoint.py): weights, the epoch checkpoint,
the metrics history and the result file round-trip exactly, and every write is atomic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustdx.core.training import checkpoint as ck
from robustdx.core.training.checkpoint import (
    StageResult,
    TrainState,
    load_checkpoint,
    load_weights,
    read_result,
    save_checkpoint,
    save_weights,
    write_history,
    write_result,
)
from tests.support.classifiers import tiny_model

pytestmark = pytest.mark.unit


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".tmp-" in p.name]


def test_weights_round_trip_exactly_without_temporary_files(tmp_path: Path) -> None:
    a, b = tiny_model(0), tiny_model(1)
    path = tmp_path / ck.BEST
    save_weights(a, path)
    load_weights(b, path)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert _no_temporaries(tmp_path)


def test_a_failed_weights_write_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ck.BEST
    save_weights(tiny_model(0), path)
    before = path.read_bytes()

    def broken(state: dict, filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tiny_model(1), path)
    assert path.read_bytes() == before


def _trained_step(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    model = tiny_model(seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    loss = model(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))).sum()
    loss.backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_checkpoint_round_trip_restores_model_optimiser_scheduler_and_state(tmp_path: Path) -> None:
    model, opt, sched = _trained_step(0)
    state = TrainState(epoch=3, best_score=0.75, best_epoch=2, history=[{"epoch": 1}, {"epoch": 2}], seconds=1.5)
    path = tmp_path / ck.CHECKPOINT
    save_checkpoint(path, model, opt, sched, state)
    assert _no_temporaries(tmp_path)

    model2 = tiny_model(5)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.5)
    restored = load_checkpoint(path, model2, opt2, sched2, torch.device("cpu"))
    assert restored == state
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    assert sched2.get_last_lr() == sched.get_last_lr() == [5e-3]
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[i]["exp_avg"], s2[i]["exp_avg"]) for i in s1)


def test_no_checkpoint_means_a_fresh_state_and_nothing_restored(tmp_path: Path) -> None:
    model, opt, sched = _trained_step(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = load_checkpoint(tmp_path / ck.CHECKPOINT, model, opt, sched, torch.device("cpu"))
    assert state == TrainState() and state.best_score == float("-inf") and state.best_epoch == -1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_history_is_one_json_line_per_epoch(tmp_path: Path) -> None:
    path = tmp_path / ck.HISTORY
    write_history(path, [{"epoch": 1, "val_acc": np.float32(0.5)}, {"epoch": 2, "val_group_acc": {0: 1.0}}])
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_group_acc": {"0": 1.0}}]
    write_history(path, [{"epoch": 1}])  # rewritten, not appended
    assert path.read_text() == '{"epoch": 1}\n'
    assert _no_temporaries(tmp_path)


def test_result_round_trip_and_absent_result(tmp_path: Path) -> None:
    path = tmp_path / ck.RESULT
    assert read_result(path) is None
    result = StageResult("adv_ce", "val_acc", 0.8, 2, [{"epoch": 1, "val_acc": np.float64(0.8)}], ck.BEST, 3.0)
    write_result(path, result)
    back = read_result(path)
    assert back == StageResult("adv_ce", "val_acc", 0.8, 2, [{"epoch": 1, "val_acc": 0.8}], "best.safetensors", 3.0)
    assert json.loads(path.read_text())["regime"] == "adv_ce"
    assert _no_temporaries(tmp_path)
