"""Sentence embeddings from a local transformers encoder: mean pooling + L2 norm, batched by length, cached.

The output matches sentence-transformers' embeddings for models built as Transformer -> mean Pooling -> Normalize
(such as the default all-MiniLM-L6-v2), without needing sentence-transformers at run time.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from training.encoder import configure_threads, length_buckets, resolve_encoder_path

DEFAULT_CACHE_SIZE = 4096


class SentenceEmbedder:
    """Turns texts into L2-normalised float32 vectors (cosine similarity = dot product).

    `threads` sets torch's intra-op thread count (process-wide, via `configure_threads`); None leaves it alone.
    `quantize` converts most Linear layers to dynamic int8 (see `quantize_linear_layers`): faster on CPU, mean
    cosine to the fp32 embeddings about 0.99.
    The last `cache_size` distinct texts are kept, so repeated paragraphs are not encoded again.
    """

    def __init__(
        self,
        path_or_name: str | os.PathLike | None = None,
        *,
        max_length: int = 256,
        batch_size: int = 32,
        quantize: bool = False,
        threads: int | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        if max_length < 2 or batch_size < 1 or cache_size < 0:
            raise ValueError("max_length must be >= 2, batch_size >= 1 and cache_size >= 0")
        if threads is not None:
            configure_threads(threads)
        self.path = resolve_encoder_path(path_or_name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModel.from_pretrained(self.path)
        model.eval()
        if quantize:
            model = quantize_linear_layers(model)
        self.model = model
        self.quantized = quantize
        self.max_length = min(max_length, _model_max_length(self.tokenizer, model))
        self.batch_size = batch_size
        self.dim = int(model.config.hidden_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

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
        # Tokenize once without padding, then pad each length bucket only to its own longest text.
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, add_special_tokens=True, return_attention_mask=False
        )
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids")
        pad_id = self.tokenizer.pad_token_id or 0
        left = self.tokenizer.padding_side == "left"
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for batch in length_buckets([len(x) for x in ids], self.batch_size):
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                token_types = torch.zeros((len(batch), width), dtype=torch.long) if types is not None else None
                for row, i in enumerate(batch):
                    n = len(ids[i])
                    cols = slice(width - n, width) if left else slice(0, n)
                    input_ids[row, cols] = torch.tensor(ids[i], dtype=torch.long)
                    mask[row, cols] = 1
                    if token_types is not None:
                        token_types[row, cols] = torch.tensor(types[i], dtype=torch.long)
                inputs = {"input_ids": input_ids, "attention_mask": mask}
                if token_types is not None:
                    inputs["token_type_ids"] = token_types
                hidden = self.model(**inputs).last_hidden_state
                out[batch] = mean_pool(hidden, mask).float().numpy()
        return out


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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over the attention mask, then L2-normalised (sentence-transformers' recipe)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def _model_max_length(tokenizer, model) -> int:
    # Position embeddings bound the usable length; tokenizers sometimes report a huge sentinel instead.
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 100_000]
    return min(usable) if usable else 512
