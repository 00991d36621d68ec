"""The one place that picks the compute device and precision."""

from __future__ import annotations

import contextlib
import os

import torch


def default_device() -> torch.device:
    """CUDA when present, otherwise CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; full precision on CPU, where bf16 is slower and less exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(processes: int, cores: int | None = None) -> int:
    """Intra-op threads per process when `processes` torch processes share the cores."""
    return max(1, (cores if cores is not None else usable_cores()) // max(1, processes))


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads: oversubscribed cores slow small ops about tenfold."""
    if threads < 1:
        raise ValueError(f"torch threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
