"""The flows' parameter models (:mod:`robustdx.flows.params`): unknown keys are refused."""

from __future__ import annotations

import pytest

from robustdx.flows.params import RetrainParams

pytestmark = pytest.mark.unit


def test_retrain_params_reject_unknown_keys() -> None:
    with pytest.raises(ValueError, match="train_override"):
        RetrainParams.model_validate({"train_override": []})
