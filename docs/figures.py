"""Render the README's measured figures from the committed artifacts that hold them.

No figure in the README is typed by hand: each lives between ``<!-- figure:NAME -->`` and
``<!-- /figure -->`` and is rendered here from an artifact that a script rewrites —
``docs/timings.json`` (``make timings``: a fresh-clone run of both README commands) and
``benchmarks/results/*.json`` (the benchmark scripts). Every figure names the commit it measured.

    python docs/figures.py           # rewrite the README's figure blocks
    python docs/figures.py --check   # exit 1 when the README differs from its artifacts (make test runs this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMINGS = REPO / "docs" / "timings.json"
RESULTS = REPO / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- figure:(?P<name>[a-z0-9-]+) -->)(?P<body>.*?)(<!-- /figure -->)", re.S)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _commit(data: dict[str, Any]) -> str:
    commit = str(data.get("commit") or "")
    return f"commit `{commit[:10]}{'+dirty' if commit.endswith('+dirty') else ''}`" if commit else "commit not recorded"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def timings() -> str:
    t = _load(TIMINGS)
    if t is None:
        return "Not measured yet: `make timings` writes `docs/timings.json`."
    tests = t["tests"]
    return (
        f"Measured by `make timings` ({_commit(t)}, {t['date'][:10]}) from a fresh clone on {t['machine']['cpu_count']} "
        f"CPU cores, load average {t['machine']['loadavg_before'][0]:.1f} at the start: creating `.venv` "
        f"{_minutes(t['seconds']['venv'])}, `make demo` {_minutes(t['seconds']['demo'])}, `make test` "
        f"{_minutes(t['seconds']['test'])} ({tests['passed']} passed, {tests['skipped']} skipped, "
        f"{tests['deselected']} deselected, {tests['failed']} failed)."
    )


def _legacy_headline(name: str, d: dict[str, Any]) -> dict[str, Any] | None:
    """Headline of a result written before the benchmarks recorded one (kept until they are rerun)."""
    if name == "train_throughput":
        return {
            "what": "adversarial-SupCon training step, images/s",
            "ratio": d["speedup"],
            "baseline": "re-implementation of the authors' loop",
            "goal": ">= 2x",
            "met": d["speedup"] >= 2,
        }
    if name == "ig_latency":
        return {
            "what": "Integrated Gradients, s/image",
            "ratio": d["speedup"],
            "baseline": "captum, 50 Gauss-Legendre steps, one call per image",
            "goal": ">= 3x, every image within 1% completeness",
            "met": bool(d["goal"]["met"]),
        }
    if name == "asha_vs_full":
        r = d["ratios_asha_over_full"]
        return {
            "what": f"ASHA / every trial to the end: trial-epochs {r['total_trial_epochs']:.2f}x, wall time",
            "ratio": r["wall_seconds"],
            "baseline": "FIFO (same seeded configurations)",
            "goal": f"same best score (ratio {r['best_score']:.2f})",
            "met": r["best_score"] >= 1.0,
        }
    if name == "serve_load":
        return {
            "what": "/predict throughput, adaptive batching",
            "ratio": d["speedup_throughput"],
            "baseline": "batching off",
            "goal": ">= 3x",
            "met": bool(d["goals"]["speedup_ge_3"]),
        }
    return None


STANDARD_KEYS = {"what", "unit", "robustdx", "baseline_value", "baseline", "ratio", "goal", "met", "goals"}


def _extras(h: dict[str, Any]) -> str:
    """A ratio headline's further figures and requirements (``requires_*``: met / missed), in its order."""
    parts = []
    for key, value in h.items():
        if key in STANDARD_KEYS:
            continue
        name = key.removeprefix("requires_").replace("_", " ")
        if key.startswith("requires_"):
            parts.append(f"{name}: {'met' if value else '**missed**'}")
        elif isinstance(value, float):
            parts.append(f"{name} {value:.3g}")
        else:
            parts.append(f"{name} {value}")
    return "; " + "; ".join(parts) if parts else ""


def _goal_ratio(goal: object) -> float | None:
    """The ratio a ``">= 3x"`` goal asks for; ``None`` for a goal of another form."""
    m = re.fullmatch(r">= ([0-9.]+)x", str(goal))
    return float(m[1]) if m else None


def _ratio_met(h: dict[str, Any]) -> bool:
    """Whether the ratio meets its own goal (``">= 3x"``). ``h["met"]`` also needs every ``requires_*``, which
    the line lists one by one, so a ratio over its goal is not called missed because another goal was."""
    goal = _goal_ratio(h["goal"])
    return bool(h["ratio"] >= goal) if goal is not None else bool(h["met"])


