"""Robust evaluation: robust accuracy of PCam test images under PGD, robustdx against torchattacks.

The science reports attack every model on the whole PCam test split at the headline budgets; this is what
makes that affordable. Both sides run PGD-50 with the same ε, step size (2.5·ε/50), random start and the same
images on the same trained model (an adversarially trained ResNet-18 at 64 px — the report's resolution —,
trained through the library on the first run and cached in ``runs/bench``):

* baseline: ``torchattacks.PGD(model, eps, alpha, steps=50, random_start=True)`` on batches, as its
  documentation shows it (the model in eval mode, images in [0, 1]); an item is robust when the model is
  right on the clean image and on the returned final iterate;
* robustdx: :func:`robustdx.core.attacks.pgd_outcome` — the same trajectory on a BatchNorm-folded, channels_last twin, an
  item robust only if *every* visited point is classified right, and an item leaves the batch as soon as one
  is not (so robustdx's robust accuracy can only be lower or equal: a stronger evaluation).

Quality: robust accuracy of both sides on all ``--n`` images (1,000: the whole PCam test split here), with
Wilson 95 % intervals; "the same robust accuracy" means the two intervals overlap. Speed: seconds per image,
median of ``--repeats`` interleaved repeats on the first ``--timing-n`` of those images.

    python benchmarks/robust_eval.py            # ~30 min on 2 CPU cores (the model is trained once, ~6 min)
    python benchmarks/robust_eval.py --quick    # seconds: tiny model and data, checks the code path
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from harness import add_common_args, headline, interleaved, spread, write_result
from torch import Tensor, nn

from robustdx.core.attacks import pgd_outcome
from robustdx.core.config import AttackConfig, RunConfig, parse_config
from robustdx.core.data import build_splits

REPO = Path(__file__).resolve().parents[1]
PCAM = REPO.parent / "shared" / "data" / "pcam"
GOAL = 3.0
EPS = (2 / 255, 8 / 255)
STEPS = 50


def bench_config(root: Path, runs: Path, quick: bool) -> RunConfig:
    """The evaluated model: adversarial CE (PGD-3 at 2/255) on 2,000 PCam patches, ResNet-18 at 64 px, 2 epochs
    (``quick``: a tiny CNN at 32 px on 32 patches, one step)."""
    raw: dict[str, Any] = {
        "name": "robust-eval-resnet18",
        "seed": 0,
        "recipe": "adv_ce",
        "data": {"dataset": "pcam", "root": str(root), "image_size": 64, "n_train": 2000, "batch_size": 64},
        "model": {"arch": "resnet18"},
        "attack": {"eps": "2/255", "steps": 3},
        "eval_attack": {"eps": "2/255", "steps": 5},
        "pretrain": {"epochs": 2, "lr": 1e-3},
        "output_dir": str(runs),
        "progress": False,
    }
    quick_sets = ["name=robust-eval-quick", "model.arch=test_cnn", "data.image_size=32", "data.n_train=32",
                  "data.batch_size=16", "pretrain.epochs=1", "pretrain.max_steps_per_epoch=1"]  # fmt: skip
    return parse_config(raw, quick_sets if quick else [])


def trained_model(cfg: RunConfig) -> nn.Module:
    from robustdx.core.training.recipes import run_recipe

    return run_recipe(cfg, log=lambda m: print(f"[train] {m}", file=sys.stderr)).model.eval()


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [max(0.0, c - h), min(1.0, c + h)]


def torchattacks_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int) -> Tensor:
    """Per item: right on the clean image and on torchattacks' final PGD iterate."""
    import torchattacks

    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / STEPS, steps=STEPS, random_start=True)
    out = []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        adv = attack(xb, yb)
        with torch.no_grad():
            out.append((model(xb).argmax(1) == yb) & (model(adv).argmax(1) == yb))
    return torch.cat(out)


