"""Model bundles: round trip, integrity checks, architecture check, atomic replace, no pickle."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from robustdx.core.config import ModelConfig, RunConfig, parse_config
from robustdx.core.models import build_model
from robustdx.core.release.bundle import (
    FORMAT,
    JSON_FILES,
    MANIFEST,
    MODEL_CARD,
    REFERENCE,
    WEIGHTS,
    BundleError,
    load_bundle,
    save_bundle,
    verify_bundle,
)
from tests.support.configs import tiny_raw
from tests.support.paths import REPO

pytestmark = pytest.mark.unit

ALL_FILES = (WEIGHTS, REFERENCE, *JSON_FILES)
METRICS = {"test": {"clean_acc": 0.75, "robust_acc": 0.5}, "val": {"clean_acc": 0.8}, "epochs": 2}
CARD = {"classes": ["normal", "tumor"], "groups": ["hospital_0"], "splits": {"train": {"n": 32, "per_class": [16, 16]}}}


def _config(tmp_path: Path) -> RunConfig:
    return parse_config(tiny_raw(tmp_path, tmp_path / "runs", model={"arch": "test_cnn", "proj_dim": 8, "head_hidden": 8}))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="test_cnn", proj_dim=8, head_hidden=8))
    model.train()  # give the BatchNorm buffers non-default values
    with torch.no_grad():
        model(torch.rand(8, 3, 16, 16))
    return model.eval()


def _reference() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embeddings": torch.randn(32, 64, generator=g),
        "probs": torch.rand(32, 2, generator=g),
        "labels": torch.arange(32) % 2,
    }


@pytest.fixture
def bundle(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _model()
    path = save_bundle(tmp_path / "bundle", model, _config(tmp_path), METRICS, CARD, _reference())
    return path, model


def _rewrite_manifest_entry(path: Path, name: str) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / MANIFEST).write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------- round trip


def test_round_trip(bundle: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, model = bundle
    b = load_bundle(path)
    want, got = model.state_dict(), b.model.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    assert not b.model.training
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(b.model(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(b.model.embed(x), model.embed(x), rtol=0, atol=0)
    assert b.metrics == METRICS
    assert b.data_card == CARD
    ref = _reference()
    assert b.reference.keys() == ref.keys()
    for k in ref:
        assert torch.equal(b.reference[k], ref[k]), k
    assert b.config == _config(tmp_path)
    assert b.path == path


def test_version_and_manifest(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    b = load_bundle(path)
    digest = hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest()
    assert b.version == digest[:12]
    assert re.fullmatch(r"[0-9a-f]{12}", b.version)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest == b.manifest == verify_bundle(path)
    assert manifest["format"] == FORMAT
    assert manifest["arch"] == "test_cnn"
    assert set(manifest["files"]) == set(ALL_FILES)
    assert {p.name for p in path.iterdir()} == {*ALL_FILES, MANIFEST}
    for name in ALL_FILES:
        data = (path / name).read_bytes()
        assert manifest["files"][name] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name


def test_different_weights_different_version(tmp_path: Path) -> None:
    a = save_bundle(tmp_path / "a", _model(0), _config(tmp_path), METRICS, CARD, _reference())
    c = save_bundle(tmp_path / "c", _model(1), _config(tmp_path), METRICS, CARD, _reference())
    assert load_bundle(a).version != load_bundle(c).version


def test_same_weights_same_version(tmp_path: Path) -> None:
    model, cfg, ref = _model(0), _config(tmp_path), _reference()
    versions = {load_bundle(save_bundle(tmp_path / f"b{i}", model, cfg, METRICS, CARD, ref)).version for i in range(16)}
    assert len(versions) == 1, versions


# --------------------------------------------------------------------------------------- tampering


def test_flipped_byte_is_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    f = path / WEIGHTS
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert f.stat().st_size == len(data)
    with pytest.raises(BundleError, match="SHA-256") as err:
        load_bundle(path)
    assert WEIGHTS in str(err.value)


def test_truncated_weights_are_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    f = path / WEIGHTS
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(BundleError, match="truncated") as err:
        load_bundle(path)
    assert WEIGHTS in str(err.value)


def test_edited_metrics_are_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    f = path / "metrics.json"
    f.write_text(f.read_text().replace("0.5", "0.9"))  # same size, better-looking numbers
    with pytest.raises(BundleError, match="metrics.json"):
        load_bundle(path)


def test_edited_metrics_of_other_size_are_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    f = path / "metrics.json"
    metrics = json.loads(f.read_text())
    metrics["test"]["robust_acc"] = 0.99
    f.write_text(json.dumps(metrics))
    with pytest.raises(BundleError, match="metrics.json"):
        load_bundle(path)


def test_missing_file_is_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    (path / REFERENCE).unlink()
    with pytest.raises(BundleError, match="missing") as err:
        load_bundle(path)
    assert REFERENCE in str(err.value)


def test_no_manifest_is_not_a_bundle(bundle: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = bundle
    (path / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a robustdx bundle"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not a folder"):
        load_bundle(tmp_path / "absent")


def test_manifest_without_entry_or_wrong_format_is_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    good = (path / MANIFEST).read_text()
    manifest = json.loads(good)
    del manifest["files"][REFERENCE]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=REFERENCE):
        load_bundle(path)
    manifest = json.loads(good)
    manifest["format"] = "robustdx-bundle/0"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format"):
        load_bundle(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(path)


def test_architecture_mismatch_is_refused(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["arch"] = "resnet18"
    (path / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    _rewrite_manifest_entry(path, "config.json")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["arch"] = "resnet18"
    (path / MANIFEST).write_text(json.dumps(manifest))
    verify_bundle(path)  # the hashes are consistent again
    with pytest.raises(BundleError, match="do not fit architecture") as err:
        load_bundle(path)
    assert "resnet18" in str(err.value)


def test_manifest_arch_must_match_config(bundle: tuple[Path, torch.nn.Module]) -> None:
    path, _ = bundle
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["arch"] = "resnet18"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="arch"):
        load_bundle(path)


# ------------------------------------------------------------------------------------- save paths


def test_refuses_to_overwrite_unrelated_folder(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_bundle(target, _model(), _config(tmp_path), METRICS, CARD, _reference())
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_saving_twice_replaces_the_bundle(tmp_path: Path) -> None:
    path = tmp_path / "out" / "bundle"
    save_bundle(path, _model(0), _config(tmp_path), METRICS, CARD, _reference())
    first = load_bundle(path).version
    second_model = _model(1)
    save_bundle(path, second_model, _config(tmp_path), {"round": 2}, CARD, _reference())
    b = load_bundle(path)
    assert b.version != first
    assert b.metrics == {"round": 2}
    for k, v in second_model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
    assert [p.name for p in path.parent.iterdir()] == ["bundle"]  # no temporary or old folders left


# ------------------------------------------------------------------------------------------ pickle


def _sources(*folders: str) -> list[Path]:
    files = [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]
    assert files, f"no sources under {folders}"
    return files


def _is_torch_load(node: ast.Call) -> bool:
    f = node.func
    return isinstance(f, ast.Attribute) and f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch"


def _call_texts(text: str, needle: str = "torch.load(") -> list[str]:
    """Each ``torch.load(...)`` call as written (balanced parentheses, may span lines)."""
    out, start = [], text.find(needle)
    while start != -1:
        depth, i = 0, start + len(needle) - 1
        for i in range(start + len(needle) - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
        out.append(text[start : i + 1])
        start = text.find(needle, i)
    return out


def test_call_text_helper() -> None:
    src = "a = torch.load(f(x),\n    map_location='cpu', weights_only=True)\nb = torch.load(p)\n"
    assert _call_texts(src) == ["torch.load(f(x),\n    map_location='cpu', weights_only=True)", "torch.load(p)"]


def test_every_torch_load_is_weights_only() -> None:
    bad = []
    for path in _sources("core", "flows", "service"):
        text = path.read_text()
        where = path.relative_to(REPO)
        # grep: every written call passes weights_only=True
        bad += [f"{where}: {c!r}" for c in _call_texts(text) if not re.search(r"weights_only\s*=\s*True", c)]
        # and the parser agrees (catches calls the text search would misread)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and _is_torch_load(node):
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{where}:{node.lineno}")
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_core_never_imports_pickle() -> None:
    offenders = []
    for path in _sources("core"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in {"pickle", "_pickle", "cPickle", "cloudpickle", "dill"} for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
        assert not re.search(r"^\s*(import|from)\s+pickle\b", path.read_text(), re.M), path
    assert not offenders, offenders


def test_the_model_card_is_hashed_with_the_bundle(tmp_path: Path) -> None:
    path = save_bundle(
        tmp_path / "carded", _model(), _config(tmp_path), METRICS, CARD, _reference(), lambda v: f"# card of {v}\n"
    )
    b = load_bundle(path)
    assert b.model_card == f"# card of {b.version}\n" and MODEL_CARD in verify_bundle(path)["files"]
    (path / MODEL_CARD).write_text(f"# card of {b.version}!")  # one byte more
    with pytest.raises(BundleError, match="MODEL_CARD.md"):
        load_bundle(path)
    (path / MODEL_CARD).unlink()
    with pytest.raises(BundleError, match="MODEL_CARD.md is missing"):
        load_bundle(path)
    plain = save_bundle(tmp_path / "plain", _model(), _config(tmp_path), METRICS, CARD, _reference())
    assert load_bundle(plain).model_card is None  # older bundles have none, and still load
