"""A root version keeps the SHA-256 of the file uploaded: `model_versions.upload_sha256`.

Preparation stores the checkpoint with its splits keyed (no plain identity ID) and deletes the
upload, so `sha256` names the kept file; this column still finds the version when the same file
is registered again (null: the kept file is the upload, as for every version before this one).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 22:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("upload_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("upload_sha256")
