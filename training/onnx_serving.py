"""The trained model on ONNX Runtime int8: export when a version is saved, a check against torch, and the runner.

One graph per model: the fine-tuned encoder, token ids -> token states, dynamic int8 (every MatMul, per channel).
Every view of the model (plain text, (target, text) pairs, (claim, text) pairs) is the same encoder on other
inputs, so one graph serves them all; the heads (a linear layer per dimension, the late-encoded dimensions' target
queries) are a few kilobytes of numpy applied to those states, for both target encodings. The sentence embeddings
the embedding heads read are the same states mean-pooled; where a view's inputs and an embedding's are the same
token ids (a text shorter than the view's length limit: nearly every paragraph), the encoder runs once for both.

Dynamic int8 takes one activation scale per tensor, i.e. per batch, so each sequence runs alone (batch 1, no
padding): an answer never depends on which texts came with it. Sequences run on `threads` worker threads, each an
ONNX Runtime call on one intra-op thread, as the cold start does (backend/cold_start/embedder.py).

Served only if it passes its check (training/onnx_check.py) against torch fp32 on the model's own test split; else
torch serves and the manifest says why (`SERVING_KEY`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.calibration import softmax
from training.embedding_heads import MAX_LENGTH as EMBEDDING_MAX_LENGTH
from training.encoder import allowed_cpus
from training.modeling import BIO, MultiHeadModel, attends_to_target, encode_views, quiet_transformers, view_of
from training.onnx_graph import default_onnx_cache_dir, fuse_transformer_graph, onnx_session, quantize_int8
from training.outputs import ModelOutputs, decode_spans

log = logging.getLogger(__name__)

SERVING_KEY = "serving"  # the manifest's entry: {"runtime", "reason", "check"}
ONNX_RUNTIME, ONNX_FP32_RUNTIME, TORCH_RUNTIME = "onnx-int8", "onnx-fp32", "torch-fp32"
ONNX_RUNTIMES = (ONNX_RUNTIME, ONNX_FP32_RUNTIME)  # in the order the check tries them: fastest first
ONNX_FILES = {ONNX_RUNTIME: "onnx/encoder-int8.onnx", ONNX_FP32_RUNTIME: "onnx/encoder-fp32.onnx"}  # in a version
ONNX_FILE = ONNX_FILES[ONNX_RUNTIME]
RUNTIME_CHOICES = ("auto", *ONNX_RUNTIMES, TORCH_RUNTIME)  # auto: what the version's check chose
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_RECIPE = "1"  # bump whenever _export changes what it writes: cached graphs of older recipes are then ignored


class _TokenStates(torch.nn.Module):
    """The bare encoder's last hidden states: what the exported graph computes."""

    def __init__(self, encoder: torch.nn.Module, token_types: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.token_types = token_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001, ANN201 (traced)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            inputs["token_type_ids"] = token_type_ids
        return self.encoder(**inputs).last_hidden_state


def export_onnx_model(
    model: MultiHeadModel, tokenizer: Any, folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> dict[str, Path]:
    """Write the model's encoder as ONNX graphs in `folder` (ONNX_FILES: int8, and the fused fp32 graph it is
    quantized from), each atomically; returns them by runtime; raises on failure.

    Exported with eager attention (the pattern onnxruntime's optimizer fuses), fused, quantized, and checked for
    finite token states of the right shape; accuracy is training/onnx_check.py's business. Graphs are also kept in
    the ONNX cache (`cache_dir`, default $WORKBENCH_ONNX_CACHE_DIR or ~/.cache/stance-workbench/onnx) under a hash
    of the encoder's weights: without fine-tuning (the default) every version has the pretrained encoder, and the
    export (~8 s for MiniLM on 2 cores) happens once."""
    folder = Path(folder)
    targets = {runtime: folder / name for runtime, name in ONNX_FILES.items()}
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_onnx_cache_dir()
    key = _weights_key(model.encoder)
    cached = {runtime: cache / f"trained-encoder-{key}-{runtime.split('-')[1]}.onnx" for runtime in targets}
    if all(path.is_file() for path in cached.values()):
        for runtime, target in targets.items():
            _place(cached[runtime], target)
        return targets
    _export(model.encoder, tokenizer, targets)
    try:  # a cache that cannot be written costs the next export, nothing else
        cache.mkdir(parents=True, exist_ok=True)
        for runtime, target in targets.items():
            with tempfile.NamedTemporaryFile(dir=cache, prefix=".trained-", suffix=".onnx", delete=False) as handle:
                staged = Path(handle.name)
            shutil.copyfile(target, staged)
            os.replace(staged, cached[runtime])
    except OSError as error:
        log.info("could not keep the ONNX graphs in the cache %s: %s", cache, error)
    return targets


def _weights_key(encoder: torch.nn.Module) -> str:
    """A hash of what the exported graph depends on: the encoder's weights and config, the recipe, the versions."""
    import onnxruntime
    import transformers

    digest = hashlib.sha256()
    parts = [ONNX_RECIPE, torch.__version__, transformers.__version__, onnxruntime.__version__]
    digest.update(json.dumps([*parts, encoder.config.to_json_string()]).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _place(source: Path, target: Path) -> None:
    """`source` at `target`, atomically: a hard link where the file system allows, else a copy."""
    staged = target.with_name(f".{target.name}.tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(source, staged)
    except OSError:
        shutil.copyfile(source, staged)
    os.replace(staged, target)


def _export(encoder: torch.nn.Module, tokenizer: Any, targets: Mapping[str, Path]) -> None:
    """Export and fuse `encoder` (the fp32 graph), quantize that (int8), each into its `targets` path through a
    temporary folder beside it."""
    target = targets[ONNX_RUNTIME]
    previous = getattr(encoder.config, "_attn_implementation", None)
    was_training = encoder.training
    encoder.eval()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        try:
            if previous not in (None, "eager"):
                encoder.set_attn_implementation("eager")
            sample = tokenizer(
                ["a short text", "a somewhat longer text for the export"], padding=True, return_tensors="pt"
            )
            names = [name for name in ONNX_INPUTS if name in sample]
            device = next(encoder.parameters()).device
            wrapper = _TokenStates(encoder, "token_type_ids" in names).eval()
            exported = Path(tmp) / "exported.onnx"
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer warnings
                torch.onnx.export(
                    wrapper.cpu(),
                    tuple(sample[name] for name in names),
                    str(exported),
                    dynamo=False,  # the TorchScript exporter gives the graph onnxruntime's fusers know
                    input_names=names,
                    output_names=["token_states"],
                    dynamic_axes={
                        **{n: {0: "batch", 1: "sequence"} for n in names},
                        "token_states": {0: "batch", 1: "sequence"},
                    },
                    opset_version=17,
                    do_constant_folding=True,
                )
            encoder.to(device)
            fused = fuse_transformer_graph(exported, encoder.config, Path(tmp) / "fused.onnx")
            fp32 = Path(shutil.copyfile(fused, Path(tmp) / "fp32.onnx"))  # the quantizer writes beside its input
            staged = quantize_int8(fused, Path(tmp) / "int8.onnx")
            for graph in (fp32, staged):
                _sanity_check(graph, tokenizer, int(encoder.config.hidden_size))
            os.replace(fp32, targets[ONNX_FP32_RUNTIME])
            os.replace(staged, target)
        finally:
            if previous not in (None, "eager"):
                encoder.set_attn_implementation(previous)
            encoder.train(was_training)


def _sanity_check(graph: Path, tokenizer: Any, hidden_size: int) -> None:
    session = onnx_session(graph, threads=1)
    wanted = {i.name for i in session.get_inputs()}
    encoded = tokenizer(
        ["Russia and China signed a pact.", "Sanctions hit trade. 😀"], padding=True, return_tensors="np"
    )
    states = session.run(None, {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items() if k in wanted})[0]
    if states.shape[::2] != (2, hidden_size) or not np.isfinite(states).all():
        raise RuntimeError(f"the exported graph gives token states of shape {states.shape} or non-finite values")


class NumpyHeads:
    """Every head of a MultiHeadModel as numpy arrays, applied to one sequence's token states [T, hidden]."""

    def __init__(self, model: MultiHeadModel) -> None:
        self.weights = {n: h.weight.detach().float().cpu().numpy() for n, h in model.heads.items()}
        self.biases = {n: h.bias.detach().float().cpu().numpy() for n, h in model.heads.items()}
        self.queries = {n: q.detach().float().cpu().numpy() for n, q in model.target_queries.items()}

    def logits(self, dim: Mapping[str, Any], states: np.ndarray) -> np.ndarray:
        """Single/multi: [labels]; spans: [T, labels, 3] (as MultiHeadModel.forward, without dropout)."""
        name = dim["name"]
        weight, bias = self.weights[name], self.biases[name]
        if dim["kind"] == "spans":
            return (states @ weight.T + bias).reshape(states.shape[0], len(dim["labels"]), len(BIO))
        pooled = states.mean(axis=0)
        if attends_to_target(dim):
            scores = states @ self.queries[name] / np.sqrt(states.shape[-1])
            weights = np.exp(scores - scores.max())
            pooled = np.concatenate([pooled, (weights / weights.sum()) @ states])
        return pooled @ weight.T + bias


class OnnxRunner:
    """Runs the exported encoder and the numpy heads over task `data` dicts (see the module docstring)."""

    def __init__(self, graph: str | os.PathLike, model: MultiHeadModel, tokenizer: Any, threads: int | None) -> None:
        self.session = onnx_session(graph, threads=1)
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.config = model.config
        self.heads = NumpyHeads(model)
        self.tokenizer = tokenizer
        self.hidden_size = int(model.encoder.config.hidden_size)
        workers = max(1, threads or allowed_cpus())
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="onnx-model") if workers > 1 else None

    def _states(self, sequence: Mapping[str, Sequence[int]]) -> np.ndarray:
        feed = {k: np.asarray([sequence[k]], dtype=np.int64) for k in self.inputs if k in sequence}
        if "token_type_ids" in self.inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        return self.session.run(None, feed)[0][0]

    def run(
        self, records: Sequence[Mapping[str, Any]], views: Collection[str] | None, embed_fields: Sequence[str]
    ) -> Any:
        """ModelOutputs for `records` (the torch `run_model`'s contract, `labelled_only` aside)."""
        config = self.config
        wanted = None if views is None else set(views)
        active = [v for v in config.views if wanted is None or v.id in wanted]
        items = (
            encode_views(self.tokenizer, config, records, None, [v.id for v in active])
            if active
            else [{}] * len(records)
        )
        embed_inputs = {
            name: self.tokenizer(
                [str(r.get(name) or "") for r in records], truncation=True, max_length=EMBEDDING_MAX_LENGTH
            )["input_ids"]
            for name in embed_fields
        }
        # the distinct token sequences: a view's and an embedding's inputs are often the same ids
        distinct: dict[tuple[int, ...], dict[str, list[int]]] = {}
        for item in items:
            for encoded in item.values():
                distinct.setdefault(_key(encoded), encoded)
        for ids in embed_inputs.values():
            for sequence in ids:
                distinct.setdefault(tuple(sequence), {"input_ids": sequence, "attention_mask": [1] * len(sequence)})
        keys = list(distinct)
        run = self._pool.map if self._pool is not None else map
        states = dict(zip(keys, run(self._states, (distinct[k] for k in keys)), strict=True))

        dims = [d for d in config.dimensions if wanted is None or view_of(d).id in wanted]
        out = ModelOutputs.empty(config.dimensions, len(records))
        for i, item in enumerate(items):
            for dim in dims:
                view_id = view_of(dim).id
                hidden = states[_key(item[view_id])]
                logits = self.heads.logits(dim, hidden)
                if dim["kind"] != "spans":
                    out.logits[dim["name"]][i] = logits
                    continue
                probs = softmax(logits)  # over O / B / I, per token and label
                text = str(records[i].get(dim["field"]) or "")
                out.spans[dim["name"]][i] = decode_spans(probs, item[view_id]["offset_mapping"], dim["labels"], text)
        for name, ids in embed_inputs.items():
            pooled = np.stack([states[tuple(s)].mean(axis=0) for s in ids]) if ids else np.zeros((0, self.hidden_size))
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out.embeddings[name] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out


def _key(encoded: Mapping[str, Sequence[int]]) -> tuple[int, ...]:
    """A sequence's identity: its ids, and its token types where a pair sets some to 1."""
    types = encoded.get("token_type_ids")
    ids = tuple(encoded["input_ids"])
    return ids if not types or not any(types) else (*ids, -1, *types)


def load_onnx_runner(
    folder: Path, model: MultiHeadModel, tokenizer: Any, threads: int | None, runtime: str = ONNX_RUNTIME
) -> OnnxRunner:
    """The runner for a saved version's graph of `runtime` (raises when the file or onnxruntime is missing)."""
    graph = folder / ONNX_FILES[runtime]
    if not graph.is_file():
        raise FileNotFoundError(f"{ONNX_FILES[runtime]} is missing from the model folder")
    with quiet_transformers():
        return OnnxRunner(graph, model, tokenizer, threads)
