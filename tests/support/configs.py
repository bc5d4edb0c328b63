"""Tiny run configurations and synthetic data sets for tests: what trains in seconds on a CPU.

Plain functions (imported as a module); the fixtures that call them are in tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from robustdx.core.data.synthetic import write_camelyon17


def tiny_raw(root: Path, out: Path, **over: Any) -> dict[str, Any]:
    """A raw config mapping for a tiny, fast run on the synthetic Camelyon17 copy."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "recipe": "adv_supcon_ft",
        "output_dir": str(out),
        "progress": False,
        "data": {"dataset": "camelyon17", "root": str(root), "image_size": 16, "batch_size": 16, "eval_batch_size": 64},
        "model": {"arch": "test_cnn", "proj_dim": 16, "head_hidden": 16},
        "attack": {"eps": "4/255", "steps": 2},
        "eval_attack": {"eps": "4/255", "steps": 3},
        "pretrain": {"epochs": 2, "lr": 0.003, "max_steps_per_epoch": 3},
        "finetune": {"epochs": 2, "lr": 0.003, "max_steps_per_epoch": 3},
        "n_reference": 32,
    }
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            raw[section][field] = value
        else:
            raw[section] = value
    return raw


def learnable_raw(root: Path, out: Path, **over: Any) -> dict[str, Any]:
    """``tiny_raw`` at 32 px on whole epochs, validated in distribution: a config that learns."""
    raw = tiny_raw(root, out, **over)
    raw["data"].update(image_size=32, batch_size=32, val_split="id_val")
    for stage in ("pretrain", "finetune"):
        raw[stage].setdefault("max_steps_per_epoch", None)
        if raw[stage]["max_steps_per_epoch"] == 3:
            raw[stage]["max_steps_per_epoch"] = None
    return raw


def write_tiny_sweep(folder: Path, data: Path, name: str) -> Path:
    """A two-trial FIFO sweep over the training ε on the learnable set (2 + 2 epochs per trial), written
    with its base run config into ``folder``; results go to ``folder/sweeps``."""
    base = folder / "base.yaml"
    raw = learnable_raw(data, folder / "runs", name=f"{name}-base", pretrain__epochs=2, finetune__epochs=2)
    base.write_text(yaml.safe_dump(raw))
    sweep = {
        "name": name,
        "base": str(base),
        "space": {"eps": ["2/255", "4/255"], "lr": {"choices": [0.003]}},
        "num_samples": 2,
        "search": "random",
        "scheduler": "fifo",
        "val_robust_n": 16,
        "num_cpus": 2,
        "storage_path": str(folder / "sweeps"),
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def synthetic_camelyon(factory: pytest.TempPathFactory, per_class: int, size: int) -> Path:
    """Write a synthetic WILDS Camelyon17 copy (5 hospitals x 2 classes x ``per_class``) in a temp folder."""
    root = factory.mktemp(f"camelyon17_{per_class}x{size}")
    write_camelyon17(root, per_class=per_class, size=size, seed=0)
    return root
