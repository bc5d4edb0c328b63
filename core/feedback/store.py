"""The inference log and clinician feedback in a SQL database (SQLite by default, PostgreSQL in compose).

Why a database and not files: feedback arrives concurrently from many clinicians for predictions written by
another thread, must be idempotent per (request, reviewer), and must never lose an answer; a unique constraint
and transactions give that on both engines. The schema changes only through the Alembic migrations
(:meth:`FeedbackStore.migrate`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, case, create_engine, event, func, select
from sqlalchemy.exc import IntegrityError

from robustdx.core.feedback.schema import MAX_NOTE, MAX_REVIEWER, feedback, inferences

_REVIEWER = re.compile(rf"^[\w.@+-]{{1,{MAX_REVIEWER}}}$")


class FeedbackError(ValueError):
    """Feedback refused; ``status`` is the HTTP status the service answers with. Nothing was written."""

    status = 422


class UnknownRequest(FeedbackError):
    status = 404


class DuplicateFeedback(FeedbackError):
    status = 409


class ImageNotStored(FeedbackError):
    status = 409


@dataclass(frozen=True)
class InferenceRecord:
    """One predicted image: what the service answered, with which model, for which image (by hash)."""

    request_id: str
    created_at: datetime
    model_version: str
    model_tag: str
    image_sha256: str
    image_stored: bool
    prediction: str
    probabilities: dict[str, float]
    confidence: float
    referred: bool
    source: str = "predict"  # or "upload": sent by a clinician with its label (POST /feedback/image)

    @property
    def classes(self) -> list[str]:
        return list(self.probabilities)


@dataclass(frozen=True)
class FeedbackRecord:
    """One reviewer's confirmed label for one prediction."""

    request_id: str
    reviewer: str
    label: str
    note: str | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat()}


def _utc(t: datetime) -> datetime:
    """SQLite hands back naive datetimes: everything here is UTC."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file (its folder is created)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_locations(home: Path | str | None = None) -> tuple[str, Path]:
    """The inference log's URL and the image store's folder when none is given: ``HOME/feedback`` of the BentoML
    home (``$BENTOML_HOME``), shared by the service, ``robustdx data snapshot`` and the retrain flow."""
    from robustdx.core.release.pointer import bentoml_home

    folder = bentoml_home(home) / "feedback"
    return sqlite_url(folder / "inference.db"), folder / "images"


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        connect = {"connect_timeout": 5} if url.startswith("postgresql") else {}  # a down host: fail fast, retry later
        return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args=connect)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:  # WAL: readers never block the log writer
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return engine


class FeedbackStore:
    """Reads and writes the inference log and feedback of one database URL (thread-safe: one engine, pooled)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)

    def migrate(self) -> str:
        """Bring the schema to the newest migration (idempotent); returns the revision now in the database."""
        from alembic import command
        from alembic.config import Config
        from alembic.runtime.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with self.engine.connect() as conn:
            return str(MigrationContext.configure(conn).get_current_revision())

    def close(self) -> None:
        self.engine.dispose()

    # ---- the inference log ----------------------------------------------------------------------
    def log_inferences(self, rows: Sequence[InferenceRecord]) -> None:
        """Insert predictions (one transaction)."""
        if rows:
            with self.engine.begin() as conn:
                conn.execute(inferences.insert(), [asdict(r) for r in rows])

    def inference(self, request_id: str) -> InferenceRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(inferences).where(inferences.c.request_id == request_id)).mappings().first()
        return None if row is None else _inference(row)

    def upload_of(self, image_sha256: str, reviewer: str) -> str | None:
        """The request id under which ``reviewer`` already answered an uploaded image (None: never), so uploading
        the same image again is answered like a repeat of the same feedback and not logged twice."""
        q = (
            select(inferences.c.request_id)
            .join(feedback, feedback.c.request_id == inferences.c.request_id)
            .where(inferences.c.source == "upload", inferences.c.image_sha256 == image_sha256, feedback.c.reviewer == reviewer)
        )
        with self.engine.connect() as conn:
            return conn.execute(q.limit(1)).scalar_one_or_none()

    # ---- feedback -------------------------------------------------------------------------------
    def add_feedback(
        self, request_id: str, reviewer: str, label: str, note: str | None = None, now: datetime | None = None
    ) -> tuple[FeedbackRecord, bool]:
        """Record a reviewer's label for a prediction; returns the record and whether it is new.

        Idempotent per (request, reviewer): the same answer again returns the stored one (``False``); a different
        answer from the same reviewer is refused (:class:`DuplicateFeedback`), so a label is never silently
        replaced. Raises a :class:`FeedbackError` (nothing written) for an unknown request, a label outside the
        predicting model's classes, a note or reviewer name out of bounds, or a prediction whose image was not
        stored (it could never be trained on).
        """
        record = self.inference(request_id)
        if record is None:
            check_answer(reviewer, label, note, None)
            raise UnknownRequest(f"unknown request_id {request_id!r}: no prediction was logged under it")
        check_answer(reviewer, label, note, record.classes)
        if not record.image_stored:
            raise ImageNotStored(
                f"the image of request {request_id} was not stored, so feedback on it could never be trained on; "
                "send store_image=true with /predict for images a clinician will review"
            )
        new = FeedbackRecord(request_id, reviewer, label, note, _utc(now or datetime.now(UTC)))
        try:
            with self.engine.begin() as conn:
                conn.execute(feedback.insert().values(**asdict(new)))
            return new, True
        except IntegrityError:
            pass  # this reviewer answered before (maybe concurrently): the same answer is fine, another is not
        old = self._feedback_of(request_id, reviewer)
        if old is None:  # pragma: no cover - an integrity error without the row: the foreign key, i.e. a race with a purge
            raise UnknownRequest(f"unknown request_id {request_id!r}")
        if (old.label, old.note) != (label, note):
            raise DuplicateFeedback(
                f"{reviewer} already answered {old.label!r} for request {request_id} at {old.created_at.isoformat()}; "
                "an answer is never replaced (another reviewer may add theirs)"
            )
        return old, False

    def _feedback_of(self, request_id: str, reviewer: str) -> FeedbackRecord | None:
        q = select(feedback).where(feedback.c.request_id == request_id, feedback.c.reviewer == reviewer)
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else _feedback(row)

    def feedback_with_inferences(self, until: datetime | None = None) -> list[tuple[FeedbackRecord, InferenceRecord]]:
        """Every feedback up to ``until`` (inclusive) with the prediction it is about, oldest first."""
        q = select(feedback, *[c.label(f"i_{c.name}") for c in inferences.c]).join(
            inferences, feedback.c.request_id == inferences.c.request_id
        )
        if until is not None:
            q = q.where(feedback.c.created_at <= _utc(until))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(feedback.c.created_at, feedback.c.id)).mappings().all()
        return [(_feedback(r), _inference({k[2:]: v for k, v in r.items() if k.startswith("i_")})) for r in rows]

    def stats(self, now: datetime | None = None) -> dict[str, Any]:
        """Counts by label and by model version, agreement of reviewers with the predictions, pending reviews.

        Aggregated in the database (the service's metrics read this every few seconds; the log only grows)."""
        joined = feedback.join(inferences, feedback.c.request_id == inferences.c.request_id)
        agrees = func.sum(case((feedback.c.label == inferences.c.prediction, 1), else_=0))
        reviewed = select(feedback.c.request_id)
        pending = select(func.count(), func.min(inferences.c.created_at)).where(
            inferences.c.referred, inferences.c.image_stored, inferences.c.request_id.not_in(reviewed)
        )
        with self.engine.connect() as conn:
            n_inferences = conn.execute(select(func.count()).select_from(inferences)).scalar_one()
            labels = conn.execute(select(feedback.c.label, func.count()).group_by(feedback.c.label)).all()
            versions = conn.execute(
                select(inferences.c.model_version, func.count(), agrees).select_from(joined).group_by(inferences.c.model_version)
            ).all()
            n_pending, oldest = conn.execute(pending).one()
        by_version = {str(v): {"feedback": int(n), "agree": int(a), "agreement": int(a) / int(n)} for v, n, a in sorted(versions)}
        n_feedback = sum(v["feedback"] for v in by_version.values())
        agree = sum(v["agree"] for v in by_version.values())
        now = _utc(now or datetime.now(UTC))
        return {
            "inferences": int(n_inferences),
            "feedback": n_feedback,
            "by_label": {str(label): int(n) for label, n in sorted(labels)},
            "by_model_version": by_version,
            "agreement": agree / n_feedback if n_feedback else None,
            "pending_review": int(n_pending),
            "oldest_pending_seconds": (now - _utc(oldest)).total_seconds() if oldest is not None else None,
        }


