"""The robustdx BentoML service: prediction, Integrated-Gradients explanation, model card, hot reload.

Start it with ``bentoml serve robustdx.service.app:RobustDx``: it serves (and follows) the production pointer
that promotion wrote (:mod:`robustdx.core.release.pointer`), or the exact tag of ``--arg model_tag=...`` /
``$ROBUSTDX_MODEL_TAG`` — never ``:latest``. With a tag the model is declared as a ``bentoml.models.BentoModel``,
so ``bentoml build --arg model_tag=...`` (what promotion runs, :mod:`robustdx.flows.bento`) packs it into the
Bento with the model card as the Bento's description, and ``bentoml serve <bento>`` needs no store of its own.

Endpoints:

* ``POST /predict`` — multipart field ``images`` (one or several PNG/JPEG files) → one prediction per
  image: label, class probabilities, margin, model version and ``refer_to_clinician`` below the
  confidence threshold. Each request decodes its own images (a bad one is a 400 for it alone), then
  concurrent requests share forward passes (:mod:`robustdx.service.batching`).
* ``POST /explain`` — field ``image`` (+ ``baseline``, ``attack_eps``, ``attack_steps``, ``map_size``)
  → the prediction plus the IG attribution (heatmap PNG as base64, downsampled raw map, convergence
  delta, baseline); with ``attack_eps`` > 0 also the prediction and IG map of a PGD-attacked copy.
  Computed on threads of its own (:mod:`robustdx.service.explaining`), so it never holds ``/predict``;
  429 when the explanation slots are taken or a client exceeds its attacked-copy rate, 503 when one
  runs past ``ROBUSTDX_EXPLAIN_DEADLINE_SECONDS`` (it is stopped, not left computing).
* ``GET /model`` — version, tag, regime, data card, validation/test clean and robust metrics, hashes.
* ``POST /feedback`` — JSON ``request_id``, ``label``, ``reviewer`` (+ ``note``), bearer token from
  ``$ROBUSTDX_CLINICIAN_TOKEN`` (not the admin token): a clinician's confirmed label for a prediction. Every
  ``/predict`` answer carries a ``request_id``; its row in the inference log (:mod:`robustdx.service.records`,
  SQLite under ``$BENTOML_HOME/feedback`` or ``$ROBUSTDX_INFERENCE_DB_URL``) is written off the request path.
  Images are kept only with ``store_image=true`` (content-addressed), and only those can be answered. Idempotent
  per (request, reviewer); unknown ids 404, labels outside the model's classes 422, a second different answer 409.
* ``POST /feedback/image`` — multipart ``image``, ``label``, ``reviewer`` (+ ``note``), clinician token: a
  labelled image that never went through ``/predict`` (an archived case, a second opinion). It is stored,
  predicted by the serving model and logged with source ``upload`` (outside the drift monitor: chosen cases
  are not the production stream), then answered as above; the same image again from the same reviewer is a
  repeat of that answer, not a new row.
* ``GET /feedback/stats`` — counts by label and model version, agreement with the predictions, pending reviews.
* ``POST /admin/reload`` — bearer token from ``$ROBUSTDX_ADMIN_TOKEN`` (unset: reload disabled, 401).
  Loads the production pointer's tag in a worker thread and swaps it in atomically; requests in
  flight finish on the model they started with. A bundle failing its hash check is refused (409)
  and the old model keeps serving.
* ``/livez``, ``/readyz``, ``/metrics`` from BentoML (custom metrics: :mod:`robustdx.service.monitoring`).

Settings: :class:`robustdx.service.settings.ServiceSettings` (model tag, confidence threshold, image and body
limits, batching, timeout, CPU, monitor sampling, admin token) from ``bentoml.use_arguments`` over the
``ROBUSTDX_*`` environment, read once when this module is imported — BentoML's decorators need them then — into
:data:`SETTINGS`; a bad value stops the service at start-up naming the variable.
One worker per service: a reload swaps the model of the worker that receives it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import bentoml
from bentoml.validators import ContentType
from fastapi import FastAPI
from pydantic import AfterValidator, Field
from starlette.responses import JSONResponse, PlainTextResponse

from robustdx.core.release.pointer import PointerError, read_production, resolve_tag
from robustdx.service.batching import MicroBatcher
from robustdx.service.explaining import Busy, DeadlineExceeded, Deadlines, ExplainGate
from robustdx.service.guard import EdgeGuard, GuardLimits
from robustdx.service.imaging import ImageError, check_request, decode, inspect
from robustdx.service.monitoring.metrics import metrics
from robustdx.service.schemas import (
    AttackOut,
    AttributionOut,
    Explanation,
    FeedbackOut,
    FeedbackStats,
    ModelInfo,
    Prediction,
    ReloadResult,
)
from robustdx.service.settings import load_settings

log = logging.getLogger("robustdx.service")
SETTINGS = load_settings()
PINNED_MODEL = bentoml.models.BentoModel(SETTINGS.model_tag) if SETTINGS.model_tag else None
LIMITS = SETTINGS.image_limits()
INLINE_DECODE_PIXELS = 256 * 256  # decoded on the event loop: a few hundred microseconds at most
MAX_ATTACK_EPS = 16 / 255  # twice the strongest budget the models are evaluated at (8/255)


def _check_upload(path: Path) -> Path:
    """Per-request validation (runs while BentoML parses the request, before batching, so a bad
    image fails only its own request): a pydantic error here becomes a 400 naming the problem.
    Header only: BentoML validates on the event loop, where decoding pixels would stall every request."""
    inspect(path, LIMITS)
    return path


def _check_request(paths: list[Path]) -> list[Path]:
    """The per-request pixel total (headers again: cheap), so many small-file, large-canvas images cannot add up."""
    check_request([inspect(p, LIMITS) for p in paths], LIMITS)
    return paths


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


def _load(tag: str, expected_sha256: str | None = None) -> Served:
    """Load and hash-check the bundle of ``tag``; with ``expected_sha256`` (the production pointer's), refuse
    weights other than the ones promotion checked, even when their manifest agrees with them."""
    import torch

    from robustdx.core.errors import BundleError
    from robustdx.core.release.bundle import weights_sha256
    from robustdx.core.release.store import load_bundle_from_store

    bundle = load_bundle_from_store(tag)
    if expected_sha256 is not None and weights_sha256(bundle) != expected_sha256:
        raise BundleError(
            f"the store's weights of {tag} (sha256 {weights_sha256(bundle)[:12]}…) are not the ones the production "
            f"pointer names ({expected_sha256[:12]}…): the store was altered after promotion"
        )
    for p in bundle.model.parameters():
        p.requires_grad_(False)
    classes = list(bundle.data_card.get("classes") or [str(i) for i in range(bundle.config.model.num_classes)])
    size = bundle.config.data.image_size
    with torch.no_grad():  # warm-up: the first request should not pay for lazy initialisation
        bundle.model(torch.zeros(1, 3, size, size))
    return Served(tag, bundle, classes, size, float(bundle.config.eval_attack.eps), datetime.now(UTC).isoformat())


def _error(status: int, message: str, ctx: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    if ctx is not None:  # BentoML copies ctx.response.status_code onto the response of an API with a context
        ctx.response.status_code = status
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


# GET routes beside the BentoML APIs (which are POST). A FastAPI app rather than a bare Starlette one
# because BentoML merges a mounted FastAPI app's routes into its OpenAPI document (/docs.json, Swagger UI);
# FastAPI's own docs routes are off so they cannot shadow BentoML's.
card_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@card_app.get(
    "/model",
    response_model=ModelInfo,
    summary="The model being served",
    description="Version, tag, regime, data card, validation/test clean and robust metrics, bundle hashes, the "
    "production pointer and whether this replica serves it, the monitor's state.",
    tags=["Service APIs"],
)
async def model_info() -> dict[str, Any]:
    return bentoml.get_current_service().model_card()


@card_app.get(
    "/model/card",
    response_class=PlainTextResponse,
    summary="The served model's model card (Markdown)",
    description="Intended use and what not to use it for, training data, per-class and per-group clean and robust "
    "results with 95% intervals, the ε its robustness was measured at, known limitations.",
    responses={200: {"content": {"text/markdown": {}}}},
    tags=["Service APIs"],
)
async def model_card_markdown() -> PlainTextResponse:
    text = bentoml.get_current_service().model_card_markdown()
    return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")


@card_app.get(
    "/feedback/stats",
    response_model=FeedbackStats,
    summary="What clinicians said about the predictions",
    description="Feedback counts by confirmed label and by model version, the share agreeing with the prediction, and "
    "the referred predictions still awaiting review (aggregates only: no image, no request id).",
    tags=["Service APIs"],
)
async def feedback_stats() -> Any:
    try:
        return await asyncio.to_thread(bentoml.get_current_service().feedback_stats)
    except _Refused as err:
        return _error(err.status, str(err))


def _description() -> str | None:
    """The pinned model's card: ``bentoml build`` takes it as the Bento's description (its README and the Swagger
    UI's introduction). None (BentoML's default text) when the service follows the pointer or the tag is absent."""
    from robustdx.core.release.bundle import MODEL_CARD

    stored = PINNED_MODEL.stored if PINNED_MODEL is not None else None
    card = Path(stored.path) / MODEL_CARD if stored is not None else None
    return card.read_text(encoding="utf-8") if card is not None and card.is_file() else None


@bentoml.asgi_app(card_app, path="/")
@bentoml.service(
    name="robustdx",
    description=_description(),
    resources={"cpu": SETTINGS.cpu},
    traffic={"timeout": SETTINGS.timeout, "max_concurrency": 128},
    workers=1,
)
class RobustDx:
    """Robust pathology classifier with Integrated-Gradients explanations (see the module docstring)."""

    model_ref = PINNED_MODEL  # declared for `bentoml build` (None: the pointer names the model at run time)

    def __init__(self) -> None:
        from robustdx.service import logs
        from robustdx.service.monitoring.monitor import Monitor

        logs.install()  # bad uploads: one WARNING line each, not an ERROR with a traceback
        self.threshold = SETTINGS.confidence_threshold
        self.pinned = SETTINGS.model_tag  # a pinned tag is served, the production pointer not followed
        try:
            tag, expected = (self.pinned, None) if self.pinned else _production()
        except (LookupError, ValueError) as err:
            raise RuntimeError(f"robustdx service cannot start: {err}") from None  # text: local.STARTUP_FAILURE
        self.deadlines = Deadlines()
        self.explainer = ExplainGate(SETTINGS.explain_limits(), self.deadlines)
        self.batcher: MicroBatcher[Served, Prediction] = MicroBatcher(
            self._infer, SETTINGS.max_batch_size if SETTINGS.batching else 1
        )
        self._decoders = ThreadPoolExecutor(max_workers=SETTINGS.decode_workers, thread_name_prefix="robustdx-decode")
        self._metrics = metrics()
        self._state = self._loaded(tag, expected)
        self.records = self._inference_log() if SETTINGS.inference_log else None
        self._swap_lock = threading.Lock()  # one reload at a time, from the admin route or the pointer poller
        self.monitor = Monitor(SETTINGS.monitor_settings())
        self._watch(self._state)
        if not self.pinned and SETTINGS.pointer_poll_seconds > 0:
            threading.Thread(target=self._follow_pointer, name="robustdx-pointer", daemon=True).start()

    # ---- helpers ------------------------------------------------------------------------------
    def _inference_log(self) -> Any:
        """The inference log writer (its thread migrates the database when it is reachable; until then the service
        serves and the rows wait in the bounded queue)."""
        from robustdx.core.feedback.images import ImageStore
        from robustdx.core.feedback.store import FeedbackStore
        from robustdx.service.records import InferenceLog, LogHooks

        url, images = SETTINGS.feedback_paths()
        m = self._metrics
        for cls in self._state.classes:  # exported at 0 from the start: rate() needs a first sample
            for agrees in ("true", "false"):
                m.feedback.labels(cls, agrees)

        def housekeeping(store: FeedbackStore) -> None:
            stats = store.stats()
            m.feedback_pending.set(stats["pending_review"])
            m.feedback_pending_age.set(stats["oldest_pending_seconds"] or 0.0)
            if stats["agreement"] is not None:
                m.feedback_agreement.set(stats["agreement"])

        hooks = LogHooks(
            up=lambda ok: m.log_up.set(1 if ok else 0),
            written=m.log_written.inc,
            dropped=m.log_dropped.inc,
            housekeeping=housekeeping,
        )
        return InferenceLog(FeedbackStore(url), ImageStore(images), hooks, capacity=SETTINGS.inference_log_queue)

    def feedback_stats(self) -> dict[str, Any]:
        """GET /feedback/stats (a worker thread: it reads the database)."""
        if self.records is None:
            raise _Refused(404, "the inference log is off (ROBUSTDX_INFERENCE_LOG=0): there is no feedback")
        if not self.records.ready.is_set():
            raise _Refused(503, "the inference log's database is not reachable yet; retry later")
        return self.records.store.stats()

    def _loaded(self, tag: str, expected_sha256: str | None) -> Served:
        """:func:`_load`, with the explanation deadline checked inside the model's forward passes."""
        st = _load(tag, expected_sha256)
        self.deadlines.attach(st.bundle.model)
        return st

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

        return to_tensor([decode(p, LIMITS, st.size) for p in paths], st.size)  # the one decode, in the API's thread

    def model_card(self) -> dict[str, Any]:
        st = self._state
        card = st.card()
        try:
            pointer = read_production()
        except PointerError:
            pointer = None
        card["production_pointer"] = None if pointer is None else {
            "tag": pointer.tag, "previous": pointer.previous, "weights_sha256": pointer.weights_sha256,
            "serving_it": pointer.tag == st.tag,
        }  # fmt: skip
        card["pinned_by_env"] = self.pinned
        card["confidence_threshold"] = self.threshold
        card["monitor"] = self.monitor.snapshot()
        return card

    def model_card_markdown(self) -> str:
        """The bundle's MODEL_CARD.md; rendered from its metrics for a bundle written before model cards."""
        from robustdx.core.evaluation.model_card import model_card_of

        return model_card_of(self._state.bundle)

    # ---- APIs ---------------------------------------------------------------------------------
    @bentoml.api(route="/predict")
    async def predict(
        self,
        images: Annotated[
            list[ImageUpload],
            Field(
                min_length=1,
                max_length=SETTINGS.max_images_per_request,
                description="One or more PNG/JPEG images (multipart field 'images').",
            ),
            AfterValidator(_check_request),
        ],
        ctx: bentoml.Context,
        store_image: Annotated[
            bool,
            Field(
                description="Keep the images (content-addressed) so a clinician's feedback on them can train the next "
                "model; off by default: only their SHA-256 is logged."
            ),
        ] = False,
    ) -> list[Prediction]:
        """Classify images: label, probabilities, margin, model version (refer to clinician when unsure), and the
        request id of each prediction in the inference log (what POST /feedback answers)."""
        st = self._state
        try:
            x, files = await self._decoded(st, images)
        except ImageError as err:  # its own request only: decoding happens before batching
            return _error(400, str(err), ctx)
        predictions = await self.batcher.submit(st, x)
        return self._logged(st, predictions, files, store_image)

    def _logged(self, st: Served, predictions: list[Prediction], files: list[bytes], store: bool) -> list[Prediction]:
        """Give each prediction its request id and queue its inference-log row (never blocks, never fails it)."""
        from robustdx.core.feedback.store import InferenceRecord
        from robustdx.service.records import Logged

        now = datetime.now(UTC)
        out, rows = [], []
        for pred, data in zip(predictions, files, strict=True):
            pred = pred.model_copy(update={"request_id": uuid.uuid4().hex, "image_stored": store and self.records is not None})
            out.append(pred)
            if self.records is not None:
                record = InferenceRecord(
                    pred.request_id, now, st.version, st.tag, hashlib.sha256(data).hexdigest(), store, pred.label,
                    pred.probabilities, pred.confidence, pred.refer_to_clinician,
                )  # fmt: skip
                rows.append(Logged(record, data if store else None))
        if rows:
            self.records.submit(rows)
        return out

    async def _decoded(self, st: Served, paths: list[Path]) -> tuple[Any, list[bytes]]:
        """The request's images as a tensor, and their bytes. Small ones are decoded on the event loop (well under
        a millisecond); larger ones on the decode threads, so a flood of large uploads queues there and not in
        front of /livez."""
        pixels = sum(inspect(p, LIMITS).pixels for p in paths)
        if pixels <= INLINE_DECODE_PIXELS:
            return self._tensor(st, paths), [p.read_bytes() for p in paths]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoders, lambda: (self._tensor(st, paths), [p.read_bytes() for p in paths]))

    def _infer(self, st: Served, x: Any) -> list[Prediction]:
        """One forward pass over a batch of requests' images (the batcher's inference thread)."""
        import torch

        with torch.no_grad():
            emb = st.bundle.model.embed(x)
            probs = torch.softmax(st.bundle.model.classifier(emb).float(), 1)
        self.monitor.observe(st.classes, probs, emb, x, self.threshold, version=st.version)
        self._metrics.batch_size.observe(len(x))
        return [self._prediction(st, probs[i]) for i in range(len(probs))]

    @bentoml.api(route="/explain")
    async def explain(
        self,
        image: Annotated[ImageUpload, Field(description="One PNG/JPEG image (multipart field 'image').")],
        ctx: bentoml.Context,
        baseline: Annotated[Literal["black", "blur", "noise"], Field(description="IG baseline.")] = "black",
        attack_eps: Annotated[
            float,
            Field(
                ge=0.0,
                le=MAX_ATTACK_EPS,
                description="If > 0, also explain a PGD-attacked copy (L-inf, [0,1] pixels); rate-limited per client.",
            ),
        ] = 0.0,
        attack_steps: Annotated[
            int, Field(ge=1, le=SETTINGS.explain_max_attack_steps, description="PGD steps of the attack.")
        ] = 10,
        map_size: Annotated[
            int, Field(ge=4, le=SETTINGS.explain_max_map_size, description="Side of the downsampled raw attribution map.")
        ] = 16,
    ) -> Explanation:
        """Prediction + Integrated-Gradients attribution (heatmap PNG and raw map); optionally on a PGD-attacked copy."""
        client = ctx.request.client.host if ctx.request.client else "unknown"
        try:
            if attack_eps > 0:
                self.explainer.admit_attack(client)
            return await self.explainer.run(lambda: self._explain(image, baseline, attack_eps, attack_steps, map_size))
        except ImageError as err:  # passed the header check, failed to decode
            return _error(400, str(err), ctx)
        except Busy as err:
            self._metrics.explain_refused.labels(reason="rate" if "per client" in str(err) else "busy").inc()
            return _error(429, str(err), ctx, headers={"Retry-After": "5"})
        except DeadlineExceeded:
            self._metrics.explain_refused.labels(reason="deadline").inc()
            return _error(
                503,
                f"the explanation ran past its deadline of {SETTINGS.explain_deadline_seconds:g} s and was stopped; "
                "ask for fewer attack_steps or no attack, or retry later",
                ctx,
            )

    def _explain(self, image: Path, baseline: str, attack_eps: float, attack_steps: int, map_size: int) -> Explanation:
        """The explanation itself, on an explanation thread (blocking; stopped by the deadline hook)."""
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
        attr = integrated_gradients(  # chunks of 8 points: the deadline is checked between them
            st.bundle.model, x, baseline=baseline, n_steps=SETTINGS.ig_steps, internal_batch_size=min(8, SETTINGS.ig_steps)
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

    @bentoml.api(route="/feedback")
    async def feedback(
        self,
        ctx: bentoml.Context,
        request_id: Annotated[str, Field(min_length=1, max_length=64, description="The prediction's request_id.")],
        label: Annotated[str, Field(min_length=1, max_length=64, description="The label the reviewer confirms.")],
        reviewer: Annotated[str, Field(min_length=1, max_length=120, description="Who answers (an id, not a name).")],
        note: Annotated[str | None, Field(description="Optional free text (at most 2,000 characters).")] = None,
    ) -> FeedbackOut:
        """A clinician's confirmed label for a prediction (bearer token of ROBUSTDX_CLINICIAN_TOKEN). Idempotent per
        (request, reviewer): the same answer again is 200 with created=false; a different one is 409."""
        refused = _bearer(ctx, SETTINGS.clinician_token.get_secret_value(), "ROBUSTDX_CLINICIAN_TOKEN", "feedback")
        if refused:
            return _error(401, refused, ctx)
        try:
            return await asyncio.to_thread(self._feedback, request_id, label, reviewer, note)
        except _Refused as err:
            return _error(err.status, str(err), ctx)

    def _feedback(self, request_id: str, label: str, reviewer: str, note: str | None) -> FeedbackOut:
        from robustdx.core.feedback.store import FeedbackError

        if self.records is None:
            raise _Refused(404, "the inference log is off (ROBUSTDX_INFERENCE_LOG=0): no prediction can be answered")
        if not self.records.ready.is_set() or not self.records.flush(timeout=10.0):
            raise _Refused(503, "the inference log's database is not reachable; nothing was written, retry later")
        try:
            fb, created = self.records.store.add_feedback(request_id, reviewer, label, note)
        except FeedbackError as err:
            raise _Refused(err.status, str(err)) from None
        except Exception as err:  # noqa: BLE001 - the database went away between the flush and the write
            log.warning("feedback for %s not written: %s", request_id, err)
            raise _Refused(503, "the inference log's database is not reachable; nothing was written, retry later") from None
        predicted = self.records.store.inference(request_id)
        agrees = predicted is not None and predicted.prediction == fb.label
        if created:
            self._metrics.feedback.labels(fb.label, "true" if agrees else "false").inc()
        return FeedbackOut(**fb.to_json(), created=created, agrees_with_prediction=agrees)

    @bentoml.api(route="/feedback/image")
    async def feedback_image(
        self,
        image: Annotated[ImageUpload, Field(description="One PNG/JPEG image (multipart field 'image').")],
        ctx: bentoml.Context,
        label: Annotated[str, Field(min_length=1, max_length=64, description="The label the reviewer confirms.")],
        reviewer: Annotated[str, Field(min_length=1, max_length=120, description="Who answers (an id, not a name).")],
        note: Annotated[str | None, Field(description="Optional free text (at most 2,000 characters).")] = None,
    ) -> FeedbackOut:
        """A clinician's label for an image sent with it (no earlier /predict): stored, predicted and logged with
        source "upload", then recorded like POST /feedback. Idempotent per (image, reviewer)."""
        from robustdx.core.feedback.store import FeedbackError, check_answer

        refused = _bearer(ctx, SETTINGS.clinician_token.get_secret_value(), "ROBUSTDX_CLINICIAN_TOKEN", "feedback")
        if refused:
            return _error(401, refused, ctx)
        st = self._state
        try:
            check_answer(reviewer, label, note, st.classes)  # before anything is stored
            x, files = await self._decoded(st, [_check_upload(image)])
        except FeedbackError as err:
            return _error(err.status, str(err), ctx)
        except (ImageError, ValueError) as err:
            return _error(400, str(err), ctx)
        try:
            return await asyncio.to_thread(self._feedback_upload, st, x, files[0], label, reviewer, note)
        except _Refused as err:
            return _error(err.status, str(err), ctx)

    def _feedback_upload(self, st: Served, x: Any, data: bytes, label: str, reviewer: str, note: str | None) -> FeedbackOut:
        import torch

        from robustdx.core.feedback.store import InferenceRecord

        if self.records is None:
            raise _Refused(404, "the inference log is off (ROBUSTDX_INFERENCE_LOG=0): no feedback can be recorded")
        sha = hashlib.sha256(data).hexdigest()
        try:
            request_id = self.records.store.upload_of(sha, reviewer) if self.records.ready.is_set() else None
            if request_id is None:
                with torch.no_grad():  # not through the batcher: its monitor would count the image as production drift
                    pred = self._prediction(st, torch.softmax(st.bundle.model(x).float(), 1)[0])
                request_id = uuid.uuid4().hex
                record = InferenceRecord(
                    request_id, datetime.now(UTC), st.version, st.tag, sha, True, pred.label,
                    pred.probabilities, pred.confidence, pred.refer_to_clinician, source="upload",
                )  # fmt: skip
                self.records.images.put(data)
                self.records.store.log_inferences([record])
        except Exception as err:  # noqa: BLE001 - the database (or the image volume) is not reachable
            log.warning("uploaded feedback image not logged: %s", err)
            raise _Refused(503, "the inference log's database is not reachable; nothing was written, retry later") from None
        return self._feedback(request_id, label, reviewer, note)

    @bentoml.api(route="/admin/reload")
    async def reload(self, ctx: bentoml.Context) -> ReloadResult:
        """Load the current production model (bearer token required); the old model serves until the swap."""

        refused = _bearer(ctx, SETTINGS.admin_token.get_secret_value(), "ROBUSTDX_ADMIN_TOKEN", "reload")
        if refused:
            return _error(401, refused, ctx)
        status, result = await asyncio.to_thread(self.reload_from_pointer)
        if isinstance(result, str):
            return _error(status, result, ctx)
        ctx.response.metadata["x-reload-seconds"] = f"{result.seconds:.3f}"
        return ReloadResult(reloaded=result.reloaded, tag=result.tag, version=result.version, previous_tag=result.previous_tag)

    def reload_from_pointer(self) -> tuple[int, str | _Swap]:
        """Load what the production pointer names, if it is not what is served; the old model keeps serving when
        anything is wrong. Returns an HTTP status and the swap, or the reason it did not happen."""
        if self.pinned:
            return 409, (
                f"this service is pinned to {self.pinned} (ROBUSTDX_MODEL_TAG or --arg model_tag); "
                "start it without one to follow the production pointer"
            )
        with self._swap_lock:
            old = self._state
            try:
                tag, expected = _production()
            except (LookupError, ValueError) as err:
                return 409, f"no production model to load: {err}"
            if tag == old.tag:
                return 200, _Swap(False, tag, old.version, old.tag, 0.0)
            t0 = time.perf_counter()
            try:
                new = self._loaded(tag, expected)
            except bentoml.exceptions.NotFound:
                return 409, f"refused {tag}: not in the model store; still serving {old.tag}"
            except Exception as err:  # noqa: BLE001 - any load failure (BundleError included) leaves the old model serving
                return 409, f"refused {tag}: {type(err).__name__}: {err}; still serving {old.tag}"
            self._state = new  # one reference swap: requests that already read the old state finish on it
            self._watch(new)  # deep-copies the model for the monitor (a worker thread, off the event loop)
            return 200, _Swap(True, new.tag, new.version, old.tag, time.perf_counter() - t0)

    def _follow_pointer(self) -> None:
        """Replicas converge on the production pointer by themselves: every ``pointer_poll_seconds`` a changed
        pointer is loaded (a reload request reaches one replica; the others catch up here)."""
        refused = None  # a pointer that failed to load is not retried until it changes
        while True:
            time.sleep(SETTINGS.pointer_poll_seconds)
            try:
                pointer = read_production()
                if pointer is not None and pointer.tag != self._state.tag and pointer != refused:
                    _status, result = self.reload_from_pointer()
                    if isinstance(result, str):
                        refused = pointer
                        log.warning("production pointer moved to %s: %s", pointer.tag, result)
                    else:
                        log.info("production pointer moved to %s: now serving it", pointer.tag)
            except Exception:  # noqa: BLE001 - the poller must outlive a bad pointer or a store hiccup
                log.exception("robustdx pointer poller: reading the production pointer failed")


def _bearer(ctx: bentoml.Context, token: str, variable: str, what: str) -> str | None:
    """Why the request's bearer token does not open ``what`` (None: it does). Compared in constant time."""
    scheme, _, value = ctx.request.headers.get("authorization", "").partition(" ")
    if not token:
        return f"{what} is disabled: the server has no {variable}"
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        return f"missing or wrong bearer token (Authorization: Bearer <{variable}>)"
    return None


class _Refused(Exception):
    """A request refused with an HTTP status and a message (nothing was written)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Swap:
    reloaded: bool
    tag: str
    version: str
    previous_tag: str
    seconds: float


def _production() -> tuple[str, str | None]:
    """The production pointer's tag and weights hash (LookupError when promotion has not written one)."""
    pointer = read_production()
    if pointer is None:
        return resolve_tag(), None  # raises LookupError with the how-to
    return pointer.tag, pointer.weights_sha256


RobustDx.add_asgi_middleware(
    EdgeGuard,
    routes={"/predict": ("images",), "/explain": ("image",), "/admin/reload": (), "/feedback": (), "/feedback/image": ("image",)},
    limits=GuardLimits(SETTINGS.max_body_bytes, SETTINGS.body_timeout, SETTINGS.max_requests_per_client),
)
