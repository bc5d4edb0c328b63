"""The training progress bar (core/training/progress.py): silent when disabled, counting when enabled."""

from __future__ import annotations

import pytest

from robustdx.core.training.progress import ProgressBar

pytestmark = pytest.mark.unit


def test_disabled_bar_writes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with ProgressBar(False) as progress:
        task = progress.task("ce epoch 1/2", 3)
        progress.advance(task, "train_loss=0.5")
    assert progress.bar is None and task is None
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_enabled_bar_counts_steps_and_shows_the_info() -> None:
    with ProgressBar(True) as progress:
        task = progress.task("ce epoch 1/2", 3)
        progress.advance(task, "train_loss=0.5")
        progress.advance(task, "train_loss=0.4")
        (state,) = progress.bar.tasks
    assert (state.description, state.total, state.completed) == ("ce epoch 1/2", 3, 2)
    assert state.fields["info"] == "train_loss=0.4"