def check_answer(reviewer: str, label: str, note: str | None, classes: Sequence[str] | None) -> None:
    """Refuse (:class:`FeedbackError`) a reviewer id, note or label out of bounds; ``classes``: the predicting
    model's (None: not known yet, the label is not checked). Called before anything is written."""
    if not _REVIEWER.match(reviewer or ""):
        raise FeedbackError(f"reviewer must be 1-{MAX_REVIEWER} characters of letters, digits and . @ + - _, got {reviewer!r}")
    if note is not None and len(note) > MAX_NOTE:
        raise FeedbackError(f"note is {len(note)} characters long; at most {MAX_NOTE}")
    if classes is not None and label not in classes:
        raise FeedbackError(f"label {label!r} is not one of the predicting model's classes {list(classes)}")


def _inference(row: Any) -> InferenceRecord:
    d = dict(row)
    d["created_at"] = _utc(d["created_at"])
    return InferenceRecord(**d)


def _feedback(row: Any) -> FeedbackRecord:
    d = {k: row[k] for k in ("request_id", "reviewer", "label", "note", "created_at")}
    d["created_at"] = _utc(d["created_at"])
    return FeedbackRecord(**d)


def consensus(pairs: Iterable[tuple[FeedbackRecord, InferenceRecord]]) -> tuple[dict[str, InferenceRecord], dict[str, str], int]:
    """Per request, the label every reviewer gave (``{request_id: label}``) and the number of disputed requests
    (reviewers disagree: left out of training until they agree)."""
    labels: dict[str, set[str]] = {}
    records: dict[str, InferenceRecord] = {}
    for fb, inf in pairs:
        labels.setdefault(fb.request_id, set()).add(fb.label)
        records[fb.request_id] = inf
    agreed = {rid: next(iter(ls)) for rid, ls in labels.items() if len(ls) == 1}
    return records, agreed, len(labels) - len(agreed)
