"""Pydantic shapes of the API's request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.catalog import DATASETS, DEFAULT_DATASET, DEFAULT_PRESET, PRESETS

# OpenAPI enums from the catalog (models/catalog.py imports no torch).
DATASET_NAMES = tuple(DATASETS)
TASK_NAMES = tuple(dict.fromkeys(task for d in DATASETS.values() for task in d.tasks))
DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]
TaskName = Literal[TASK_NAMES]  # type: ignore[valid-type]
PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


class ErrorDetail(BaseModel):
    """A stable machine-readable code and a human-readable message."""

    code: str = Field(examples=["portrait_too_large"])
    message: str


class ErrorAnswer(ErrorDetail):
    """An error answer's `error`: some codes add `details` (e.g. `alias_refused`: missing ids)."""

    details: dict[str, Any] | None = Field(
        default=None, description="Only for codes that carry data; absent otherwise."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer has this shape."""

    error: ErrorAnswer


class RequestAccepted(BaseModel):
    """The answer to a new (or replayed) deletion request."""

    id: str
    status: str


class RequestEventOut(BaseModel):
    """One transition of a request."""

    at: datetime
    actor: str
    from_status: str | None
    to_status: str
    reason: str | None


class AuditOut(BaseModel):
    """Before/after metrics of the erasure."""

    before: dict[str, Any]
    after: dict[str, Any]
    delta: dict[str, Any]
    run: dict[str, Any]


class VersionRef(BaseModel):
    """A model version by model name and version number."""

    model: str
    version: int


class DeletionRequestSummary(BaseModel):
    """A deletion request as listed."""

    id: str
    status: str
    model: str
    method: str
    portrait_sha256: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result_version: VersionRef | None
    linked_request_id: str | None = Field(
        default=None,
        description="Set on a duplicate: the request in flight for the same identity it follows.",
    )
    batch_id: str | None = Field(
        default=None, description="The erasure job (its leading request) that erased it."
    )
    error: ErrorDetail | None = Field(description="Set when the request failed or was rejected.")


class DeletionRequestOut(DeletionRequestSummary):
    """A deletion request with its history and audit."""

    attempts: int
    events: list[RequestEventOut]
    audit: AuditOut | None


class DeletionRequestPage(BaseModel):
    """One page of deletion requests, newest first."""

    items: list[DeletionRequestSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end.")


class ModelOut(BaseModel):
    """A registered model."""

    name: str
    task: str
    created_at: datetime
    serving_version: int | None
    latest_version: int | None


class ModelList(BaseModel):
    """Every registered model."""

    items: list[ModelOut]


class ModelVersionOut(BaseModel):
    """One version of a model."""

    model: str
    version: int
    status: str
    parent_version: int | None
    arch: str
    method: str | None
    sha256: str = Field(
        description="SHA-256 of the checkpoint kept: once a registered file is prepared, its "
        "copy with keyed splits (the uploaded file is not kept)."
    )
    aliases: list[str]
    erased_identities: int = Field(description="How many identities this version has forgotten.")
    created_by_request_id: str | None
    prepare_error: str | None
    created_at: datetime
    progress: dict[str, Any] = Field(
        default_factory=dict,
        description="Preparation: `stage`, `done`/`total` steps, `methods_ready`; `refresh`.",
    )
    methods_ready: list[str] = Field(
        default_factory=list, description="Methods a deletion request can use on this version."
    )
    training_data: dict[str, Any] = Field(
        default_factory=dict, description="`dataset`, `root`, `task`, `split_seed`."
    )
    artifacts_version: int | None = Field(
        default=None, description="The version whose weights the artifacts were computed on."
    )
    artifacts_prepared_at: datetime | None = None
    efficacy: dict[str, Any] = Field(
        default_factory=dict,
        description="Calibrated efficacy on the artifacts' version: per method, simulated "
        "single-portrait erasures' membership score before/after against the non-member level, "
        "the identities' task score before/after and the audit-set drop; and "
        "`portrait_verification`, the portrait verifier's threshold and what it was set on.",
    )
    purged_at: datetime | None = Field(
        default=None, description="Weights and artifacts removed by retention; metadata kept."
    )


class ModelVersionList(BaseModel):
    """A model's versions, oldest first."""

    items: list[ModelVersionOut]


class RegisterModel(BaseModel):
    """A checkpoint file to register as a new model (or a new version of one)."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    checkpoint_path: str | None = Field(
        default=None, min_length=1, description="Under `LETHE_CHECKPOINT_DIRS`; or upload a file."
    )
    sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="Refused if the file differs."
    )
    dataset: DatasetName | None = Field(
        default=None, description="Default: the checkpoint's own data set."
    )
    data_root: str | None = Field(
        default=None, max_length=4096, description="Real data sets: under `LETHE_DATA_ROOTS`."
    )
    task: TaskName | None = Field(default=None, description="Default: the checkpoint's task.")
    split_seed: int | None = Field(default=None, description="Default: the checkpoint's splits.")


class MoveAlias(BaseModel):
    """Where to point an alias."""

    version: int = Field(ge=1)


class AliasOut(BaseModel):
    """An alias after a move, and requests the move completed."""

    model: str
    alias: str
    version: int
    completed_request_ids: list[str] = Field(
        description="`needs_review` requests this version erased, now `completed`."
    )


class AliasEventOut(BaseModel):
    """One alias move: promotion by an erasure, rollback or move by an admin."""

    at: datetime
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str | None


class AliasHistory(BaseModel):
    """Where each alias points now, and every move, newest first."""

    model: str
    aliases: dict[str, int]
    events: list[AliasEventOut]


class PurgeVersions(BaseModel):
    """Versions to purge; default: every superseded one."""

    versions: list[int] | None = Field(default=None, max_length=10_000)


class PurgeOut(BaseModel):
    """What retention removed."""

    model: str
    purged_versions: list[int]
    deleted_blobs: int = Field(description="Files no remaining version referenced.")
    kept_blobs: int = Field(description="Files of purged versions still used by others.")


class RefreshQueued(BaseModel):
    """A refresh of the serving version's artifacts was queued, now or by an earlier ask."""

    model: str
    version: int
    status: Literal["queued", "already_queued"]


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"]
    version: str


class Check(BaseModel):
    """The outcome of one readiness check."""

    ok: bool
    detail: str


class Readiness(BaseModel):
    """Whether the API can take requests that will be processed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


OptionValue = bool | int | float | str


class BenchmarkCreate(BaseModel):
    """A 1-SHUI benchmark run: each field maps to one `lethe benchmark` option."""

    model_config = ConfigDict(extra="forbid")

    dataset: DatasetName = DEFAULT_DATASET
    data_root: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="`--data-root`: the folder of a real data set, under `LETHE_DATA_ROOTS`.",
    )
    task: TaskName | None = Field(
        default=None, description="`--task`; default: the data set's own task."
    )
    preset: PresetName = Field(
        default=DEFAULT_PRESET, description="`--preset`: network, weights, resolution, recipe."
    )
    arch: str | None = Field(
        default=None,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="timm; default: the preset's",
    )
    image_size: int | None = Field(
        default=None, ge=16, le=1024, description="default: the preset's"
    )
    synth_identities: int | None = Field(default=None, ge=10, le=100_000)
    epochs: int | None = Field(default=None, ge=1, le=1000)
    lr: float | None = Field(default=None, gt=0, le=10)
    requests: list[int] = Field(default=[5], min_length=1, max_length=20)
    seeds: list[int] = Field(default=[0], min_length=1, max_length=20)
    methods: list[str] | Literal["all"] = Field(
        default=["jit"], description='Method names, or "all" for every registered method.'
    )
    method_options: dict[str, dict[str, OptionValue]] = Field(
        default_factory=dict, description="`--set METHOD.KEY=VALUE` overrides, by method."
    )
    rmia: bool = Field(default=True, description="false: `--no-rmia`.")
    rmia_augmentations: int = Field(default=2, ge=1, le=64)
    rmia_population: int = Field(default=500, ge=1, le=1_000_000)
    single_identities: int = Field(
        default=5,
        ge=1,
        le=64,
        description="`--single-identities`: one-identity requests per seed at N = 1.",
    )


class BenchmarkRunOut(BaseModel):
    """A benchmark run: its request, progress and, once completed, its rows and config."""

    id: str
    status: str
    params: dict[str, Any] = Field(description="The body as it was sent.")
    argv: list[str] = Field(description="The same run as `lethe benchmark ARGV --out DIR`.")
    progress: dict[str, Any] = Field(description="`done` and `total` steps, `current` step.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    code_version: str | None
    error: str | None
    rows: list[dict[str, Any]] | None = Field(description="results.json `rows`, once completed.")
    config: dict[str, Any] | None = Field(
        description="results.json `config` (resolved method configs, split hashes, code "
        "version), once completed."
    )
    report_url: str | None
    plot_url: str | None
