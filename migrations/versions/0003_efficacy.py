"""Calibrated efficacy: each version's simulated-erasure summary per method.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 11:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision: versions prepared before it have no efficacy ({})."""
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(
            sa.Column("efficacy", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("efficacy")
