"""The release state of a BentoML home: the production pointer, the promotion lock and the audit log.

Pure Python (no BentoML import), shared by the promotion flow (writer) and the service (reader).

* The *production pointer* — ``$BENTOML_HOME/robustdx/production.json`` — holds the exact model tag
  that promotion chose and the previous one (for rollback). The promotion flow writes it with
  :func:`write_production`; the service reads it with :func:`read_production` at start-up and on
  ``POST /admin/reload``. Writes are atomic (temporary file + ``os.replace``), so a reader never sees
  half a file. The service never falls back to a bare ``:latest``.
* :func:`promotion_lock` serialises promotions and rollbacks; :func:`append_audit` records each decision
  in ``promotions.jsonl``.
* :func:`force_production` is the one way to move the pointer *without* the promotion gates (the
  demo's ``--bundle``): under the lock, and recorded in the audit log as ``forced`` with its reason.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from robustdx.core.contracts import ENV_MODEL_TAG, MODEL_NAME

POINTER_DIR = "robustdx"
POINTER_FILE = "production.json"
LOCK_FILE = "promotion.lock"
AUDIT_FILE = "promotions.jsonl"


class PointerError(ValueError):
    """The production pointer exists but cannot be read."""


@dataclass(frozen=True)
class Pointer:
    """The production pointer: the exact model tag to serve, the one it replaced, and the SHA-256 of the weights
    promotion checked — so whoever can write the model store but not the pointer cannot swap the weights (and
    their manifest) under the same tag: the service refuses a bundle whose weights do not match."""

    tag: str
    previous: str | None
    updated: str
    weights_sha256: str | None = None


def bentoml_home(home: Path | str | None = None) -> Path:
    """``home``, else ``$BENTOML_HOME``, else BentoML's default ``~/bentoml``."""
    if home is not None:
        return Path(home)
    env = os.environ.get("BENTOML_HOME")
    return Path(env) if env else Path.home() / "bentoml"


def pointer_path(home: Path | str | None = None) -> Path:
    return bentoml_home(home) / POINTER_DIR / POINTER_FILE


def _check_tag(tag: str) -> str:
    name, sep, version = str(tag).partition(":")
    if not sep or not name or not version or version == "latest":
        raise ValueError(f"production tag must be an exact 'name:version' tag, got {tag!r} (never ':latest')")
    return str(tag)


def read_production(home: Path | str | None = None) -> Pointer | None:
    """The pointer, or None when promotion has not written one yet.

    Raises:
        PointerError: the file exists but is not a valid pointer (names the file and the problem).
    """
    path = pointer_path(home)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        raise PointerError(f"{path}: unreadable production pointer ({err})") from None
    try:
        sha = raw.get("weights_sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise ValueError(f"weights_sha256 must be 64 hex digits, got {sha!r}")
        return Pointer(_check_tag(raw["tag"]), raw.get("previous"), str(raw.get("updated", "")), sha)
    except (KeyError, TypeError, ValueError) as err:
        raise PointerError(f"{path}: invalid production pointer ({err})") from None


def write_production(home: Path | str | None, tag: str, weights_sha256: str | None = None) -> Pointer:
    """Point production at ``tag`` (atomically); the old tag becomes ``previous`` (rollback target), and the
    weights' SHA-256, when given, ties the pointer to the exact weights the service may load."""
    tag = _check_tag(tag)
    path = pointer_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = read_production(home)
    except PointerError:
        old = None
    previous = old.previous if old is not None and old.tag == tag else (old.tag if old else None)
    pointer = Pointer(tag=tag, previous=previous, updated=datetime.now(UTC).isoformat(), weights_sha256=weights_sha256)
    fd, tmp = tempfile.mkstemp(prefix=".production.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(pointer), fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return pointer


def resolve_tag(home: Path | str | None = None, env: dict[str, Any] | None = None) -> str:
    """The tag to serve: ``$ROBUSTDX_MODEL_TAG`` when set, else the production pointer.

    Raises:
        LookupError: neither is set (says how to promote a model).
    """
    env = os.environ if env is None else env
    if env.get(ENV_MODEL_TAG):
        return _check_tag(env[ENV_MODEL_TAG])
    pointer = read_production(home)
    if pointer is None:
        raise LookupError(
            f"no model to serve: set {ENV_MODEL_TAG}=<{MODEL_NAME}:version> or promote a model "
            f"(writes {pointer_path(home)}); a bare ':latest' is never served"
        )
    return pointer.tag


@contextmanager
def promotion_lock(home: Path | str | None = None, timeout: float = 900.0) -> Iterator[None]:
    """Serialise promotions and rollbacks on one BentoML home (an OS file lock, so it holds across
    processes and Prefect workers on one machine or a shared POSIX volume).

    Why: a promotion reads the serving model, compares, saves and moves the pointer; two at once
    could both compare against the same serving model and the loser's pointer write would silently
    drop the winner from the rollback history.

    Raises:
        TimeoutError: another promotion held the lock for ``timeout`` seconds.
    """
    path = bentoml_home(home) / POINTER_DIR / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(path), timeout=timeout):
            yield
    except Timeout:
        raise TimeoutError(f"another promotion holds {path} for more than {timeout:g} s") from None


def append_audit(home: Path | str | None, record: dict[str, Any]) -> Path:
    """Append one promotion / rejection / rollback record to ``promotions.jsonl`` (call under the lock)."""
    path = bentoml_home(home) / POINTER_DIR / AUDIT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps({"time": datetime.now(UTC).isoformat(), **record}, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def force_production(
    home: Path | str | None, tag: str, reason: str, weights_sha256: str | None = None, lock_timeout: float = 900.0
) -> Pointer:
    """Point production at ``tag`` *without the promotion gates*, under the promotion lock, and record it.

    Why: putting a bundle straight in production (``robustdx serve-demo --bundle``) is a
    deliberate bypass; taking the lock keeps it from interleaving with a promotion, and the audit
    record (action ``forced``, with ``reason``) keeps the log a full history of the pointer. The old
    tag becomes ``previous``, so a rollback undoes it. The tag must already be in the model store.

    Raises:
        ValueError: ``tag`` is not an exact ``name:version`` tag.
        TimeoutError: another promotion held the lock for ``lock_timeout`` seconds.
    """
    with promotion_lock(home, lock_timeout):
        pointer = write_production(home, tag, weights_sha256)
        append_audit(home, {"action": "forced", "tag": pointer.tag, "previous": pointer.previous, "reason": reason})
    return pointer


def read_audit(home: Path | str | None = None) -> list[dict[str, Any]]:
    """Every audit record, oldest first (empty before the first promotion)."""
    path = bentoml_home(home) / POINTER_DIR / AUDIT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
