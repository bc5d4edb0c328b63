"""The benchmark harness's own behaviour: a killed benchmark still stops what it started."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO

SCRIPT = """
import sys, time
sys.path.insert(0, {bench!r})
from harness import exit_on_sigterm
exit_on_sigterm()
try:
    print("ready", flush=True)
    time.sleep(60)
finally:
    open({marker!r}, "w").write("stopped")
"""


def test_a_terminated_benchmark_runs_its_finally_blocks(tmp_path: Path) -> None:
    """serve_load and service_reliability stop their servers in ``with`` blocks; SIGTERM must reach them."""
    marker = tmp_path / "stopped"
    code = SCRIPT.format(bench=str(REPO / "benchmarks"), marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    assert marker.read_text() == "stopped"
