"""One training engine; the paper's regimes are strategies plugged into it (:mod:`.strategies`).

Adversarial regimes attack in eval mode with input-only gradients (:mod:`robustdx.core.attacks`)
and then train on the attacked batch in train mode. With ``schedule='alternate'`` an epoch is the
paper's clean pass followed by an adversarial pass; ``'adversarial'`` trains on attacked batches only.

Why the engine is built this way:

* **Exact resume.** Every epoch re-seeds all randomness from ``(seed, epoch)`` (shuffling,
  augmentation, random starts), and a checkpoint (model, optimiser, scheduler, best score,
  history; :mod:`.checkpoint`) is written atomically after each epoch. A run killed at any point and
  restarted redoes the unfinished epoch with the same random numbers, so it ends with the same
  weights and metrics as an uninterrupted run (on the CPU, where kernels are deterministic).
* **Best-by-validation.** The best epoch's weights are kept as ``best.safetensors`` (for classifiers
  the validation metric ``RunConfig.monitor`` names: accuracy, robust mean, balanced accuracy or AUC
  — the last two for imbalanced sets, where accuracy favours the majority class; nearest-centroid
  accuracy for SupCon encoders, which have no head).
* **Class weights** (``StageConfig.class_weights``) are computed once per stage from the training labels.
* **Callers hook in** through ``callbacks`` receiving each epoch's metrics (Ray Tune, Prefect).
* **Speed**: channels_last memory format (CPU and CUDA); bf16 autocast on CUDA, plain fp32 on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from robustdx.core.config import Regime, RunConfig, StageConfig
from robustdx.core.data import Splits
from robustdx.core.evaluation.robustness import EvalConfig, robust_accuracy
from robustdx.core.training.checkpoint import (
    BEST,
    CHECKPOINT,
    HISTORY,
    RESULT,
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
from robustdx.core.training.progress import ProgressBar
from robustdx.core.training.strategies import StepContext, create_strategy
from robustdx.core.util import epoch_seed, resolve_device, seed_everything

__all__ = ["CLASSIFIER_MONITORS", "EpochCallback", "StagePlan", "StageResult", "Trainer"]

CLASSIFIER_MONITORS = {"acc": "val_acc", "robust_mean": "val_score", "bal_acc": "val_bal_acc", "auc": "val_auc"}
"""``RunConfig.monitor`` -> the validation metric that selects a classifier stage's best epoch."""

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class StagePlan:
    """One stage of a recipe: its regime, its optimisation settings and the folder it trains in
    (``last.pt``, ``best.safetensors``, ``metrics.jsonl``, ``result.json``)."""

    regime: Regime | str
    stage: StageConfig
    folder: Path


