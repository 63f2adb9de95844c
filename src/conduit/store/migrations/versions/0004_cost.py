"""Cost and cached prompt tokens per request.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.add_column(sa.Column("cached_tokens", sa.Integer))
        table.add_column(sa.Column("cost_usd", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.drop_column("cost_usd")
        table.drop_column("cached_tokens")
