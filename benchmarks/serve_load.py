"""/predict throughput and latency of the BentoML service with batching vs batching off.

Both sides run in the same invocation against a real ``bentoml serve`` on 127.0.0.1 (a fresh
server per side, same bundle, same images, same client): ``ROBUSTDX_BATCHING=1`` (requests that arrive
while the model is busy share the next forward pass, up to ``ROBUSTDX_MAX_BATCH_SIZE`` images;
``service/batching.py``) and ``ROBUSTDX_BATCHING=0`` (one forward pass per request). The load generator is an asyncio client with
a fixed number of requests in flight, bounded by a request count *and* a time limit; one PNG per
request. The batching side also measures the service worker's RSS after a warm-up and again after
``--requests`` (10,000 by default) requests: the memory-leak check. Each RSS reading is taken after
``--settle`` idle seconds (the worker returns freed heap pages to the OS every 10 s, see
``robustdx.service.monitoring.monitor._malloc_trim``); the reading right after the load is recorded too.

The default model is a ResNet-18 at 96 px with random weights, saved as a bundle into a temporary
BentoML home (serving cost does not depend on the weights' values); ``--bundle`` serves a real
bundle instead. The background robustness probe is set to ``--robust-sample-rate`` (default 0.01) on
both sides. Results go to ``benchmarks/results/serve_load.json``.

    python benchmarks/serve_load.py                         # 10,000 requests batched, 2,000 unbatched
    python benchmarks/serve_load.py --requests 2000 --compare-requests 500 --concurrency 16
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
from harness import add_common_args, write_result
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
    lat: list[float] = []
    codes: dict[int, int] = {}
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
                r = await client.post("/predict", files={"images": (f"{i}.png", pngs[i % len(pngs)], "image/png")})
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat.sort()
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {
        "requests": len(lat),
        "seconds": wall,
        "throughput_rps": len(lat) / wall,
        "p50_ms": 1000 * q[49],
        "p99_ms": 1000 * q[98],
        "mean_ms": 1000 * statistics.fmean(lat),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "bounded_by": "count" if len(lat) >= n else "time",
    }


def worker_rss(server: Server) -> dict[str, int]:
    """RSS (bytes) of the service worker (the process that loaded the model) and of the whole group."""
    root = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    procs = [root, *root.children(recursive=True)]
    rss = {p.pid: p.memory_info().rss for p in procs if p.is_running()}
    worker = max(rss, key=rss.get)  # the model-holding worker is by far the largest
    return {"worker_pid": worker, "worker_rss": rss[worker], "total_rss": sum(rss.values())}


def batch_sizes(client: httpx.Client) -> dict[str, float]:
    tot = cnt = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("robustdx_batch_size_sum"):
            tot += float(line.rsplit(" ", 1)[1])
        elif line.startswith("robustdx_batch_size_count"):
            cnt += float(line.rsplit(" ", 1)[1])
    return {"batches": cnt, "mean_batch_size": tot / cnt if cnt else 0.0}


def run_side(env: dict[str, str], log: Path, pngs: list[bytes], args: argparse.Namespace, n: int, rss: bool) -> dict[str, Any]:
    with Server(env, log) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        asyncio.run(load(srv.url, pngs, args.warmup, args.concurrency, args.max_seconds))
        if rss:
            time.sleep(args.settle)
            before = worker_rss(srv)
        res = asyncio.run(load(srv.url, pngs, n, args.concurrency, args.max_seconds))
        if rss:
            busy = worker_rss(srv)
            time.sleep(args.settle)
            after = worker_rss(srv)
        res.update(batch_sizes(c))
    if rss:
        mb = 2**20
        res["rss_before_mb"] = before["worker_rss"] / mb
        res["rss_after_mb"] = after["worker_rss"] / mb
        res["rss_growth_pct"] = 100 * (after["worker_rss"] - before["worker_rss"]) / before["worker_rss"]
        res["rss_right_after_load_mb"] = busy["worker_rss"] / mb
        res["rss_growth_right_after_load_pct"] = 100 * (busy["worker_rss"] - before["worker_rss"]) / before["worker_rss"]
        res["total_rss_before_mb"] = before["total_rss"] / mb
        res["total_rss_after_mb"] = after["total_rss"] / mb
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="Serve this bundle (default: random-weight ResNet-18).")
    ap.add_argument("--arch", default="resnet18", help="Architecture of the default random-weight bundle.")
    ap.add_argument("--size", type=int, default=96, help="Image size of the default bundle and of the sent PNGs.")
    ap.add_argument("--requests", type=int, default=10_000, help="Requests of the batching side (RSS measured around them).")
    ap.add_argument("--compare-requests", type=int, default=2_000, help="Requests of the batching-off side.")
    ap.add_argument("--warmup", type=int, default=200, help="Warm-up requests per side (not timed).")
    ap.add_argument("--concurrency", type=int, default=32, help="Requests in flight.")
    ap.add_argument("--max-seconds", type=float, default=300, help="Time limit of each timed run.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--robust-sample-rate", type=float, default=0.01)
    ap.add_argument(
        "--settle", type=float, default=16.0, help="Idle seconds before each RSS reading (the worker trims its heap every 10 s)."
    )
    add_common_args(ap, "serve_load")
    args = ap.parse_args()
    if args.quick:
        args.arch, args.size, args.requests, args.compare_requests, args.warmup = "test_cnn", 32, 40, 20, 4
        args.concurrency, args.settle, args.max_seconds = 4, 0.0, 60.0
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        home = Path(tmp) / "bentoml"
        os.environ["BENTOML_HOME"] = str(home)  # this process too: BentoML reads its home once
        from robustdx.core.release.store import save_bundle_to_store

        bundle = args.bundle or make_bundle(Path(tmp) / "bundle", args.arch, args.size)
        tag = save_bundle_to_store(bundle, home)
        write_production(home, tag)
        pngs = images(64, args.size)
        base = {
            "BENTOML_HOME": str(home),
            "BENTOML_DO_NOT_TRACK": "True",
            "ROBUSTDX_MAX_BATCH_SIZE": str(args.max_batch_size),
            "ROBUSTDX_ROBUST_SAMPLE_RATE": str(args.robust_sample_rate),
        }
        batched = run_side({**base, "ROBUSTDX_BATCHING": "1"}, Path(tmp) / "on.log", pngs, args, args.requests, rss=True)
        print(json.dumps({"batching": batched}, indent=1), flush=True)
        off = {**base, "ROBUSTDX_BATCHING": "0"}
        unbatched = run_side(off, Path(tmp) / "off.log", pngs, args, args.compare_requests, rss=False)
    result = {
        "benchmark": "serve_load",
        "model": str(args.bundle) if args.bundle else f"{args.arch} @ {args.size}px, random weights",
        "settings": {k: v for k, v in vars(args).items() if k not in ("bundle", "out", "_benchmark")},
        "batching": batched,
        "no_batching": unbatched,
        "speedup_throughput": batched["throughput_rps"] / unbatched["throughput_rps"],
        "goals": {"speedup_ge_3": None, "rss_growth_lt_5pct": batched["rss_growth_pct"] < 5},
    }
    result["goals"]["speedup_ge_3"] = result["speedup_throughput"] >= 3
    print(json.dumps(result, indent=2))
    write_result(args, result, load_before)


if __name__ == "__main__":
    main()
