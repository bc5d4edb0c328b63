"""The Monitor with a tiny model: observe() counts on the request path, drift runs once the window holds
``min_window`` samples, robustness probes sampled images, and a failing computation is counted, not raised."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from prometheus_client import REGISTRY
from torch import nn

from robustdx.core import contracts as names
from robustdx.core.util import wait_until
from robustdx.service.monitoring.monitor import Monitor, MonitorSettings

pytestmark = pytest.mark.unit

CLASSES = ["normal", "tumor"]
INFO = {"version": "v", "regime": "r", "dataset": "d", "tag": "robustdx-classifier:v"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def reference(dim: int = 4, n: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"embeddings": torch.randn(n, dim, generator=g), "probs": torch.softmax(torch.randn(n, 2, generator=g), 1)}


def batch(n: int, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    probs = torch.softmax(torch.randn(n, 2, generator=g) * 3, 1)
    return probs, torch.randn(n, dim, generator=g), torch.rand(n, 3, 4, 4, generator=g)


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    settings = MonitorSettings(window=16, min_window=8, drift_every=8, n_perm=20, robust_sample_rate=0.0, trim_seconds=0)
    m = Monitor(settings)
    m.set_model(tiny_model(), reference(), eps=2 / 255, info=INFO)
    yield m
    m.close()


def settled(m: Monitor) -> dict:
    return wait_until(lambda: (s := m.snapshot())["idle"] and s, timeout=60, what="the monitor to go idle")


def test_observe_counts_predictions_and_referrals(monitor: Monitor) -> None:
    probs, emb, images = batch(6)
    before = {c: sample(names.PREDICTIONS + "_total", **{names.LABEL_CLASS: c}) for c in CLASSES}
    referrals = sample(names.REFERRALS + "_total")
    confidences = sample(names.CONFIDENCE + "_count")
    monitor.observe(CLASSES, probs, emb, images, threshold=0.9)
    for i, c in enumerate(CLASSES):
        expected = int((probs.argmax(1) == i).sum())
        assert sample(names.PREDICTIONS + "_total", **{names.LABEL_CLASS: c}) - before[c] == expected
    assert sample(names.REFERRALS + "_total") - referrals == int((probs.max(1).values < 0.9).sum())
    assert sample(names.CONFIDENCE + "_count") - confidences == 6
    assert sample(names.MODEL_INFO, **INFO) == 1.0
    snap = monitor.snapshot()
    assert (snap["window"], snap["pending_drift"], snap["drift_runs"], snap["robust_queue"]) == (6, 6, 0, 0)


def test_drift_runs_once_the_window_holds_min_window(monitor: Monitor) -> None:
    monitor.observe(CLASSES, *batch(4), threshold=0.5)
    assert settled(monitor)["drift_runs"] == 0  # 4 < min_window
    monitor.observe(CLASSES, *batch(4), threshold=0.5)
    wait_until(lambda: monitor.snapshot()["drift_runs"] == 1, timeout=60, what="a drift run")
    snap = settled(monitor)
    assert snap["pending_drift"] == 0 and snap["errors"] == 0
    assert sample(names.DRIFT_WINDOW) == 8.0
    assert 0.0 < sample(names.DRIFT_MMD_P) <= 1.0 and 0.0 <= sample(names.DRIFT_KS_P) <= 1.0


def test_a_failing_computation_is_counted_not_raised() -> None:
    m = Monitor(MonitorSettings(window=8, min_window=4, drift_every=4, n_perm=10, robust_sample_rate=0.0, trim_seconds=0))
    try:
        m.set_model(tiny_model(), reference(dim=3), eps=0.0, info=INFO)  # reference of another embedding size
        m.observe(CLASSES, *batch(4, dim=4), threshold=0.5)
        wait_until(lambda: m.snapshot()["errors"] == 1, timeout=60, what="the failed drift run")
        m.observe(CLASSES, *batch(4, dim=4), threshold=0.5)  # the thread is still alive
        wait_until(lambda: m.snapshot()["errors"] == 2, timeout=60, what="a second failed drift run")
        assert m.snapshot()["drift_runs"] == 0 and m._thread.is_alive()
    finally:
        m.close()


def test_sampled_images_are_attacked_in_the_background() -> None:
    m = Monitor(MonitorSettings(window=64, min_window=64, robust_sample_rate=1.0, robust_steps=2, trim_seconds=0))
    try:
        m.set_model(tiny_model(), reference(), eps=8 / 255, info=INFO)
        attacked = sample(names.ROBUST_SAMPLES + "_total")
        m.observe(CLASSES, *batch(5), threshold=0.5)
        wait_until(lambda: m.snapshot()["attacked"] == 5, timeout=60, what="5 attacked images")
        assert sample(names.ROBUST_SAMPLES + "_total") - attacked == 5
        assert 0.0 <= sample(names.ADV_FLIP_RATIO) <= 1.0 and m.snapshot()["errors"] == 0
    finally:
        m.close()


def test_set_model_clears_the_windows_and_swaps_the_info_gauge(monitor: Monitor) -> None:
    monitor.observe(CLASSES, *batch(3), threshold=0.5)
    other = {**INFO, "version": "w", "tag": "robustdx-classifier:w"}
    monitor.set_model(tiny_model(), reference(), eps=0.0, info=other)
    assert monitor.snapshot()["window"] == 0
    assert sample(names.MODEL_INFO, **INFO) == 0.0 and sample(names.MODEL_INFO, **other) == 1.0


def test_close_stops_the_thread() -> None:
    m = Monitor(MonitorSettings(trim_seconds=0))
    m.close()
    m._thread.join(10)
    assert not m._thread.is_alive()


def test_samples_of_a_replaced_model_are_dropped_not_mixed(monitor: Monitor) -> None:
    """A batch computed by the old model that arrives after a reload to another architecture: counted, not buffered."""
    dropped = sample(names.MONITOR_DROPPED + "_total")
    monitor.set_model(tiny_model(), reference(dim=6), eps=2 / 255, info={**INFO, "version": "w"})
    probs, emb, images = batch(8, dim=4)  # the old model's 4-d embeddings
    monitor.observe(CLASSES, probs, emb, images, 0.7, version="v")
    assert sample(names.MONITOR_DROPPED + "_total") == dropped + 8
    assert monitor.snapshot()["window"] == 0
    probs, emb, images = batch(8, dim=6)
    monitor.observe(CLASSES, probs, emb, images, 0.7, version="w")
    assert settled(monitor)["drift_runs"] >= 1 and monitor.snapshot()["errors"] == 0


def test_a_failing_turn_is_counted_and_the_loop_keeps_its_heartbeat(monitor: Monitor) -> None:
    errors = sample(names.MONITOR_ERRORS + "_total")
    probs, emb, images = batch(7, dim=4)
    monitor.observe(CLASSES, probs, emb, images, 0.7)
    with monitor._cv:  # a window that cannot be stacked (what a mixed-architecture window used to be)
        monitor._emb.append(torch.zeros(5))
    probs, emb, images = batch(8, dim=4)
    monitor.observe(CLASSES, probs, emb, images, 0.7)
    wait_until(lambda: sample(names.MONITOR_ERRORS + "_total") > errors, timeout=30, what="the failure to be counted")
    beat = sample(names.MONITOR_HEARTBEAT)
    assert monitor._thread.is_alive()
    wait_until(lambda: sample(names.MONITOR_HEARTBEAT) > beat, timeout=30, what="the next heartbeat", interval=0.5)
