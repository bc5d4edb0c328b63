"""``robustdx feedback-study``: what retraining on clinicians' feedback buys on real data after a stain shift.

Why it exists: the end-to-end loop test (tests/e2e/test_feedback_loop.py) proves the machinery on synthetic
images; this measures it on real patches. The study replays the loop through the same code the service and
the retrain flow use — the inference log and content-addressed image store (:mod:`robustdx.core.feedback`),
``build_snapshot``, and :func:`run_recipe` training from that snapshot — without HTTP:

1. model **A** trains on the base training split (the run config as given);
2. the test split is split, by a seeded permutation, into a *production stream* and *held-out* items;
3. each stream image is stain-shifted (``clip(x * tint + brightness)``, a scanner/stain change outside the
   training range), encoded as PNG, stored, predicted by A and logged, and labelled with its true label by
   a reviewer (the clinician's answer);
4. a data snapshot freezes the base set plus that feedback (a hash-chosen share held out as *recent*);
5. model **B** trains from the snapshot with the same recipe, budget and seed as A;
6. A and B are scored on the held-out items, stain-shifted and as they are (the same items, paired): clean
   accuracy and per-class recall with Wilson intervals, and robust accuracy (the run's evaluation attack)
   on a seeded subsample; B against A by the exact McNemar test.

Every step is resumable: A and B resume or are reused (their run folders), the feedback log is written once
(a marker file), and the snapshot of the same data has the same id.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from robustdx.core.config import FeedbackStudyConfig, RunConfig, parse_config
from robustdx.core.data import build_splits
from robustdx.core.data.base import ImageDataset, Records
from robustdx.core.data.synthetic import apply_stain
from robustdx.core.evaluation import statistics as st
from robustdx.core.evaluation.experiment import run_environment
from robustdx.core.evaluation.metrics import predict
from robustdx.core.evaluation.robustness import EvalConfig, robust_accuracy
from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.snapshot import build_snapshot
from robustdx.core.feedback.store import FeedbackStore, InferenceRecord, sqlite_url
from robustdx.core.release.bundle import load_bundle
from robustdx.core.training.recipes import RunResult, run_recipe
from robustdx.core.util import atomic_write_bytes, jsonable, markdown_table, resolve_device

Log = Callable[[str], None]
REVIEWER = "study.reviewer"
LOGGED = "LOGGED"  # marker: the production stream and its feedback are in the inference log


def shifted_png(image: Image.Image, tint: tuple[float, float, float], brightness: float) -> bytes:
    """``image`` recoloured (:func:`apply_stain`) and encoded as PNG, as a client would send it."""
    x = apply_stain(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0, np.asarray(tint), brightness)
    buf = io.BytesIO()
    Image.fromarray((x * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _open_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def shifted_records(records: Records, tint: tuple[float, float, float], brightness: float) -> Records:
    """``records`` with every image stain-shifted the way :func:`shifted_png` sends it (PNG round trip)."""

    def load(loader: Callable[[], Image.Image]) -> Image.Image:
        return _open_png(shifted_png(loader(), tint, brightness))

    return Records(
        loaders=[partial(load, ld) for ld in records.loaders],
        labels=records.labels,
        groups=records.groups,
        names=records.names,
    )


def stream_and_held_out(n: int, n_stream: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the production stream and of the held-out items of a test split of ``n`` (disjoint).

    Raises:
        ValueError: the stream would leave fewer than 10 held-out items.
    """
    if n - n_stream < 10:
        raise ValueError(f"n_feedback={n_stream} leaves {n - n_stream} of the {n} test images held out; at least 10 must be")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:n_stream]), np.sort(order[n_stream:])


def _run_config(base: RunConfig, name: str, output_dir: Path, **data: Any) -> RunConfig:
    raw = base.model_dump(mode="json")
    raw.update(name=name, output_dir=str(output_dir))
    raw["data"].update(data)
    return parse_config(raw)


