"""Routing columns in the request log: deployment, route, attempts.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.add_column(sa.Column("deployment", sa.String(200)))
        table.add_column(sa.Column("route", sa.String(200)))
        table.add_column(sa.Column("attempts", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.drop_column("attempts")
        table.drop_column("route")
        table.drop_column("deployment")
