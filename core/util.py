"""Small utilities every layer uses: devices and seeds, atomic writes, JSON/CSV/Markdown output, waiting.

Why one module: these were copied between the trainer, the experiment runner, the sweep and the test
helpers; one tested copy keeps their behaviour (atomic renames, seed derivation, table formatting) the
same everywhere. Pure Python and torch only.
"""

from __future__ import annotations

import csv
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but no CUDA device is available; use device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def git_commit(repo: Path, ignore: Sequence[str] = ()) -> str:
    """The commit checked out in ``repo``, with ``+dirty`` when tracked files differ from it (``unknown`` outside
    git): what a benchmark result or an experiment cell was measured with. Changes under ``ignore`` (paths
    relative to ``repo``) do not count: benchmarks run one after another write their results into tracked
    files, which would mark every later result of the same, unchanged code as measured on a dirty tree."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p}" for p in ignore))
        return git("rev-parse", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for every (run seed, epoch) pair."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % 2**63


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``: a reader (or a
    run resumed after a kill) sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def jsonable(obj: Any) -> Any:
    """``obj`` with NumPy scalars made Python numbers and dict keys made strings (for ``json.dumps``)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: list[str] | None = None) -> Path:
    """A CSV of ``rows``; columns are ``fields`` or the union of the rows' keys in first-seen order."""
    rows = list(rows)
    if fields is None:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _cell(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns`` (missing cells left blank, floats to 4 places)."""
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |\n" for r in rows)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(probe: Callable[[], T], timeout: float, what: str, *, ok: Callable[[T], bool] = bool, interval: float = 0.3) -> T:
    """Call ``probe`` every ``interval`` seconds until ``ok(value)`` (default: the value is truthy); return it.

    Raises:
        TimeoutError: after ``timeout`` seconds, naming what was awaited (``what``) and the last value seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}; last: {value!r}")
        time.sleep(interval)
