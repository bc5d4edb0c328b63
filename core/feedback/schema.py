"""The inference log's tables (SQLAlchemy Core): the one description the migrations were written from and the
store's queries use. Change it only together with a new migration in ``migrations/versions``."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

MAX_NOTE = 2000  # characters of a reviewer's free-text note
MAX_REVIEWER = 120
SOURCES = ("predict", "upload")  # a client's /predict; an image a clinician uploaded with its label

metadata = MetaData()

inferences = Table(
    "inferences",
    metadata,
    Column("request_id", String(32), primary_key=True),  # one per predicted image, returned to the client
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    Column("model_version", String(64), nullable=False, index=True),
    Column("model_tag", String(200), nullable=False),
    Column("image_sha256", String(64), nullable=False, index=True),
    Column("image_stored", Boolean, nullable=False),  # the client opted in: the image is in the image store
    Column("prediction", String(64), nullable=False),
    Column("probabilities", JSON, nullable=False),  # {class: probability}: its keys are the model's classes
    Column("confidence", Float, nullable=False),
    Column("referred", Boolean, nullable=False),  # below the confidence threshold: refer to clinician
    Column("source", String(16), nullable=False, server_default="predict"),  # predict | upload (revision 0002)
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(32), ForeignKey("inferences.request_id"), nullable=False, index=True),
    Column("reviewer", String(MAX_REVIEWER), nullable=False),
    Column("label", String(64), nullable=False),
    Column("note", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
    UniqueConstraint("request_id", "reviewer", name="uq_feedback_request_reviewer"),  # one answer per reviewer
)
