"""Service settings from the environment (prefix `LETHE_`), with embedded-mode defaults."""

from __future__ import annotations

import base64
import binascii
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, computed_field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)

# Secrets that ship in this repository's files: anyone can read them, so production refuses them
DEV_IDENTITY_SECRET = "dev-identity-secret-change-me"
PUBLISHED_SECRETS = frozenset({DEV_IDENTITY_SECRET, "change-me-to-a-long-random-secret"})
# Identity IDs are often a small space (employee or customer numbers): a keyed hash protects them
# only if the key cannot be guessed, hence at least 32 characters (e.g. `openssl rand -hex 32`)
MIN_PRODUCTION_SECRET_CHARS = 32


def _is_fernet_key(key: str) -> bool:
    """Whether `key` is 32 url-safe-base64 bytes, the form Fernet needs."""
    try:
        return len(base64.urlsafe_b64decode(key.encode())) == 32
    except (binascii.Error, ValueError):
        return False


class Settings(BaseSettings):
    """Everything configurable. Defaults give the embedded single-machine deployment."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".lethe")
    database_url: str | None = (
        None  # default: SQLite in data_dir; Postgres: postgresql+psycopg://...
    )
    broker_url: str | None = None  # default: SQLite-backed kombu broker in data_dir
    result_backend: str | None = None
    artifact_dir: Path | None = None  # default: data_dir/artifacts
    staging_dir: Path | None = None  # default: data_dir/incoming (uploads before checks)
    broker_polling_interval: float = 0.1  # SQL broker only: seconds between polls

    # production refuses to start with a published or short identity secret or without its own
    # storage key; embedded (the single-machine demo) accepts the defaults and warns
    deployment: Literal["embedded", "production"] = "embedded"
    identity_secret: str = Field(default=DEV_IDENTITY_SECRET, min_length=16)
    storage_key: str | None = None  # Fernet key for portraits at rest; default derived from secret

    max_portrait_bytes: int = 5 * 1024 * 1024
    max_portrait_pixels: int = 4096 * 4096
    # Portraits are kept (encrypted, until the request ends) at most this many pixels on a side:
    # the models and the verifier read 64–224 px, and a full-resolution PNG grew a 1 MB JPEG
    # 25-fold in the vault
    max_stored_portrait_side: int = Field(default=256, ge=64, le=4096)
    max_identity_length: int = 128
    # Threads each API process runs routes on (requests beyond them wait their turn)
    api_threads: int = Field(default=4, ge=1, le=256)
    # Deletion requests one client may submit per minute and per day (0: no limit); beyond
    # either the API answers 429 `rate_limited` with `Retry-After`
    client_requests_per_minute: int = Field(default=600, ge=0)
    client_requests_per_day: int = Field(default=20_000, ge=0)
    # Benchmark runs queued or running at once; one more answers 429 `benchmark_queue_full`
    max_active_benchmarks: int = Field(default=2, ge=1)

    default_model: str = "synthfaces"
    # Stranger: the support-only method that met the erasure bar on the pretrained preset
    # (README, "The pretrained regime"); it prepares at onboarding, hence prepare_methods.
    default_method: str = "stranger"
    # Operator overrides of pinned method configs, e.g. LETHE_METHOD_OPTIONS='{"jit": {"lr": 0.01}}'
    method_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Methods whose onboarding artifacts are computed when a version is registered.
    prepare_methods: list[str] = Field(default_factory=lambda: ["stranger"])
    guardrail_max_score_drop: float = 1.0  # audit-set points; beyond this a version needs review
    requeue_cap: int = 3
    sweep_after_seconds: float = 60.0  # re-send a queued request with no live task after this
    sweep_interval_seconds: float = 30.0  # how often a worker runs the sweeper
    model_lock_seconds: float = 120.0  # lease on a model's version chain held by one erasure job
    # Queued requests for one model (and method) are coalesced into one erasure job of at most
    # batch_max_size; a job waits until its oldest request is batch_window_seconds old or the
    # batch is full, so a burst becomes a few jobs instead of one job per person.
    batch_max_size: int = Field(default=16, ge=1)
    batch_window_seconds: float = Field(default=1.0, ge=0.0)
    # Re-run preparation on the serving version after this many erasure jobs (0: on demand only).
    refresh_after_erasures: int = Field(default=0, ge=0)
    # Simulated single-portrait erasures per method at onboarding and refresh (0: none), and the
    # membership gap a method must close on them to serve production requests (None: no floor).
    efficacy_trials: int = Field(default=20, ge=0, le=1000)
    efficacy_floor: float | None = Field(default=None, ge=0.0, le=1.0)
    # Onboarding trains a portrait verifier (models/verification.py) and an erasure whose
    # portrait does not match the identity it names is rejected (`portrait_mismatch`).
    # `verifier_options` overrides its VerifierConfig fields (e.g. {"epochs": 8}).
    verify_portraits: bool = True
    verifier_options: dict[str, Any] = Field(default_factory=dict)
    # torch intra-op threads of each computing process (worker, benchmark, demo). Default: the
    # usable cores divided by `compute_processes`, the torch processes that run at once here.
    torch_threads: int | None = Field(default=None, ge=1)
    compute_processes: int = Field(default=1, ge=1)
    # Onboarding reads checkpoints uploaded, or from a path under one of these folders
    # (default: data_dir/models), and training data only from under data_roots.
    checkpoint_dirs: list[Path] = Field(default_factory=list)
    data_roots: list[Path] = Field(default_factory=list)
    max_checkpoint_bytes: int = 2 * 1024 * 1024 * 1024

    @model_validator(mode="after")
    def _secrets_fit_the_deployment(self) -> Self:
        """Production gets secrets nobody else has; embedded gets a warning when it has not."""
        problems = []
        published = self.identity_secret in PUBLISHED_SECRETS
        if published:
            problems.append("LETHE_IDENTITY_SECRET is a default published in this repository")
        elif len(self.identity_secret) < MIN_PRODUCTION_SECRET_CHARS:
            problems.append(
                f"LETHE_IDENTITY_SECRET is shorter than {MIN_PRODUCTION_SECRET_CHARS} characters"
            )
        if self.storage_key and not _is_fernet_key(self.storage_key):
            raise ValueError("LETHE_STORAGE_KEY is not a Fernet key (32 url-safe base64 bytes)")
        if not self.storage_key:
            problems.append("LETHE_STORAGE_KEY is unset (the portrait key would be derived)")
        if problems and self.deployment == "production":
            raise ValueError("production refuses to start: " + "; ".join(problems))
        if published:
            log.warning("embedded deployment with the published development identity secret")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in data_dir."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'lethe.db').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_broker_url(self) -> str:
        """The Celery broker URL, defaulting to a SQLite-backed broker in data_dir."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_result_backend(self) -> str:
        """The Celery result backend, defaulting to SQLite in data_dir."""
        return self.result_backend or f"db+sqlite:///{(self.data_dir / 'results.sqlite').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_checkpoint_dirs(self) -> list[Path]:
        """Folders a checkpoint path given to `POST /models` must lie under."""
        return [p.resolve() for p in self.checkpoint_dirs] or [(self.data_dir / "models").resolve()]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_artifact_dir(self) -> Path:
        """Where model versions, audit kits and encrypted portraits are stored."""
        return (self.artifact_dir or self.data_dir / "artifacts").resolve()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def resolved_staging_dir(self) -> Path:
        """Local scratch where uploads wait to be checked; not part of the blob store."""
        return (self.staging_dir or self.data_dir / "incoming").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (read once from the environment)."""
    return Settings()
