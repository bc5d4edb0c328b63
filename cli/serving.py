"""Serving and explaining: ``serve`` (the BentoML service in the foreground), ``serve-demo`` (serve, call
/predict and /explain, stop) and ``explain IMAGE`` (a prediction and its IG heatmap without a service)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from robustdx.cli.common import HomeOpt, console, fail
from robustdx.core.errors import BundleError

if TYPE_CHECKING:
    from robustdx.core.release.bundle import Bundle


def serve(
    home: HomeOpt = None,
    tag: Annotated[str | None, typer.Option(help="Serve this stored tag instead of the production pointer (pinned).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind (0.0.0.0 to listen on every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the HTTP API (Swagger UI at /).")] = 3000,
) -> None:
    """Serve the production model (or --tag) with `bentoml serve` in the foreground until Ctrl-C.

    Settings come from ROBUSTDX_* variables (README, "Service"); the admin token of POST /admin/reload from
    ROBUSTDX_ADMIN_TOKEN. Refuses to start when there is nothing to serve.
    """
    from robustdx.core.release.pointer import bentoml_home, resolve_tag
    from robustdx.core.release.store import load_bundle_from_store

    env = {**os.environ, "BENTOML_HOME": str(bentoml_home(home))}
    if tag:
        env["ROBUSTDX_MODEL_TAG"] = tag
    try:
        chosen = resolve_tag(env["BENTOML_HOME"], env)
        load_bundle_from_store(chosen, env["BENTOML_HOME"])  # fail here, with the reason, not in a restarting worker
    except (LookupError, BundleError, FileNotFoundError) as err:
        fail(f"{err} (train and promote a model first, e.g. `make demo`)")
    from robustdx.service.local import SERVICE, bentoml_executable

    exe = bentoml_executable()
    if exe is None:
        fail("bentoml is not installed: pip install 'robustdx[serve]'")
    console.print(f"serving {chosen} from {env['BENTOML_HOME']} on http://{host}:{port} (Ctrl-C stops)")
    sys.stdout.flush()
    os.execve(exe, [exe, "serve", SERVICE, "--host", host, "--port", str(port)], env)


def serve_demo(
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle to put in production without the gates (default: serve production).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where the answers and heatmaps go.")] = Path("runs/demo/serve"),
    data: Annotated[Path, typer.Option(help="Synthetic data (demo image).")] = Path("data/synthetic/camelyon17"),
    keep_seconds: Annotated[float, typer.Option(min=0, help="Keep the service up this long before stopping.")] = 0.0,
) -> None:
    """Serve a model with BentoML on a free 127.0.0.1 port, call /predict and /explain (with a PGD attack at the
    model's ε), save the answers and heatmaps, print a few metrics, stop. The serving half of `make demo`."""
    from robustdx.service.demo import run_demo

    raise typer.Exit(run_demo(bundle, out, data, keep_seconds))


def _load_model(bundle: Path | None, home: Path | None) -> tuple[str, Bundle]:
    """The bundle given, else the production model of the store (what the service would serve)."""
    from robustdx.core.release.bundle import load_bundle
    from robustdx.core.release.pointer import resolve_tag
    from robustdx.core.release.store import load_bundle_from_store

    if bundle is not None:
        return str(bundle), load_bundle(bundle)
    tag = resolve_tag(home)
    return tag, load_bundle_from_store(tag, home)


def explain(
    image: Annotated[Path, typer.Argument(help="PNG or JPEG image to classify and explain.")],
    bundle: Annotated[Path | None, typer.Option(help="Bundle folder (default: the production model of the store).")] = None,
    home: HomeOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the heatmaps and explanation.json.")] = Path(
        "runs/explain"
    ),
    baseline: Annotated[str, typer.Option(help="IG baseline: black, blur or noise.")] = "black",
    ig_steps: Annotated[int, typer.Option(min=4, max=512, help="Gauss-Legendre points of the IG path integral.")] = 64,
    attack_eps: Annotated[
        str, typer.Option(help="If > 0, also explain a PGD-attacked copy; L∞ budget on [0, 1] pixels, e.g. 8/255.")
    ] = "0",
    attack_steps: Annotated[int, typer.Option(min=1, max=200, help="PGD steps of the attack.")] = 10,
) -> None:
    """Classify one image and explain it with Integrated Gradients: writes the image beside its attribution overlay
    (heatmap.png) and explanation.json; with --attack-eps, the same for a PGD-attacked copy (attacked.png,
    heatmap_attacked.png). Same preprocessing as the service."""
    import torch

    from robustdx.core.config.base import check_pixel_budget, parse_fraction
    from robustdx.service.imaging import ImageError, ImageLimits, decode, to_tensor

    if baseline not in ("black", "blur", "noise"):
        raise typer.BadParameter(f"{baseline!r} is not one of black, blur, noise", param_hint="--baseline")
    try:
        eps = check_pixel_budget(float(parse_fraction(attack_eps)))
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--attack-eps") from None
    try:
        name, b = _load_model(bundle, home)
        x = to_tensor([decode(image, ImageLimits(), b.config.data.image_size)], b.config.data.image_size)
    except (LookupError, BundleError, ImageError, FileNotFoundError) as err:
        fail(err)
    classes = list(b.data_card.get("classes") or [str(i) for i in range(b.config.model.num_classes)])
    out.mkdir(parents=True, exist_ok=True)
    clean = _explain_one(b, x, classes, baseline, ig_steps, out / "heatmap.png")
    result: dict[str, Any] = {"image": str(image), "model": name, "clean": clean}
    if eps > 0:
        from robustdx.core.attacks import attack_ce
        from robustdx.core.config import AttackConfig

        y = torch.tensor([classes.index(result["clean"]["label"])])
        x_adv = attack_ce(b.model, x, y, AttackConfig(eps=eps, steps=attack_steps))
        _save_image(x_adv[0], out / "attacked.png")
        adv = _explain_one(b, x_adv, classes, baseline, ig_steps, out / "heatmap_attacked.png")
        result["attack"] = {"eps": eps, "steps": attack_steps, **adv, "flipped": adv["label"] != result["clean"]["label"]}
    (out / "explanation.json").write_text(json.dumps(result, indent=2))
    console.print(f"{image.name}: [bold]{clean['label']}[/] (p={clean['probability']:.3f}) by {name}")
    console.print(
        f"IG ({baseline} baseline, {ig_steps} points): completeness error {clean['relative_error']:.2%} → {clean['heatmap']}"
    )
    if "attack" in result:
        a = result["attack"]
        console.print(
            f"PGD ε={eps * 255:.1f}/255, {attack_steps} steps: [bold]{a['label']}[/] (p={a['probability']:.3f}, "
            f"{'flipped' if a['flipped'] else 'not flipped'}) → {a['heatmap']}"
        )
    console.print(f"explanation: {out / 'explanation.json'}")


