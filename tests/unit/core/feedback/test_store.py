"""The inference log and feedback store on SQLite: migrations, idempotent answers, the refusals, consensus and
stats; the content-addressed image store."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from robustdx.core.feedback.images import ImageStore
from robustdx.core.feedback.store import (
    DuplicateFeedback,
    FeedbackError,
    FeedbackStore,
    ImageNotStored,
    InferenceRecord,
    UnknownRequest,
    consensus,
    sqlite_url,
)

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def record(i: int, stored: bool = True, label: str = "tumor", referred: bool = False, version: str = "v1") -> InferenceRecord:
    p = {"normal": 0.3, "tumor": 0.7} if label == "tumor" else {"normal": 0.8, "tumor": 0.2}
    return InferenceRecord(f"{i:032x}", T0 + timedelta(minutes=i), version, f"m:{version}", f"{i:064x}", stored, label, p,
                           max(p.values()), referred)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    s = FeedbackStore(sqlite_url(tmp_path / "log" / "inference.db"))
    s.migrate()
    yield s
    s.close()


def test_migrations_create_the_schema_once(store: FeedbackStore) -> None:
    assert store.migrate() == "0002"  # idempotent
    tables = set(inspect(store.engine).get_table_names())
    assert {"inferences", "feedback", "alembic_version"} <= tables


def test_the_migrations_build_exactly_the_schema_the_store_queries(store: FeedbackStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from robustdx.core.feedback.schema import metadata

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_upgrading_a_0001_log_keeps_its_rows_as_predictions(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    s = FeedbackStore(sqlite_url(tmp_path / "old.db"))
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(s.migrate.__code__.co_filename).with_name("migrations")))
    with s.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO inferences VALUES ('r1', '2026-11-01 12:00:00', 'v1', 'm:v1', :sha, 1, 'tumor', "
                          "'{\"normal\": 0.2, \"tumor\": 0.8}', 0.8, 0)"), {"sha": "a" * 64})  # fmt: skip
    assert s.migrate() == "0002"
    old = s.inference("r1")
    assert old is not None and old.source == "predict" and old.probabilities == {"normal": 0.2, "tumor": 0.8}
    s.log_inferences([replace(record(2), source="upload")])
    assert s.inference(record(2).request_id).source == "upload"
    s.close()


def test_rows_round_trip_with_utc_times(store: FeedbackStore) -> None:
    rows = [record(i) for i in range(3)]
    store.log_inferences(rows)
    assert [store.inference(r.request_id) for r in rows] == rows
    assert store.inference("nope") is None


def test_answers_are_idempotent_and_never_replaced(store: FeedbackStore) -> None:
    store.log_inferences([record(1), record(2, stored=False)])
    rid = record(1).request_id
    fb, created = store.add_feedback(rid, "dr.a", "normal", "benign", now=T0)
    assert created and fb.label == "normal"
    assert store.add_feedback(rid, "dr.a", "normal", "benign") == (fb, False)
    with pytest.raises(DuplicateFeedback, match="never replaced"):
        store.add_feedback(rid, "dr.a", "tumor")
    with pytest.raises(UnknownRequest):
        store.add_feedback("f" * 32, "dr.a", "tumor")
    with pytest.raises(FeedbackError, match="classes"):
        store.add_feedback(rid, "dr.b", "cat")
    with pytest.raises(FeedbackError, match="at most"):
        store.add_feedback(rid, "dr.b", "tumor", "x" * 2001)
    with pytest.raises(FeedbackError, match="reviewer"):
        store.add_feedback(rid, "", "tumor")
    with pytest.raises(ImageNotStored):
        store.add_feedback(record(2).request_id, "dr.a", "tumor")
    assert [f.reviewer for f, _ in store.feedback_with_inferences()] == ["dr.a"], "refusals wrote nothing"


def test_concurrent_answers_lose_nothing(store: FeedbackStore) -> None:
    store.log_inferences([record(1)])
    errors: list[Exception] = []

    def answer(reviewer: str) -> None:
        try:
            store.add_feedback(record(1).request_id, reviewer, "tumor")
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=answer, args=(f"dr.{i % 10}",)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(f.reviewer for f, _ in store.feedback_with_inferences()) == sorted(f"dr.{i}" for i in range(10))


def test_stats_and_consensus(store: FeedbackStore) -> None:
    store.log_inferences([record(1), record(2, label="normal"), record(3, referred=True), record(4, referred=True, stored=False)])
    store.add_feedback(record(1).request_id, "dr.a", "tumor", now=T0 + timedelta(hours=1))
    store.add_feedback(record(2).request_id, "dr.a", "tumor", now=T0 + timedelta(hours=2))
    store.add_feedback(record(2).request_id, "dr.b", "normal", now=T0 + timedelta(hours=3))
    stats = store.stats(now=T0 + timedelta(hours=4))
    assert stats["feedback"] == 3 and stats["by_label"] == {"tumor": 2, "normal": 1}
    assert stats["agreement"] == pytest.approx(2 / 3)
    assert stats["pending_review"] == 1, "only referred, stored, unanswered predictions wait for review"
    assert stats["oldest_pending_seconds"] == pytest.approx(4 * 3600 - 3 * 60)
    records, agreed, disputed = consensus(store.feedback_with_inferences())
    assert agreed == {record(1).request_id: "tumor"} and disputed == 1 and len(records) == 2
    early = store.feedback_with_inferences(until=T0 + timedelta(hours=2))
    assert len(early) == 2, "until is inclusive"


def test_image_store_is_content_addressed(tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(50))
    digest, path = images.put(png)
    assert path.name == f"{digest}.png" and path.parent.name == digest[:2]
    assert images.put(png) == (digest, path)
    assert images.verify(digest) == path
    path.write_bytes(png + b"x")
    with pytest.raises(ValueError, match="altered"):
        images.verify(digest)
    with pytest.raises(FileNotFoundError):
        images.verify("0" * 64)
