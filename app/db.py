"""Database engine, sessions and migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings, get_settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
POOL_SIZE = 16  # connections each process keeps open to PostgreSQL


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets foreign keys, WAL and a busy timeout for concurrent use."""
    # hide_parameters on both: an error's text, which gets logged, must not carry the identity
    # hashes, idempotency keys or portrait tokens a statement was bound with
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            hide_parameters=True,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    # A pool as large as the API's usual concurrency: with the default 5, every connection
    # past the fifth was closed on return and opened again (a server process forked) per request.
    return create_engine(
        url, pool_pre_ping=True, hide_parameters=True, pool_size=POOL_SIZE, max_overflow=POOL_SIZE
    )


@lru_cache
def _engine_for(url: str) -> Engine:
    return make_engine(url)


def get_engine(settings: Settings | None = None) -> Engine:
    """The process-wide engine for the configured database."""
    return _engine_for((settings or get_settings()).resolved_database_url)


def session_factory(settings: Settings | None = None) -> sessionmaker[Session]:
    """Sessions bound to the configured database (objects stay usable after commit)."""
    return sessionmaker(get_engine(settings), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(settings)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def migrate(settings: Settings | None = None, revision: str = "head") -> None:
    """Bring the database schema to `revision` with Alembic (the only way tables are created)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    url = (settings or get_settings()).resolved_database_url
    # Config values go through ConfigParser interpolation: a percent-encoded password needs `%%`.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision)
