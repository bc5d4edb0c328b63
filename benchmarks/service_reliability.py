"""Reliability under hostile traffic: does the real ``bentoml serve`` keep answering while it is attacked?

One server (a ResNet-18 at 96 px with random weights, the service's default settings) and, for a bounded
time, these workloads at once, each from its own loopback address (so the per-client limit applies to
the attacker, not to the probe):

* **bombs** (127.0.0.2): requests of 16 greyscale 16-bit 4096² PNGs (42 KB each; refused by the pixel
  cap) and of 4 at 2048² (accepted: decoded with ``reduce`` into the model's size);
* **apng** (127.0.0.3): an animated PNG of 50 frames at 2048² (only the first frame is decoded);
* **slow uploads** (127.0.0.4 and up): sockets that send the headers of a 1 MB upload and then one byte a
  second (the body-read timeout answers them 408);
* **explain flood** (127.0.0.5): /explain requests back to back, half with the attack option (the
  explanation slots and the per-client attack rate answer most of them 429);
* **fuzz** (127.0.0.6): the seeded corpus of malformed requests of the service tests, at least
  ``--fuzz`` of them.

Meanwhile a probe (127.0.0.1) measures ``GET /livez`` and a one-image ``POST /predict`` every 0.1 s, as
it did before the attack. Goals (issue 15): ``/livez`` p99 < 200 ms and ``/predict`` p99 < 2 s during the
attack, no 5xx at all, ≥ 5,000 fuzzed requests, the worker's RSS back within 10 % of its pre-attack
value after the attack (read after ``--settle`` idle seconds: the worker trims its heap every 10 s).
Results: ``benchmarks/results/service_reliability.json``.

    python benchmarks/service_reliability.py            # ~3 minutes on 2 cores
    python benchmarks/service_reliability.py --quick    # seconds: checks the code path
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from harness import REPO, add_common_args, exit_on_sigterm, write_result
from serve_load import images, make_bundle, worker_rss

from robustdx.core.release.pointer import write_production
from robustdx.service.local import LocalServer as Server

sys.path.insert(0, str(REPO))  # the hostile corpus is the service tests' (tests/support/hostile.py)
from tests.support.hostile import apng, fuzz_requests, png16_bomb, slow_upload  # noqa: E402

PROBE, BOMBS, APNG, SLOW, EXPLAIN, FUZZ = (f"127.0.0.{i}" for i in range(1, 7))


class Tally:
    """Status codes per workload (thread-safe)."""

    def __init__(self) -> None:
        self.codes: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()

    def add(self, workload: str, code: int | str) -> None:
        with self._lock:
            self.codes.setdefault(workload, Counter())[str(code)] += 1

    def fives(self) -> int:
        return sum(n for c in self.codes.values() for code, n in c.items() if code.startswith("5"))


def client(url: str, source: str, timeout: float = 60.0) -> httpx.Client:
    """An HTTP client whose connections come from ``source`` (a loopback address)."""
    return httpx.Client(base_url=url, timeout=timeout, transport=httpx.HTTPTransport(local_address=source))


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return {"n": len(values), "p50_ms": 1000 * v, "p99_ms": 1000 * v, "max_ms": 1000 * v}
    q = statistics.quantiles(values, n=100, method="inclusive")  # never beyond the largest value
    return {"n": len(values), "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "max_ms": 1000 * max(values)}


def probe(url: str, png: bytes, stop: threading.Event, tally: Tally) -> dict[str, list[float]]:
    """``/livez`` and a one-image ``/predict`` every 0.1 s until ``stop``; their latencies in seconds."""
    out: dict[str, list[float]] = {"livez": [], "predict": []}
    with client(url, PROBE) as c:
        while not stop.is_set():
            for name, call in (
                ("livez", lambda: c.get("/livez")),
                ("predict", lambda: c.post("/predict", files={"images": ("p.png", png, "image/png")})),
            ):
                t0 = time.perf_counter()
                try:
                    code: int | str = call().status_code
                except httpx.HTTPError as err:
                    code = type(err).__name__
                out[name].append(time.perf_counter() - t0)
                tally.add(f"probe_{name}", code)
            stop.wait(0.1)
    return out


def repeat(name: str, stop: threading.Event, tally: Tally, send: Callable[[], int | str], pause: float = 0.0) -> None:
    """Call ``send`` until ``stop`` (``pause`` seconds between calls), tallying its status codes."""
    while not stop.is_set():
        try:
            tally.add(name, send())
        except httpx.HTTPError as err:
            tally.add(name, type(err).__name__)
        stop.wait(pause)


def slow_status(host: str, port: int, seconds: float) -> str:
    """One slow upload from :data:`SLOW`; the status code the server answered it with, or 'closed'."""
    line = slow_upload(host, port, SLOW, seconds=seconds)
    parts = line.split(" ")
    return parts[1] if len(parts) > 1 else "closed"


def attack(url: str, args: argparse.Namespace, stop: threading.Event, tally: Tally, good: bytes) -> int:
    """Run every hostile workload until the fuzz corpus is sent (and at least ``--seconds``); returns the
    number of fuzzed requests sent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    side = args.bomb_side
    big16, ok16, animated = png16_bomb(side), png16_bomb(side // 2), apng(side // 2, args.apng_frames)
    bombs = [("images", (f"b{i}.png", big16, "image/png")) for i in range(16)]
    fine = [("images", (f"o{i}.png", ok16, "image/png")) for i in range(4)]
    workers = 4 + args.explain_clients + args.slow_sockets
    with client(url, BOMBS) as cb, client(url, APNG) as ca, client(url, EXPLAIN) as ce, ThreadPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(repeat, f"bombs_{side}", stop, tally, lambda: cb.post("/predict", files=bombs).status_code),
            pool.submit(repeat, f"bombs_{side // 2}", stop, tally, lambda: cb.post("/predict", files=fine).status_code),
            pool.submit(
                repeat,
                "apng",
                stop,
                tally,
                lambda: ca.post("/predict", files={"images": ("a.png", animated, "image/png")}).status_code,
            ),
        ]
        for i in range(args.explain_clients):
            data = {"attack_eps": "0.0314", "attack_steps": "20", "map_size": "64"} if i % 2 else {}

            def explain(d: dict[str, str] = data) -> int:
                return ce.post("/explain", files={"image": ("e.png", good, "image/png")}, data=d).status_code

            jobs.append(pool.submit(repeat, "explain", stop, tally, explain))
        for _ in range(args.slow_sockets):
            jobs.append(
                pool.submit(repeat, "slow_upload", stop, tally, lambda: slow_status(host, int(port), args.slow_seconds), 0.5)
            )
        cases = fuzz_requests(args.fuzz, good, seed=0)
        t_end = time.monotonic() + args.seconds
        local = threading.local()

        def fuzz(case: dict[str, Any]) -> None:
            if not hasattr(local, "c"):
                local.c = client(url, FUZZ)
            case = dict(case)
            try:
                tally.add("fuzz", local.c.post(case.pop("path"), **case).status_code)
            except httpx.HTTPError as err:
                tally.add("fuzz", type(err).__name__)

        with ThreadPoolExecutor(args.fuzz_clients) as fuzzers:
            sent = sum(1 for _ in fuzzers.map(fuzz, cases))
        while time.monotonic() < t_end:
            time.sleep(0.2)
        stop.set()
        for job in jobs:
            job.result()
    return sent


