"""The serving half of ``make demo``: serve the production model, call it, stop it.

    robustdx serve-demo --out runs/demo/serve                 # what promotion chose
    robustdx serve-demo --bundle runs/x/bundle --out ...      # force a bundle (no gates)

1. with ``--bundle`` only: saves the bundle into the BentoML model store (``$BENTOML_HOME``, default
   ``~/bentoml``) and points production at it, *bypassing the promotion gates* (a quick look at a
   model; under the promotion lock, recorded as ``forced`` in the audit log, see
   :func:`robustdx.core.release.pointer.force_production`); without it, serves the model the
   promotion flow put in production;
2. starts ``bentoml serve`` on a free 127.0.0.1 port with that model and waits for ``/readyz``;
3. sends one image to ``/predict`` and to ``/explain`` (with a PGD attack at the bundle's ε), saves
   the returned heatmaps as PNG files and the JSON answers beside them;
4. prints where ``/metrics`` is (and a few of the robustdx metrics), then stops the service.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def demo_image(data_root: Path | None, size: int = 96) -> tuple[str, bytes]:
    """A tumour patch of the held-out hospital from the synthetic set, else a freshly drawn one."""
    if data_root is not None:
        meta = data_root / "camelyon17_v1.0" / "metadata.csv"
        if meta.is_file():
            import pandas as pd

            df = pd.read_csv(meta, index_col=0, dtype={"patient": str})
            row = df[(df.tumor == 1) & (df.center == 2)].iloc[0]
            p, n = row.patient, row.node
            path = data_root / "camelyon17_v1.0" / "patches" / f"patient_{p}_node_{n}"
            path = path / f"patch_patient_{p}_node_{n}_x_{row.x_coord}_y_{row.y_coord}.png"
            return path.name, path.read_bytes()
    from robustdx.core.data.synthetic import apply_stain, histology_patch, hospital_stain

    tint, bright = hospital_stain(2)
    img = apply_stain(histology_patch(np.random.default_rng(0), True, size), tint, bright)
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return "synthetic_tumour.png", buf.getvalue()


def rejection_note(home: Path, tag: str) -> str | None:
    """A warning when the last promotion decision rejected its candidate, so the model an earlier run promoted
    is never taken for the one just trained (None when the last decision promoted)."""
    from robustdx.core.release.pointer import read_audit

    last = next((r for r in reversed(read_audit(home)) if r.get("action") in ("promoted", "rejected")), None)
    if last is None or last["action"] != "rejected":
        return None
    return (
        f"note: the last candidate ({last.get('bundle')}) was rejected by the promotion gates; "
        f"{tag} is the model an earlier run promoted ({last.get('summary')})"
    )


def model_to_serve(bundle: Path | None, home: Path) -> str | None:
    """The tag to serve: ``bundle`` forced into production (no gates), else the production model (step 1).

    Prints what it chose; None (after printing the error) when there is no production model."""
    from robustdx.core.release.bundle import weights_sha256
    from robustdx.core.release.pointer import force_production, resolve_tag
    from robustdx.core.release.store import load_bundle_from_store, save_bundle_to_store

    if bundle is not None:
        tag = save_bundle_to_store(bundle, home)
        sha = weights_sha256(load_bundle_from_store(tag, home))
        pointer = force_production(home, tag, reason=f"robustdx serve-demo --bundle {bundle}", weights_sha256=sha)
        print(f"put {tag} in production without the gates (previous: {pointer.previous}); BentoML home {home}")
        return tag
    try:
        tag = resolve_tag(home)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    print(f"serving production model {tag} from BentoML home {home}")
    note = rejection_note(home, tag)
    if note:
        print(note)
    return tag


def call_predict(c: httpx.Client, out: Path, name: str, png: bytes) -> None:
    """POST the image to /predict, save the answer, print the decision."""
    pred = c.post("/predict", files={"images": (name, png, "image/png")})
    pred.raise_for_status()
    (out / "predict.json").write_text(json.dumps(pred.json(), indent=2))
    p = pred.json()[0]
    print(f"/predict  {name}: {p['decision']} (p={p['confidence']:.3f}, margin {p['margin']:.3f}, model {p['model_version']})")


def call_explain(c: httpx.Client, out: Path, name: str, png: bytes, eps: float) -> None:
    """POST the image to /explain with a PGD attack at ``eps``; save the answer and both heatmaps."""
    ex = c.post("/explain", files={"image": (name, png, "image/png")}, data={"attack_eps": str(eps)})
    ex.raise_for_status()
    e = ex.json()
    (out / "explain.json").write_text(json.dumps(e, indent=2))
    (out / "heatmap.png").write_bytes(base64.b64decode(e["attribution"]["heatmap_png_base64"]))
    print(f"/explain  IG delta {e['attribution']['convergence_delta']:.2e}; heatmap -> {out / 'heatmap.png'}")
    if e.get("attack"):
        a = e["attack"]
        (out / "heatmap_attacked.png").write_bytes(base64.b64decode(a["attribution"]["heatmap_png_base64"]))
        print(
            f"          PGD eps={a['eps']:.4f}: {a['prediction']['label']} (flipped: {a['flipped']}); "
            f"heatmap -> {out / 'heatmap_attacked.png'}"
        )


def show_metrics(c: httpx.Client, url: str) -> None:
    """Print a few of the robustdx metrics (after a second, for the monitor to record the calls)."""
    time.sleep(1.0)
    shown = [ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("robustdx_") and "_bucket" not in ln]
    print(f"metrics at {url}/metrics, e.g.:")
    for ln in shown[:8]:
        print(f"  {ln}")


def run_demo(bundle: Path | None, out: Path, data: Path, keep_seconds: float = 0.0) -> int:
    """Steps 1-4 of the module docstring; the exit code (2: no model to serve)."""
    from robustdx.core.release.pointer import bentoml_home
    from robustdx.core.release.store import load_bundle_from_store
    from robustdx.service.local import LocalServer

    home = bentoml_home()
    tag = model_to_serve(bundle, home)
    if tag is None:
        return 2
    eps = float(load_bundle_from_store(tag, home).config.eval_attack.eps)
    out.mkdir(parents=True, exist_ok=True)
    name, png = demo_image(data if data.exists() else None)
    (out / "input.png").write_bytes(png)
    log = Path(tempfile.mkdtemp(prefix="robustdx_serve_")) / "serve.log"
    with LocalServer({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}, log) as srv:
        print(f"serving on {srv.url} (log {log}); OpenAPI docs at {srv.url}/docs")
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            call_predict(c, out, name, png)
            call_explain(c, out, name, png, eps)
            show_metrics(c, srv.url)
            if keep_seconds > 0:
                print(f"keeping the service up for {keep_seconds:.0f} s")
                time.sleep(keep_seconds)
    print("service stopped")
    return 0
