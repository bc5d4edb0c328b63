"""The production pointer: exact tags, atomic writes, the previous tag kept for rollback, and
force_production (the gate-less path) taking the promotion lock and leaving an audit record."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from robustdx.core.release.pointer import (
    PointerError,
    append_audit,
    force_production,
    pointer_path,
    promotion_lock,
    read_audit,
    read_production,
    resolve_tag,
    write_production,
)

pytestmark = pytest.mark.unit

A, B = "robustdx-classifier:aaa", "robustdx-classifier:bbb"


def test_production_pointer_is_exact_atomic_and_keeps_previous(tmp_path: Path) -> None:
    assert read_production(tmp_path) is None
    with pytest.raises(LookupError, match="ROBUSTDX_MODEL_TAG"):
        resolve_tag(tmp_path, env={})
    with pytest.raises(ValueError, match="latest"):
        write_production(tmp_path, "robustdx-classifier:latest")
    write_production(tmp_path, "robustdx-classifier:aaa")
    p = write_production(tmp_path, "robustdx-classifier:bbb")
    assert (p.tag, p.previous) == ("robustdx-classifier:bbb", "robustdx-classifier:aaa") and read_production(tmp_path) == p
    assert write_production(tmp_path, "robustdx-classifier:bbb").previous == "robustdx-classifier:aaa"  # idempotent
    assert [f.name for f in pointer_path(tmp_path).parent.iterdir()] == ["production.json"]  # no temp files left
    assert resolve_tag(tmp_path, env={}) == "robustdx-classifier:bbb"
    assert resolve_tag(tmp_path, env={"ROBUSTDX_MODEL_TAG": "robustdx-classifier:ccc"}) == "robustdx-classifier:ccc"
    pointer_path(tmp_path).write_text("{not json")
    with pytest.raises(PointerError, match="production.json"):
        read_production(tmp_path)


def test_force_production_records_the_bypass_and_keeps_previous(tmp_path: Path) -> None:
    write_production(tmp_path, A)
    pointer = force_production(tmp_path, B, reason="demo --bundle runs/x/bundle")
    assert (pointer.tag, pointer.previous) == (B, A) and read_production(tmp_path) == pointer  # rollback target kept
    (record,) = read_audit(tmp_path)
    assert record["action"] == "forced" and record["reason"] == "demo --bundle runs/x/bundle"
    assert (record["tag"], record["previous"]) == (B, A) and record["time"]


def test_force_production_refuses_an_inexact_tag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="latest"):
        force_production(tmp_path, "robustdx-classifier:latest", reason="x")
    assert read_production(tmp_path) is None and read_audit(tmp_path) == []


def test_force_production_waits_for_the_promotion_lock(tmp_path: Path) -> None:
    done = threading.Event()

    def force() -> None:
        force_production(tmp_path, B, reason="while a promotion runs")
        done.set()

    with promotion_lock(tmp_path):
        write_production(tmp_path, A)
        t = threading.Thread(target=force)
        t.start()
        time.sleep(0.3)
        assert not done.is_set() and read_production(tmp_path).tag == A  # blocked behind the promotion
    t.join(10)
    assert done.is_set() and read_production(tmp_path).tag == B


def test_force_production_times_out_on_a_held_lock(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def force() -> None:
        try:
            force_production(tmp_path, B, reason="x", lock_timeout=0.2)
        except TimeoutError as err:
            errors.append(err)

    with promotion_lock(tmp_path):
        t = threading.Thread(target=force)
        t.start()
        t.join(10)
    assert errors and "another promotion holds" in str(errors[0]) and read_production(tmp_path) is None


def test_lock_serialises_and_audit_keeps_order(tmp_path: Path) -> None:
    order: list[str] = []

    def worker(name: str) -> None:
        with promotion_lock(tmp_path):
            order.append(f"{name}-in")
            time.sleep(0.2)
            append_audit(tmp_path, {"action": name})
            order.append(f"{name}-out")

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[0][:1] == order[1][:1] and order[2][:1] == order[3][:1]  # no interleaving
    assert [r["action"] for r in read_audit(tmp_path)] == [order[0][0], order[2][0]]


def test_lock_timeout_is_a_clear_error(tmp_path: Path) -> None:
    with promotion_lock(tmp_path):
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with promotion_lock(tmp_path, timeout=0.2):
                    pass
            except TimeoutError as err:
                errors.append(err)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert errors and "another promotion holds" in str(errors[0])