def log_feedback(
    model: nn.Module,
    version: str,
    records: Records,
    transform: Callable[..., Any],
    class_names: list[str],
    study: FeedbackStudyConfig,
    store: FeedbackStore,
    images: ImageStore,
    device: torch.device,
) -> dict[str, Any]:
    """Send the production stream through what the service does (store the shifted PNG, predict, log) and
    record each image's true label as a reviewer's answer; returns agreement counts."""
    model.eval()
    rows, labels = [], []
    for i in range(len(records)):
        png = shifted_png(records.loaders[i](), study.shift.tint, study.shift.brightness)
        sha, _path = images.put(png)
        with torch.no_grad():
            probs = torch.softmax(model(transform(_open_png(png))[None].to(device)).float(), 1)[0].cpu().numpy()
        k = int(probs.argmax())
        rows.append(InferenceRecord(
            request_id=f"study-{i:05d}", created_at=datetime.now(UTC), model_version=version, model_tag=f"robustdx:{version}",
            image_sha256=sha, image_stored=True, prediction=class_names[k],
            probabilities={c: float(p) for c, p in zip(class_names, probs, strict=True)},
            confidence=float(probs[k]), referred=True,
        ))  # fmt: skip
        labels.append(class_names[int(records.labels[i])])
    store.log_inferences(rows)
    for row, label in zip(rows, labels, strict=True):
        store.add_feedback(row.request_id, REVIEWER, label)
    agree = sum(r.prediction == lab for r, lab in zip(rows, labels, strict=True))
    return {"n": len(rows), "agree": agree, "agreement": agree / len(rows)}


def _score(
    model: nn.Module, data: ImageDataset, cfg: RunConfig, study: FeedbackStudyConfig, device: torch.device
) -> dict[str, Any]:
    probs, labels, _ = predict(model, DataLoader(data, batch_size=cfg.data.eval_batch_size), device)
    correct = probs.argmax(1) == labels
    n_classes = probs.shape[1]
    robust = robust_accuracy(
        model, data, cfg.eval_attack, EvalConfig(max_n=study.n_robust, seed=study.seed, batch_size=cfg.data.eval_batch_size,
                                                 n_boot=study.n_boot),
        device=device,
    )  # fmt: skip
    n_robust = robust["n"]
    k_robust = int(sum(robust["robust_correct"]))
    return {
        "n": int(correct.size),
        "accuracy": st.proportion(int(correct.sum()), int(correct.size)).to_json(),
        "balanced_accuracy": st.balanced_accuracy(probs.argmax(1), labels, n_classes),
        "recall": [r.to_json() for r in st.per_class_recall(probs.argmax(1), labels, n_classes)],
        "robust": {
            "attack": robust["attack"],
            "eps": robust["eps_label"],
            "n": n_robust,
            "accuracy": st.proportion(k_robust, n_robust).to_json(),
            "items": robust["items"],
            "robust_correct": robust["robust_correct"],
        },  # fmt: skip
        "correct": [bool(c) for c in correct],
        "labels": [int(v) for v in labels],
    }


def _compare(a: dict[str, Any], b: dict[str, Any], class_names: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """B against A on the same items: exact McNemar on clean and on robust correctness, and on the clean correctness
    of each class's items (its recall: a model can gain accuracy by trading one class for another; difference = B - A)."""
    assert a["robust"]["items"] == b["robust"]["items"] and a["labels"] == b["labels"], "A and B must see the same items"
    ca, cb, labels = np.asarray(a["correct"], float), np.asarray(b["correct"], float), np.asarray(a["labels"])
    out = {
        "clean": st.exact_sign_test(cb, ca, n_boot, seed),
        "robust": st.exact_sign_test(
            np.asarray(b["robust"]["robust_correct"], float), np.asarray(a["robust"]["robust_correct"], float), n_boot, seed
        ),
    }
    for k, name in enumerate(class_names):
        if (labels == k).any():
            out[f"recall {name}"] = st.exact_sign_test(cb[labels == k], ca[labels == k], n_boot, seed)
    return out


def _machine(env: dict[str, Any]) -> str:
    """The device line of a report (reports before ``threads`` was a field of its own say it in ``device``)."""
    return f"{env['device']}, {env['threads']} threads" if "threads" in env else str(env["device"])


def _pct(p: dict[str, Any]) -> str:
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]" if p.get("value") is not None else "—"