def _save_image(x: Any, path: Path) -> None:
    """``[3, H, W]`` in [0, 1] as an 8-bit RGB PNG (what a client would send back to the service)."""
    from PIL import Image

    Image.fromarray((x.detach().clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()).save(path)


def _explain_one(b: Bundle, x: Any, classes: list[str], baseline: str, steps: int, heatmap: Path) -> dict[str, Any]:
    """Prediction and IG overlay of one image (``x`` is ``[1, 3, H, W]``)."""
    import torch

    from robustdx.core.explain.ig import integrated_gradients
    from robustdx.core.explain.maps import attribution_map
    from robustdx.core.explain.plots import save_overlay

    with torch.no_grad():
        probs = torch.softmax(b.model(x).float(), 1)[0]
    k = int(probs.argmax())
    attr = integrated_gradients(b.model, x, target=k, baseline=baseline, n_steps=steps)
    save_overlay(x[0], attribution_map(attr.attributions)[0], heatmap, title=f"{classes[k]} (p={float(probs[k]):.3f})")
    return {
        "label": classes[k],
        "probability": float(probs[k]),
        "probabilities": {c: float(p) for c, p in zip(classes, probs.tolist(), strict=True)},
        "relative_error": float(attr.rel_error[0]),
        "convergence_delta": float(attr.delta[0]),
        "heatmap": str(heatmap),
    }


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command()(serve)
    app.command("serve-demo")(serve_demo)
    app.command()(explain)
