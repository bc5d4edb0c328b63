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
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustdx.core.util import git_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
QUICK_RESULTS = REPO / "runs" / "bench" / "quick"


def add_common_args(ap: argparse.ArgumentParser, name: str) -> None:
    """``--quick`` and ``--out`` (default: ``benchmarks/results/NAME.json``, or ``runs/bench/quick/NAME.json`` with --quick)."""
    ap.add_argument("--quick", action="store_true", help="tiny inputs, seconds: checks the code path, measures nothing")
    ap.add_argument("--out", type=Path, default=None, help=f"result JSON [benchmarks/results/{name}.json]")
    ap.set_defaults(_benchmark=name)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so that ``with`` and ``finally`` blocks run: the servers a benchmark starts
    live in their own session (``LocalServer``), out of reach of a signal to this process's group, and a killed
    benchmark would otherwise leave them serving."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def out_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    return (QUICK_RESULTS if args.quick else RESULTS) / f"{args._benchmark}.json"


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
        "commit": git_commit(REPO, ignore=[str(RESULTS.relative_to(REPO))]),
        "machine": machine(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")
    return path


def interleaved(sides: dict[str, Callable[[], Any]], repeats: int, log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Wall seconds of each side's call, ``repeats`` times, the sides interleaved (A B B A A B ...): load that
    changes during the run falls on both sides alike. Every call is timed in full; nothing is discarded."""
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
            log(f"[repeat {r + 1}/{repeats}] {name}: {times[name][-1]:.3f} s")
    return times


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and interquartile range of timings (seconds), and the raw values."""
    qs = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": [qs[0], qs[2]],
        "values": values,
    }


def headline(what: str, robustdx: float, baseline: float, unit: str, goal: float, baseline_name: str, **extra: Any) -> dict:
    """The result's headline: robustdx and baseline in ``unit`` (higher is better), their ratio, the goal and
    whether it was met; ``docs/figures.py`` renders it in the README."""
    ratio = robustdx / baseline
    return {
        "what": what,
        "unit": unit,
        "robustdx": robustdx,
        "baseline_value": baseline,
        "baseline": baseline_name,
        "ratio": ratio,
        "goal": f">= {goal:g}x",
        "met": bool(ratio >= goal) and all(v for k, v in extra.items() if k.startswith("requires_")),
        **extra,
    }
