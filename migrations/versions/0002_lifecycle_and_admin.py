"""Lifecycle and admin: batches, duplicate links, alias history, onboarding, retention, benchmarks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 19:38:24.074326
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Rows that exist before this revision get empty values; new rows get the app's defaults.
EMPTY = sa.text("'{}'")


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "benchmark_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("argv", sa.JSON(), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("report_md", sa.Text(), nullable=True),
        sa.Column("plot_sha256", sa.String(length=64), nullable=True),
        sa.Column("code_version", sa.String(length=50), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"], ["api_clients.id"], name=op.f("fk_benchmark_runs_client_id_api_clients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_benchmark_runs")),
    )
    with op.batch_alter_table("benchmark_runs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_benchmark_runs_client_id"), ["client_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_benchmark_runs_created_at"), ["created_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_benchmark_runs_status"), ["status"], unique=False)

    op.create_table(
        "alias_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("alias", sa.String(length=50), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["model_versions.id"],
            name=op.f("fk_alias_events_from_version_id_model_versions"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["registered_models.id"],
            name=op.f("fk_alias_events_model_id_registered_models"),
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"],
            ["model_versions.id"],
            name=op.f("fk_alias_events_to_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_events")),
    )
    op.create_index("ix_alias_events_model_id", "alias_events", ["model_id"])

    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("linked_request_id", sa.String(length=36), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_deletion_requests_batch_id"), ["batch_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_deletion_requests_linked_request_id"),
            ["linked_request_id"],
            unique=False,
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_deletion_requests_linked_request_id_deletion_requests"),
            "deletion_requests",
            ["linked_request_id"],
            ["id"],
        )

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("training_data", sa.JSON(), nullable=False, server_default=EMPTY)
        )
        batch_op.add_column(sa.Column("progress", sa.JSON(), nullable=False, server_default=EMPTY))
        batch_op.add_column(sa.Column("artifacts_version_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("artifacts_prepared_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_model_versions_artifacts_version_id_model_versions"),
            "model_versions",
            ["artifacts_version_id"],
            ["id"],
        )

    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("erasures_since_refresh", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("registered_models", schema=None) as batch_op:
        batch_op.drop_column("erasures_since_refresh")

    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_model_versions_artifacts_version_id_model_versions"), type_="foreignkey"
        )
        batch_op.drop_column("purged_at")
        batch_op.drop_column("artifacts_prepared_at")
        batch_op.drop_column("artifacts_version_id")
        batch_op.drop_column("progress")
        batch_op.drop_column("training_data")

    with op.batch_alter_table("deletion_requests", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_deletion_requests_linked_request_id_deletion_requests"),
            type_="foreignkey",
        )
        batch_op.drop_index(batch_op.f("ix_deletion_requests_linked_request_id"))
        batch_op.drop_index(batch_op.f("ix_deletion_requests_batch_id"))
        batch_op.drop_column("linked_request_id")
        batch_op.drop_column("batch_id")

    with op.batch_alter_table("benchmark_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_benchmark_runs_status"))
        batch_op.drop_index(batch_op.f("ix_benchmark_runs_created_at"))
        batch_op.drop_index(batch_op.f("ix_benchmark_runs_client_id"))

    op.drop_table("benchmark_runs")
    op.drop_table("alias_events")
