"""The cache outcome of each request (hit | miss) in the request log.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.add_column(sa.Column("cache", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.drop_column("cache")
