"""torch's intra-op threads: the cores shared among the computing processes, or the setting."""

from __future__ import annotations

import pytest
import torch

from app.settings import Settings
from models.device import default_threads
from worker.threads import configure_threads


@pytest.mark.parametrize(
    ("processes", "cores", "threads"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8)]
)
def test_default_divides_the_cores(processes: int, cores: int, threads: int) -> None:
    assert default_threads(processes, cores) == threads


def test_the_setting_wins_and_is_applied() -> None:
    before = torch.get_num_threads()
    try:
        assert configure_threads(Settings(_env_file=None, torch_threads=1)) == 1
        assert torch.get_num_threads() == 1
        shared = Settings(_env_file=None, compute_processes=1000)
        assert configure_threads(shared) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError):
        Settings(_env_file=None, torch_threads=0)
