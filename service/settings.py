"""The service's settings: one pydantic model, from BentoML's arguments over the ``ROBUSTDX_*`` environment.

Where a value comes from, first match wins: an argument of ``bentoml serve/build --arg NAME=VALUE`` (read through
``bentoml.use_arguments(ServiceSettings)``; a Bento built on promotion carries ``model_tag`` this way), then
``$ROBUSTDX_NAME``, then the default below.

Why one model: the limits, the batching knobs and the monitor's sampling were ~20 ``os.environ``
look-ups spread over the service; here each has its name, default, bounds and description in one
place, and a bad value stops the service at start-up with a message naming the variable
(``ROBUSTDX_MAX_BATCH_SIZE='abc': Input should be a valid integer``) instead of a bare
``ValueError`` — or, for the monitor's knobs, a background thread failing on every sample.

Why loaded at import: :mod:`robustdx.service.app` builds ``SETTINGS = load_settings()`` when it is
imported, because BentoML's decorators (``resources``, ``traffic.timeout``) and the request schema
(images per request, the /explain caps) need the values
when the class is defined. So the environment is read once per process, like before; change a
setting by restarting the service.

``model_tag`` pins the service to one exact tag (the production pointer is not followed); without it the
service serves, and follows, the production pointer of ``$BENTOML_HOME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from robustdx.service.imaging import ImageLimits

if TYPE_CHECKING:
    from robustdx.service.explaining import ExplainLimits
    from robustdx.service.monitoring.monitor import MonitorSettings

ENV_PREFIX = "ROBUSTDX_"
SECRET_FIELDS = ("admin_token", "clinician_token", "inference_db_url")  # never echoed in errors
_MIB = 1 << 20
_LIMITS = ImageLimits()


class SettingsError(ValueError):
    """A ``ROBUSTDX_*`` variable holds a value the service cannot use (the message names it)."""


class ServiceSettings(BaseSettings):
    """Every setting of the service; field ``x`` is read from ``$ROBUSTDX_X`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- which model ---
    model_tag: str | None = Field(
        None,
        description="Serve this exact model tag (robustdx:<version>, never ':latest') instead of following the production "
        "pointer; the Bento built on promotion is pinned to its model this way.",
    )

    # --- predictions and explanations ---
    confidence_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Below this top-class probability the answer is 'refer to clinician'."
    )
    ig_steps: int = Field(
        32,
        ge=1,
        le=512,
        description="Integrated-Gradients steps of /explain (fixed rule; Gauss-Legendre nodes cost O(n^2) memory).",
    )

    # --- /explain: isolation, deadline and caps (service/explaining.py) ---
    explain_workers: int = Field(1, ge=1, le=64, description="Threads that compute explanations (apart from /predict's).")
    explain_queue: int = Field(1, ge=0, le=256, description="Explanations that may wait for a thread; beyond, 429 at once.")
    explain_deadline_seconds: float = Field(
        20.0, gt=0, le=600, description="An explanation running longer is stopped and answered 503 (checked between passes)."
    )
    explain_attacks_per_minute: float = Field(
        6.0, ge=0, description="Explanations of an attacked copy (attack_eps > 0) per client a minute (burst 2); 429 beyond."
    )
    explain_max_attack_steps: int = Field(20, ge=1, le=200, description="Most PGD steps an /explain request may ask for.")
    explain_max_map_size: int = Field(
        64, ge=4, le=256, description="Largest raw attribution map side an /explain request may ask for."
    )

    # --- request limits (the 4xx contract) ---
    max_image_bytes: int = Field(_LIMITS.max_bytes, ge=1, description="Largest accepted image file, in bytes.")
    max_image_pixels: int = Field(
        _LIMITS.max_pixels, ge=1, le=4096 * 4096, description="Largest accepted image, width x height (at most 4096²)."
    )
    max_request_pixels: int = Field(
        _LIMITS.max_request_pixels, ge=1, description="Most pixels all images of one request may have together."
    )
    max_body_bytes: int = Field(8 * _MIB, ge=1, description="Largest request body in bytes (413 above).")
    max_images_per_request: int = Field(16, ge=1, description="Most images one /predict request may carry.")
    body_timeout: float = Field(10.0, gt=0, le=600, description="Seconds a client has to send its request body (408 after).")
    max_requests_per_client: int = Field(
        8, ge=1, description="Requests one client address may have in flight on the API routes (429 beyond)."
    )

    # --- BentoML: batching, timeout, resources ---
    batching: bool = Field(True, description="Batch concurrent /predict requests into one forward pass (0 turns it off).")
    max_batch_size: int = Field(32, ge=1, description="Most images in one forward pass of /predict.")
    decode_workers: int = Field(2, ge=1, le=64, description="Threads that decode large uploads (small ones decode inline).")
    timeout: int = Field(60, ge=1, description="Request timeout in seconds.")
    cpu: str = Field("2", pattern=r"^\d+(\.\d+)?m?$", description="CPU resource of the service ('2', '0.5', '500m').")

    # --- monitoring (background thread) ---
    robust_sample_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="Fraction of live images attacked by the background robustness probe."
    )
    robust_steps: int = Field(5, ge=1, le=1000, description="PGD steps of the robustness probe.")
    drift_window: int = Field(64, ge=2, description="Live embeddings in the sliding drift window.")
    drift_every: int = Field(16, ge=1, description="New live samples between two drift computations.")
    malloc_trim_seconds: float = Field(
        10.0, ge=0.0, description="Seconds between glibc malloc_trim calls of the monitor thread (0 = off)."
    )

    pointer_poll_seconds: float = Field(
        15.0, ge=0.0, description="Seconds between checks of the production pointer (a moved pointer is loaded; 0 = off)."
    )

    # --- inference log and feedback ---
    inference_log: bool = Field(True, description="Log every prediction (request id, model, image hash, answer) to a database.")
    feedback_dir: Path | None = Field(
        None, description="Folder of the default SQLite inference log and of stored images (default: $BENTOML_HOME/feedback)."
    )
    inference_db_url: str = Field(
        "", description="SQLAlchemy URL of the inference log (e.g. postgresql+psycopg://...); empty: SQLite in feedback_dir."
    )
    inference_log_queue: int = Field(
        2000, ge=1, le=1_000_000, description="Predictions waiting to be written; beyond, rows are dropped and counted."
    )
    clinician_token: SecretStr = Field(
        SecretStr(""), description="Bearer token of POST /feedback (not the admin token); empty disables feedback (401)."
    )

    # --- admin ---
    admin_token: SecretStr = Field(SecretStr(""), description="Bearer token of POST /admin/reload; empty disables reload (401).")

    @field_validator("model_tag")
    @classmethod
    def _exact_tag(cls, tag: str | None) -> str | None:
        if not tag:
            return None
        name, sep, version = tag.partition(":")
        if not sep or not name or not version or version == "latest":
            raise ValueError(f"must be an exact 'name:version' tag, never ':latest' (got {tag!r})")
        return tag

    def feedback_paths(self) -> tuple[str, Path]:
        """The inference log's database URL and the image store's folder."""
        from robustdx.core.feedback.store import default_locations, sqlite_url

        if self.feedback_dir is None:
            url, images = default_locations()
        else:
            url, images = sqlite_url(self.feedback_dir / "inference.db"), self.feedback_dir / "images"
        return self.inference_db_url or url, images

    def image_limits(self) -> ImageLimits:
        """The per-image limits checked while a request is parsed."""
        return ImageLimits(
            max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels, max_request_pixels=self.max_request_pixels
        )

    def explain_limits(self) -> ExplainLimits:
        """Admission, deadline and attack rate of /explain."""
        from robustdx.service.explaining import ExplainLimits

        return ExplainLimits(
            workers=self.explain_workers,
            queue=self.explain_queue,
            deadline_seconds=self.explain_deadline_seconds,
            attacks_per_minute=self.explain_attacks_per_minute,
        )

    def monitor_settings(self) -> MonitorSettings:
        """The background monitor's settings (its other knobs keep their defaults)."""
        from robustdx.service.monitoring.monitor import MonitorSettings

        return MonitorSettings(
            window=self.drift_window,
            drift_every=self.drift_every,
            min_window=min(16, self.drift_window),
            robust_sample_rate=self.robust_sample_rate,
            robust_steps=self.robust_steps,
            trim_seconds=self.malloc_trim_seconds,
        )


def env_name(field: str) -> str:
    """The environment variable of a settings field (``max_batch_size`` -> ``ROBUSTDX_MAX_BATCH_SIZE``)."""
    return ENV_PREFIX + field.upper()


def _describe(err: ValidationError) -> str:
    problems = []
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else ""
        info = ServiceSettings.model_fields.get(field)
        shown = "<hidden>" if field in SECRET_FIELDS else repr(e.get("input"))
        hint = f" ({info.description})" if info is not None and info.description else ""
        problems.append(f"{env_name(field)}={shown}: {e['msg']}{hint} (as a BentoML argument: --arg {field}=...)")
    return "; ".join(problems)


def load_settings() -> ServiceSettings:
    """The settings from BentoML's arguments (``--arg``) and the environment.

    Raises:
        SettingsError: a value is unusable; the message names each variable and argument, the value and the
            rule it breaks, and starts with the service's start-up failure text.
    """
    import bentoml
    from bentoml.exceptions import InvalidArgument

    try:
        return bentoml.use_arguments(ServiceSettings)
    except (InvalidArgument, ValidationError) as err:
        cause = err if isinstance(err, ValidationError) else err.__cause__
        if not isinstance(cause, ValidationError):
            raise
        raise SettingsError(f"robustdx service cannot start: invalid setting {_describe(cause)}") from None
