"""The cold-start encoder exported to ONNX: one graph from token ids to sentence embeddings, cached on disk.

Mean pooling and L2 norm are in the graph, attention/LayerNorm/GELU fused by onnxruntime's transformer optimizer,
and for int8 dynamic quantization of every MatMul (per-channel int8 weights, uint8 activations: VNNI kernels on
x86). Each cached graph is checked against torch fp32 before it is stored (backend/cold_start/embedder.py falls
back to torch fp32 when any step fails).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from training.onnx_graph import default_onnx_cache_dir, onnx_session
from training.onnx_graph import fuse_transformer_graph as _fuse
from training.onnx_graph import quantize_int8 as _quantize

log = logging.getLogger(__name__)

ONNX_PRECISIONS = ("fp32", "int8")  # onnxruntime's CPU kernels have no fast bf16 MatMul
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


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over the attention mask, then L2-normalised (sentence-transformers' recipe)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * weights).sum(dim=1)
    counts = weights.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, p=2, dim=1)


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
