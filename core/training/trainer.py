"""One training engine; the paper's regimes are strategies plugged into it.

Regimes (``Regime``): ``ce``, ``adv_ce`` (Alg. 1), ``supcon``, ``adv_supcon`` (Alg. 2) and
``finetune`` (``full`` | ``linear`` | ``adversarial``, classifier head re-initialised).
Adversarial regimes attack in eval mode with input-only gradients (:mod:`robustdx.core.attacks.pgd`)
and then train on the attacked batch in train mode. With ``schedule='alternate'`` an epoch is the
paper's clean pass followed by an adversarial pass; ``'adversarial'`` trains on attacked batches only.

Why the engine is built this way:

* **Exact resume.** Every epoch re-seeds all randomness from ``(seed, epoch)`` (shuffling,
  augmentation, random starts), and a checkpoint (model, optimiser, scheduler, best score,
  history) is written atomically after each epoch. A run killed at any point and restarted
  redoes the unfinished epoch with the same random numbers, so it ends with the same weights and
  metrics as an uninterrupted run (on the CPU, where kernels are deterministic).
* **Best-by-validation.** The best epoch's weights are kept as ``best.safetensors`` (validation
  accuracy for classifiers; nearest-centroid accuracy for SupCon encoders, which have no head).
* **Callers hook in** through ``callbacks`` receiving each epoch's metrics (Ray Tune, Prefect).
* **Speed**: channels_last memory format (CPU and CUDA); bf16 autocast on CUDA, plain fp32 on the CPU.
"""

from __future__ import annotations

import json
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from robustdx.core.attacks.pgd import attack_ce, attack_supcon, channels_like
from robustdx.core.config import AdversarialSchedule, AttackConfig, FinetuneMode, Regime, RunConfig, StageConfig
from robustdx.core.data import Splits
from robustdx.core.evaluation.metrics import centroid_accuracy, classification_metrics, embeddings, predict, robust_accuracy
from robustdx.core.losses import cross_entropy, supcon_loss
from robustdx.core.registry import Registry

EpochCallback = Callable[[dict[str, Any]], None]
CHECKPOINT = "last.pt"
BEST = "best.safetensors"
RESULT = "result.json"


# --------------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but no CUDA device is available; use device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for every (run seed, epoch) pair."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_weights(model: nn.Module, path: Path) -> None:
    """Model state as safetensors (no pickle), written atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, lambda p: save_file(state, str(p)))


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> None:
    model.load_state_dict(load_file(str(path)), strict=strict)


# --------------------------------------------------------------------------------------------
# regimes as strategies
# --------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """What a strategy needs besides the batch."""

    stage: StageConfig
    attack: AttackConfig


class Strategy(ABC):
    """A training regime: which passes an epoch has, how a batch becomes a loss, how to validate."""

    two_views = False
    adversarial = False
    monitor = "val_acc"

    def __init__(self, stage: StageConfig) -> None:
        self.stage = stage

    def passes(self) -> list[bool]:
        """One entry per pass over the data: ``True`` = on adversarial examples."""
        if not self.adversarial:
            return [False]
        return [True] if self.stage.schedule == AdversarialSchedule.ADVERSARIAL else [False, True]

    def prepare(self, model: nn.Module) -> list[nn.Parameter]:
        """Set up the model (freeze, re-initialise) and return the parameters to optimise."""
        for p in model.parameters():
            p.requires_grad_(True)
        return list(model.parameters())

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor: ...

    def validate(self, model: nn.Module, splits: Splits, device: torch.device, batch_size: int) -> dict[str, Any]:
        loader = DataLoader(splits.val, batch_size=batch_size)
        m = classification_metrics(*predict(model, loader, device))
        return {f"val_{k}": v for k, v in m.items()}


class CEStrategy(Strategy):
    """Cross-entropy; with ``adversarial`` the paper's Alg. 1 (clean pass + PGD pass per epoch)."""

    def __init__(self, stage: StageConfig, adversarial: bool) -> None:
        super().__init__(stage)
        self.adversarial = adversarial

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor:
        if adversarial:
            x = attack_ce(model, x, y, ctx.attack)
        return cross_entropy(model(x), y)


