"""Chunks' injection scores came from the message detector; documents now have a detector of
their own, with its own threshold, and the old scores would flag half of ordinary documentation.
They are cleared: a chunk without a score is never flagged; `conduit index rescan` scores them
with the document detector.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE chunks SET injection_score = NULL"))


def downgrade() -> None:
    pass  # the message detector's scores are gone; chunks stay unscored
