"""ASHA early stopping against running every trial to the end, on the same sweep.

Runs the demo sweep (``configs/sweeps/demo.yaml``: adversarial SupCon + fine-tuning on the synthetic
WILDS-format Camelyon17 copy) twice with identical settings except the scheduler: once with ASHA,
once FIFO (every trial trains all its epochs). Both use **random search with the same seed**, so both
runs train exactly the same configurations (checked, and recorded as ``same_configurations``); with
Optuna's TPE the second half of the trials would differ, because TPE conditions on results that ASHA
truncates. Each trial trains with the base config's seed, so a configuration trains identically in
both runs up to the epoch where ASHA stops it.

Reported for each run: best validation score (``val_score`` = mean of clean and PGD validation
accuracy at the serving ε), the best configuration, total trial-epochs (pretraining + fine-tuning
epochs actually trained, over all trials), wall seconds (Ray start included) and trials stopped
early; then the ratios ASHA / full. Pretraining is never cut short (see ``robustdx.flows.tune``),
so the saving is bounded by the fine-tuning share of the epochs.

    python benchmarks/asha_vs_full.py                                  # 8 trials, 2 + 8 epochs at 64 px, ~6 min on 2 cores
    python benchmarks/asha_vs_full.py --num-samples 16 --finetune-epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness import add_common_args, write_result

from robustdx.core.data import synthetic
from robustdx.flows.tune.driver import SweepResult, load_sweep, run_sweep

REPO = Path(__file__).resolve().parents[1]


def run(scheduler: str, args: argparse.Namespace, storage: Path) -> SweepResult:
    sets = [
        f"name={scheduler}",
        f"scheduler={scheduler}",
        "search=random",
        f"seed={args.seed}",
        f"num_samples={args.num_samples}",
        f"num_cpus={args.num_cpus}",
        f"storage_path={storage}",
        "asha.grace_period=1",
        "asha.reduction_factor=2",
    ]
    run_sets = [
        f"pretrain.epochs={args.pretrain_epochs}",
        f"finetune.epochs={args.finetune_epochs}",
        f"data.image_size={args.image_size}",
        f"data.root={args.data}",
    ]
    sweep, _ = load_sweep(REPO / "configs" / "sweeps" / "demo.yaml", sets, run_sets)
    return run_sweep(sweep, resume=False, log=lambda m: print(f"[{scheduler}] {m}", flush=True))


def summary(result: SweepResult) -> dict[str, Any]:
    return {
        "best_score": result.best_score,
        "best_params": result.best_params,
        "total_trial_epochs": result.total_trial_epochs,
        "wall_seconds": round(result.wall_seconds, 1),
        "trials_completed": sum(r["status"] == "completed" for r in result.rows),
        "trials_stopped_early": sum(r["status"] == "stopped" for r in result.rows),
        "trials": [
            {k: r[k] for k in ("eps", "steps", "lr", "score", "status", "trial_epochs")}
            for r in sorted(result.rows, key=lambda r: (r["eps"], r["steps"], r["lr"]))
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument(
        "--image-size",
        type=int,
        default=64,
        help="model input side (the demo trains at 32 px, where a trial's few seconds of start-up and final "
        "evaluation outweigh its epochs and no scheduler can save wall time)",
    )
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", type=Path, default=REPO / "runs" / "bench" / "asha_vs_full")
    add_common_args(parser, "asha_vs_full")
    args = parser.parse_args()
    data = REPO / "data" / "synthetic" / "camelyon17"
    if args.quick:
        args.num_samples, args.pretrain_epochs, args.finetune_epochs, args.image_size = 2, 1, 2, 16
        args.storage = args.storage.with_name("asha_vs_full_quick")
        data = args.storage / "data"
    load_before = os.getloadavg()
    # the demo's data set (rewritten when stale); --quick: a tiny one of its own
    params = {"per_class": 6, "size": 32} if args.quick else {"per_class": 60, "size": 96}
    synthetic.ensure(data, "camelyon17", rewrite_stale=True, seed=0, **params)
    os.chdir(REPO)  # the demo configs name their data relative to the repository
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    args.data = data.resolve()
    t0 = time.perf_counter()
    asha, full = run("asha", args, args.storage), run("fifo", args, args.storage)
    configs = [sorted((r["eps"], r["steps"], r["lr"]) for r in res.rows) for res in (asha, full)]
    out = {
        "benchmark": "asha_vs_full",
        "sweep": f"configs/sweeps/demo.yaml (adv_supcon_ft, test_cnn @ {args.image_size} px, synthetic Camelyon17)",
        "settings": {
            "num_samples": args.num_samples,
            "search": "random (seeded; identical configurations in both runs)",
            "seed": args.seed,
            "image_size": args.image_size,
            "pretrain_epochs": args.pretrain_epochs,
            "finetune_epochs": args.finetune_epochs,
            "asha": {"grace_period": 1, "reduction_factor": 2, "time_attr": "training_iteration (fine-tuning epochs)"},
            "objective": "robust_mean (val_score)",
            "cpus_per_trial": 1,
        },
        "same_configurations": configs[0] == configs[1],
        "asha": summary(asha),
        "full": summary(full),
        "ratios_asha_over_full": {
            "total_trial_epochs": round(asha.total_trial_epochs / full.total_trial_epochs, 3),
            "wall_seconds": round(asha.wall_seconds / full.wall_seconds, 3),
            "best_score": round(asha.best_score / full.best_score, 3),
        },
        "same_best_configuration": asha.best_params == full.best_params,
        "ray": __import__("ray").__version__,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps({k: out[k] for k in ("same_configurations", "ratios_asha_over_full", "same_best_configuration")}, indent=2))
    write_result(args, out, load_before)


if __name__ == "__main__":
    sys.exit(main())
