"""Bundles in the BentoML model store (needs the ``serve`` or ``orchestrate`` extra).

Shared by the promotion flow (saves) and the service (loads), so it lives in core; ``bentoml`` is
imported inside the functions, which keeps ``robustdx.core`` importable without it.

A bundle folder (core/bundle.py) is copied file by file into a new model under
:data:`robustdx.core.release.pointer.MODEL_NAME`, *including its manifest*, so that loading from the store goes
through :func:`robustdx.core.release.bundle.load_bundle` and its SHA-256 checks: a bundle altered in the store
is refused, never served. The model's labels/metadata repeat the bundle's version, regime and
validation metrics for ``bentoml models list`` and the promotion flow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustdx.core.contracts import MODEL_NAME
from robustdx.core.release.bundle import (
    JSON_FILES,
    MANIFEST,
    OPTIONAL_FILES,
    REFERENCE,
    WEIGHTS,
    Bundle,
    load_bundle,
    verify_bundle,
)

if TYPE_CHECKING:
    from bentoml import Model

BUNDLE_FILES = (WEIGHTS, REFERENCE, *JSON_FILES, MANIFEST)


def _store_kwargs(home: Path | str | None) -> dict[str, Any]:
    """``home=None``: BentoML's configured store ($BENTOML_HOME, read once per process). A path: the
    store under that BentoML home (BentoML's ``_model_store`` argument), for tests and tools that
    manage several homes in one process."""
    if home is None:
        return {}
    from bentoml._internal.models import ModelStore

    return {"_model_store": ModelStore(str(Path(home) / "models"))}


def save_bundle_to_store(bundle_dir: Path | str, home: Path | str | None = None) -> str:
    """Verify the bundle, copy it into a new store model and return its exact tag (``name:version``)."""
    bundle_dir = Path(bundle_dir)
    manifest = verify_bundle(bundle_dir)
    config = json.loads((bundle_dir / "config.json").read_text())
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    version = manifest["files"][WEIGHTS]["sha256"][:12]
    labels = {
        "bundle_version": version,
        "recipe": str(config.get("recipe", "")),
        "dataset": str(config.get("data", {}).get("dataset", "")),
        "arch": str(config.get("model", {}).get("arch", "")),
    }
    metadata = {
        "bundle_version": version,
        "format": manifest.get("format"),
        "val_acc": (metrics.get("val") or {}).get("acc"),
        "robust_acc": (metrics.get("robust") or {}).get("robust_acc"),
        "clean_acc": (metrics.get("robust") or {}).get("clean_acc"),
        "eps": (metrics.get("robust") or {}).get("eps"),
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    import bentoml

    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata, **_store_kwargs(home)) as model:
        dest = Path(model.path)
        for name in (*BUNDLE_FILES, *(n for n in OPTIONAL_FILES if n in manifest["files"])):
            shutil.copy2(bundle_dir / name, dest / name)
    verify_bundle(model_path(str(model.tag), home))
    return str(model.tag)


def model_path(tag: str, home: Path | str | None = None) -> Path:
    """The store folder of an exact tag (``bentoml.exceptions.NotFound`` when absent)."""
    return Path(get_model(tag, home).path)


def get_model(tag: str, home: Path | str | None = None) -> Model:
    """The store entry of an exact tag, with its labels and metadata."""
    import bentoml

    return bentoml.models.get(tag, **_store_kwargs(home))


def list_models(home: Path | str | None = None) -> list[Model]:
    """Every stored version of :data:`MODEL_NAME`, newest first."""
    import bentoml

    models = bentoml.models.list(MODEL_NAME, **_store_kwargs(home))
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def load_bundle_from_store(tag: str, home: Path | str | None = None) -> Bundle:
    """Load and hash-verify the bundle stored under ``tag`` (raises ``BundleError`` when altered)."""
    return load_bundle(model_path(tag, home))
