"""Measure the README's two commands from a fresh clone and record them in ``docs/timings.json``.

``make timings`` runs this: clone HEAD into a sibling folder (so ``../shared`` is beside it, as in CI),
then time ``make venv``, ``make demo`` and ``make test`` there exactly as a new user runs them, count the
tests from pytest's JUnit XML, record the commit, machine and load average, and re-render the README's
figures (``docs/figures.py``). Nothing is written when a command fails: a figure is only ever a pass.

    python docs/timings.py                 # about 30 minutes on 2 CPU cores
    python docs/timings.py --keep          # keep the clone for a look afterwards
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "docs"))
import figures  # noqa: E402  (a sibling script, not a package)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()


def _timed(cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}) after {seconds:.0f} s; log {log}:\n{tail}")
    print(f"{' '.join(cmd)}: {seconds:.0f} s", flush=True)
    return seconds


def junit_counts(path: Path) -> dict[str, int]:
    """Test counts from pytest's JUnit XML (deselected ones are not in it: taken from the summary line)."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, f"{path}: no testsuite element"
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"collected": total, "passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def deselected(log: Path) -> int:
    import re

    found = re.findall(r"(\d+) deselected", log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the clone (default: delete it after a pass)")
    args = ap.parse_args(argv)
    commit = _git("rev-parse", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        print("note: uncommitted changes are not measured (the clone is of HEAD)", file=sys.stderr)
    clone = REPO.parent / f"robustdx-timings-{commit[:10]}"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    logs = clone / "timings-logs"
    logs.mkdir()
    load_before = os.getloadavg()
    started = datetime.now(UTC).isoformat()
    junit = logs / "junit.xml"
    seconds = {
        "venv": _timed(["make", "venv"], clone, logs / "venv.log"),
        "demo": _timed(["make", "demo"], clone, logs / "demo.log"),
        "test": _timed(["make", "test", f"PYTEST_ARGS=-p no:cacheprovider --junitxml={junit}"], clone, logs / "test.log"),
    }
    record: dict[str, Any] = {
        "commit": commit,
        "date": started,
        "commands": {"venv": "make venv", "demo": "make demo", "test": "make test"},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "tests": {**junit_counts(junit), "deselected": deselected(logs / "test.log")},
        "machine": {"cpu_count": os.cpu_count(), "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())},
    }
    figures.TIMINGS.write_text(json.dumps(record, indent=2) + "\n")
    figures.main([])
    print(json.dumps(record, indent=2))
    if not args.keep:
        shutil.rmtree(clone, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
