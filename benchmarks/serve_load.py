"""/predict throughput of the BentoML service with batching vs batching off, its overhead over the bare model,
and whether its memory grows under load.

Both sides run in the same invocation against real ``bentoml serve`` processes on 127.0.0.1 (one per side,
same bundle, same images, same client, both started before the first timed run): ``ROBUSTDX_BATCHING=1``
(requests that arrive while the model is busy share the next forward pass, up to ``ROBUSTDX_MAX_BATCH_SIZE``
images; ``service/batching.py``) and ``ROBUSTDX_BATCHING=0`` (one forward pass per request). The load
generator is an asyncio client with ``--concurrency`` requests in flight, one PNG per request.

* **Throughput**: ``--runs`` timed runs per side, interleaved (A B B A A B ...), ``--requests`` each; the
  median and spread per side, the goal being a median ratio of at least 3x.
* **Overhead**: the bare model (same weights, no HTTP, no decoding) on random tensors at the batch size the
  service formed (its mean, rounded), timed in this process between the runs; the goal being that the
  service's batched images/s reach at least 70 % of it.
* **Memory**: after the throughput runs, ``--rss-requests`` (20,000) more requests on the batching server,
  sent 1,000 at a time; after each 1,000, once every answer is in and ``--settle-seconds`` have passed, the
  worker's RSS is read (the same pid checked each time). The least-squares slope after the first quarter must
  be below 1 MB per 1,000 requests. Reading with nothing in flight measures what the service keeps, not the
  activations of the batch being computed at that instant (read mid-load, the samples jumped by up to 40 MB
  either way). The servers run with ``ROBUSTDX_MALLOC_TRIM_SECONDS=0`` so the goal cannot be met by a timed
  heap trim.

Settings are fixed here (defaults below); the model is a ResNet-18 at 96 px with random weights (serving
cost does not depend on the weights' values). Results: ``benchmarks/results/serve_load.json``.

    python benchmarks/serve_load.py           # ~15 minutes on 2 cores
    python benchmarks/serve_load.py --quick   # seconds: checks the code path
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from harness import add_common_args, exit_on_sigterm, headline, spread, write_result
from PIL import Image

from robustdx.core.config import parse_config
from robustdx.core.data.synthetic import apply_stain, histology_patch, hospital_stain
from robustdx.core.models import build_model
from robustdx.core.release.bundle import save_bundle
from robustdx.core.release.pointer import write_production
from robustdx.service.local import LocalServer as Server

REPO = Path(__file__).resolve().parents[1]


def make_bundle(out: Path, arch: str, size: int) -> Path:
    cfg = parse_config({"name": "bench", "model": {"arch": arch}, "data": {"image_size": size}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        x = torch.rand(64, 3, size, size)
        emb = model.embed(x)
        probs = torch.softmax(model.classifier(emb), 1)
    card = {"classes": ["normal", "tumor"], "note": "random weights: serving benchmark only"}
    ref = {"embeddings": emb, "probs": probs, "labels": torch.randint(0, 2, (64,))}
    return save_bundle(out, model, cfg, {"note": "untrained"}, card, ref)


def images(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        tint, bright = hospital_stain(i % 5)
        img = (apply_stain(histology_patch(rng, bool(i % 2), size), tint, bright) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


async def load(url: str, pngs: list[bytes], n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    """Send ``n`` one-image /predict requests with ``concurrency`` in flight (or stop at ``max_seconds``)."""
    lat: list[float] = []
    codes: dict[int | str, int] = {}
    issued = 0
    t_end = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < n and time.perf_counter() < t_end:
                i = issued
                issued += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", files={"images": (f"{i}.png", pngs[i % len(pngs)], "image/png")})
                    code: int | str = r.status_code
                except httpx.TransportError as err:  # counted, not fatal: the run reports every outcome
                    code = type(err).__name__
                lat.append(time.perf_counter() - t0)
                codes[code] = codes.get(code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {
        "requests": len(lat),
        "seconds": wall,
        "throughput_rps": len(lat) / wall,
        "p50_ms": 1000 * q[49],
        "p99_ms": 1000 * q[98],
        "status_codes": {str(k): v for k, v in sorted(codes.items(), key=lambda kv: str(kv[0]))},
        "bounded_by": "count" if len(lat) >= n else "time",
    }


def worker_rss(server: Server) -> dict[str, int]:
    """RSS (bytes) of the service worker (the process that loaded the model) and of the whole group."""
    root = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    procs = [root, *root.children(recursive=True)]
    rss = {p.pid: p.memory_info().rss for p in procs if p.is_running()}
    worker = max(rss, key=rss.get)  # the model-holding worker is by far the largest
    return {"worker_pid": worker, "worker_rss": rss[worker], "total_rss": sum(rss.values())}


def batches(url: str) -> tuple[float, float]:
    """(sum, count) of the service's ``robustdx_batch_size`` histogram: images and forward passes so far."""
    tot = cnt = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("robustdx_batch_size_sum"):
            tot += float(line.rsplit(" ", 1)[1])
        elif line.startswith("robustdx_batch_size_count"):
            cnt += float(line.rsplit(" ", 1)[1])
    return tot, cnt