def benchmarks() -> str:
    lines = []
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        h = d.get("headline") or _legacy_headline(path.stem, d)
        if h is None:
            continue
        if "goals" in h:  # absolute goals (no baseline to divide by)
            parts = "; ".join(
                f"{g['name']} {g['value']:.4g}{(' ' + g['unit']) if g['unit'] else ''} (goal {g['goal']}: "
                f"{'met' if g['met'] else '**missed**'})"
                for g in h["goals"]
            )
            lines.append(f"- `{path.relative_to(REPO)}` ({_commit(d)}): {h['what']}: {parts}.")
            continue
        verdict = "met" if _ratio_met(h) else "**missed**"
        lines.append(
            f"- `{path.relative_to(REPO)}` ({_commit(d)}): {h['what']}: **{h['ratio']:.2f}x** against {h['baseline']}; "
            f"goal {h['goal']}: {verdict}{_extras(h)}."
        )
    return "\n".join(lines) or "No results committed."


def _why_train(d: dict[str, Any]) -> str:
    flop, frac = d["gflop_per_step"], d["fraction_of_matmul_peak"]
    goal = _goal_ratio(d["headline"]["goal"])
    if goal is None:
        raise ValueError(f"train_throughput's goal {d['headline']['goal']!r} is not of the form '>= Nx'")
    needed = goal * frac["authors"] * flop["robustdx"] / flop["authors"]
    return (
        f"robustdx's attack takes input gradients only, so its step is {flop['robustdx']:.0f} GFLOP against the "
        f"authors' {flop['authors']:.0f}, and it runs at {frac['robustdx']:.0%} of the measured matmul peak "
        f"({d['matmul_peak_gflop_per_s']:.0f} GFLOP/s) against their {frac['authors']:.0%}; at this arithmetic "
        f"{goal:g}x would need {needed:.0%} of peak"
    )


def _why_robust(d: dict[str, Any]) -> str:
    parts = []
    for eps, r in d["results"].items():
        acc, sec = r["robust_acc"], r["seconds_per_image"]
        parts.append(
            f"at {eps} robust accuracy {acc['robustdx']:.3f} vs {acc['torchattacks']:.3f}, "
            f"{sec['robustdx']['median']:.3f} vs {sec['torchattacks']['median']:.3f} s an image"
        )
    return "; ".join(parts) + " (robustdx vs torchattacks)"


def _why_ig(d: dict[str, Any]) -> str:
    return f"steps for the accuracy target: robustdx {d['steps']['robustdx']}, captum {d['steps']['captum']}"


def _why_serve(d: dict[str, Any]) -> str:
    rss = [mb for _, mb in d["memory"]["rss_mb_every_1000"]]
    flat = next(i for i in range(len(rss)) if max(rss[i:]) - min(rss[i:]) < 1.0)  # from here on within 1 MB
    return (
        f"bare model {d['bare_model_images_per_s']['median']:.0f} images/s; worker RSS {rss[0]:.0f} MB at the start, "
        f"{rss[-1]:.0f} MB after {(len(rss) - 1) * 1000:,} requests, within 1 MB of that from {flat * 1000:,} on"
    )


def _why_reliability(d: dict[str, Any]) -> str:
    rss = d["rss_mb"]
    return (
        f"worker RSS {rss['before']:.0f} MB before the attack, {rss['right_after']:.0f} right after, "
        f"{rss['after_settle']:.0f} settled"
    )


WHY: dict[str, Callable[[dict[str, Any]], str]] = {
    "train_throughput": _why_train,
    "robust_eval": _why_robust,
    "ig_latency": _why_ig,
    "serve_load": _why_serve,
    "service_reliability": _why_reliability,
}


def benchmark_details() -> str:
    """The figures behind each result's verdict (what the README's reasons for a missed goal rest on)."""
    lines = []
    for path in sorted(RESULTS.glob("*.json")):
        detail = WHY.get(path.stem)
        if detail is not None:
            d = json.loads(path.read_text())
            lines.append(f"- `{path.stem}` ({_commit(d)}): {detail(d)}.")
    return "\n".join(lines) or "No results committed."


FIGURES: dict[str, Callable[[], str]] = {"timings": timings, "benchmarks": benchmarks, "benchmark-details": benchmark_details}


def render(text: str) -> str:
    """``text`` with every figure block re-rendered; an unknown block name is an error."""

    def one(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in FIGURES:
            raise KeyError(f"README figure {name!r} has no renderer in docs/figures.py (known: {', '.join(FIGURES)})")
        body = FIGURES[name]()
        sep = "\n" if "\n" in m.group("body") else ""
        return f"{m.group(1)}{sep}{body}{sep}{m.group(4)}"

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the README's figures differ from their artifacts")
    args = ap.parse_args(argv)
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README figures are stale: run `python docs/figures.py` (or `make timings`)", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
