"""Files, vector stores and their chunks (retrieval).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), index=True),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "vector_stores",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), index=True),
        sa.Column("name", sa.String(500)),
        sa.Column("chunking", sa.Text, nullable=False),
        sa.Column("metadata_json", sa.Text),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "vector_store_files",
        sa.Column("vector_store_id", sa.String(40), sa.ForeignKey("vector_stores.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("file_id", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("attributes_json", sa.Text),
        sa.Column("source", sa.String(1000)),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("usage_bytes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("vector_store_id", sa.String(40), nullable=False, index=True),
        sa.Column("file_id", sa.String(40), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("header", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("section_path", sa.Text, nullable=False),
        sa.Column("page", sa.Integer),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sqlite_autoincrement=True,  # ids are never reused: indexes know chunks by id
    )


def downgrade() -> None:
    for table in ("chunks", "vector_store_files", "vector_stores", "files"):
        op.drop_table(table)
