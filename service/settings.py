"""The service's settings: one pydantic model read from the ``ROBUSTDX_*`` environment variables.

Why one model: the limits, the batching knobs and the monitor's sampling were ~20 ``os.environ``
look-ups spread over the service; here each has its name, default, bounds and description in one
place, and a bad value stops the service at start-up with a message naming the variable
(``ROBUSTDX_MAX_BATCH_SIZE='abc': Input should be a valid integer``) instead of a bare
``ValueError`` — or, for the monitor's knobs, a background thread failing on every sample.

Why loaded at import: :mod:`robustdx.service.app` builds ``SETTINGS = load_settings()`` when it is
imported, because BentoML's decorators (``resources``, ``traffic.timeout``, ``batchable``,
``max_batch_size``, ``max_latency_ms``) and the request schema (images per request) need the values
when the class is defined. So the environment is read once per process, like before; change a
setting by restarting the service.

Not here: ``ROBUSTDX_MODEL_TAG`` (and ``BENTOML_HOME``), read by
:func:`robustdx.core.release.pointer.resolve_tag` at start-up and on reload, shared with the flows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from robustdx.service.imaging import ImageLimits

if TYPE_CHECKING:
    from robustdx.service.monitoring.monitor import MonitorSettings

ENV_PREFIX = "ROBUSTDX_"
_MIB = 1 << 20
_LIMITS = ImageLimits()


class SettingsError(ValueError):
    """A ``ROBUSTDX_*`` variable holds a value the service cannot use (the message names it)."""


class ServiceSettings(BaseSettings):
    """Every setting of the service; field ``x`` is read from ``$ROBUSTDX_X`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # --- predictions and explanations ---
    confidence_threshold: float = Field(
        0.7, ge=0.0, le=1.0, description="Below this top-class probability the answer is 'refer to clinician'."
    )
    ig_steps: int = Field(32, ge=1, description="Integrated-Gradients steps of /explain (fixed rule).")

    # --- request limits (the 4xx contract) ---
    max_image_bytes: int = Field(_LIMITS.max_bytes, ge=1, description="Largest accepted image file, in bytes.")
    max_image_pixels: int = Field(_LIMITS.max_pixels, ge=1, description="Largest accepted image, width x height.")
    max_body_bytes: int | None = Field(
        None,
        ge=1,
        validate_default=True,
        description="Largest request body in bytes (413 above); unset: 4 x max_image_bytes + 1 MiB.",
    )
    max_images_per_request: int = Field(16, ge=1, description="Most images one /predict request may carry.")

    # --- BentoML: batching, timeout, resources ---
    batching: bool = Field(True, description="Adaptive batching of /predict across requests (0 turns it off).")
    max_batch_size: int = Field(32, ge=1, description="Most images in one adaptive batch.")
    max_latency_ms: int = Field(5000, ge=1, description="Latency budget of adaptive batching, in milliseconds.")
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

    # --- admin ---
    admin_token: SecretStr = Field(SecretStr(""), description="Bearer token of POST /admin/reload; empty disables reload (401).")

    @field_validator("max_body_bytes")
    @classmethod
    def _body_default(cls, value: int | None, info: ValidationInfo) -> int | None:
        """An unset body limit follows the image limit: four images plus 1 MiB of form overhead."""
        if value is None and "max_image_bytes" in info.data:
            return 4 * info.data["max_image_bytes"] + _MIB
        return value

    def image_limits(self) -> ImageLimits:
        """The per-image limits checked while a request is parsed."""
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)

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
        shown = "<hidden>" if field == "admin_token" else repr(e.get("input"))
        hint = f" ({info.description})" if info is not None and info.description else ""
        problems.append(f"{env_name(field)}={shown}: {e['msg']}{hint}")
    return "; ".join(problems)


def load_settings() -> ServiceSettings:
    """The settings from the environment.

    Raises:
        SettingsError: a variable holds an unusable value; the message names each variable, the
            value and the rule it breaks, and starts with the service's start-up failure text.
    """
    try:
        return ServiceSettings()
    except ValidationError as err:
        raise SettingsError(f"robustdx service cannot start: invalid setting {_describe(err)}") from None
