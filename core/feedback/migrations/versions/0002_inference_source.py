"""Where a logged prediction came from: ``predict`` (a client's /predict) or ``upload`` (an image a clinician sent
with its label to /feedback/image). Rows written before this revision were all predictions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("inferences", sa.Column("source", sa.String(16), nullable=False, server_default="predict"))


def downgrade() -> None:
    with op.batch_alter_table("inferences") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("source")
