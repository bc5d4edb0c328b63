"""The model card (``MODEL_CARD.md``) of a bundle, written from its config, metrics and data card.

Why: a medical classifier must travel with what it is for, what it must not be used for, what it
learned from and how well it does *per class and per group, with intervals* — not only a JSON blob.
The card is rendered once at training time into the bundle (hashed with the rest, so it cannot be
edited without the bundle being refused) and served by ``GET /model/card``. Every number is copied
from ``metrics.json``; what the bundle did not measure is said to be unmeasured, never filled in.
"""

from __future__ import annotations

from typing import Any

from robustdx.core.config import RunConfig
from robustdx.core.config.run import Recipe
from robustdx.core.release.bundle import Bundle

MODALITY = {
    "camelyon17": "haematoxylin-and-eosin stained lymph-node histopathology patches (WILDS Camelyon17 layout)",
    "pcam": "haematoxylin-and-eosin stained lymph-node histopathology patches (PatchCamelyon)",
    "busi": "breast ultrasound images (BUSI)",
}
ADVERSARIAL = {Recipe.ADV_CE, Recipe.ADV_CE_FT, Recipe.ADV_SUPCON, Recipe.ADV_SUPCON_FT}


def _pct(share: dict[str, Any] | None) -> str:
    """``81.2% [74.0, 87.1] (n=128)`` of a ``{"n", "value", "ci"}`` record; ``—`` when not measured."""
    if not share or share.get("value") is None:
        return "— (n=0)" if share else "—"
    lo, hi = share["ci"]
    return f"{100 * share['value']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={share['n']})"


def _eps(eps: float) -> str:
    levels = eps * 255
    return f"{levels:.0f}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


def _names(data_card: dict[str, Any], key: str, n: int) -> list[str]:
    names = list(data_card.get(key) or [])
    return names + [str(i) for i in range(len(names), n)]


def _data_section(cfg: RunConfig, data_card: dict[str, Any]) -> list[str]:
    classes = _names(data_card, "classes", cfg.model.num_classes)
    lines = [
        "## Training data",
        "",
        f"- Data set: `{cfg.data.dataset}` — {MODALITY.get(str(cfg.data.dataset), str(cfg.data.dataset))}; "
        f"images resized to {cfg.data.image_size} × {cfg.data.image_size} px.",
        f"- Classes: {', '.join(f'`{c}`' for c in classes)}.",
    ]
    if "cv_fold" in data_card:
        lines.append(f"- Cross-validation fold {data_card['cv_fold']} of {data_card['cv_folds']} (patient-free random split).")
    splits = data_card.get("splits") or {}
    if splits:
        lines += ["", "| split | images | per class | per group |", "|---|---|---|---|"]
        groups = _names(data_card, "groups", 0)
        for name, s in splits.items():
            per_class = ", ".join(f"{classes[i]} {n}" for i, n in enumerate(s.get("per_class", [])))
            per_group = ", ".join(
                f"{groups[int(g)] if int(g) < len(groups) else g} {n}" for g, n in (s.get("per_group") or {}).items()
            )
            lines.append(f"| {name} | {s.get('n', '—')} | {per_class or '—'} | {per_group or '—'} |")
    if data_card.get("test_ids_sha256"):
        lines.append(f"\nTest items (SHA-256 of their ids): `{data_card['test_ids_sha256']}`.")
    snap = data_card.get("snapshot")
    if snap:
        what = ("the base training set alone (no clinician feedback)" if snap.get("base_only") else
                f"the base set plus {snap.get('feedback_train')} clinician-labelled images (each {snap.get('feedback_repeat')}x "
                f"an epoch), {snap.get('recent')} held out as recent, feedback up to {snap.get('until')}")  # fmt: skip
        lines.append(f"\nData snapshot `{snap['id']}`: {what}.")
    return lines


def _training_section(cfg: RunConfig, metrics: dict[str, Any]) -> list[str]:
    stages = metrics.get("stages") or []
    lines = [
        "## Training",
        "",
        f"- Recipe `{cfg.recipe}` on a `{cfg.model.arch}` encoder, seed {cfg.seed}; stages: "
        + (", ".join(f"{s.get('regime')} (best epoch {s.get('best_epoch')})" for s in stages) or "not recorded")
        + ".",
    ]
    if cfg.recipe in ADVERSARIAL:
        a = cfg.attack
        lines.append(
            f"- Adversarial training: {a.name.upper()} at ε = {_eps(float(a.eps))} (L∞, {a.space} space), {a.steps} steps."
        )
    else:
        lines.append("- No adversarial training: any robustness below is not a training objective of this model.")
    return lines


