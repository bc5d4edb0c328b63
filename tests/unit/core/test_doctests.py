"""The examples in the core modules' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytestmark = pytest.mark.unit

MODULES = [
    "attacks.folding",
    "attacks.pgd",
    "data.base",
    "drift",
    "explain.baselines",
    "explain.ig",
    "explain.maps",
    "explain.quality",
    "losses",
    "models",
    "registry",
    "training.strategies",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"robustdx.core.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