def measured_probe(
    url: str, png: bytes, tally: Tally, during: Callable[[threading.Event], Any]
) -> tuple[dict[str, list[float]], Any]:
    """Probe ``url`` while ``during(stop)`` runs (it sets ``stop`` when done); the probe's latencies and its result."""
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(probe, url, png, stop, tally)
        try:
            result = during(stop)
        finally:
            stop.set()
        return probing.result(), result


def goal(name: str, value: float, unit: str, target: str, met: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit, "goal": target, "met": bool(met)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", help="Architecture of the random-weight bundle served.")
    ap.add_argument("--size", type=int, default=96, help="Its image size.")
    ap.add_argument("--seconds", type=float, default=90.0, help="Least duration of the attack.")
    ap.add_argument("--idle-seconds", type=float, default=15.0, help="Probe before the attack (the reference latencies).")
    ap.add_argument("--fuzz", type=int, default=5_000, help="Fuzzed requests sent during the attack.")
    ap.add_argument("--fuzz-clients", type=int, default=4)
    ap.add_argument("--explain-clients", type=int, default=8)
    ap.add_argument("--slow-sockets", type=int, default=64)
    ap.add_argument("--slow-seconds", type=float, default=20.0, help="How long one slow upload keeps trickling.")
    ap.add_argument("--bomb-side", type=int, default=4096, help="Side of the 16-bit bombs (half of it: the accepted ones).")
    ap.add_argument("--apng-frames", type=int, default=50)
    ap.add_argument("--settle", type=float, default=16.0, help="Idle seconds before each RSS reading.")
    add_common_args(ap, "service_reliability")
    args = ap.parse_args()
    exit_on_sigterm()
    if args.quick:
        args.arch, args.size, args.seconds, args.idle_seconds, args.fuzz = "test_cnn", 32, 3.0, 1.0, 60
        args.fuzz_clients, args.explain_clients, args.slow_sockets, args.slow_seconds = 2, 2, 2, 3.0
        args.bomb_side, args.apng_frames, args.settle = 512, 3, 0.0
    load_before = os.getloadavg()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="reliability_") as tmp:
        home = Path(tmp) / "bentoml"
        os.environ["BENTOML_HOME"] = str(home)
        from robustdx.core.release.store import save_bundle_to_store

        tag = save_bundle_to_store(make_bundle(Path(tmp) / "bundle", args.arch, args.size), home)
        write_production(home, tag)
        png = images(1, args.size)[0]
        env = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
        with Server(env, Path(tmp) / "serve.log") as srv:
            with client(srv.url, PROBE) as c:
                for _ in range(20):
                    c.post("/predict", files={"images": ("w.png", png, "image/png")})
            time.sleep(args.settle)
            rss_before = worker_rss(srv)["worker_rss"]
            idle, _ = measured_probe(srv.url, png, Tally(), lambda stop: stop.wait(args.idle_seconds))
            t0 = time.perf_counter()
            during, fuzzed = measured_probe(srv.url, png, tally, lambda stop: attack(srv.url, args, stop, tally, png))
            attack_seconds = time.perf_counter() - t0
            rss_right_after = worker_rss(srv)["worker_rss"]
            time.sleep(args.settle)
            rss_after = worker_rss(srv)["worker_rss"]
            with client(srv.url, PROBE) as c:
                alive = (
                    c.get("/readyz").status_code == 200
                    and c.post("/predict", files={"images": ("z.png", png, "image/png")}).status_code == 200
                )
            log_tail = srv.tail(3000) if tally.fives() else ""
    lat = {"idle": {k: percentiles(v) for k, v in idle.items()}, "attack": {k: percentiles(v) for k, v in during.items()}}
    growth = 100 * (rss_after - rss_before) / rss_before
    goals = [
        goal(
            "/livez p99 during the attack",
            lat["attack"]["livez"]["p99_ms"],
            "ms",
            "< 200",
            lat["attack"]["livez"]["p99_ms"] < 200,
        ),
        goal(
            "/predict p99 during the attack",
            lat["attack"]["predict"]["p99_ms"],
            "ms",
            "< 2000",
            lat["attack"]["predict"]["p99_ms"] < 2000,
        ),
        goal("5xx answers", tally.fives(), "", "0", tally.fives() == 0),
        goal("fuzzed requests", fuzzed, "", f">= {args.fuzz}", fuzzed >= args.fuzz),
        goal("worker RSS after the attack vs before", growth, "%", "within 10%", abs(growth) <= 10),
        goal("ready and predicting after the attack", float(alive), "", "1", alive),
    ]
    result = {
        "benchmark": "service_reliability",
        "model": f"{args.arch} @ {args.size}px, random weights",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "_benchmark")},
        "attack_seconds": attack_seconds,
        "latency": lat,
        "status_codes": {k: dict(v) for k, v in sorted(tally.codes.items())},
        "rss_mb": {"before": rss_before / 2**20, "right_after": rss_right_after / 2**20, "after_settle": rss_after / 2**20},
        "rss_growth_pct": growth,
        "headline": {
            "what": "the service under hostile traffic (16-bit bombs, APNG, slow uploads, /explain flood, fuzz)",
            "goals": goals,
            "met": all(g["met"] for g in goals),
        },
        "server_log_tail_on_5xx": log_tail,
    }
    write_result(args, result, load_before)
    for g in goals:
        print(f"{g['name']}: {g['value']:.4g} {g['unit']} (goal {g['goal']}): {'met' if g['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
