"""A raw sweep mapping and a tiny base run config, shared by the tests of the sweep schema
(:mod:`robustdx.core.config.sweep`) and of :mod:`robustdx.flows.tune`: valid as they are, so that each
test changes only what it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustdx.core.config import RunConfig, parse_config
from tests.support.configs import tiny_raw

EPS2, EPS4, EPS8 = 2 / 255, 4 / 255, 8 / 255


def sweep_raw(**over: Any) -> dict[str, Any]:
    """A sweep mapping over eps (choices), steps and lr (ranges) with base ``base.yaml``; ``over`` sets top-level keys."""
    raw: dict[str, Any] = {
        "name": "s",
        "base": "base.yaml",
        "space": {"eps": ["2/255", "8/255"], "steps": {"low": 2, "high": 5}, "lr": {"low": 1e-4, "high": 1e-2}},
    }
    raw.update(over)
    return raw


def run_base(tmp_path: Path, **over: Any) -> RunConfig:
    """The tiny run config (:func:`tests.support.configs.tiny_raw`) with data and runs under ``tmp_path``."""
    return parse_config(tiny_raw(tmp_path / "data", tmp_path / "runs", **over))
