"""Guards: injection scores of chunks, guard verdicts of requests.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("chunks") as table:
        table.add_column(sa.Column("injection_score", sa.Float))
    with op.batch_alter_table("request_log") as table:
        table.add_column(sa.Column("guard", sa.String(200)))


def downgrade() -> None:
    with op.batch_alter_table("request_log") as table:
        table.drop_column("guard")
    with op.batch_alter_table("chunks") as table:
        table.drop_column("injection_score")
