"""The erasure job's torch phase: decode the portraits, audit, unlearn, audit again, store the
new weights. No database here; what it computes is recorded by worker/erase/record.py."""

from __future__ import annotations

import copy
import io
import resource
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from app.security import identity_hash
from app.settings import Settings
from app.storage import PortraitVault, artifact_store
from models.data.splits import KEYED, without_identities
from models.device import default_device
from models.methods import UnlearnRequest, get_method, resolve_config
from models.methods.registry import is_calibrated
from models.train.checkpoint import Checkpoint, save_checkpoint
from worker.audit import forward, parameter_change_l2, pseudo_labels, snapshot
from worker.erase.vocabulary import METHOD_ERROR, Job, Result, stage
from worker.versions import load_version, method_artifacts


def decode_portrait(data: bytes, max_pixels: int) -> torch.Tensor:
    """The portrait as a uint8 RGB tensor (3×H×W), upright per its EXIF orientation."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > max_pixels:
            raise ValueError(f"portrait has {image.width}×{image.height} pixels, over the limit")
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_portraits(
    vault: PortraitVault, job: Job, max_pixels: int
) -> tuple[list[torch.Tensor], dict[str, str]]:
    """Every readable member's portrait, in batch order, and why the others could not be read."""
    images, unreadable = [], {}
    for member in job.members:
        try:
            images.append(decode_portrait(vault.read(member.portrait_uri), max_pixels))
        except Exception as exc:
            unreadable[member.request_id] = f"{type(exc).__name__}: {exc}"
    return images, unreadable


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak memory in bytes and what it measures."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "process_max_rss"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_erasure(settings: Settings, job: Job, images: list[torch.Tensor]) -> Result:
    """Audit, unlearn the whole batch, audit again and store the new weights (no database)."""
    device = default_device()
    with stage("version_unavailable"):
        parent = load_version(
            settings,
            job.parent_id,
            job.parent_uri,
            job.parent_sha256,
            job.parent_artifacts,
            device,
        )
    config = parent.checkpoint.config
    size = len(job.members)
    with stage(METHOD_ERROR):
        method = get_method(job.method)
        if method.needs != "support":
            raise ValueError(f"method {job.method!r} needs retain data, which erasure never has")
        overrides = settings.method_options.get(job.method, {})
        dataset, arch = config["dataset"]["name"], parent.checkpoint.arch
        cfg = resolve_config(job.method, dataset, arch, size, **overrides)
        calibrated = is_calibrated(job.method, dataset, arch, size)
        artifacts = method_artifacts(settings, job.parent_artifacts, job.method, device)
    with stage("audit_error"):
        portraits = torch.stack([parent.transform(image) for image in images])
        target = pseudo_labels(parent.task.kind, forward(parent.model, portraits, device))
        before = snapshot(
            parent.model, portraits, target, parent.kit, parent.task, parent.transform, device
        )
    identities = [m.identity_hash for m in job.members]
    with stage(METHOD_ERROR):
        _reset_peak_memory(device)
        started = time.perf_counter()
        model = method.unlearn(
            copy.deepcopy(parent.model),
            UnlearnRequest(
                images=portraits, identities=identities, task=parent.task, targets=target
            ),
            artifacts,
            cfg,
        ).eval()
        unlearn_seconds = time.perf_counter() - started
        peak, peak_source = _peak_memory(device)
    with stage("audit_error"):
        after = snapshot(
            model, portraits, target, parent.kit, parent.task, parent.transform, device
        )
        change = parameter_change_l2(dict(parent.model.named_parameters()), model)
    resolved = asdict(cfg)
    lineage = {
        "parent_sha256": job.parent_sha256,
        "method": job.method,
        "method_config": resolved,
        "identity_hashes": identities,
        "request_ids": job.request_ids,
    }
    erased = set(identities)

    def forgotten(name: str) -> bool:
        # a prepared version's splits hold keyed hashes; a pre-keying one's, plain names
        return (
            name if parent.checkpoint.splits.get(KEYED) else identity_hash(name, settings)
        ) in erased

    checkpoint = Checkpoint(
        arch=parent.checkpoint.arch,
        task=parent.checkpoint.task,
        config={**config, "unlearning": [*config.get("unlearning", []), lineage]},
        splits=without_identities(parent.checkpoint.splits, forgotten),
        state_dict=model.state_dict(),
    )
    with tempfile.TemporaryDirectory(prefix="lethe-erase-") as folder:
        path = Path(folder) / "model.pt"
        save_checkpoint(path, checkpoint)
        sha = artifact_store(settings).put_file("models", path)
    return Result(
        parent=parent,
        model=model,
        checkpoint=replace(checkpoint, state_dict={}, sha256=sha),
        sha256=sha,
        config=resolved,
        before=before,
        after=after,
        run={
            "method": job.method,
            "config": resolved,
            "config_calibrated": calibrated,
            "parent_version": job.parent_version,
            "batch_id": job.batch_id,
            "batch_size": size,
            "param_change_l2": change,
            "unlearn_seconds": unlearn_seconds,
            "device": _device_name(device),
            "peak_memory_bytes": peak,
            "peak_memory_source": peak_source,
            "pseudo_label": "parent prediction",
        },
    )
