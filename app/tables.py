"""SQLAlchemy tables. They are created only by the Alembic migrations in `migrations/`."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Every constraint gets a deterministic name, so later migrations can drop or alter it by name
# (SQLite's batch mode cannot address unnamed constraints).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random public identifier."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend."""

    # SQLite keeps no offset and would hand back naive datetimes that cannot be compared with
    # utcnow(); storing UTC and re-attaching it on load makes both backends behave the same.
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalize to UTC before storing (naive values are taken as UTC)."""
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every Lethe table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RequestStatus(enum.StrEnum):
    """Deletion-request lifecycle (docs/architecture.md, "Request lifecycle")."""

    received = "received"
    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"
    needs_review = "needs_review"
    rejected = "rejected"
    canceled = "canceled"


TERMINAL = frozenset(
    {
        RequestStatus.completed,
        RequestStatus.failed,
        RequestStatus.needs_review,
        RequestStatus.rejected,
        RequestStatus.canceled,
    }
)

# Allowed transitions; `running → queued` is a requeue after a worker died mid-job.
# `received → completed` is a duplicate of an identity the serving version already forgot;
# `needs_review → completed` is an admin moving `serving` to the version that erased it.
TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.received: frozenset(
        # failed: the sweeper found it stranded without its portrait
        {
            RequestStatus.queued,
            RequestStatus.rejected,
            RequestStatus.completed,
            RequestStatus.failed,
        }
    ),
    RequestStatus.queued: frozenset(
        {
            RequestStatus.running,
            RequestStatus.canceled,
            RequestStatus.failed,
            RequestStatus.rejected,
            # a duplicate linked to a request in flight takes that request's outcome
            RequestStatus.completed,
            RequestStatus.needs_review,
        }
    ),
    RequestStatus.running: frozenset(
        {
            RequestStatus.completed,
            RequestStatus.failed,
            RequestStatus.needs_review,
            RequestStatus.rejected,
            RequestStatus.queued,
        }
    ),
    RequestStatus.needs_review: frozenset({RequestStatus.completed}),
}


SERVING = "serving"  # the alias that names the version answering production traffic


class VersionStatus(enum.StrEnum):
    """Whether a model version's onboarding artifacts exist."""

    preparing = "preparing"
    ready = "ready"
    failed = "failed"


class ApiClient(Base):
    """A caller of the API; only the SHA-256 of its key is stored."""

    __tablename__ = "api_clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # null: never

    def usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at `now`."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class RegisteredModel(Base):
    """A deployed model: a chain of versions and movable aliases."""

    __tablename__ = "registered_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Completed erasure jobs since the serving chain's artifacts were last prepared (refresh).
    erasures_since_refresh: Mapped[int] = mapped_column(Integer, default=0)
    # Lease that serializes erasure jobs on this model (one writer per version chain).
    lock_owner: Mapped[str | None] = mapped_column(String(64))
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )


class ModelVersion(Base):
    """One immutable set of weights; erasures append children to the chain."""

    __tablename__ = "model_versions"
    # Two versions of one model never share a parent: the chain is linear by construction.
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        UniqueConstraint("model_id", "parent_id", name="uq_model_versions_one_child"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(20), default=VersionStatus.preparing.value)
    artifact_uri: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    # A prepared root version keeps its checkpoint with keyed splits under `sha256`; this is the
    # file that was registered (deleted from the store), for re-registrations to find it.
    upload_sha256: Mapped[str | None] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(100))
    method: Mapped[str | None] = mapped_column(String(50))
    resolved_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    erased_identity_hashes: Mapped[list[str]] = mapped_column(JSON, default=list)
    artifacts: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)  # name -> sha256
    # Calibrated efficacy of each method on these weights (worker/efficacy.py); set with the
    # artifacts, so a version reads it from its artifacts' source version.
    efficacy: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prepare_error: Mapped[str | None] = mapped_column(Text)
    # Where the training data is (dataset, root, task, split_seed); children inherit it.
    training_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Preparation progress: stage, steps done/total, methods ready, last refresh outcome.
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The version whose weights `artifacts` were computed on (itself after a refresh).
    artifacts_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    artifacts_prepared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when retention removed the weights and artifacts; metadata and hashes stay.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by_request_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    model: Mapped[RegisteredModel] = relationship(back_populates="versions")


class ModelIdentity(Base):
    """Keyed hash of a training identity of a model: what can be asked to be forgotten."""

    __tablename__ = "model_identities"

    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), primary_key=True)
    identity_hash: Mapped[str] = mapped_column(String(64), primary_key=True)


class Alias(Base):
    """A movable name (`serving`, ...) pointing at one version of a model."""

    __tablename__ = "aliases"

    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class AliasEvent(Base):
    """Append-only history of alias moves: promotions, rollbacks, named aliases."""

    __tablename__ = "alias_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(50))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    actor: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DeletionRequest(Base):
    """A request to forget one identity from one model."""

    __tablename__ = "deletion_requests"
    __table_args__ = (UniqueConstraint("client_id", "idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id"), index=True)
    identity_hash: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    body_fingerprint: Mapped[str] = mapped_column(String(64))
    portrait_sha256: Mapped[str] = mapped_column(String(64))
    portrait_uri: Mapped[str | None] = mapped_column(String(500))  # None once destroyed
    parent_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    result_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    task_id: Mapped[str | None] = mapped_column(String(64))
    # The erasure job (batch) that last claimed this request; its members share one new version.
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # A duplicate of a request in flight follows that request's outcome instead of running.
    linked_request_id: Mapped[str | None] = mapped_column(
        ForeignKey("deletion_requests.id"), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[RequestEvent]] = relationship(order_by="RequestEvent.id")
    audit: Mapped[Audit | None] = relationship(uselist=False)


class BenchmarkStatus(enum.StrEnum):
    """Lifecycle of an admin's benchmark re-run."""

    queued = "queued"
    running = "running"
    completed = "completed"
    failed = "failed"


class BenchmarkRun(Base):
    """A 1-SHUI benchmark re-run queued through the API, with everything needed to repeat it."""

    __tablename__ = "benchmark_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("api_clients.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the body as the admin sent it
    argv: Mapped[list[str]] = mapped_column(JSON)  # the equivalent `lethe benchmark` arguments
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # results.json: config + rows
    report_md: Mapped[str | None] = mapped_column(Text)
    plot_sha256: Mapped[str | None] = mapped_column(String(64))  # tow_vs_time.png in the store
    code_version: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RequestEvent(Base):
    """Append-only history of a request's transitions."""

    __tablename__ = "request_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(100))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)


class Audit(Base):
    """Before/after metrics of one erasure (worker/audit.py computes them)."""

    __tablename__ = "audits"

    request_id: Mapped[str] = mapped_column(ForeignKey("deletion_requests.id"), primary_key=True)
    before: Mapped[dict[str, Any]] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    delta: Mapped[dict[str, Any]] = mapped_column(JSON)
    run: Mapped[dict[str, Any]] = mapped_column(JSON)  # change norm, wall time, device, memory
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
