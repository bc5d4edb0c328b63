"""ServiceSettings: the old defaults, environment overrides, and a bad value naming its variable."""

from __future__ import annotations

import os

import pytest

from robustdx.service.imaging import ImageLimits
from robustdx.service.local import STARTUP_FAILURE
from robustdx.service.settings import ServiceSettings, SettingsError, env_name, load_settings

pytestmark = pytest.mark.unit

# the defaults: what service/app.py used before the settings model, except the upload limits, tightened so
# that no cheap request can stall the service (a 2048² cap for models of 32-224 px, 8 MiB bodies), and the
# batching knobs of service/batching.py (max_latency_ms belonged to BentoML's batching, which is gone)
OLD_DEFAULTS = {
    "confidence_threshold": 0.7,
    "ig_steps": 32,
    "max_image_bytes": 4 * 1024 * 1024,
    "max_image_pixels": 2048 * 2048,
    "max_request_pixels": 4 * 2048 * 2048,
    "max_body_bytes": 8 * 1024 * 1024,
    "max_images_per_request": 16,
    "batching": True,
    "max_batch_size": 32,
    "decode_workers": 2,
    "timeout": 60,
    "cpu": "2",
    "robust_sample_rate": 0.1,
    "robust_steps": 5,
    "drift_window": 64,
    "drift_every": 16,
    "malloc_trim_seconds": 10.0,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("ROBUSTDX_"):
            monkeypatch.delenv(key)


def test_defaults_equal_the_old_ones() -> None:
    s = load_settings()
    assert {k: getattr(s, k) for k in OLD_DEFAULTS} == OLD_DEFAULTS
    assert s.admin_token.get_secret_value() == ""  # reload disabled
    assert s.image_limits() == ImageLimits()
    m = s.monitor_settings()
    assert (m.window, m.min_window, m.drift_every, m.robust_sample_rate, m.robust_steps, m.trim_seconds) == (
        64,
        16,
        16,
        0.1,
        5,
        10.0,
    )


def test_every_field_is_documented() -> None:
    assert all(f.description for f in ServiceSettings.model_fields.values())
    assert env_name("max_batch_size") == "ROBUSTDX_MAX_BATCH_SIZE"


def test_environment_overrides_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "ROBUSTDX_BATCHING": "0",
        "ROBUSTDX_MAX_BATCH_SIZE": "8",
        "ROBUSTDX_CPU": "500m",
        "ROBUSTDX_CONFIDENCE_THRESHOLD": "0.9",
        "ROBUSTDX_MAX_IMAGE_BYTES": "1000",
        "ROBUSTDX_MAX_IMAGE_PIXELS": "4096",
        "ROBUSTDX_DRIFT_WINDOW": "8",
        "ROBUSTDX_ROBUST_SAMPLE_RATE": "1.0",
        "ROBUSTDX_MALLOC_TRIM_SECONDS": "0",
        "ROBUSTDX_ADMIN_TOKEN": "s3cret-token",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert (s.batching, s.max_batch_size, s.cpu, s.confidence_threshold) == (False, 8, "500m", 0.9)
    assert s.max_body_bytes == 8 * 1024 * 1024
    assert s.image_limits() == ImageLimits(max_bytes=1000, max_pixels=4096, max_request_pixels=4 * 2048 * 2048)
    m = s.monitor_settings()
    assert (m.window, m.min_window, m.robust_sample_rate, m.trim_seconds) == (8, 8, 1.0, 0.0)
    assert s.admin_token.get_secret_value() == "s3cret-token" and "s3cret" not in repr(s)
    monkeypatch.setenv("ROBUSTDX_MAX_BODY_BYTES", "123456")
    assert load_settings().max_body_bytes == 123456


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("ROBUSTDX_MAX_BATCH_SIZE", "abc", "valid integer"),
        ("ROBUSTDX_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("ROBUSTDX_CONFIDENCE_THRESHOLD", "1.5", "less than or equal to 1"),
        ("ROBUSTDX_BATCHING", "maybe", "valid boolean"),
        ("ROBUSTDX_CPU", "two", "pattern"),
        ("ROBUSTDX_DRIFT_WINDOW", "1", "greater than or equal to 2"),
        ("ROBUSTDX_MAX_BODY_BYTES", "-1", "greater than or equal to 1"),
        ("ROBUSTDX_MODEL_TAG", "robustdx:latest", "never ':latest'"),
        ("ROBUSTDX_MODEL_TAG", "robustdx", "exact 'name:version' tag"),
    ],
)
def test_a_bad_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    message = str(err.value)
    assert f"{variable}={value!r}" in message and words in message, message
    assert message.startswith(STARTUP_FAILURE)  # LocalServer stops waiting on this text


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServiceSettings(max_batch_sise=4)  # type: ignore[call-arg]
