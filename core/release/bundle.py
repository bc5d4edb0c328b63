"""The model bundle: everything the service and the flows need to use a trained model safely.

Layout (a folder)::

    model.safetensors      weights (no pickle anywhere a model is loaded)
    config.json            the RunConfig that trained it (rebuilds the architecture)
    metrics.json           validation/test metrics, clean and robust
    data_card.json         what it was trained on: data set, splits, class and group counts
    reference.safetensors  training embeddings, probabilities and labels (drift reference)
    MODEL_CARD.md          intended use, data, per-class/per-group results with intervals, limitations
                           (optional: bundles written before model cards have none)
    manifest.json          format version + SHA-256 and size of every file above

:func:`load_bundle` refuses a bundle whose files are missing, truncated, altered (hash mismatch)
or whose weights do not fit the architecture its config names, always with a :class:`BundleError`
saying which file and why. The bundle's version is the first 12 hex digits of the weights' hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from robustdx.core.config import RunConfig
from robustdx.core.errors import BundleError
from robustdx.core.models import RobustDxNet, build_model

FORMAT = "robustdx-bundle/1"
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
REFERENCE = "reference.safetensors"
JSON_FILES = ("config.json", "metrics.json", "data_card.json")
MODEL_CARD = "MODEL_CARD.md"
OPTIONAL_FILES = (MODEL_CARD,)  # verified like the others when the manifest lists them


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    """A verified, loaded bundle."""

    path: Path
    model: RobustDxNet
    config: RunConfig
    metrics: dict[str, Any]
    data_card: dict[str, Any]
    reference: dict[str, Tensor]
    manifest: dict[str, Any]
    model_card: str | None = None  # MODEL_CARD.md when the bundle has one

    @property
    def version(self) -> str:
        return weights_sha256(self)[:12]


def weights_sha256(bundle: Bundle) -> str:
    """The SHA-256 of the bundle's weights file (from its verified manifest): what the production pointer pins."""
    return str(bundle.manifest["files"][WEIGHTS]["sha256"])


def save_bundle(
    path: Path | str,
    model: nn.Module,
    config: RunConfig,
    metrics: dict[str, Any],
    data_card: dict[str, Any],
    reference: dict[str, Tensor],
    model_card: Callable[[str], str] | None = None,
) -> Path:
    """Write a bundle folder atomically (built in a temporary sibling, then renamed into place).

    ``model_card`` renders ``MODEL_CARD.md`` from the bundle's version (the weights' hash, known only once
    they are written), e.g. ``lambda v: render_model_card(config, metrics, data_card, v)``.

    Raises:
        FileExistsError: ``path`` exists and is not a bundle (refuse to clobber unrelated files).
    """
    path = Path(path)
    if path.exists() and not (path / MANIFEST).is_file():
        raise FileExistsError(f"{path} exists and is not a robustdx bundle; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))  # no metadata: its key order is not stable, the version must be
        save_file({k: v.detach().contiguous().cpu() for k, v in reference.items()}, str(tmp / REFERENCE))
        payloads = {"config.json": config.model_dump(mode="json"), "metrics.json": metrics, "data_card.json": data_card}
        for name, obj in payloads.items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        names = [WEIGHTS, REFERENCE, *JSON_FILES]
        if model_card is not None:
            (tmp / MODEL_CARD).write_text(model_card(sha256_file(tmp / WEIGHTS)[:12]), encoding="utf-8")
            names.append(MODEL_CARD)
        files = {n: {"sha256": sha256_file(tmp / n), "bytes": (tmp / n).stat().st_size} for n in names}
        manifest = {
            "format": FORMAT,
            "arch": config.model.arch,
            "created": datetime.now(UTC).isoformat(),
            "torch": torch.__version__,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def verify_bundle(path: Path | str) -> dict[str, Any]:
    """Check presence, size and SHA-256 of every file; return the manifest or raise :class:`BundleError`."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {str(path)!r} is not a folder")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path}: {MANIFEST} missing: not a robustdx bundle")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{mpath}: unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    files = manifest.get("files", {})
    for name in (WEIGHTS, REFERENCE, *JSON_FILES, *(n for n in OPTIONAL_FILES if n in files)):
        if name not in files:
            raise BundleError(f"{mpath}: no entry for {name}")
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing")
        size, want = f.stat().st_size, files[name]["bytes"]
        if size != want:
            raise BundleError(f"{path}: {name} is truncated or altered ({size} bytes, manifest says {want})")
        if sha256_file(f) != files[name]["sha256"]:
            raise BundleError(f"{path}: {name} does not match its SHA-256 in the manifest (tampered or corrupt)")
    return manifest


def load_bundle(path: Path | str, map_location: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle; the model is returned in eval mode."""
    path = Path(path)
    manifest = verify_bundle(path)
    try:
        config = RunConfig.model_validate(json.loads((path / "config.json").read_text()))
    except ValueError as err:
        raise BundleError(f"{path}/config.json is not a valid run config: {err}") from None
    if manifest.get("arch") != config.model.arch:
        raise BundleError(f"{path}: manifest arch {manifest.get('arch')!r} != config arch {config.model.arch!r}")
    model = build_model(config.model.model_copy(update={"weights": None}))
    try:
        state = load_file(str(path / WEIGHTS), device=str(map_location))
        reference = load_file(str(path / REFERENCE))
    except SafetensorError as err:
        raise BundleError(f"{path}: unreadable safetensors file ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[:4]
        raise BundleError(f"{path}: weights do not fit architecture {config.model.arch!r}: {' '.join(first)}") from None
    model.eval()
    return Bundle(
        path,
        model,
        config,
        json.loads((path / "metrics.json").read_text()),
        json.loads((path / "data_card.json").read_text()),
        reference,
        manifest,
        (path / MODEL_CARD).read_text(encoding="utf-8") if MODEL_CARD in manifest["files"] else None,
    )
