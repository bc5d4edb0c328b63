"""service/explaining.py: the deadline stops IG and PGD from inside the forward pass (also on the
BatchNorm-folded twins they differentiate), only in the thread that set it; the gate refuses what it
cannot admit at once; the attack rate is a token bucket per client."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from robustdx.core.attacks import attack_ce
from robustdx.core.config import AttackConfig, ModelConfig
from robustdx.core.explain.ig import integrated_gradients
from robustdx.core.models import build_model
from robustdx.service.explaining import Busy, DeadlineExceeded, Deadlines, ExplainGate, ExplainLimits, RateLimiter

pytestmark = pytest.mark.unit


@pytest.fixture
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="test_cnn")).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_deadline_stops_ig_and_pgd_inside_the_forward_pass(net: torch.nn.Module) -> None:
    deadlines = Deadlines()
    deadlines.attach(net)
    x = torch.rand(1, 3, 16, 16)
    with deadlines.within(1e-9):
        time.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            integrated_gradients(net, x, n_steps=64, internal_batch_size=8)  # on the folded, channels_last twin
        with pytest.raises(DeadlineExceeded):
            attack_ce(net, x, torch.tensor([0]), AttackConfig(eps=4 / 255, steps=50))
    # after the block, and with a generous deadline, the same calls finish
    integrated_gradients(net, x, n_steps=16, internal_batch_size=8)
    with deadlines.within(60):
        attack_ce(net, x, torch.tensor([0]), AttackConfig(eps=4 / 255, steps=3))


def test_deadline_is_per_thread(net: torch.nn.Module) -> None:
    deadlines = Deadlines()
    deadlines.attach(net)
    other: list[BaseException | None] = []

    def predict_elsewhere() -> None:
        try:
            with torch.no_grad():
                net(torch.rand(2, 3, 16, 16))
            other.append(None)
        except BaseException as err:  # noqa: BLE001 - recorded for the assertion
            other.append(err)

    with deadlines.within(1e-9):
        time.sleep(0.01)
        t = threading.Thread(target=predict_elsewhere)
        t.start()
        t.join()
    assert other == [None]


def test_a_model_with_the_hook_can_still_be_deep_copied(net: torch.nn.Module) -> None:
    import copy

    Deadlines().attach(net)
    twin = copy.deepcopy(net)  # the monitor keeps its own copy of the served model
    assert torch.equal(twin(torch.ones(1, 3, 16, 16)), net(torch.ones(1, 3, 16, 16)))


def test_rate_limiter_is_a_token_bucket_per_key() -> None:
    limiter = RateLimiter(per_minute=6, burst=2)
    assert limiter.take("a", now=0.0) == 0 and limiter.take("a", now=0.0) == 0
    wait = limiter.take("a", now=0.0)
    assert wait == pytest.approx(10.0)  # one token every 10 s
    assert limiter.take("b", now=0.0) == 0  # another client has its own bucket
    assert limiter.take("a", now=10.0) == 0 and limiter.take("a", now=10.0) > 0


def test_rate_limiter_forgets_the_oldest_clients_beyond_its_size() -> None:
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=3)
    for key in "abcd":
        limiter.take(key, now=0.0)
    assert limiter.take("a", now=0.0) == 0  # 'a' was forgotten: a fresh bucket
    assert limiter.take("d", now=0.0) > 0


def test_gate_admits_workers_plus_queue_then_refuses_at_once() -> None:
    gate = ExplainGate(ExplainLimits(workers=1, queue=1, deadline_seconds=5), Deadlines())
    release = threading.Event()

    async def scenario() -> list[object]:
        slow = [asyncio.ensure_future(gate.run(release.wait)) for _ in range(2)]
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        with pytest.raises(Busy, match="already running or queued"):
            await gate.run(lambda: None)
        assert time.perf_counter() - t0 < 0.1  # refused without waiting
        release.set()
        done = await asyncio.gather(*slow)
        done.append(await gate.run(lambda: "free again"))
        return done

    assert asyncio.run(scenario()) == [True, True, "free again"]


def test_gate_stops_a_computation_past_its_deadline_and_frees_the_thread(net: torch.nn.Module) -> None:
    deadlines = Deadlines()
    deadlines.attach(net)
    gate = ExplainGate(ExplainLimits(workers=1, queue=0, deadline_seconds=0.3), deadlines)
    x = torch.rand(1, 3, 16, 16)

    def forever() -> None:
        while True:
            integrated_gradients(net, x, n_steps=64, internal_batch_size=8)

    async def scenario() -> str:
        t0 = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await gate.run(forever)
        assert time.perf_counter() - t0 < 5
        return await gate.run(lambda: "next one runs")  # queue=0: only possible if the thread was freed

    assert asyncio.run(scenario()) == "next one runs"


def test_attack_admission_names_the_limit() -> None:
    gate = ExplainGate(ExplainLimits(attacks_per_minute=6, attack_burst=1), Deadlines())
    gate.admit_attack("10.0.0.1")
    with pytest.raises(Busy, match="6 a minute per client"):
        gate.admit_attack("10.0.0.1")
    gate.admit_attack("10.0.0.2")