class SupConStrategy(Strategy):
    """Supervised contrastive pre-training; with ``adversarial`` the paper's Alg. 2."""

    two_views = True
    monitor = "val_centroid_acc"

    def __init__(self, stage: StageConfig, adversarial: bool) -> None:
        super().__init__(stage)
        self.adversarial = adversarial

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, adversarial: bool, ctx: StepContext) -> Tensor:
        b, v = x.shape[:2]
        if adversarial:
            x = attack_supcon(model, x, y, ctx.attack, ctx.stage.temperature)
        z = model.project(channels_like(x.flatten(0, 1), model)).view(b, v, -1)
        return supcon_loss(z, y, ctx.stage.temperature)

    def validate(self, model: nn.Module, splits: Splits, device: torch.device, batch_size: int) -> dict[str, Any]:
        tf, tl = embeddings(model, splits.train_eval, device, batch_size, max_n=1024)
        vf, vl = embeddings(model, splits.val, device, batch_size)
        return {"val_centroid_acc": centroid_accuracy(tf, tl, vf, vl)}


class FinetuneStrategy(CEStrategy):
    """Fine-tune a pre-trained encoder with a fresh classifier head (full, linear probe, adversarial)."""

    def __init__(self, stage: StageConfig) -> None:
        super().__init__(stage, adversarial=stage.finetune_mode == FinetuneMode.ADVERSARIAL)
        self.mode = stage.finetune_mode

    def prepare(self, model: nn.Module) -> list[nn.Parameter]:
        model.reset_classifier()
        params = super().prepare(model)
        if self.mode == FinetuneMode.LINEAR:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
            params = list(model.classifier.parameters())
        return params

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if self.mode == FinetuneMode.LINEAR:
            model.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too


_REGIMES: Registry[Callable[[StageConfig], Strategy]] = Registry("regime")
_REGIMES.register(Regime.CE)(lambda s: CEStrategy(s, adversarial=False))
_REGIMES.register(Regime.ADV_CE)(lambda s: CEStrategy(s, adversarial=True))
_REGIMES.register(Regime.SUPCON)(lambda s: SupConStrategy(s, adversarial=False))
_REGIMES.register(Regime.ADV_SUPCON)(lambda s: SupConStrategy(s, adversarial=True))
_REGIMES.register(Regime.FINETUNE)(FinetuneStrategy)


def create_strategy(regime: Regime | str, stage: StageConfig) -> Strategy:
    return _REGIMES.get(str(regime))(stage)


def list_regimes() -> list[str]:
    return _REGIMES.list()


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
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


