"""What every benchmark shares: the ``--quick`` / ``--out`` options and the provenance written beside a result.

Rules the benchmarks follow (README, "Benchmarks"): robustdx and its baseline are measured in the same
run; settings are fixed in the script, not tuned per run; the JSON records the git commit it measured,
the machine and the load average around the measurement, so a result can be reproduced and judged.

``--quick`` runs each script's real code path on tiny inputs in seconds and writes to
``runs/bench/quick/`` (never over a committed result); the test suite runs every script that way
(tests/benchmarks/test_quick.py), so a benchmark cannot rot between the runs that matter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICK_RESULTS = REPO / "runs" / "bench" / "quick"


def add_common_args(ap: argparse.ArgumentParser, name: str) -> None:
    """``--quick`` and ``--out`` (default: ``benchmarks/results/NAME.json``, or ``runs/bench/quick/NAME.json`` with --quick)."""
    ap.add_argument("--quick", action="store_true", help="tiny inputs, seconds: checks the code path, measures nothing")
    ap.add_argument("--out", type=Path, default=None, help=f"result JSON [benchmarks/results/{name}.json]")
    ap.set_defaults(_benchmark=name)


def out_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    return (QUICK_RESULTS if args.quick else RESULTS) / f"{args._benchmark}.json"


def git_commit() -> str:
    """The commit measured, with ``+dirty`` when tracked files differ from it ("unknown" outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def write_result(args: argparse.Namespace, result: dict[str, Any], load_before: tuple[float, ...]) -> Path:
    """Write ``result`` with its provenance (commit, machine, load average before/after, quick flag)."""
    path = out_path(args)
    result = {
        **result,
        "quick": bool(args.quick),
        "commit": git_commit(),
        "machine": machine(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return path
