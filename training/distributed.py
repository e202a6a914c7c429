"""Which process of a data-parallel run this is (`accelerate launch` or `torchrun`), read from the environment.

Both launchers set RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in every process they start, before any
process group exists, so these answers are right from the first line of `workbench train` (before torch is even
imported) and cost nothing. A plain `workbench train` sets none of them: one process, rank 0.
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:  # a malformed value: behave as a single process rather than crash before the launcher's error
        return default


def world_size() -> int:
    """How many processes train together (1 without a launcher)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (0 without a launcher)."""
    return _env_int("RANK", 0)


def local_rank() -> int:
    """This process's rank on its machine: the GPU it drives."""
    return _env_int("LOCAL_RANK", 0)


def local_world_size() -> int:
    """How many processes of the run share this machine (they share its CPU cores)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", world_size()))


def is_main_process() -> bool:
    """True on the one process that may write: the registry, the version folder, reports and the console summary."""
    return rank() == 0


def process_device(device: str) -> str:
    """The device this process trains on: a bare "cuda" becomes this process's own GPU (cuda:LOCAL_RANK) when
    several processes share a machine, so they do not all pile onto GPU 0 before the Trainer places them."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{local_rank()}"
    return device


__all__ = ["is_main_process", "local_rank", "local_world_size", "process_device", "rank", "world_size"]