def _results_section(cfg: RunConfig, metrics: dict[str, Any], data_card: dict[str, Any]) -> list[str]:
    test, robust = metrics.get("test") or {}, metrics.get("robust")
    if "acc" not in test:
        return ["## Results", "", "This bundle holds an encoder without a classifier head: no classification results."]
    lines = [
        "## Results (test split, 95% intervals)",
        "",
        f"- Accuracy {100 * test['acc']:.1f}%, balanced accuracy {100 * test['bal_acc']:.1f}%, "
        f"AUC {test['auc']:.3f}, expected calibration error {test['ece']:.3f}.",
    ]
    if robust:
        lo, hi = robust["ci"]
        lines.append(
            f"- Robust accuracy under {robust['attack']} at ε = {robust.get('eps_label') or _eps(robust['eps'])}: "
            f"{100 * robust['robust_acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] on {robust['n']} test images "
            f"(clean accuracy on the same images {100 * robust['clean_acc']:.1f}%)."
        )
    detail = metrics.get("breakdown")
    if not detail:
        lines.append("\nPer-class and per-group results were not recorded by this bundle (trained by an older robustdx).")
        return lines
    classes = _names(data_card, "classes", len(detail["classes"]))
    lines += ["", "| class | clean recall | robust recall |", "|---|---|---|"]
    lines += [f"| {classes[r['class']]} | {_pct(r['clean'])} | {_pct(r['robust'])} |" for r in detail["classes"]]
    if detail.get("groups"):
        groups = _names(data_card, "groups", 0)
        lines += ["", "| group | clean accuracy | robust accuracy |", "|---|---|---|"]
        for r in detail["groups"]:
            g = int(r["group"])
            lines.append(f"| {groups[g] if g < len(groups) else g} | {_pct(r['clean'])} | {_pct(r['robust'])} |")
    return lines


def _limitations(cfg: RunConfig, metrics: dict[str, Any], data_card: dict[str, Any]) -> list[str]:
    lines = ["## Known limitations", ""]
    robust = metrics.get("robust") or {}
    if robust.get("n", 0) and robust["n"] < 400:
        lo, hi = robust["ci"]
        lines.append(f"- The robust accuracy rests on {robust['n']} images: its interval is {100 * (hi - lo):.0f} points wide.")
    detail = metrics.get("breakdown") or {}
    weak = [r for r in detail.get("classes", []) if r["robust"].get("value") is not None and r["robust"]["value"] < 0.5]
    classes = _names(data_card, "classes", len(detail.get("classes", [])))
    for r in weak:
        lines.append(
            f"- Under attack, class `{classes[r['class']]}` keeps only {100 * r['robust']['value']:.0f}% recall: "
            "the overall robust accuracy overstates protection for it."
        )
    test = metrics.get("test") or {}
    if "worst_group_acc" in test:
        groups = _names(data_card, "groups", 0)
        g = int(test["worst_group"])
        lines.append(
            f"- Worst group: {groups[g] if g < len(groups) else g} at {100 * test['worst_group_acc']:.1f}% clean accuracy."
        )
    lines += [
        "- Robust accuracy is an upper bound from one white-box attack at one ε: a stronger or adaptive attack can only "
        "lower it, and nothing here is a certified guarantee. The paper tables (`robustdx experiment`) add APGD and "
        "Square (a gradient-masking check) on a fixed item set.",
        "- Attribution sanity (model-randomisation check, deletion/insertion against random orders) is not measured per "
        "bundle; see the paper-table reports. Every `/explain` answer carries its IG completeness error.",
    ]
    if "synthetic" in str(cfg.data.root):
        lines.append("- Trained on **synthetic** images (a demonstration data set): not for any clinical use.")
    return lines


def render_model_card(cfg: RunConfig, metrics: dict[str, Any], data_card: dict[str, Any], version: str) -> str:
    """``MODEL_CARD.md`` of a bundle (Markdown)."""
    eps = (metrics.get("robust") or {}).get("eps", float(cfg.eval_attack.eps))
    modality = MODALITY.get(str(cfg.data.dataset), str(cfg.data.dataset))
    lines = [
        f"# Model card: robustdx `{cfg.recipe}` on `{cfg.data.dataset}` (version `{version}`)",
        "",
        "## Intended use",
        "",
        f"Decision support for clinicians and their ML teams: a second read of {modality}, with an "
        "Integrated-Gradients map that shows which pixels drove the prediction. Predictions below the service's "
        "confidence threshold are marked `refer_to_clinician`.",
        "",
        "## Do not use",
        "",
        "- as the sole basis of a diagnosis or a treatment decision;",
        "- on other modalities, stains, magnifications or image sizes than those above "
        f"(the model sees {cfg.data.image_size} px);",
        "- on a hospital, scanner or population absent from the training data without a local validation "
        "(the service's drift monitor flags a shifted input distribution; it does not validate the model on it);",
        f"- as protection against perturbations larger than ε = {_eps(float(eps))} (L∞ on [0, 1] pixels), the budget "
        "its robustness was measured at.",
        "",
        *_data_section(cfg, data_card),
        "",
        *_training_section(cfg, metrics),
        "",
        *_results_section(cfg, metrics, data_card),
        "",
        *_limitations(cfg, metrics, data_card),
        "",
    ]
    return "\n".join(lines)


def model_card_of(bundle: Bundle) -> str:
    """The bundle's ``MODEL_CARD.md``; rendered from its metrics for a bundle written before model cards."""
    return bundle.model_card or render_model_card(bundle.config, bundle.metrics, bundle.data_card, bundle.version)
