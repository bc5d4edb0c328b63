"""Synthetic data sets record what wrote them, so stale ones are rewritten and real data is never deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustdx.core.data import synthetic
from robustdx.core.errors import DataError

pytestmark = pytest.mark.data

SMALL = {"per_class": 2, "size": 24, "seed": 0}


def test_a_finished_write_records_its_full_spec(tmp_path: Path) -> None:
    synthetic.write_camelyon17(tmp_path, **SMALL)
    spec = synthetic.read_spec(tmp_path)
    assert spec == synthetic.spec("camelyon17", **SMALL)
    assert spec["generator"] == synthetic.GENERATOR
    assert spec["params"]["patients_per_center"] == 2  # defaults are part of the record


def test_ensure_reuses_rewrites_and_refuses(tmp_path: Path) -> None:
    assert synthetic.ensure(tmp_path, "camelyon17", **SMALL) == "written"
    png = next(tmp_path.rglob("*.png"))
    mtime = png.stat().st_mtime_ns
    assert synthetic.ensure(tmp_path, "camelyon17", **SMALL) == "reused"
    assert png.stat().st_mtime_ns == mtime

    bigger = {**SMALL, "per_class": 3}
    with pytest.raises(DataError, match=r"per_class=2 \(asked: 3\).*--force"):
        synthetic.ensure(tmp_path, "camelyon17", **bigger)
    assert synthetic.ensure(tmp_path, "camelyon17", rewrite_stale=True, **bigger) == "rewritten"
    assert len(list(tmp_path.rglob("*.png"))) == 5 * 2 * 3


def test_an_older_generator_or_an_interrupted_write_is_stale(tmp_path: Path) -> None:
    synthetic.ensure(tmp_path, "camelyon17", **SMALL)
    spec_file = tmp_path / synthetic.SPEC_FILE
    old = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({**old, "generator": 0}))
    with pytest.raises(DataError, match="older generator"):
        synthetic.ensure(tmp_path, "camelyon17", **SMALL)
    spec_file.unlink()  # as if the write had been killed before its end
    with pytest.raises(DataError, match="no robustdx-synthetic.json"):
        synthetic.ensure(tmp_path, "camelyon17", **SMALL)
    assert synthetic.ensure(tmp_path, "camelyon17", rewrite_stale=True, **SMALL) == "rewritten"
    assert synthetic.read_spec(tmp_path) == synthetic.spec("camelyon17", **SMALL)


def test_data_robustdx_did_not_write_is_never_deleted(tmp_path: Path) -> None:
    real = tmp_path / "camelyon17_v1.0"
    real.mkdir()
    (real / "RELEASE_v1.0.txt").write_text("WILDS Camelyon17 v1.0\n")
    with pytest.raises(FileExistsError, match="did not write"):
        synthetic.ensure(tmp_path, "camelyon17", force=True, **SMALL)
    assert (real / "RELEASE_v1.0.txt").read_text() == "WILDS Camelyon17 v1.0\n"
