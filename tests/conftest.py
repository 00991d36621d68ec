"""Shared fixtures: small synthfaces data, so the suite stays fast on 2 CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from models.data.base import FaceData
from models.data.synthfaces import SynthFacesConfig, load_synthfaces

SMALL = SynthFacesConfig(num_identities=60, image_size=32, seed=7)


@pytest.fixture(scope="session", autouse=True)
def _threads() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def small_faces() -> FaceData:
    """60 synthfaces identities at 32×32."""
    return load_synthfaces(SMALL)
