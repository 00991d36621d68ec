"""A benchmark's (request size, seed) passes in parallel processes, torch's threads divided."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from models.data.registry import load_dataset
from models.device import default_device, set_threads
from models.protocol import trunk_cache

PassResult = tuple[list[dict[str, Any]], dict[str, Any]]  # a pass's rows and its run record
# (cfg, data, requests, seed, device, out, cache) -> the pass's result; a module-level function
OnePass = Callable[..., PassResult]

# A pass process's data and trunk cache, loaded once per process and shared by its passes.
_state: dict[str, Any] = {}


def _start(threads: int) -> None:
    """Give a pass process its share of the cores: oversubscribed cores slow small ops tenfold."""
    set_threads(threads)


def _one(one_pass: OnePass, cfg: Any, requests: int, seed: int, out: Path) -> PassResult:
    """One pass in a pass process, on the data and trunk cache it loaded for its first pass."""
    if _state.get("setup") != cfg.setup:
        data, device = load_dataset(cfg.setup.dataset), default_device()
        cache = trunk_cache(cfg.setup, data, device)
        _state.update(setup=cfg.setup, data=data, device=device, cache=cache)
    return one_pass(cfg, _state["data"], requests, seed, _state["device"], out, _state["cache"])


def run_parallel(
    one_pass: OnePass,
    cfg: Any,
    passes: Sequence[tuple[int, int]],
    out: Path,
    jobs: int,
    threads: int,
    progress: bool,
    finished: Callable[[tuple[int, int], dict[tuple[int, int], PassResult]], None],
) -> None:
    """Run `passes` in `jobs` spawned processes of `threads` torch threads each, calling
    `finished` with each pass and every pass done so far as it ends."""
    done: dict[tuple[int, int], PassResult] = {}
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    with ProcessPoolExecutor(jobs, context, _start, (threads,)) as pool:
        futures = {
            pool.submit(_one, one_pass, cfg, requests, seed, out): (requests, seed)
            for requests, seed in passes
        }
        bar = tqdm(total=len(futures), desc=f"passes ({jobs} processes)", disable=not progress)
        try:
            for future in as_completed(futures):
                key = futures[future]
                done[key] = future.result()
                finished(key, done)
                bar.update()
        except BaseException:
            # a failed pass (or an interrupt) ends the run: no waiting pass starts, and the
            # passes already running finish first (a process is never killed mid-write)
            pool.shutdown(cancel_futures=True)
            raise
        finally:
            bar.close()