class _Progress:
    """A rich progress bar, or nothing when disabled (CI logs, Ray workers)."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar:
            self.bar.__exit__(*exc)

    def task(self, description: str, total: int) -> Any:
        return self.bar.add_task(description, total=total, info="") if self.bar else None

    def advance(self, task: Any, info: str = "") -> None:
        if self.bar:
            self.bar.update(task, advance=1, info=info)


class Trainer:
    """Train one stage of a run in ``stage_dir``, resuming from its checkpoint when there is one.

    Args:
        cfg: the run (seed, data loader settings, attack, device, progress).
        regime: the stage's regime.
        stage: the stage's optimisation settings.
        splits: data.
        stage_dir: folder for ``last.pt``, ``best.safetensors``, ``metrics.jsonl``, ``result.json``.
        callbacks: called after every epoch with that epoch's metrics.
    """

    def __init__(
        self,
        cfg: RunConfig,
        regime: Regime | str,
        stage: StageConfig,
        splits: Splits,
        stage_dir: Path,
        callbacks: Iterable[EpochCallback] = (),
    ) -> None:
        self.cfg, self.stage, self.splits = cfg, stage, splits
        self.regime = str(regime)
        self.strategy = create_strategy(regime, stage)
        self.dir = Path(stage_dir)
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.device)

    @property
    def classifier_stage(self) -> bool:
        return not self.strategy.two_views

    @property
    def monitor(self) -> str:
        """The metric that picks the best epoch: the strategy's, or the robust-aware ``val_score``."""
        if self.classifier_stage and self.cfg.monitor == "robust_mean":
            return "val_score"
        return self.strategy.monitor

    def _robust_validation(self, model: nn.Module, val_acc: float) -> dict[str, float]:
        """PGD accuracy on a fixed, seeded subset of validation (``cfg.val_robust_n`` images, ``cfg.eval_attack``)
        and ``val_score`` = mean of clean (whole split) and robust (subset) validation accuracy: what sweeps optimise and
        ``monitor=robust_mean`` selects on. Only classifier stages; off when ``val_robust_n`` is 0."""
        if not self.classifier_stage or self.cfg.val_robust_n == 0:
            return {}
        rec = robust_accuracy(
            model,
            self.splits.val,
            self.cfg.eval_attack,
            self.device,
            self.cfg.data.eval_batch_size,
            max_n=self.cfg.val_robust_n,
            seed=self.cfg.seed,
            n_boot=100,
        )
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
        done = self.dir / RESULT
        if done.is_file():
            load_weights(model, self.dir / BEST)
            return StageResult(**json.loads(done.read_text()))
        seed_everything(self.cfg.seed)
        if init_weights is not None:
            load_weights(model, init_weights)
        model.to(self.device)
        cuda = self.device.type == "cuda"
        if self.cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        params = self.strategy.prepare(model)
        opt_cls = torch.optim.AdamW if self.stage.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(params, lr=self.stage.lr, weight_decay=self.stage.weight_decay)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.stage.gamma)
        start, best, best_epoch, history, seconds = 0, float("-inf"), -1, [], 0.0
        ckpt = self.dir / CHECKPOINT
        if ckpt.is_file():
            state = torch.load(ckpt, map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, best, best_epoch = state["epoch"], state["best_score"], state["best_epoch"]
            history, seconds = list(state["history"]), state["seconds"]
        ctx = StepContext(stage=self.stage, attack=self.cfg.attack)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
        passes = self.strategy.passes()
        with _Progress(self.cfg.progress) as progress:
            for epoch in range(start, self.stage.epochs):
                t0 = time.perf_counter()
                seed_everything(epoch_seed(self.cfg.seed, epoch))
                loader = self._loader(epoch)
                steps = (
                    len(loader) if self.stage.max_steps_per_epoch is None else min(len(loader), self.stage.max_steps_per_epoch)
                )
                task = progress.task(f"{self.regime} epoch {epoch + 1}/{self.stage.epochs}", steps * len(passes))
                losses: dict[str, list[float]] = {}
                for adversarial in passes:
                    for i, batch in enumerate(loader):
                        if i >= steps:
                            break
                        self.strategy.train_mode(model)
                        x = batch[0].to(self.device, non_blocking=True)
                        y = batch[1].to(self.device, non_blocking=True)
                        if self.cfg.channels_last and x.ndim == 4:
                            x = x.contiguous(memory_format=torch.channels_last)
                        with autocast:
                            loss = self.strategy.loss(model, x, y, adversarial, ctx)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"{self.regime}: non-finite loss {loss.item()} at epoch {epoch + 1}, step {i}"
                            )
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        key = "train_adv_loss" if adversarial else "train_loss"
                        losses.setdefault(key, []).append(float(loss.detach()))
                        progress.advance(task, f"{key}={losses[key][-1]:.3f}")
                sched.step()
                metrics: dict[str, Any] = {"stage": self.regime, "epoch": epoch + 1, "lr": sched.get_last_lr()[0]}
                metrics.update({k: float(np.mean(v)) for k, v in losses.items()})
                metrics.update(self.strategy.validate(model, self.splits, self.device, self.cfg.data.eval_batch_size))
                metrics.update(self._robust_validation(model, float(metrics.get("val_acc", 0.0))))
                seconds += time.perf_counter() - t0
                metrics["seconds"] = seconds
                score = float(metrics[self.monitor])
                if score > best:
                    best, best_epoch = score, epoch + 1
                    save_weights(model, self.dir / BEST)
                metrics["best_score"] = best
                history.append(metrics)
                state = {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "best_score": best,
                    "best_epoch": best_epoch,
                    "history": history,
                    "seconds": seconds,
                }
                atomic_write_bytes(ckpt, lambda p, s=state: torch.save(s, p))
                lines = "".join(json.dumps(_jsonable(h)) + "\n" for h in history)
                atomic_write_bytes(self.dir / "metrics.jsonl", lambda p, t=lines: p.write_text(t))
                for cb in self.callbacks:
                    cb(metrics)
        load_weights(model, self.dir / BEST)
        result = StageResult(self.regime, self.monitor, best, best_epoch, history, BEST, seconds)
        atomic_write_bytes(done, lambda p: p.write_text(json.dumps(_jsonable(result.to_json()), indent=2)))
        return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