def _write_report(out: Path, result: dict[str, Any]) -> Path:
    rows = []
    for setting in ("shifted", "base"):
        for model in ("A", "B"):
            s = result["scores"][model][setting]
            rows.append({
                "images": setting, "model": model, "n": s["n"], "accuracy [95% CI]": _pct(s["accuracy"]),
                "balanced acc.": f"{s['balanced_accuracy']:.3f}",
                **{f"recall {c}": _pct(r) for c, r in zip(result["class_names"], s["recall"], strict=True)},
                f"robust acc. ({s['robust']['attack']} @ {s['robust']['eps']}, n={s['robust']['n']})":
                    _pct(s["robust"]["accuracy"]),
            })  # fmt: skip
    cmp_rows = [
        {"images": setting, "what": what, "B - A": f"{c['difference']:+.3f}",
         "95% CI": f"[{c['difference_ci'][0]:+.3f}, {c['difference_ci'][1]:+.3f}]",
         "B better / A better": f"{c['a_better']} / {c['b_better']}", "McNemar p": f"{c['p_value']:.2g}"}
        for setting in ("shifted", "base") for what, c in result["comparison"][setting].items()
    ]  # fmt: skip
    s = result["study"]
    fb, snap = result["feedback"], result["snapshot"]
    text = f"""# {s["name"]}: retraining on clinicians' feedback after a stain shift

Generated by `robustdx feedback-study -c {result["config_path"]}` at commit `{result["environment"]["commit"]}`
({_machine(result["environment"])}, {result["elapsed_s"] / 60:.0f} min). The numbers are in `report.json`.

**Set-up.** Model A ({result["recipe"]}, {result["arch"]} @ {result["image_size"]} px) trained on the base
training split ({snap["base_n"]} images). {fb["n"]} test images, stain-shifted (tint {list(s["shift"]["tint"])},
brightness {s["shift"]["brightness"]:+}), went through the inference log and image store; A agreed with their
true labels on {fb["agreement"]:.3f} of them; each got its true label as a reviewer's answer. Snapshot
`{snap["id"]}` holds the base set plus {snap["feedback_train"]} of them for training (each {snap["feedback_repeat"]}x an
epoch) and {snap["recent"]} held out as *recent*. Model B trained from it: same recipe, budget and seed.
Scored on {result["n_held_out"]} other test images (never logged), shifted and as they are — the same
items for both models.

{markdown_table(rows, list(rows[0]))}

**B against A** (paired, exact McNemar, p unadjusted; difference = B − A with a paired bootstrap interval; a
class's recall compares the two models on that class's items):

{markdown_table(cmp_rows, list(cmp_rows[0]))}

## What these numbers support

{chr(10).join(f"- {line}" for line in result["findings"])}

## What they do not support

- One training seed and one stain per report: the gain for other stains, scanners or amounts of feedback
  is not measured here, and the intervals are over test items, not over training runs.
- B trained on more images a pass than A (base + feedback), so its budget in optimiser steps is larger;
  the study measures *retraining on feedback* against *not retraining*, not against retraining on the
  base set alone.
- The production stream and the held-out images are drawn from the same test split: where that split shares
  slides or patients, part of B's gain — most plausibly the gain on images without the shift — comes from
  having trained on that split, not from learning the stain.
- The labels are the data set's own: real clinicians disagree, and disputed answers are left out of a
  snapshot until reviewers agree.
"""
    path = out / "README.md"
    atomic_write_bytes(path, lambda p: p.write_text(text))
    return path


def rewrite_report(study: FeedbackStudyConfig, base: RunConfig) -> Path:
    """Redo the paired comparisons from a finished study's per-item scores and render README.md again (trains and
    attacks nothing). A report written before the scores kept the items' labels gets them from the test split.

    Raises:
        FileNotFoundError: the study has not finished yet.
    """
    out = Path(study.output_dir) / study.name
    path = out / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run the study first (robustdx feedback-study -c ...)")
    result = json.loads(path.read_text())
    scores = result["scores"]
    if any("labels" not in scores[m][s] for m in scores for s in scores[m]):
        labels = build_splits(base.data).test.records.labels[np.asarray(result["held_out_items"])]
        for m in scores:
            for s in scores[m]:
                scores[m][s]["labels"] = [int(v) for v in labels]
    result["comparison"] = {
        s: _compare(scores["A"][s], scores["B"][s], result["class_names"], study.n_boot, study.seed) for s in scores["A"]
    }
    result["findings"] = findings(result["comparison"])
    atomic_write_bytes(path, lambda p: p.write_text(json.dumps(jsonable(result), indent=1)))
    return _write_report(out, result)


