"""The one place that picks the compute device and precision."""

from __future__ import annotations

import contextlib

import torch


def default_device() -> torch.device:
    """CUDA when present, otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; full precision on CPU, where bf16 is slower and less exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