@dataclass
class _Run:
    """What the epochs of one :meth:`Trainer.fit` share."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainState
    ctx: StepContext
    autocast: AbstractContextManager[Any]
    progress: ProgressBar


class Trainer:
    """Train one stage of a run in ``plan.folder``, resuming from its checkpoint when there is one.

    Args:
        cfg: the run (seed, data loader settings, attack, device, progress).
        plan: the stage's regime, optimisation settings and folder.
        splits: data.
        callbacks: called after every epoch with that epoch's metrics.
    """

    def __init__(self, cfg: RunConfig, plan: StagePlan, splits: Splits, callbacks: Iterable[EpochCallback] = ()) -> None:
        self.cfg, self.stage, self.splits = cfg, plan.stage, splits
        self.regime = str(plan.regime)
        self.strategy = create_strategy(plan.regime, plan.stage)
        self.dir = Path(plan.folder)
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.device)

    @property
    def classifier_stage(self) -> bool:
        return not self.strategy.two_views

    @property
    def monitor(self) -> str:
        """The metric that picks the best epoch: ``cfg.monitor``'s for classifier stages (``val_acc``,
        ``val_score``, ``val_bal_acc``, ``val_auc``), the strategy's own for SupCon encoders."""
        if self.classifier_stage:
            return CLASSIFIER_MONITORS[self.cfg.monitor]
        return self.strategy.monitor

    def class_weights(self) -> torch.Tensor | None:
        """The training loss's per-class weights (``stage.class_weights``), from the training split's labels."""
        return self.strategy.class_weights(self.splits.train, self.cfg.model.num_classes)

    def _robust_validation(self, model: nn.Module, val_acc: float) -> dict[str, float]:
        """PGD accuracy on a fixed, seeded subset of validation (``cfg.val_robust_n`` images, ``cfg.eval_attack``)
        and ``val_score`` = mean of clean (whole split) and robust (subset) validation accuracy: what sweeps optimise and
        ``monitor=robust_mean`` selects on. Only classifier stages; off when ``val_robust_n`` is 0."""
        if not self.classifier_stage or self.cfg.val_robust_n == 0:
            return {}
        sample = EvalConfig(max_n=self.cfg.val_robust_n, batch_size=self.cfg.data.eval_batch_size, seed=self.cfg.seed, n_boot=100)
        rec = robust_accuracy(model, self.splits.val, self.cfg.eval_attack, sample, device=self.device)
        robust = float(rec["robust_acc"])
        return {"val_robust_acc": robust, "val_score": (val_acc + robust) / 2}

    def _loader(self, epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(epoch_seed(self.cfg.seed, epoch))
        bs = self.cfg.data.batch_size
        return DataLoader(
            self.splits.train,
            batch_size=bs,
            shuffle=True,
            generator=g,
            drop_last=len(self.splits.train) > bs,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def fit(self, model: nn.Module, init_weights: Path | None = None) -> StageResult:
        """Train to the configured number of epochs and leave the best weights loaded in ``model``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        done = read_result(self.dir / RESULT)
        if done is not None:
            load_weights(model, self.dir / BEST)
            return done
        optimizer, scheduler = self._set_up(model, init_weights)
        state = load_checkpoint(self.dir / CHECKPOINT, model, optimizer, scheduler, self.device)
        weights = self.class_weights()
        ctx = StepContext(self.stage, self.cfg.attack, None if weights is None else weights.to(self.device))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        with ProgressBar(self.cfg.progress) as progress:
            run = _Run(model, optimizer, scheduler, state, ctx, autocast, progress)
            for epoch in range(state.epoch, self.stage.epochs):
                self._epoch(run, epoch)
        load_weights(model, self.dir / BEST)
        result = StageResult(self.regime, self.monitor, state.best_score, state.best_epoch, state.history, BEST, state.seconds)
        write_result(self.dir / RESULT, result)
        return result

    def _set_up(
        self, model: nn.Module, init_weights: Path | None
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """Seed, load the initial weights, move and prepare ``model``; return its optimiser and scheduler."""
        seed_everything(self.cfg.seed)
        if init_weights is not None:
            load_weights(model, init_weights)
        model.to(self.device)
        if self.cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        params = self.strategy.prepare(model)
        opt_cls = torch.optim.AdamW if self.stage.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, lr=self.stage.lr, weight_decay=self.stage.weight_decay)
        return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.stage.gamma)

    def _epoch(self, run: _Run, epoch: int) -> None:
        """Train, validate and checkpoint epoch ``epoch`` (0-based), then call the callbacks."""
        t0 = time.perf_counter()
        seed_everything(epoch_seed(self.cfg.seed, epoch))
        losses = self._train(run, epoch)
        run.scheduler.step()
        metrics: dict[str, Any] = {"stage": self.regime, "epoch": epoch + 1, "lr": run.scheduler.get_last_lr()[0]}
        metrics.update({k: float(np.mean(v)) for k, v in losses.items()})
        metrics.update(self._validate(run.model))
        run.state.seconds += time.perf_counter() - t0
        metrics["seconds"] = run.state.seconds
        self._keep_best(run, metrics, epoch)
        self._checkpoint(run, metrics, epoch)
        for cb in self.callbacks:
            cb(metrics)

    def _train(self, run: _Run, epoch: int) -> dict[str, list[float]]:
        """One epoch's passes over the training data; the losses of every step, per pass kind."""
        loader = self._loader(epoch)
        steps = len(loader) if self.stage.max_steps_per_epoch is None else min(len(loader), self.stage.max_steps_per_epoch)
        passes = self.strategy.passes()
        task = run.progress.task(f"{self.regime} epoch {epoch + 1}/{self.stage.epochs}", steps * len(passes))
        losses: dict[str, list[float]] = {}
        for adversarial in passes:
            key = "train_adv_loss" if adversarial else "train_loss"
            for i, batch in enumerate(loader):
                if i >= steps:  # after fetching the batch, as before: its augmentations draw from the RNG
                    break
                losses.setdefault(key, []).append(self._step(run, batch, adversarial, f"epoch {epoch + 1}, step {i}"))
                run.progress.advance(task, f"{key}={losses[key][-1]:.3f}")
        return losses

    def _step(self, run: _Run, batch: Sequence[Any], adversarial: bool, where: str) -> float:
        """One optimisation step on ``batch`` (attacked first when ``adversarial``); returns its loss."""
        self.strategy.train_mode(run.model)
        x = batch[0].to(self.device, non_blocking=True)
        y = batch[1].to(self.device, non_blocking=True)
        if self.cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast:
            loss = self.strategy.loss(run.model, x, y, adversarial, run.ctx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.regime}: non-finite loss {loss.item()} at {where}")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        return float(loss.detach())

    def _validate(self, model: nn.Module) -> dict[str, Any]:
        """The strategy's validation metrics, plus robust validation where configured."""
        metrics = self.strategy.validate(model, self.splits, self.device, self.cfg.data.eval_batch_size)
        metrics.update(self._robust_validation(model, float(metrics.get("val_acc", 0.0))))
        return metrics

    def _keep_best(self, run: _Run, metrics: dict[str, Any], epoch: int) -> None:
        """Save the weights when the monitored score beats the best so far; record the best score."""
        score = float(metrics[self.monitor])
        if np.isnan(score):
            raise ValueError(
                f"{self.regime}: the monitored {self.monitor} is NaN at epoch {epoch + 1} (a validation split with one "
                f"class has no AUC); use a stratified validation split or monitor=bal_acc"
            )
        if score > run.state.best_score:
            run.state.best_score, run.state.best_epoch = score, epoch + 1
            save_weights(run.model, self.dir / BEST)
        metrics["best_score"] = run.state.best_score

    def _checkpoint(self, run: _Run, metrics: dict[str, Any], epoch: int) -> None:
        """Record the finished epoch: the checkpoint to resume from, then the metrics history."""
        run.state.history.append(metrics)
        run.state.epoch = epoch + 1
        save_checkpoint(self.dir / CHECKPOINT, run.model, run.optimizer, run.scheduler, run.state)
        write_history(self.dir / HISTORY, run.state.history)
