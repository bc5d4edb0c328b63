"""What a training stage leaves on disk, and how it is read back: weights, the epoch checkpoint, the
per-epoch history and the stage's result file.

Why its own module: exact resume after a kill rests on these files alone, so every one of them is
written atomically (:func:`robustdx.core.util.atomic_write_bytes`: a reader sees the old file or the
new one, never half of one), and weights are safetensors (no pickle) so a bundle can be loaded from
an untrusted store. A stage folder holds

* ``last.pt`` (:data:`CHECKPOINT`): model, optimiser, scheduler and :class:`TrainState` after the last
  finished epoch, loaded with ``weights_only=True``;
* ``best.safetensors`` (:data:`BEST`): the weights of the best epoch so far;
* ``metrics.jsonl`` (:data:`HISTORY`): one line of metrics per finished epoch;
* ``result.json`` (:data:`RESULT`): the :class:`StageResult`, written last, so its presence means done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from robustdx.core.util import atomic_write_bytes, jsonable

CHECKPOINT = "last.pt"
BEST = "best.safetensors"
RESULT = "result.json"
HISTORY = "metrics.jsonl"


def save_weights(model: nn.Module, path: Path) -> None:
    """Model state as safetensors (no pickle), written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, lambda p: save_file(state, str(p)))


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    """Load safetensors weights written by :func:`save_weights` into ``model``."""
    model.load_state_dict(load_file(str(path)), strict=strict)


@dataclass
class TrainState:
    """Where a stage stands: epochs finished, the best monitored score and its epoch, the history of
    per-epoch metrics and the training seconds spent so far (summed over resumptions)."""

    epoch: int = 0
    best_score: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def save_checkpoint(path: Path, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, state: TrainState) -> None:
    """Write model, optimiser, scheduler and ``state`` to ``path`` atomically (torch format)."""
    checkpoint = {
        "epoch": state.epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "seconds": state.seconds,
    }
    atomic_write_bytes(path, lambda p: torch.save(checkpoint, p))


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: Optimizer, scheduler: LRScheduler, device: torch.device
) -> TrainState:
    """Restore model, optimiser and scheduler from ``path`` and return the saved state; a fresh
    :class:`TrainState` (nothing restored) when there is no checkpoint yet."""
    if not path.is_file():
        return TrainState()
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    return TrainState(
        epoch=checkpoint["epoch"],
        best_score=checkpoint["best_score"],
        best_epoch=checkpoint["best_epoch"],
        history=list(checkpoint["history"]),
        seconds=checkpoint["seconds"],
    )


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically as JSON lines, one per epoch of ``history``."""
    lines = "".join(json.dumps(jsonable(h)) + "\n" for h in history)
    atomic_write_bytes(path, lambda p: p.write_text(lines))


@dataclass
class StageResult:
    """Outcome of one stage: where its best weights are and how it got there."""

    regime: str
    monitor: str
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: str = BEST
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def write_result(path: Path, result: StageResult) -> None:
    """Write the stage's result file atomically (the last file a finished stage writes)."""
    atomic_write_bytes(path, lambda p: p.write_text(json.dumps(jsonable(result.to_json()), indent=2)))


def read_result(path: Path) -> StageResult | None:
    """The result of a finished stage, or None when the stage has not finished."""
    if not path.is_file():
        return None
    return StageResult(**json.loads(path.read_text()))
