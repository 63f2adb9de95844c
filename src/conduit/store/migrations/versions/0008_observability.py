"""Observability: per-request traces, feedback, TPOT and prompt version in the request log.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.add_column(sa.Column("tpot_ms", sa.Float))
        table.add_column(sa.Column("prompt_version", sa.String(64)))
    op.create_table(
        "request_traces",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), index=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("request_id", sa.String(40), index=True, nullable=False),
        sa.Column("tenant_id", sa.String(40), index=True),
        sa.Column("rating", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("request_traces")
    with op.batch_alter_table("request_log") as table:
        table.drop_column("prompt_version")
        table.drop_column("tpot_ms")
