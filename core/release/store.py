"""Bundles in the BentoML model store (needs the ``serve`` or ``orchestrate`` extra).

Shared by the promotion flow (saves) and the service (loads), so it lives in core; ``bentoml`` is
imported inside the functions, which keeps ``robustdx.core`` importable without it.

A bundle folder (core/bundle.py) is copied file by file into a new model under
:data:`robustdx.core.contracts.MODEL_NAME`, *including its manifest*, so that loading from the store goes
through :func:`robustdx.core.release.bundle.load_bundle` and its SHA-256 checks: a bundle altered in the store
is refused, never served. The model's labels/metadata repeat the bundle's version, regime and
validation metrics for ``bentoml models list`` and the promotion flow.

Which store: BentoML's public contract is ``$BENTOML_HOME``, read once per process, when BentoML is first
used. ``home=None`` uses this process's store directly; an explicit home — tests and tools that manage several
in one process — is reached through a worker process started with that ``BENTOML_HOME`` (kept while calls go to
the same home), so nothing here touches BentoML's private ``_internal`` API. Why not in-process when ``home``
equals today's ``$BENTOML_HOME``: the variable may have changed since BentoML read it, and nothing public
tells which home this process's BentoML is bound to.
"""

from __future__ import annotations

import atexit
import json
import multiprocessing
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

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

BUNDLE_FILES = (WEIGHTS, REFERENCE, *JSON_FILES, MANIFEST)
T = TypeVar("T")


@dataclass(frozen=True)
class StoredModel:
    """A model of the store, as plain data (it crosses process boundaries)."""

    tag: str
    path: Path
    created: str
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _enter_home(home: str) -> None:
    """Initialiser of a home's worker process: BentoML reads ``$BENTOML_HOME`` when first imported."""
    os.environ["BENTOML_HOME"] = home
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


class _HomeWorker:
    """The worker process of the most recently used other home (a call for another home replaces it).

    One at a time, and calls serialised: a process per home would keep one idle BentoML import per home a
    test uses, and store operations are short. A ``multiprocessing`` pool rather than a ``ProcessPoolExecutor``:
    its worker is a daemon, which a process that is itself a ``multiprocessing`` child ends at exit instead of
    waiting for it (an executor's worker there blocks the exit forever)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._home: Path | None = None
        self._pool: Any = None

    def run(self, home: Path, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pool is None or home != self._home:
                self._close()
                self._pool = multiprocessing.get_context("spawn").Pool(1, initializer=_enter_home, initargs=(str(home),))
                self._home = home
            return self._pool.apply(fn, args)

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = self._home = None

    def close(self) -> None:
        with self._lock:
            self._close()


_OTHER_HOME = _HomeWorker()
atexit.register(_OTHER_HOME.close)


def _in_home(home: Path | str | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` against the store of ``home``: this process's store when None, else in that home's worker."""
    if home is None:
        return fn(*args)
    return _OTHER_HOME.run(Path(home).resolve(), fn, *args)


def _record(model: Any) -> StoredModel:
    info = model.info
    return StoredModel(
        str(model.tag), Path(model.path), info.creation_time.isoformat(), dict(info.labels), dict(info.metadata)
    )


def save_bundle_to_store(bundle_dir: Path | str, home: Path | str | None = None) -> str:
    """Verify the bundle, copy it into a new store model and return its exact tag (``name:version``)."""
    return _in_home(home, _save, str(Path(bundle_dir).resolve()))


def _save(bundle: str) -> str:
    bundle_dir = Path(bundle)
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

    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        dest = Path(model.path)
        for name in (*BUNDLE_FILES, *(n for n in OPTIONAL_FILES if n in manifest["files"])):
            shutil.copy2(bundle_dir / name, dest / name)
    verify_bundle(bentoml.models.get(model.tag).path)
    return str(model.tag)


def model_path(tag: str, home: Path | str | None = None) -> Path:
    """The store folder of an exact tag (``bentoml.exceptions.NotFound`` when absent)."""
    return get_model(tag, home).path


def get_model(tag: str, home: Path | str | None = None) -> StoredModel:
    """The store entry of an exact tag, with its labels and metadata."""
    return _in_home(home, _get, tag)


def _get(tag: str) -> StoredModel:
    import bentoml

    return _record(bentoml.models.get(tag))


def list_models(home: Path | str | None = None) -> list[StoredModel]:
    """Every stored version of :data:`MODEL_NAME`, newest first."""
    return _in_home(home, _list)


def _list() -> list[StoredModel]:
    import bentoml

    models = sorted(bentoml.models.list(MODEL_NAME), key=lambda m: m.info.creation_time, reverse=True)
    return [_record(m) for m in models]


def load_bundle_from_store(tag: str, home: Path | str | None = None) -> Bundle:
    """Load and hash-verify the bundle stored under ``tag`` (raises ``BundleError`` when altered)."""
    return load_bundle(model_path(tag, home))
