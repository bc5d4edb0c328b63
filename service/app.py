"""The robustdx BentoML service: prediction, Integrated-Gradients explanation, model card, hot reload.

Start it with ``bentoml serve robustdx.service.app:RobustDx`` (the model is the exact tag in
``$ROBUSTDX_MODEL_TAG`` or, by default, the production pointer that promotion wrote — see
:mod:`robustdx.core.release.pointer`; never ``:latest``).

Endpoints:

* ``POST /predict`` — multipart field ``images`` (one or several PNG/JPEG files) → one prediction per
  image: label, class probabilities, margin, model version and ``refer_to_clinician`` below the
  confidence threshold. Adaptive batching across requests (``batchable=True``).
* ``POST /explain`` — field ``image`` (+ ``baseline``, ``attack_eps``, ``attack_steps``, ``map_size``)
  → the prediction plus the IG attribution (heatmap PNG as base64, downsampled raw map, convergence
  delta, baseline); with ``attack_eps`` > 0 also the prediction and IG map of a PGD-attacked copy.
* ``GET /model`` — version, tag, regime, data card, validation/test clean and robust metrics, hashes.
* ``POST /admin/reload`` — bearer token from ``$ROBUSTDX_ADMIN_TOKEN`` (unset: reload disabled, 401).
  Loads the production pointer's tag in a worker thread and swaps it in atomically; requests in
  flight finish on the model they started with. A bundle failing its hash check is refused (409)
  and the old model keeps serving.
* ``/livez``, ``/readyz``, ``/metrics`` from BentoML (custom metrics: :mod:`robustdx.service.monitoring`).

Settings: the ``ROBUSTDX_*`` environment variables of :class:`robustdx.service.settings.ServiceSettings`
(confidence threshold, image and body limits, batching, timeout, CPU, monitor sampling, admin token),
read once when this module is imported — BentoML's decorators need them then — into :data:`SETTINGS`;
a bad value stops the service at start-up naming the variable.
One worker per service: a reload swaps the model of the worker that receives it.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml.validators import ContentType
from pydantic import AfterValidator, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from robustdx.core.release.pointer import PointerError, read_production, resolve_tag
from robustdx.service.guard import EdgeGuard
from robustdx.service.imaging import open_checked
from robustdx.service.schemas import AttackOut, AttributionOut, Explanation, Prediction, ReloadResult
from robustdx.service.settings import load_settings

SETTINGS = load_settings()
LIMITS = SETTINGS.image_limits()
MAX_ATTACK_EPS = 32 / 255


def _check_upload(path: Path) -> Path:
    """Per-request validation (runs while BentoML parses the request, before batching, so a bad
    image fails only its own request): a pydantic error here becomes a 400 naming the problem."""
    open_checked(path, LIMITS)
    return path


ImageUpload = Annotated[Path, ContentType("image/*"), AfterValidator(_check_upload)]


# ---------------------------------------------------------------------------------------------
# the loaded model
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """Everything one request needs, swapped as one object on reload (in-flight requests keep theirs)."""

    tag: str
    bundle: Any
    classes: list[str]
    size: int
    eps: float
    loaded_at: str

    @property
    def version(self) -> str:
        return self.bundle.version

    def card(self) -> dict[str, Any]:
        b = self.bundle
        metrics = b.metrics
        return {
            "tag": self.tag,
            "version": b.version,
            "regime": str(b.config.recipe),
            "stages": [s.get("regime") for s in metrics.get("stages", [])],
            "arch": b.config.model.arch,
            "image_size": self.size,
            "classes": self.classes,
            "serving_eps": self.eps,
            "dataset": str(b.config.data.dataset),
            "data_card": b.data_card,
            "metrics": {
                "validation": metrics.get("val"),
                "test": metrics.get("test"),
                "robust": metrics.get("robust"),
            },
            "bundle_hash": {
                "weights_sha256": b.manifest["files"]["model.safetensors"]["sha256"],
                "files": {k: v["sha256"] for k, v in b.manifest["files"].items()},
            },
            "created": b.manifest.get("created"),
            "loaded_at": self.loaded_at,
        }


def _load(tag: str) -> Served:
    import torch

    from robustdx.core.release.store import load_bundle_from_store

    bundle = load_bundle_from_store(tag)
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    classes = list(bundle.data_card.get("classes") or [str(i) for i in range(bundle.config.model.num_classes)])
    size = bundle.config.data.image_size
    with torch.no_grad():  # warm-up: the first request should not pay for lazy initialisation
        bundle.model(torch.zeros(1, 3, size, size))
    return Served(tag, bundle, classes, size, float(bundle.config.eval_attack.eps), datetime.now(UTC).isoformat())


def _error(status: int, message: str, ctx: Any = None) -> JSONResponse:
    if ctx is not None:  # BentoML copies ctx.response.status_code onto the response of an API with a context
        ctx.response.status_code = status
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def _model_card(request: Request) -> JSONResponse:
    svc = bentoml.get_current_service()
    return JSONResponse(svc.model_card())


card_app = Starlette(routes=[Route("/model", _model_card, methods=["GET"])])


@bentoml.asgi_app(card_app, path="/")
@bentoml.service(
    name="robustdx",
    resources={"cpu": SETTINGS.cpu},
    traffic={"timeout": SETTINGS.timeout, "max_concurrency": 128},
    workers=1,
)
class RobustDx:
    """Robust pathology classifier with Integrated-Gradients explanations (see the module docstring)."""

    def __init__(self) -> None:
        from robustdx.service.monitoring.monitor import Monitor

        self.threshold = SETTINGS.confidence_threshold
        try:
            tag = resolve_tag()
        except (LookupError, ValueError) as err:
            raise RuntimeError(f"robustdx service cannot start: {err}") from None  # text: local.STARTUP_FAILURE
        self._state = _load(tag)
        self._reload_lock = asyncio.Lock()
        self.monitor = Monitor(SETTINGS.monitor_settings())
        self._watch(self._state)

    # ---- helpers ------------------------------------------------------------------------------
    def _watch(self, st: Served) -> None:
        info = {
            "version": st.version,
            "regime": str(st.bundle.config.recipe),
            "dataset": str(st.bundle.config.data.dataset),
            "tag": st.tag,
        }
        self.monitor.set_model(st.bundle.model, st.bundle.reference, st.eps, info)

    def _prediction(self, st: Served, probs: Any) -> Prediction:
        p = probs.tolist()
        order = sorted(range(len(p)), key=lambda i: -p[i])
        conf = p[order[0]]
        margin = conf - (p[order[1]] if len(p) > 1 else 0.0)
        label = st.classes[order[0]]
        refer = conf < self.threshold
        return Prediction(
            label=label,
            probabilities={c: float(v) for c, v in zip(st.classes, p, strict=True)},
            confidence=float(conf),
            margin=float(margin),
            refer_to_clinician=refer,
            decision="refer to clinician" if refer else label,
            model_version=st.version,
        )

    def _tensor(self, st: Served, paths: list[Path]) -> Any:
        from robustdx.service.imaging import to_tensor

        return to_tensor([open_checked(p, LIMITS) for p in paths], st.size)

    def model_card(self) -> dict[str, Any]:
        st = self._state
        card = st.card()
        try:
            pointer = read_production()
        except PointerError:
            pointer = None
        card["production_pointer"] = None if pointer is None else {"tag": pointer.tag, "previous": pointer.previous}
        card["confidence_threshold"] = self.threshold
        card["monitor"] = self.monitor.snapshot()
        return card

    # ---- APIs ---------------------------------------------------------------------------------
    @bentoml.api(
        route="/predict",
        batchable=SETTINGS.batching,
        max_batch_size=SETTINGS.max_batch_size,
        max_latency_ms=SETTINGS.max_latency_ms,
    )
    def predict(
        self,
        images: Annotated[
            list[ImageUpload],
            Field(
                min_length=1,
                max_length=SETTINGS.max_images_per_request,
                description="One or more PNG/JPEG images (multipart field 'images').",
            ),
        ],
    ) -> list[Prediction]:
        """Classify images: label, probabilities, margin, model version (refer to clinician when unsure)."""
        import torch

        st = self._state
        x = self._tensor(st, images)
        with torch.no_grad():
            emb = st.bundle.model.embed(x)
            probs = torch.softmax(st.bundle.model.classifier(emb).float(), 1)
        self.monitor.observe(st.classes, probs, emb, x, self.threshold)
        return [self._prediction(st, probs[i]) for i in range(len(probs))]

    @bentoml.api(route="/explain")
    def explain(
        self,
        image: Annotated[ImageUpload, Field(description="One PNG/JPEG image (multipart field 'image').")],
        baseline: Annotated[Literal["black", "blur", "noise"], Field(description="IG baseline.")] = "black",
        attack_eps: Annotated[
            float, Field(ge=0.0, le=MAX_ATTACK_EPS, description="If > 0, also explain a PGD-attacked copy (L-inf, [0,1] pixels).")
        ] = 0.0,
        attack_steps: Annotated[int, Field(ge=1, le=50, description="PGD steps of the attack.")] = 10,
        map_size: Annotated[int, Field(ge=4, le=128, description="Side of the downsampled raw attribution map.")] = 16,
    ) -> Explanation:
        """Prediction + Integrated-Gradients attribution (heatmap PNG and raw map); optionally on a PGD-attacked copy."""
        import torch

        st = self._state
        x = self._tensor(st, [image])
        clean_pred, clean_attr = self._explain_one(st, x, baseline, map_size)
        attack = None
        if attack_eps > 0:
            from robustdx.core.attacks import attack_ce
            from robustdx.core.config import AttackConfig

            y = torch.tensor([st.classes.index(clean_pred.label)])
            x_adv = attack_ce(st.bundle.model, x, y, AttackConfig(eps=attack_eps, steps=attack_steps))
            adv_pred, adv_attr = self._explain_one(st, x_adv, baseline, map_size)
            attack = AttackOut(
                eps=attack_eps,
                steps=attack_steps,
                prediction=adv_pred,
                attribution=adv_attr,
                flipped=adv_pred.label != clean_pred.label,
            )
        return Explanation(prediction=clean_pred, attribution=clean_attr, attack=attack)

    def _explain_one(self, st: Served, x: Any, baseline: str, map_size: int) -> tuple[Prediction, AttributionOut]:
        import torch
        from torch.nn import functional as F

        from robustdx.core.explain.ig import integrated_gradients
        from robustdx.core.explain.maps import attribution_map
        from robustdx.core.explain.plots import heatmap_png

        with torch.no_grad():
            probs = torch.softmax(st.bundle.model(x).float(), 1)
        pred = self._prediction(st, probs[0])
        # a fixed rule gives a bounded, predictable latency; captum runs on the BatchNorm-folded,
        # channels_last twin of the model (integrated_gradients' default fast=True)
        attr = integrated_gradients(
            st.bundle.model, x, baseline=baseline, n_steps=SETTINGS.ig_steps, internal_batch_size=SETTINGS.ig_steps
        )
        amap = attribution_map(attr.attributions)[0]
        pooled = F.adaptive_avg_pool2d(amap[None, None], min(map_size, amap.shape[-1]))[0, 0]
        self.monitor.observe_ig_delta(attr.delta)
        out = AttributionOut(
            target=st.classes[int(attr.target[0])],
            heatmap_png_base64=base64.b64encode(heatmap_png(amap)).decode(),
            attribution=[[round(float(v), 6) for v in row] for row in pooled.tolist()],
            convergence_delta=float(attr.delta[0]),
            relative_error=float(attr.rel_error[0]),
            baseline=attr.baseline,
            method=attr.method,
        )
        return pred, out

    @bentoml.api(route="/admin/reload")
    async def reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Load the current production model (bearer token required); the old model serves until the swap."""
        from robustdx.core.errors import BundleError

        token = SETTINGS.admin_token.get_secret_value()
        given = ctx.request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if not token:
            return _error(401, "reload is disabled: the server has no ROBUSTDX_ADMIN_TOKEN", ctx)
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <ROBUSTDX_ADMIN_TOKEN>)", ctx)
        async with self._reload_lock:
            old = self._state
            try:
                pointer = read_production()
                tag = pointer.tag if pointer is not None else resolve_tag()
            except (LookupError, ValueError) as err:
                return _error(409, f"no production model to load: {err}", ctx)
            if tag == old.tag:
                return ReloadResult(reloaded=False, tag=tag, version=old.version, previous_tag=old.tag)
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(_load, tag)
            except BundleError as err:
                return _error(409, f"refused {tag}: {err}; still serving {old.tag}", ctx)
            except bentoml.exceptions.NotFound:
                return _error(409, f"refused {tag}: not in the model store; still serving {old.tag}", ctx)
            except Exception as err:  # noqa: BLE001 - any load failure must leave the old model serving
                return _error(409, f"refused {tag}: {type(err).__name__}: {err}; still serving {old.tag}", ctx)
            self._state = new  # one reference swap: requests that already read the old state finish on it
            await asyncio.to_thread(self._watch, new)  # deep-copies the model for the monitor: off the event loop
            ctx.response.metadata["x-reload-seconds"] = f"{time.perf_counter() - t0:.3f}"
            return ReloadResult(reloaded=True, tag=new.tag, version=new.version, previous_tag=old.tag)


RobustDx.add_asgi_middleware(
    EdgeGuard, routes={"/predict": ("images",), "/explain": ("image",), "/admin/reload": ()}, max_body=SETTINGS.max_body_bytes
)
