"""Sentence embeddings from a local transformers encoder: mean pooling + L2 norm, batched by length, cached.

The output matches sentence-transformers' embeddings for models built as Transformer -> mean Pooling -> Normalize
(such as the default all-MiniLM-L6-v2), without needing sentence-transformers at run time.

Two runtimes compute the same embeddings:
  torch  the transformers model (fp32; bf16 weights; or int8 dynamic quantization of most Linear layers)
  onnx   ONNX Runtime on a graph exported from that model once and cached on disk (backend/cold_start/
         onnx_export.py); if onnxruntime is missing or the export, its check or the session fails, the embedder
         logs why and runs torch fp32 instead.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from backend.cold_start.onnx_export import ONNX_PRECISIONS, mean_pool, onnx_encoder_file, onnx_session
from training.encoder import allowed_cpus, configure_threads, length_buckets, on_torch_thread, resolve_encoder_path

if TYPE_CHECKING:
    from backend.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_CACHE_SIZE = 4096
# Texts per forward pass, in length buckets. On CPU small buckets win: a bucket is padded to its longest text, and
# requests of 32 sample paragraphs in one bucket compute 62% more tokens than they hold (8 per bucket: 13%, 4: 5%).
DEFAULT_BATCH_SIZE = 4
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16", "int8")


class SentenceEmbedder:
    """Turns texts into L2-normalised float32 vectors (cosine similarity = dot product).

    `runtime` is "torch" or "onnx" (see the module docstring) and `precision` "fp32", "bf16" (torch only) or
    "int8"; `quantize=True` is the older spelling of precision="int8". After construction `runtime` and
    `precision` say what really runs, and `fallback_reason` why it is not what was asked (None when it is).
    torch int8 converts most Linear layers to dynamic int8 (see `quantize_linear_layers`); onnx int8 quantizes
    every MatMul per channel. Dynamic int8 takes one activation scale per tensor, i.e. per batch, so int8 encodes
    one text per forward pass by default (`batch_size` None): a text's vector must not depend on which texts and
    how much padding came with it (as fast as batching here: no padding at all). fp32 and bf16 default to length
    buckets of DEFAULT_BATCH_SIZE texts.
    `onnx_cache_dir` holds exported graphs (default: $WORKBENCH_ONNX_CACHE_DIR, else ~/.cache/stance-workbench/onnx).
    `threads` sets the intra-op thread count (torch's process-wide via `configure_threads`, and the ONNX Runtime
    session's); None leaves torch alone and gives ONNX Runtime all CPUs this process may use.
    The last `cache_size` distinct texts are kept, so repeated paragraphs are not encoded again.
    """

    def __init__(
        self,
        path_or_name: str | os.PathLike | None = None,
        *,
        max_length: int = 256,
        batch_size: int | None = None,
        quantize: bool = False,
        threads: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        runtime: str = "torch",
        precision: str | None = None,
        onnx_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        precision = precision or ("int8" if quantize else "fp32")
        if max_length < 2 or (batch_size is not None and batch_size < 1) or cache_size < 0:
            raise ValueError("max_length must be >= 2, batch_size >= 1 and cache_size >= 0")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if runtime == "onnx" and precision not in ONNX_PRECISIONS:
            raise ValueError(f"the onnx runtime supports precision {' or '.join(ONNX_PRECISIONS)}, not {precision!r}")
        if threads is not None:
            configure_threads(threads)
        self.path = resolve_encoder_path(path_or_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        config = AutoConfig.from_pretrained(self.path)
        self.max_length = min(max_length, _model_max_length(self.tokenizer, config))
        self.dim = int(config.hidden_size)
        self.model: torch.nn.Module | None = None
        self.session = None  # onnxruntime.InferenceSession on the onnx runtime
        self._solo_session = None  # the same graph on one intra-op thread, run by several `_workers` at once
        self._workers: ThreadPoolExecutor | None = None
        self.onnx_path: Path | None = None
        self.fallback_reason: str | None = None
        if runtime == "onnx":
            try:
                self.onnx_path = onnx_encoder_file(self.path, precision, onnx_cache_dir)
                self.session = onnx_session(self.onnx_path, threads)
                workers = allowed_cpus() if threads is None else threads
                if workers > 1:  # see _encode_onnx
                    self._solo_session = onnx_session(self.onnx_path, 1)
                    self._workers = ThreadPoolExecutor(workers, thread_name_prefix="onnx-worker")
            except Exception as error:  # onnxruntime missing, export/verification/session failed: run torch fp32
                if isinstance(error, ImportError):
                    self.fallback_reason = f"onnxruntime is not installed ({error})"
                else:
                    self.fallback_reason = f"{type(error).__name__}: {error}"
                log.warning(
                    "ONNX Runtime %s encoder unavailable (%s); using torch fp32", precision, self.fallback_reason
                )
                runtime, precision = "torch", "fp32"
        if runtime == "torch":
            self.model = load_torch_encoder(self.path, precision)
        self.runtime = runtime
        self.precision = precision
        self.quantized = precision == "int8"
        self.batch_size = batch_size or (1 if self.quantized else DEFAULT_BATCH_SIZE)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one onnx batch at a time: fast tokenizers are not thread-safe
        self.hits = 0
        self.misses = 0

    def describe(self) -> str:
        """What computes the embeddings, e.g. "onnx int8" or "torch fp32 (fallback: ...)"."""
        text = f"{self.runtime} {self.precision}"
        return f"{text} (fallback: {self.fallback_reason})" if self.fallback_reason else text

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns float32 [len(texts), dim], rows in input order, each of unit length."""
        if isinstance(texts, str | bytes):
            raise TypeError("embed() takes a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(text).__name__}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo: dict[str, list[int]] = {}  # distinct uncached text -> rows that need it
        with self._lock:
            for i, text in enumerate(texts):
                vector = self._cache.get(text)
                if vector is not None:
                    self._cache.move_to_end(text)
                    out[i] = vector
                    self.hits += 1
                else:
                    todo.setdefault(text, []).append(i)
                    self.misses += 1
        if todo:
            fresh = list(todo)
            vectors = self._encode(fresh)
            for text, vector in zip(fresh, vectors, strict=True):
                out[todo[text]] = vector
            self._remember(fresh, vectors)
        return out

    def cache_info(self) -> dict[str, int]:
        """Cache statistics: hits, misses, current size and bound."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "maxsize": self.cache_size}

    def clear_cache(self) -> None:
        """Forget every cached embedding (and reset the statistics)."""
        with self._lock:
            self._cache.clear()
            self.hits = self.misses = 0

    def _remember(self, texts: list[str], vectors: np.ndarray) -> None:
        if not self.cache_size:
            return
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                stored = vector.copy()
                stored.setflags(write=False)
                self._cache[text] = stored
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.session is not None:
            with self._encode_lock:
                return self._encode_onnx(texts)
        return on_torch_thread(self._encode_torch, texts)

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        """One batch: the multi-threaded session (lowest latency). Several: one single-threaded run per worker thread.

        MiniLM's matrices are small, so splitting one batch over two intra-op threads wastes time synchronising:
        on 2 cores, two single-threaded runs side by side (onnxruntime releases the GIL) encoded the sample
        paragraphs ~20% faster than one two-threaded run after another (int8: 321 against 265 paragraphs/s).
        """
        assert self.session is not None
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        dtypes = {i.name: np.int32 if "int32" in i.type else np.int64 for i in self.session.get_inputs()}
        batches = [
            (batch, {k: v.astype(dtypes[k], copy=False) for k, v in inputs.items() if k in dtypes})
            for batch, inputs in self._batches(texts, left=False)  # BERT-like encoders pad on the right
        ]
        if len(batches) == 1 or self._workers is None:
            for batch, feed in batches:
                out[batch] = self.session.run(None, feed)[0]
            return out
        solo = self._solo_session
        assert solo is not None

        def run(job: tuple[list[int], dict[str, np.ndarray]]) -> None:
            out[job[0]] = solo.run(None, job[1])[0]  # distinct rows per job: no two threads write the same row

        list(self._workers.map(run, batches))
        return out

    def _encode_torch(self, texts: list[str]) -> np.ndarray:
        assert self.model is not None
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for batch, inputs in self._batches(texts, left=self.tokenizer.padding_side == "left"):
                tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
                hidden = self.model(**tensors).last_hidden_state
                out[batch] = mean_pool(hidden.float(), tensors["attention_mask"]).numpy()
        return out

    def _batches(self, texts: list[str], left: bool) -> Iterator[tuple[list[int], dict[str, np.ndarray]]]:
        """(rows, int64 model inputs) per length bucket; each bucket is padded only to its own longest text."""
        # Tokenize once without padding, then pad each length bucket only to its own longest text.
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True, return_attention_mask=False
        )
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        pad_id = self.tokenizer.pad_token_id or 0
        for batch in length_buckets([len(x) for x in ids], self.batch_size):
            width = max(len(ids[i]) for i in batch)
            input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(batch), width), dtype=np.int64)
            token_types = np.zeros((len(batch), width), dtype=np.int64) if types is not None else None
            for row, i in enumerate(batch):
                n = len(ids[i])
                cols = slice(width - n, width) if left else slice(0, n)
                input_ids[row, cols] = ids[i]
                mask[row, cols] = 1
                if token_types is not None and types is not None:
                    token_types[row, cols] = types[i]
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if token_types is not None:
                inputs["token_type_ids"] = token_types
            yield batch, inputs


def load_torch_encoder(path: str, precision: str = "fp32") -> torch.nn.Module:
    """The transformers encoder in eval mode: fp32, bf16 weights, or int8 (`quantize_linear_layers`)."""
    model = AutoModel.from_pretrained(path)
    model.eval()
    if precision == "int8":
        return quantize_linear_layers(model)
    if precision == "bf16":
        return model.to(torch.bfloat16)
    return model


def quantize_linear_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of the Linear layers, except down-projections (more inputs than outputs).

    Quantizing every Linear (`quantize_dynamic(model, {nn.Linear}, dtype=qint8)`) costs all-MiniLM-L6-v2 too much:
    mean cosine to fp32 0.937 on the sample paragraphs. The damage comes from the feed-forward output projections
    (1536 -> 384), whose inputs are GELU activations with a few huge outlier features that one per-tensor int8 scale
    cannot hold. Keeping those in fp32 gives mean cosine 0.988 for about 3/4 of the speed-up.
    """
    keep = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.in_features <= module.out_features
    }
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated but still the stock CPU path
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, keep, dtype=torch.qint8)


def _model_max_length(tokenizer, config) -> int:
    # Position embeddings bound the usable length; tokenizers sometimes report a huge sentinel instead.
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 100_000]
    return min(usable) if usable else 512


def served_embedder(settings: Settings) -> SentenceEmbedder:
    """The encoder the backend serves, as backend.settings.Settings describes it (WORKBENCH_ENCODER, _RUNTIME, ...):
    the cold start's, and so the instant learner's features, in the backend and in a training job's gate."""
    return SentenceEmbedder(
        settings.encoder,
        threads=settings.threads,
        cache_size=settings.cache_size,
        runtime=settings.runtime,
        precision=settings.encoder_precision,
        onnx_cache_dir=settings.onnx_cache_dir,
    )
