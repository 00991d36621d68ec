"""Alembic environment: the tables of `app.tables`, the URL from the config or the settings."""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic.operations.ops import MigrationScript
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.engine import make_url

from app.settings import get_settings
from app.tables import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata

# Any fixed number shared by every process that migrates the same Postgres database.
MIGRATION_LOCK_KEY = 0x4C45544845

# Only the CLI has an ini file; `app.db.migrate` runs without one and keeps the caller's logging.
if config.config_file_name is not None and config.file_config.has_section("loggers"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate: `sqlalchemy.url` from the Alembic config, else the settings'."""
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render app column types as plain SQLAlchemy types so revisions never import app code."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def skip_empty(
    context_: MigrationContext, revision: Any, directives: list[MigrationScript]
) -> None:
    """Write no revision file when autogenerate finds no change."""
    ops = directives[0].upgrade_ops
    autogenerate = getattr(config.cmd_opts, "autogenerate", False)
    if autogenerate and ops is not None and ops.is_empty():
        directives[:] = []


def configure_options(url: str) -> dict[str, Any]:
    """Context options shared by offline and online runs."""
    return {
        "target_metadata": target_metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        "render_as_batch": make_url(url).get_backend_name() == "sqlite",
        "compare_type": True,
        "render_item": render_item,
        "process_revision_directives": skip_empty,
    }


def run_migrations_offline() -> None:
    """Emit the SQL as a script (`alembic upgrade head --sql`) without connecting."""
    url = database_url()
    context.configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **configure_options(url)
    )
    with context.begin_transaction():
        context.run_migrations()


def ensure_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file, as the app's engine does."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def run_with_connection(connection: Connection, url: str) -> None:
    """Run the migrations in one transaction on an open connection."""
    context.configure(connection=connection, **configure_options(url))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # API and worker may start together; the second waits, then sees the new head.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect and migrate (a connection passed in by the caller is reused)."""
    connection = config.attributes.get("connection")
    url = database_url()
    if connection is not None:
        run_with_connection(connection, url)
        return
    ensure_sqlite_folder(url)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_with_connection(connection, url)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
