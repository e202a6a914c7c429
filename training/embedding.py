"""Sentence embeddings from a local transformers encoder: mean pooling + L2 norm, batched by length, cached.

The output matches sentence-transformers' embeddings for models built as Transformer -> mean Pooling -> Normalize
(such as the default all-MiniLM-L6-v2), without needing sentence-transformers at run time.

Two runtimes compute the same embeddings:
  torch  the transformers model (fp32; bf16 weights; or int8 dynamic quantization of most Linear layers)
  onnx   ONNX Runtime on a graph exported from that model once and cached on disk: mean pooling and L2 norm in
         the graph, attention/LayerNorm/GELU fused by onnxruntime's transformer optimizer, and for int8 dynamic
         quantization of every MatMul (per-channel int8 weights, uint8 activations: VNNI kernels on x86).
         Each cached graph is checked against torch fp32 before it is stored; if onnxruntime is missing or the
         export, the check or the session fails, the embedder logs why and runs torch fp32 instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from training.encoder import allowed_cpus, configure_threads, length_buckets, resolve_encoder_path

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_CACHE_SIZE = 4096
# Texts per forward pass, in length buckets. On CPU small buckets win: a bucket is padded to its longest text, and
# requests of 32 sample paragraphs in one bucket compute 62% more tokens than they hold (8 per bucket: 13%, 4: 5%).
DEFAULT_BATCH_SIZE = 4
RUNTIMES = ("torch", "onnx")
PRECISIONS = ("fp32", "bf16", "int8")
ONNX_PRECISIONS = ("fp32", "int8")  # onnxruntime's CPU kernels have no fast bf16 MatMul
ONNX_CACHE_ENV = "WORKBENCH_ONNX_CACHE_DIR"
ONNX_RECIPE = "2"  # bump whenever export_onnx_encoder changes what it writes: old cache entries are then ignored
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# an exported graph is only stored if its embeddings of VERIFY_TEXTS are this close (cosine) to torch fp32
ONNX_MIN_COSINE = {"fp32": 0.9999, "int8": 0.97}
VERIFY_TEXTS = (
    "Russia and China signed a pact in Beijing.",
    "",
    "Officials dismissed the Western warnings as fabricated propaganda, a pretext for NATO to move more weapons to "
    "Russia's borders, while satellite images showed troops massing near Ukraine.",
    "Sanctions hit trade. 😀 پیمان روسیه و چین",
)
# onnxruntime's CPU SkipLayerNormalization kernel (residual Add + LayerNorm in one op) is ~10x slower than Add
# followed by LayerNormalization (onnxruntime 1.32, [268, 384] fp32: 0.64 ms against 0.07 ms): neither the
# transformer optimizer nor the session may fuse it; unfused, MiniLM int8 runs ~25% faster
SLOW_FUSIONS = ("SkipLayerNormFusion",)
# model types whose graph onnxruntime's "bert" optimizer can fuse (others still get onnxruntime's generic fusions)
_BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "distilbert", "ernie"}


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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over the attention mask, then L2-normalised (sentence-transformers' recipe)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


def _model_max_length(tokenizer, config) -> int:
    # Position embeddings bound the usable length; tokenizers sometimes report a huge sentinel instead.
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [int(x) for x in limits if isinstance(x, int) and 0 < x < 100_000]
    return min(usable) if usable else 512


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime path


def default_onnx_cache_dir() -> Path:
    """$WORKBENCH_ONNX_CACHE_DIR, else $XDG_CACHE_HOME/stance-workbench/onnx (~/.cache/... by default)."""
    configured = os.environ.get(ONNX_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stance-workbench" / "onnx"


def onnx_cache_key(path: str, precision: str) -> str:
    """Hash of what the cached graph depends on: the encoder's files (path, size, mtime), precision, versions."""
    import onnxruntime
    import transformers

    parts: dict[str, object] = {
        "recipe": ONNX_RECIPE,
        "precision": precision,
        "encoder": path,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    folder = Path(path)
    if folder.is_dir():
        parts["encoder"] = str(folder.resolve())
        parts["files"] = [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file()
        ]
    else:  # a Hub id served from the local Hugging Face cache: its revision names the weights
        parts["revision"] = getattr(AutoConfig.from_pretrained(path), "_commit_hash", None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def onnx_encoder_file(path: str, precision: str = "fp32", cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached ONNX graph for this encoder and precision; exported, optimized and verified on first use.

    int8 is quantized from the (cached) fp32 graph. Each file appears atomically: written in a temporary folder
    inside the cache folder, checked, then renamed into place, so a crash or a concurrent process never leaves or
    reads a half-written graph (concurrent exports of one key write the same graph; the last rename wins).
    Raises when onnxruntime is missing or any step fails.
    """
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"no ONNX graph for precision {precision!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_onnx_cache_dir()
    target = cache / f"{Path(path).name or 'encoder'}-{precision}-{onnx_cache_key(path, precision)}.onnx"
    if target.is_file():
        return target
    source = onnx_encoder_file(path, "fp32", cache) if precision != "fp32" else None
    cache.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s to ONNX %s in %s (once per encoder and version)", path, precision, cache)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
        staged = export_onnx_encoder(path, Path(tmp), precision, source)
        os.replace(staged, target)
    return target


def export_onnx_encoder(path: str, folder: Path, precision: str = "fp32", fp32_graph: Path | None = None) -> Path:
    """Write the encoder's graph (pooling and L2 norm included) into `folder`; the checked file.

    fp32: export from torch, then fuse. int8: quantize `fp32_graph` (or a fresh fp32 export). Either way the
    result must reproduce torch fp32 embeddings (`_verify`) or this raises.
    """
    model = AutoModel.from_pretrained(path, attn_implementation="eager")  # eager attention: a fusable pattern
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if fp32_graph is None:
        exported = folder / "exported.onnx"
        _export(model, tokenizer, exported)
        fp32_graph = _fuse(exported, model.config, folder / "fused.onnx")
    if precision == "int8" and fp32_graph.parent != folder:
        # onnxruntime's quantizer writes a shape-inferred copy beside its input ("<name>-inferred.onnx"): reading
        # the shared cached graph made two processes exporting at once break each other's files
        fp32_graph = Path(shutil.copyfile(fp32_graph, folder / "fp32.onnx"))
    graph = _quantize(fp32_graph, folder / "int8.onnx") if precision == "int8" else fp32_graph
    _verify(graph, model, tokenizer, precision)
    return graph


class _Pooled(torch.nn.Module):
    """The encoder plus mean pooling and L2 norm: one graph from token ids to sentence embeddings."""

    def __init__(self, model: torch.nn.Module, token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.token_types = token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            inputs["token_type_ids"] = token_type_ids
        return mean_pool(self.model(**inputs).last_hidden_state, attention_mask)


def _export(model: torch.nn.Module, tokenizer, target: Path) -> None:
    sample = tokenizer(["a short text", "a somewhat longer text for the export"], padding=True, return_tensors="pt")
    names = [name for name in ONNX_INPUTS if name in sample]
    wrapper = _Pooled(model, "token_type_ids" in sample).eval()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings (shapes are dynamic)
        torch.onnx.export(
            wrapper,
            tuple(sample[name] for name in names),
            str(target),
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives the graph the fusers know
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names}, "embedding": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
        )
    wrapper.eval()  # export may flip train mode back on; the torch model is reused by _verify


def _fuse(source: Path, config, target: Path) -> Path:
    """Attention, embedding+LayerNorm, bias+GELU and skip+LayerNorm fusions (onnxruntime.transformers)."""
    if config.model_type not in _BERT_LIKE:
        return source
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False  # see SLOW_FUSIONS
        with _quiet_onnxruntime():
            optimized = optimize_model(
                str(source),
                model_type="bert",
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
                optimization_options=options,
                opt_level=0,  # python fusions only; the session applies onnxruntime's own graph optimizations
            )
            optimized.save_model_to_file(str(target))
        log.debug("ONNX fusions: %s", optimized.get_fused_operator_statistics())
        return target
    except Exception as error:  # unfused graphs are correct, just slower
        log.info("ONNX transformer fusions skipped (%s: %s)", type(error).__name__, error)
        return source


def _quantize(source: Path, target: Path) -> Path:
    """Dynamic int8: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations (full 8 bits)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_onnxruntime():
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused contrib ops carry no type info
        )
    return target


def _verify(graph: Path, model: torch.nn.Module, tokenizer, precision: str) -> None:
    """Refuse a graph whose embeddings of VERIFY_TEXTS stray from torch fp32 (a broken export must not serve)."""
    session = onnx_session(graph, threads=1)
    encoded = tokenizer(list(VERIFY_TEXTS), padding=True, truncation=True, max_length=128, return_tensors="np")
    names = {i.name for i in session.get_inputs()}
    got = session.run(None, {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in names})[0]
    with torch.no_grad():
        tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in encoded.items()}
        expected = mean_pool(model(**tensors).last_hidden_state, tensors["attention_mask"]).numpy()
    cosine = (got * expected).sum(axis=1)
    if got.shape != expected.shape or not np.isfinite(got).all() or cosine.min() < ONNX_MIN_COSINE[precision]:
        raise RuntimeError(f"the exported {precision} graph does not reproduce torch fp32 (cosine {cosine.min():.4f})")


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session: all graph optimizations, `threads` intra-op threads.

    Idle intra-op threads keep spinning (onnxruntime's default): without it single-text latency rose from 3.9 to
    5.4 ms here, and throughput did not gain.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if threads is None:
        threads = allowed_cpus()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(SLOW_FUSIONS)
    )


class _quiet_onnxruntime:
    """Silence onnxruntime's export-time chatter (root-logger warnings about pre-processing, fusion notes)."""

    def __enter__(self) -> None:
        self._root = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self._ort = logging.getLogger("onnxruntime").level
        logging.getLogger("onnxruntime").setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        logging.getLogger().setLevel(self._root)
        logging.getLogger("onnxruntime").setLevel(self._ort)
