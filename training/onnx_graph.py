"""ONNX Runtime building blocks shared by the cold start's sentence encoder and the trained model's encoder.

Fusing (onnxruntime.transformers' BERT optimizer, minus the fusions that are slower on CPU), dynamic int8
quantization of every MatMul, and the CPU session both runtimes use. The graphs themselves are exported where their
inputs and outputs are known: backend/cold_start/onnx_export.py (token ids -> sentence embedding) and
training/onnx_serving.py (token ids -> token states of a fine-tuned encoder).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from training.encoder import allowed_cpus

log = logging.getLogger(__name__)

ONNX_CACHE_ENV = "WORKBENCH_ONNX_CACHE_DIR"

# onnxruntime's CPU SkipLayerNormalization kernel (residual Add + LayerNorm in one op) is ~10x slower than Add
# followed by LayerNormalization (onnxruntime 1.32, [268, 384] fp32: 0.64 ms against 0.07 ms): neither the
# transformer optimizer nor the session may fuse it; unfused, MiniLM int8 runs ~25% faster
SLOW_FUSIONS = ("SkipLayerNormFusion",)
# model types whose graph onnxruntime's "bert" optimizer can fuse (others still get onnxruntime's generic fusions)
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet", "distilbert", "ernie"}


def default_onnx_cache_dir() -> Path:
    """$WORKBENCH_ONNX_CACHE_DIR, else $XDG_CACHE_HOME/stance-workbench/onnx (~/.cache/... by default)."""
    configured = os.environ.get(ONNX_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stance-workbench" / "onnx"


def fuse_transformer_graph(source: Path, config: Any, target: Path) -> Path:
    """Attention, embedding+LayerNorm and bias+GELU fusions (onnxruntime.transformers); `source` when not possible."""
    if config.model_type not in BERT_LIKE:
        return source
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = False  # see SLOW_FUSIONS
        with quiet_onnxruntime():
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


def quantize_int8(source: Path, target: Path) -> Path:
    """Dynamic int8: per-channel symmetric int8 weights, per-tensor asymmetric uint8 activations (full 8 bits)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_onnxruntime():
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused contrib ops carry no type info
        )
    return target


def onnx_session(path: str | os.PathLike, threads: int | None = None) -> Any:
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


class quiet_onnxruntime:  # noqa: N801 (used like contextlib's lower-case context managers)
    """Silence onnxruntime's export-time chatter (root-logger warnings about pre-processing, fusion notes)."""

    def __enter__(self) -> None:
        self._root = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        self._ort = logging.getLogger("onnxruntime").level
        logging.getLogger("onnxruntime").setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self._root)
        logging.getLogger("onnxruntime").setLevel(self._ort)
