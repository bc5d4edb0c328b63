"""Throughput of one adversarial-SupCon training step (PGD on both views + SupCon update).

Compares robustdx's step (the library's own ``SupConStrategy`` code path, as the Trainer runs it)
against a faithful re-implementation of the authors' loop, on the same model, data and settings,
measured in the same run:

* authors: attack in **train mode** (BatchNorm statistics updated by adversarial batches),
  ``loss.backward()`` during the attack so parameter gradients are computed and accumulate,
  one view after the other, fp32, channels-first, ε/step in normalised space, no random start;
* robustdx: eval-mode attack with input-only gradients on both views in one batch, BatchNorm
  folded into the convolutions for the attack, channels_last, pixel-space ε with random start.

Writes JSON with images/s of both, their ratio, and the settings. Images/s counts training images
(a batch of B images with two views is B images).

    python benchmarks/train_throughput.py                      # ResNet-18 @ 96 px, batch 32, PGD-5 (CPU)
    python benchmarks/train_throughput.py --arch resnet50 --size 224 --batch 64   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch
from harness import add_common_args, write_result

from robustdx.core.config import AttackConfig, ModelConfig, Regime, StageConfig
from robustdx.core.losses import supcon_loss
from robustdx.core.models import build_model
from robustdx.core.training.strategies import StepContext, create_strategy
from robustdx.core.util import resolve_device


def authors_step(model, opt, views: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int, tau: float) -> None:
    """The authors' Alg. 2 step as their code runs it (see module docstring)."""
    model.train()
    opt.zero_grad()
    std = model.normalize.std
    adv = []
    for v in range(views.shape[1]):
        x = views[:, v]
        delta = torch.zeros_like(x, requires_grad=True)
        for _ in range(steps):
            z = model.project(x + delta * std)  # delta lives in normalised space, no clamp
            loss = supcon_loss(z, y, tau)
            loss.backward()  # parameter gradients computed (and accumulated) too
            with torch.no_grad():
                delta += alpha * delta.grad.sign()
                delta.clamp_(-eps, eps)
            delta.grad.zero_()
        adv.append(x + delta.detach() * std)
    z = torch.stack([model.project(a) for a in adv], dim=1)
    loss = supcon_loss(z, y, tau)
    loss.backward()
    opt.step()


def robustdx_step(model, opt, strategy, ctx: StepContext, views: torch.Tensor, y: torch.Tensor) -> None:
    """One step exactly as :class:`robustdx.core.training.trainer.Trainer` performs it."""
    strategy.train_mode(model)
    loss = strategy.loss(model, views, y, True, ctx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def measure(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--pgd-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (both sides)")
    ap.add_argument("--device", default="auto")
    add_common_args(ap, "train_throughput")
    args = ap.parse_args()
    if args.quick:
        args.arch, args.size, args.batch, args.pgd_steps, args.warmup, args.iters = "test_cnn", 16, 8, 2, 1, 2
    load_before = os.getloadavg()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    views = torch.rand(args.batch, 2, 3, args.size, args.size, device=device)
    y = torch.arange(args.batch, device=device) % 2
    tau = 0.1
    results = {}

    # authors' loop: fp32, channels-first, paper's attack settings
    model = build_model(ModelConfig(arch=args.arch)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    t = measure(lambda: authors_step(model, opt, views, y, 0.2, 0.01, args.pgd_steps, tau), args.warmup, args.iters, device)
    results["authors"] = t

    # robustdx: the library's strategy (bf16 autocast on CUDA, as the Trainer does)
    model = build_model(ModelConfig(arch=args.arch)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    stage = StageConfig(temperature=tau)
    strategy = create_strategy(Regime.ADV_SUPCON, stage)
    ctx = StepContext(stage=stage, attack=AttackConfig(eps=8 / 255, steps=args.pgd_steps))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def ours() -> None:
        with autocast:
            robustdx_step(model, opt, strategy, ctx, views, y)

    results["robustdx"] = measure(ours, args.warmup, args.iters, device)

    def ips(ts: list[float]) -> float:
        return args.batch / (sorted(ts)[len(ts) // 2])

    out = {
        "benchmark": "adv_supcon_train_step",
        "settings": {
            "arch": args.arch,
            "image_size": args.size,
            "batch": args.batch,
            "views": 2,
            "pgd_steps": args.pgd_steps,
            "threads": args.threads,
            "device": str(device),
            "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "warmup": args.warmup,
            "iters": args.iters,
        },
        "baseline_authors_images_per_s": ips(results["authors"]),
        "robustdx_images_per_s": ips(results["robustdx"]),
        "step_seconds": {k: v for k, v in results.items()},
    }
    out["speedup"] = out["robustdx_images_per_s"] / out["baseline_authors_images_per_s"]
    print(json.dumps({k: v for k, v in out.items() if k != "step_seconds"}, indent=2))
    write_result(args, out, load_before)


if __name__ == "__main__":
    main()
