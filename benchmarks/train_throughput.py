"""Throughput of one adversarial-SupCon training step (PGD on both views + SupCon update), robustdx against
a baseline faithful to the authors' code (github.com/rjunw/supcon-adversarial, ``utils/adversarial.py`` and
``utils/train.py``), on the same model, batch, views and number of PGD steps, measured in the same run.

* authors: the model in **train mode** throughout (BatchNorm batch statistics, running statistics updated by
  every attack forward); a uniform random start in [-ε, ε] per view; **both views attacked in one PGD loop**
  against the joint two-view SupCon loss, each view through its own forward pass; ``loss.backward()`` inside
  the attack, so parameter gradients are computed (and accumulate) at every attack step; ε and the step in
  ImageNet-normalised space with no clamp to the image range; ``optimizer.zero_grad()`` after the attack,
  then SupCon on the attacked views, backward, step. fp32, channels-first (what their code runs).
* robustdx: one step exactly as :class:`robustdx.core.training.trainer.Trainer` runs it — the attack in eval
  mode with input-only gradients on a BatchNorm-folded twin, both views as one batch in channels_last, pixel
  space with a random start and clamping, then the SupCon update in train mode.

The step's arithmetic is counted with ``torch.utils.flop_counter`` on its passes (a forward + backward with
weight and input gradients, and one with input gradients only) and set against the machine's matmul peak,
measured in the same run: the fastest fp32 product of two 2048² matrices on the same threads, through MKL's
``mm`` and through oneDNN as a 1×1 convolution (see :func:`matmul_peak`).

    python benchmarks/train_throughput.py            # ResNet-18 @ 96 px, batch 32, PGD-5, 7 interleaved repeats
    python benchmarks/train_throughput.py --quick    # seconds: tiny CNN, checks the code path
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from harness import add_common_args, headline, interleaved, spread, write_result
from torch import Tensor, nn

from robustdx.core.config import AttackConfig, ModelConfig, Regime, StageConfig
from robustdx.core.models import build_model
from robustdx.core.training.strategies import StepContext, create_strategy
from robustdx.core.util import resolve_device

GOAL = 2.0
EPS_NORMALISED, STEP_NORMALISED = 0.2, 0.01  # the authors' settings (normalised space)
EPS_PIXEL = 8 / 255
TAU = 0.1


def authors_supcon(features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """The authors' loss (HobbitLong's SupConLoss as modified in their ``utils/losses.py``): ``[B, 2, D]``
    features, normalised inside the loss, views stacked view-major, ``+1e-6`` guards."""
    features = nn.functional.normalize(features, p=2, dim=2)
    b, v = features.shape[:2]
    lab = labels.view(-1, 1)
    mask = torch.eq(lab, lab.T).float().repeat(v, v)
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True)[0].detach()
    self_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(b * v, device=mask.device).view(-1, 1), 0)
    mask = mask * self_mask
    exp_logits = torch.exp(logits) * self_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-6)
    mean_log_prob_pos = (mask * log_prob).sum(1) / (mask.sum(1) + 1e-6)
    return -mean_log_prob_pos.view(v, b).mean()


def authors_step(model: nn.Module, opt: torch.optim.Optimizer, views: Tensor, y: Tensor, steps: int) -> None:
    """One step of their ``epoch_adversarial`` with ``multi_view=True`` (see the module docstring)."""
    model.train()
    std, mean = model.normalize.std, model.normalize.mean
    x = [(views[:, 0] - mean) / std, (views[:, 1] - mean) / std]  # their loader yields normalised tensors

    def project(t: Tensor) -> Tensor:  # the model on a normalised input (their encoder + projection head)
        return model.projector(model.encoder(t))

    d1 = ((torch.rand_like(x[0]) * 2 - 1) * EPS_NORMALISED).requires_grad_(True)
    d2 = ((torch.rand_like(x[1]) * 2 - 1) * EPS_NORMALISED).requires_grad_(True)
    for _ in range(steps):
        z = torch.cat([project(x[0] + d1).unsqueeze(1), project(x[1] + d2).unsqueeze(1)], dim=1)
        authors_supcon(z, y, TAU).backward()  # parameter gradients computed and accumulated too
        d1.data = (d1 + STEP_NORMALISED * d1.grad.detach().sign()).clamp(-EPS_NORMALISED, EPS_NORMALISED)
        d2.data = (d2 + STEP_NORMALISED * d2.grad.detach().sign()).clamp(-EPS_NORMALISED, EPS_NORMALISED)
        d1.grad.zero_()
        d2.grad.zero_()
    z = torch.cat([project(x[0] + d1.detach()).unsqueeze(1), project(x[1] + d2.detach()).unsqueeze(1)], dim=1)
    loss = authors_supcon(z, y, TAU)
    opt.zero_grad()
    loss.backward()
    opt.step()


def robustdx_step(model: nn.Module, opt: torch.optim.Optimizer, strategy, ctx: StepContext, views: Tensor, y: Tensor) -> None:
    """One step exactly as :class:`robustdx.core.training.trainer.Trainer` performs it."""
    strategy.train_mode(model)
    loss = strategy.loss(model, views, y, True, ctx)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def pass_flops(model: nn.Module, x: Tensor, params_need_grad: bool) -> float:
    """FLOPs of one forward + backward of the projection on ``x``, counted by ``torch.utils.flop_counter``:
    with ``params_need_grad`` the backward computes weight and input gradients (a training step, or the
    authors' attack step), without it input gradients only (robustdx's attack step)."""
    from torch.utils.flop_counter import FlopCounterMode

    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(params_need_grad)
    x = x.detach().clone().requires_grad_(True)
    try:
        with FlopCounterMode(display=False) as counter:
            model.project(x).sum().backward()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def step_flops(model: nn.Module, views: Tensor, pgd_steps: int) -> dict[str, float]:
    """Arithmetic of one step: the authors' attack steps compute weight gradients too, robustdx's only input
    gradients; both end with one training forward + backward on the attacked views (BatchNorm's few FLOPs
    aside, which folding removes from robustdx's attack)."""
    flat = views.flatten(0, 1)
    full, inputs_only = pass_flops(model, flat, True), pass_flops(model, flat, False)
    return {"authors": (pgd_steps + 1) * full, "robustdx": pgd_steps * inputs_only + full}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """fp32 GFLOP/s of an ``n``² matrix product on ``threads`` threads (best of ``repeats``), through each GEMM
    the model's passes can reach: ``torch.mm`` (MKL) and the same product as a 1×1 convolution (oneDNN, the
    library that runs the model's convolutions), channels-first and channels_last. The peak is the fastest of
    them: MKL's ``mm`` alone can be far from the machine's peak (about half of oneDNN's on an AVX-512 AMD CPU),
    and then a conv network's step would show more than 100 % of it."""
    torch.set_num_threads(threads)
    a, b = torch.rand(n, n), torch.rand(n, n)
    conv = nn.Conv2d(n, n, 1, bias=False).eval()
    x = torch.rand(1, n, n // 32, 32)  # a [n, n] @ [n, n] product: n output channels at n positions
    conv_nhwc = nn.Conv2d(n, n, 1, bias=False).eval().to(memory_format=torch.channels_last)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    kernels = {"mm": lambda: a @ b, "conv1x1": lambda: conv(x), "conv1x1_channels_last": lambda: conv_nhwc(x_nhwc)}
    rates = {}
    with torch.no_grad():
        for name, run in kernels.items():
            run()
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - t)
            rates[name] = 2 * n**3 / best / 1e9
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    add_common_args(ap, "train_throughput")
    args = ap.parse_args()
    # fixed settings (not tuned per run); --quick only makes them tiny
    arch, size, batch, pgd_steps, warmup, repeats, threads = "resnet18", 96, 32, 5, 2, 7, 2
    if args.quick:
        arch, size, batch, pgd_steps, warmup, repeats = "test_cnn", 16, 8, 2, 1, 2
    torch.set_num_threads(threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    views = torch.rand(batch, 2, 3, size, size, device=device)
    y = torch.arange(batch, device=device) % 2
    load_before = os.getloadavg()

    m_a = build_model(ModelConfig(arch=arch)).to(device)
    opt_a = torch.optim.AdamW(m_a.parameters(), lr=3e-4)
    m_r = build_model(ModelConfig(arch=arch)).to(device).to(memory_format=torch.channels_last)
    opt_r = torch.optim.AdamW(m_r.parameters(), lr=3e-4)
    stage = StageConfig(temperature=TAU)
    strategy = create_strategy(Regime.ADV_SUPCON, stage)
    ctx = StepContext(stage=stage, attack=AttackConfig(eps=EPS_PIXEL, steps=pgd_steps))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def authors() -> None:
        authors_step(m_a, opt_a, views, y, pgd_steps)
        sync()

    def ours() -> None:
        with autocast:
            robustdx_step(m_r, opt_r, strategy, ctx, views, y)
        sync()

    for _ in range(warmup):
        authors()
        ours()
    flops = step_flops(m_a, views, pgd_steps)
    times = interleaved({"authors": authors, "robustdx": ours}, repeats, log=lambda m: print(m, file=sys.stderr))
    gemm = matmul_peak(threads) if device.type == "cpu" else None
    peak = max(gemm.values()) if gemm else None
    ips = {k: batch / spread(v)["median"] for k, v in times.items()}
    achieved = {k: flops[k] / spread(times[k])["median"] / 1e9 for k in times}
    out = {
        "benchmark": "adv_supcon_train_step",
        "settings": {
            "arch": arch,
            "image_size": size,
            "batch": batch,
            "views": 2,
            "pgd_steps": pgd_steps,
            "threads": threads,
            "warmup": warmup,
            "repeats": repeats,
            "device": str(device),
            "temperature": TAU,
            "authors_attack": f"eps {EPS_NORMALISED} step {STEP_NORMALISED} (normalised space), random start",
            "robustdx_attack": "eps 8/255 (pixel space), step 2.5*eps/steps, random start",
        },  # fmt: skip
        "step_seconds": {k: spread(v) for k, v in times.items()},
        "images_per_s": ips,
        "gflop_per_step": {k: v / 1e9 for k, v in flops.items()},
        "achieved_gflop_per_s": achieved,
        "matmul_peak_gflop_per_s": peak,
        "gemm_gflop_per_s": gemm,
        "fraction_of_matmul_peak": {k: v / peak for k, v in achieved.items()} if peak else None,
        "headline": headline(
            "adversarial-SupCon training step, images/s",
            ips["robustdx"],
            ips["authors"],
            "images/s",
            GOAL,
            "the authors' loop (train-mode attack, parameter gradients, normalised space)",
        ),
    }
    write_result(args, out, load_before)
    print({k: out[k] for k in ("images_per_s", "fraction_of_matmul_peak")}, file=sys.stderr)


if __name__ == "__main__":
    main()