def bare_throughput(bundle: Path, batch: int, size: int, seconds: float) -> float:
    """Images/s of the bundle's model alone (embed + classifier + softmax, no grad) at ``batch``."""
    from robustdx.core.release.bundle import load_bundle

    model = load_bundle(bundle).model.eval()
    x = torch.rand(batch, 3, size, size)
    with torch.no_grad():
        for _ in range(3):
            torch.softmax(model.classifier(model.embed(x)), 1)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            torch.softmax(model.classifier(model.embed(x)), 1)
            n += batch
    return n / (time.perf_counter() - t0)


def rss_slope(samples: list[tuple[int, int]]) -> float:
    """Least-squares slope in MB per 1,000 requests of (requests, rss bytes), after the first quarter (warm-up)."""
    tail = samples[len(samples) // 4 :]
    xs = np.array([r / 1000 for r, _ in tail])
    ys = np.array([b / 2**20 for _, b in tail])
    return float(np.polyfit(xs, ys, 1)[0]) if len(tail) >= 2 else float("nan")


def memory_run(server: Server, pngs: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    """``args.rss_requests`` requests, 1,000 at a time, the worker's RSS read before the first and after each
    1,000 once nothing is in flight (``args.settle_seconds`` after the last answer); the whole run is bounded
    by ``4 * args.max_seconds`` (``bounded_by`` says whether that cut it short)."""
    samples: list[tuple[int, int]] = []
    pids: set[int] = set()
    codes: dict[str, int] = {}
    done, deadline, bounded = 0, time.perf_counter() + 4 * args.max_seconds, "count"
    while True:
        time.sleep(args.settle_seconds)
        rss = worker_rss(server)
        pids.add(rss["worker_pid"])
        samples.append((done, rss["worker_rss"]))
        left = deadline - time.perf_counter()
        if done >= args.rss_requests or left <= 0:
            bounded = "count" if done >= args.rss_requests else "time"
            break
        res = asyncio.run(load(server.url, pngs, min(1000, args.rss_requests - done), args.concurrency, left))
        done += res["requests"]
        for code, k in res["status_codes"].items():
            codes[code] = codes.get(code, 0) + k
    return {"requests": done, "status_codes": codes, "bounded_by": bounded, "samples": samples, "pids": pids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18", help="Architecture of the random-weight bundle.")
    ap.add_argument("--size", type=int, default=96, help="Image size of the bundle and of the sent PNGs.")
    ap.add_argument("--requests", type=int, default=1_500, help="Requests per timed run.")
    ap.add_argument("--runs", type=int, default=3, help="Timed runs per side (interleaved).")
    ap.add_argument("--rss-requests", type=int, default=20_000, help="Requests of the memory run (RSS every 1,000).")
    ap.add_argument("--settle-seconds", type=float, default=1.0, help="Idle time before each RSS reading.")
    ap.add_argument("--warmup", type=int, default=200, help="Warm-up requests per server (not timed).")
    ap.add_argument("--concurrency", type=int, default=32, help="Requests in flight.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--bare-seconds", type=float, default=10.0, help="Seconds of each bare-model timing.")
    ap.add_argument("--max-seconds", type=float, default=900, help="Time limit of each run.")
    add_common_args(ap, "serve_load")
    args = ap.parse_args()
    exit_on_sigterm()
    if args.quick:
        args.arch, args.size, args.requests, args.runs, args.rss_requests = "test_cnn", 32, 40, 1, 3_000
        args.warmup, args.concurrency, args.bare_seconds, args.max_seconds, args.settle_seconds = 4, 4, 0.5, 120.0, 0.1
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        # One BentoML home per server: servers sharing a home share its Prometheus multiprocess
        # directory, and each /metrics would count the other's batches.
        homes = {name: Path(tmp) / f"bentoml_{name}" for name in ("batching", "no_batching")}
        os.environ["BENTOML_HOME"] = str(homes["batching"])  # this process too: BentoML reads its home once
        from robustdx.core.release.store import save_bundle_to_store

        bundle = make_bundle(Path(tmp) / "bundle", args.arch, args.size)
        for home in homes.values():
            write_production(home, save_bundle_to_store(bundle, home))
        pngs = images(64, args.size)
        base = {
            "BENTOML_DO_NOT_TRACK": "True",
            # the load generator is one address standing in for many clients: the per-client cap
            # (service/guard.py) would otherwise answer most of the load with fast 429s
            "ROBUSTDX_MAX_REQUESTS_PER_CLIENT": str(args.concurrency),
            "ROBUSTDX_MAX_BATCH_SIZE": str(args.max_batch_size),
            "ROBUSTDX_ROBUST_SAMPLE_RATE": "0.01",
            "ROBUSTDX_MALLOC_TRIM_SECONDS": "0",
            "ROBUSTDX_POINTER_POLL_SECONDS": "0",
        }
        with (
            Server({**base, "BENTOML_HOME": str(homes["batching"]), "ROBUSTDX_BATCHING": "1"}, Path(tmp) / "on.log") as on,
            Server({**base, "BENTOML_HOME": str(homes["no_batching"]), "ROBUSTDX_BATCHING": "0"}, Path(tmp) / "off.log") as off,
        ):
            servers = {"batching": on, "no_batching": off}
            for srv in servers.values():
                asyncio.run(load(srv.url, pngs, args.warmup, args.concurrency, args.max_seconds))
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            bare: list[float] = []
            for r in range(args.runs):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    srv = servers[name]
                    before = batches(srv.url)
                    res = asyncio.run(load(srv.url, pngs, args.requests, args.concurrency, args.max_seconds))
                    after = batches(srv.url)
                    if set(res["status_codes"]) != {"200"}:  # a throughput of errors measures nothing
                        raise SystemExit(f"{name}: not every request answered 200: {res['status_codes']}")
                    passes = after[1] - before[1]
                    res["mean_batch_size"] = (after[0] - before[0]) / passes if passes else 0.0
                    runs[name].append(res)
                    print(f"[run {r + 1}/{args.runs}] {name}: {res['throughput_rps']:.1f} req/s, "
                          f"mean batch {res['mean_batch_size']:.1f}", flush=True)  # fmt: skip
                batch = max(1, round(statistics.median(x["mean_batch_size"] for x in runs["batching"])))
                bare.append(bare_throughput(bundle, batch, args.size, args.bare_seconds))
                print(f"[run {r + 1}/{args.runs}] bare model at batch {batch}: {bare[-1]:.1f} images/s", flush=True)
            memory = memory_run(on, pngs, args)
            samples, pids = memory.pop("samples"), memory.pop("pids")
    tput = {name: spread([x["throughput_rps"] for x in rs]) for name, rs in runs.items()}
    overhead = tput["batching"]["median"] / statistics.median(bare)
    slope = rss_slope(samples)
    result = {
        "benchmark": "serve_load",
        "model": f"{args.arch} @ {args.size}px, random weights",
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "_benchmark")},
        "runs": runs,
        "throughput_rps": tput,
        "bare_model_images_per_s": spread(bare),
        "service_over_bare": overhead,
        "memory": {
            "requests": memory["requests"],
            "bounded_by": memory["bounded_by"],
            "status_codes": memory["status_codes"],
            "rss_mb_every_1000": [(n, b / 2**20) for n, b in samples],
            "same_worker_pid": len(pids) == 1,
            "slope_mb_per_1000_requests": slope,
        },
        "headline": headline(
            "/predict throughput with batching, one-image requests at concurrency "
            f"{args.concurrency}; service >= 70% of the bare model; RSS slope < 1 MB / 1,000 requests",
            tput["batching"]["median"],
            tput["no_batching"]["median"],
            "requests/s",
            3.0,
            "the same service with batching off",
            service_over_bare=overhead,
            requires_service_over_bare_ge_70pct=overhead >= 0.7,
            rss_slope_mb_per_1000=slope,
            requires_rss_slope_lt_1mb=slope < 1.0 and len(pids) == 1 and memory["bounded_by"] == "count",
            requires_memory_run_all_200=set(memory["status_codes"]) == {"200"},
        ),
    }
    print(json.dumps(result["headline"], indent=2))
    write_result(args, result, load_before)


if __name__ == "__main__":
    main()