def findings(comparison: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """Plain sentences for what the paired tests support at level ``alpha``, Holm-corrected over every comparison
    of the report (accuracy, robust accuracy and each class's recall, shifted and not)."""
    tests = [(setting, what, c) for setting in ("shifted", "base") for what, c in comparison[setting].items()]
    adjusted, rejected = st.holm([c["p_value"] for _s, _w, c in tests], alpha)
    words = {"shifted": "stain-shifted held-out images", "base": "held-out images without the shift"}
    out = []
    for (setting, what, c), p, reject in zip(tests, adjusted, rejected, strict=True):
        noun = {"clean": "accuracy", "robust": "robust accuracy"}.get(what, what.replace("recall ", "recall of "))
        d, (lo, hi) = c["difference"], c["difference_ci"]
        numbers = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}], Holm-adjusted p = {p:.2g}"
        if reject:
            out.append(f"B's {noun} on {words[setting]} is {'higher' if d > 0 else 'lower'} than A's: {numbers}.")
        else:
            out.append(f"No difference in {noun} on {words[setting]} is shown: {numbers}.")
    return out


def run_feedback_study(study: FeedbackStudyConfig, base: RunConfig, config_path: Path | str, log: Log = lambda _m: None) -> Path:
    """Run (or resume) the study and write ``output_dir/name/{report.json,README.md}``; returns the README."""
    started = time.perf_counter()
    out = Path(study.output_dir) / study.name
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(base.device)
    environment = run_environment()  # the commit whose code this process runs (read before it can move on)

    runs = Path(study.runs_dir) if study.runs_dir is not None else out / "runs"
    log("model A: the base training split")
    a: RunResult = run_recipe(_run_config(base, "A", runs), log=log)
    splits = build_splits(base.data)
    test = splits.test
    stream, held = stream_and_held_out(len(test), study.n_feedback, study.seed)

    folder = out / "feedback"
    store, images = FeedbackStore(sqlite_url(folder / "inference.db")), ImageStore(folder / "images")
    marker = folder / LOGGED
    if not marker.is_file():  # a half-written log (a kill) is started again: the ids and labels are the same
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
        store = FeedbackStore(sqlite_url(folder / "inference.db"))
        store.migrate()
        log(f"production stream: {len(stream)} stain-shifted test images through the inference log, with feedback")
        fb = log_feedback(a.model.to(device), load_bundle(a.bundle).version, test.records.subset(stream), test.transform,
                          splits.class_names, study, store, images, device)  # fmt: skip
        marker.write_text(json.dumps({**fb, "until": datetime.now(UTC).isoformat()}))
    logged = json.loads(marker.read_text())
    snap = build_snapshot(base.data, store, images, out / "snapshots", until=datetime.fromisoformat(logged["until"]),
                          recent_share=study.recent_share)  # fmt: skip
    store.close()
    log(f"model B: snapshot {snap.id} ({snap.manifest['feedback']['n']} feedback images)")
    b = run_recipe(_run_config(base, study.b_name, runs, snapshot=str(snap.path), feedback_repeat=study.feedback_repeat), log=log)

    held_records = test.records.subset(held)
    sets = {
        "shifted": ImageDataset(shifted_records(held_records, study.shift.tint, study.shift.brightness), test.transform),
        "base": ImageDataset(held_records, test.transform),
    }
    scores: dict[str, dict[str, Any]] = {}
    for name, run in (("A", a), ("B", b)):
        model = run.model.to(device)
        scores[name] = {}
        for setting, data in sets.items():
            log(f"scoring {name} on {len(data)} held-out images ({setting})")
            scores[name][setting] = _score(model, data, base, study, device)
    comparison = {s: _compare(scores["A"][s], scores["B"][s], splits.class_names, study.n_boot, study.seed) for s in sets}
    manifest = snap.manifest
    result = {
        "study": study.model_dump(mode="json"),
        "config_path": str(config_path),
        "recipe": str(base.recipe), "arch": str(base.model.arch), "image_size": base.data.image_size,
        "class_names": splits.class_names,
        "models": {m: {"run": str(r.run_dir), "version": load_bundle(r.bundle).version} for m, r in (("A", a), ("B", b))},
        "feedback": logged,
        "snapshot": {"id": snap.id, "base_n": manifest["base"]["n"], "feedback_repeat": study.feedback_repeat,
                     "feedback_train": sum(manifest["feedback"]["per_class"]["train"].values()),
                     "recent": sum(manifest["feedback"]["per_class"]["recent"].values())},
        "n_held_out": len(held),
        "held_out_items": [int(i) for i in held],
        "scores": scores,
        "comparison": comparison,
        "findings": findings(comparison),
        "environment": environment,
        "elapsed_s": time.perf_counter() - started,
    }  # fmt: skip
    atomic_write_bytes(out / "report.json", lambda p: p.write_text(json.dumps(jsonable(result), indent=1)))
    return _write_report(out, result)