def robustdx_robust(model: nn.Module, x: Tensor, y: Tensor, eps: float, batch: int) -> Tensor:
    cfg = AttackConfig(eps=eps, steps=STEPS)  # step 2.5·ε/steps, random start, one restart
    chunks = range(0, len(x), batch)
    return torch.cat([pgd_outcome(model, x[i : i + batch], y[i : i + batch], cfg, seed=i).robust for i in chunks])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="test images whose robust accuracy both sides report [1000]")
    ap.add_argument("--timing-n", type=int, default=200, help="of those, the images each timed repeat attacks [200]")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed repeats per side [5]")
    ap.add_argument("--batch", type=int, default=128, help="images per attacked batch, both sides [128]")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads [2]")
    ap.add_argument("--data", type=Path, default=PCAM, help="PCam root (train/, valid/)")
    ap.add_argument("--runs", type=Path, default=REPO / "runs" / "bench", help="where the trained model is cached")
    add_common_args(ap, "robust_eval")
    args = ap.parse_args()
    if args.quick:
        args.n, args.timing_n, args.repeats, args.batch = 16, 8, 2, 8
    torch.set_num_threads(args.threads)
    cfg = bench_config(args.data.resolve(), args.runs, args.quick)
    model = trained_model(cfg)
    test = build_splits(cfg.data).test
    n = min(args.n, len(test))
    items = [test[i] for i in range(n)]
    x, y = torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    for eps in EPS:
        torch.manual_seed(0)
        base = torchattacks_robust(model, x, y, eps, args.batch)
        ours = robustdx_robust(model, x, y, eps, args.batch)
        xt, yt = x[: args.timing_n], y[: args.timing_n]
        times = interleaved(
            {
                "torchattacks": lambda e=eps, a=xt, b=yt: torchattacks_robust(model, a, b, e, args.batch),
                "robustdx": lambda e=eps, a=xt, b=yt: robustdx_robust(model, a, b, e, args.batch),
            },
            args.repeats,
            log=lambda m: print(m, file=sys.stderr),
        )
        acc = {"torchattacks": int(base.sum()), "robustdx": int(ours.sum())}
        ci = {k: wilson(v, n) for k, v in acc.items()}
        results[f"{round(eps * 255)}/255"] = {
            "robust_acc": {k: v / n for k, v in acc.items()},
            "wilson95": ci,
            "same_accuracy": ci["robustdx"][1] >= ci["torchattacks"][0] and ci["torchattacks"][1] >= ci["robustdx"][0],
            "items_robust_for_robustdx_not_torchattacks": int((ours & ~base).sum()),
            "seconds_per_image": {k: spread([t / args.timing_n for t in v]) for k, v in times.items()},
        }
        r = results[f"{round(eps * 255)}/255"]
        print(f"eps {eps * 255:.0f}/255: {r['robust_acc']} speed-up "
              f"{r['seconds_per_image']['torchattacks']['median'] / r['seconds_per_image']['robustdx']['median']:.2f}x",
              file=sys.stderr)  # fmt: skip
    # headline: total seconds per image over both budgets (the science attacks at both)
    base_s = sum(r["seconds_per_image"]["torchattacks"]["median"] for r in results.values())
    ours_s = sum(r["seconds_per_image"]["robustdx"]["median"] for r in results.values())
    out = {
        "benchmark": "robust_eval",
        "settings": {
            "model": {"run": str(cfg.run_dir.relative_to(REPO)) if cfg.run_dir.is_relative_to(REPO) else str(cfg.run_dir),
                      "arch": cfg.model.arch, "image_size": cfg.data.image_size, "recipe": str(cfg.recipe)},
            "attack": {"name": "PGD", "steps": STEPS, "step": "2.5*eps/steps", "random_start": True, "restarts": 1},
            "eps": [f"{round(e * 255)}/255" for e in EPS],
            "images": n, "timing_images": args.timing_n, "repeats": args.repeats, "batch": args.batch,
            "threads": args.threads, "torchattacks": __import__("torchattacks").__version__,
        },  # fmt: skip
        "results": results,
        "headline": headline(
            "PGD-50 robust evaluation at 2/255 and 8/255, images/s",
            1 / ours_s,
            1 / base_s,
            "images/s",
            GOAL,
            "torchattacks.PGD, final iterate, same images, ε, steps, step size and random start",
            requires_same_accuracy=all(r["same_accuracy"] for r in results.values()),
        ),
    }
    write_result(args, out, load_before)


if __name__ == "__main__":
    main()
