"""Per-key limits and budgets.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("rpm_limit", sa.Integer))
        table.add_column(sa.Column("tpm_limit", sa.Integer))
        table.add_column(sa.Column("max_concurrent", sa.Integer))
        table.add_column(sa.Column("budget_usd", sa.Float))
        table.add_column(sa.Column("budget_period", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        for column in ("budget_period", "budget_usd", "max_concurrent", "tpm_limit", "rpm_limit"):
            table.drop_column(column)
