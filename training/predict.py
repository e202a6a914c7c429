"""Serving a trained model: batched inference, calibrated probabilities, span decoding, and `TrainedPredictor`."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation_config.regions import Prediction
from training.blend import blend, encoder_unused
from training.calibration import THRESHOLDS_FILE, load_calibration, load_thresholds
from training.embedding_heads import EMBEDDING_FILE, EmbeddingHeads, text_embeddings
from training.encoder import configure_threads, length_buckets, on_torch_thread
from training.modeling import (
    MultiHeadModel,
    attention_kernels,
    encode_views,
    pad_views,
    quiet_transformers,
    view_of,
)
from training.outputs import ModelOutputs, decode_spans
from training.prior import PRIOR_FILE, ColdStartPrior
from training.uncertainty import Kind, task_score

MULTI_THRESHOLD = 0.5


def run_model(
    model: MultiHeadModel,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    batch_size: int = 32,
    max_length: int | None = None,
    labelled_only: bool = False,
    embed_fields: Sequence[str] = (),
    views: Collection[str] | None = None,
) -> ModelOutputs:
    """Run the model over task `data` dicts in length-bucketed batches; outputs are in input order.

    `labelled_only` (evaluation, calibration): each view runs only on the records that carry a label for one of its
    dimensions, and other records keep zero logits and no spans. A SemEval tweet has one target of five, so this
    encodes one view per tweet instead of five. `embed_fields`: also the sentence embedding of these text fields.
    `views`: only these encoder passes (view ids; None: all), the others' dimensions keep zero logits.
    """
    config = model.config
    out = ModelOutputs.empty(config.dimensions, len(records))
    for name in embed_fields:  # the text alone, for the embedding heads (training/embedding_heads.py)
        texts = [str(record.get(name) or "") for record in records]
        out.embeddings[name] = text_embeddings(model.encoder, tokenizer, texts, batch_size)
    if not labelled_only:
        if views is None or views:
            wanted = None if views is None else set(views)
            _run_views(model, tokenizer, records, list(range(len(records))), wanted, batch_size, max_length, out)
        return out
    for view in config.views:
        names = [d["name"] for d in config.dimensions if view_of(d).id == view.id]
        needed = [i for i, record in enumerate(records) if any(record.get(n) is not None for n in names)]
        if needed:
            _run_views(model, tokenizer, records, needed, {view.id}, batch_size, max_length, out)
    return out


@torch.inference_mode()
def _run_views(
    model: MultiHeadModel,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    indices: Sequence[int],
    views: set[str] | None,
    batch_size: int,
    max_length: int | None,
    out: ModelOutputs,
) -> None:
    """Fill `out` for records[indices] with the outputs of `views` (None: every view)."""
    config = model.config
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    dims = [d for d in config.dimensions if views is None or view_of(d).id in views]
    fields = {view.field for view in config.views if views is None or view.id in views}
    lengths = [max((len(str(records[i].get(f) or "")) for f in fields), default=0) for i in indices]
    for positions in length_buckets(lengths, batch_size):
        batch = [indices[p] for p in positions]
        items = encode_views(tokenizer, config, [records[i] for i in batch], max_length, views)
        padded = pad_views(items, tokenizer.pad_token_id or 0)
        offsets = {view_id: tensors.pop("offset_mapping") for view_id, tensors in padded.items()}
        inputs = {v: {k: t.to(device) for k, t in tensors.items()} for v, tensors in padded.items()}
        with attention_kernels(device):
            logits = model(views=inputs).logits
        for dim in dims:
            name = dim["name"]
            if dim["kind"] != "spans":
                out.logits[name][batch] = logits[name].float().cpu().numpy()
                continue
            view_id = view_of(dim).id
            probs = torch.softmax(logits[name].float(), dim=-1).cpu().numpy()
            for row, index in enumerate(batch):
                length = probs.shape[1]
                text = str(records[index].get(dim["field"]) or "")
                out.spans[name][index] = decode_spans(
                    probs[row], offsets[view_id][row, :length].tolist(), dim["labels"], text
                )
    if was_training:
        model.train()


def served_probabilities(
    encoder: Mapping[str, np.ndarray],
    raw: ModelOutputs,
    records: Sequence[Mapping[str, Any]],
    ngram: Any = None,
    embedding_heads: EmbeddingHeads | None = None,
    prior: ColdStartPrior | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """The encoder's calibrated probabilities blended with the n-gram and embedding heads (training/blend.py), which
    read the cold start's answers; those also answer what no companion learnt (training/prior.py;
    `thresholds`: the multi-choice decision thresholds its answers must keep to)."""
    answers = prior.answers(records, raw.embeddings) if prior is not None and records else None
    hints = prior.features(answers) if prior is not None and answers is not None else None
    parts, learnt = [], []
    if ngram is not None and records:
        parts.append((ngram.weight, ngram.proba(records, hints)))
        learnt.append(multi_learnt(ngram))
    if embedding_heads is not None and records:
        parts.append((embedding_heads.weight, embedding_heads.proba(raw.embeddings, hints)))
        learnt.append(multi_learnt(embedding_heads))
    probs = blend(encoder, parts, learnt)
    if prior is not None and answers is not None:
        probs = prior.fill(probs, answers, learnt_labels(ngram, embedding_heads), thresholds)
    return probs


def multi_learnt(companion: Any) -> dict[str, np.ndarray]:
    """Per multi-choice head of a companion: the labels it learnt (the blend hands the others' share on)."""
    return {name: np.asarray(head.fitted, dtype=bool) for name, head in companion.heads.items() if head.kind == "multi"}


def learnt_labels(*companions: Any) -> dict[str, np.ndarray]:
    """Per choice dimension some companion (with a weight) has a head for: the labels any of them fitted."""
    out: dict[str, np.ndarray] = {}
    for part in companions:
        if part is None or part.weight <= 0:
            continue
        for name, head in part.heads.items():
            fitted = np.asarray(head.fitted, dtype=bool)
            out[name] = out[name] | fitted if name in out else fitted
    return out


class TrainedPredictor:
    """A fine-tuned model folder served through the backend's Predictor protocol (calibrated scores)."""

    kind = "trained"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        device: str | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        model_version: str | None = None,
        runtime: str = "auto",
    ) -> None:
        from transformers import AutoTokenizer

        from training.onnx_serving import ONNX_RUNTIMES, RUNTIME_CHOICES, SERVING_KEY, TORCH_RUNTIME

        if runtime not in RUNTIME_CHOICES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIME_CHOICES)} (got {runtime!r})")
        self.model_dir = Path(model_dir)
        if threads is not None:
            configure_threads(threads)
        manifest_path = self.model_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        self.model_version = model_version or manifest.get("version") or self.model_dir.name
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        with quiet_transformers():
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self.model = MultiHeadModel.from_pretrained(self.model_dir).to(device)
        self.model.eval()
        self.config = self.model.config
        self.temperatures = load_calibration(self.model_dir / "calibration.json")
        self.thresholds = load_thresholds(self.model_dir / THRESHOLDS_FILE)
        from training.ngram import NGRAM_FILE, NgramModel

        # the companions' files are optional: models before 2026-12-02 have neither, before 2026-12-03 no embeddings
        ngram_path, embedding_path = self.model_dir / NGRAM_FILE, self.model_dir / EMBEDDING_FILE
        self.ngram = NgramModel.load(ngram_path) if ngram_path.exists() else None
        self.embedding_heads = EmbeddingHeads.load(embedding_path) if embedding_path.exists() else None
        prior_path = self.model_dir / PRIOR_FILE  # models before 2026-12-03 (round 4) have none
        self.prior = ColdStartPrior.load(prior_path) if prior_path.exists() else None
        self.batch_size = batch_size
        self.views = self._needed_views()
        # what runs the encoder: the runtime the version's check chose ("auto"), unless the caller names one
        serving = manifest.get(SERVING_KEY) or {}
        chosen = serving.get("runtime", TORCH_RUNTIME) if runtime == "auto" else runtime
        self.runtime_reason = serving.get("reason") if runtime == "auto" else f"{runtime} asked for"
        if runtime == "auto" and not serving:
            self.runtime_reason = "saved before ONNX serving existed: torch fp32"
        self._onnx = None
        if chosen in ONNX_RUNTIMES and torch.device(device).type != "cpu":
            chosen, self.runtime_reason = TORCH_RUNTIME, f"torch serves on {device} (the ONNX graphs are for CPUs)"
        elif chosen in ONNX_RUNTIMES:
            from training.onnx_serving import load_onnx_runner

            try:
                self._onnx = load_onnx_runner(self.model_dir, self.model, self.tokenizer, threads, chosen)
                self.model.encoder.to("meta")  # the graph replaces the fp32 weights: ~90 MB less per process (MiniLM)
            except Exception as error:  # onnxruntime missing or a damaged graph: torch still serves correctly
                name = chosen.replace("onnx-", "ONNX ")
                self.runtime_reason = f"{name} could not load ({type(error).__name__}: {error}); torch fp32 serves"
                chosen = TORCH_RUNTIME
        self.runtime = chosen
        self.runtime_description = f"{chosen} ({self.runtime_reason})"  # GET /health
        self._lock = threading.Lock()  # one inference at a time: fast tokenizers are not safe across threads

    def _needed_views(self) -> list[str] | None:
        """The encoder passes whose outputs serve (None: all). A pass whose every dimension is a choice the
        companions answer with their whole weight is skipped: the default model (encoder weight 0) runs only the
        passes its span dimensions need, and one with no span dimension none at all."""
        parts = [(part.weight, set(part.heads)) for part in (self.ngram, self.embedding_heads) if part is not None]
        if self.prior is not None:  # what no companion answers, the cold start does (training/prior.py)
            answered = {name for _, heads in parts for name in heads}
            parts.append((1.0, set(self.prior.dimensions) - answered))
        unused = encoder_unused([d["name"] for d in self.dimensions if d["kind"] != "spans"], parts)
        needed = [
            v.id
            for v in self.config.views
            if any(view_of(d).id == v.id and d["name"] not in unused for d in self.dimensions)
        ]
        return None if len(needed) == len(self.config.views) else needed

    @property
    def dimensions(self) -> list[dict[str, Any]]:
        """The dimensions this model answers (name, kind, labels, field, target)."""
        return self.config.dimensions

    def outputs(self, tasks: Sequence[Mapping[str, Any]]) -> ModelOutputs:
        """Raw outputs (logits and decoded spans) for task `data` dicts."""
        with self._lock:  # on the process's one torch thread: one OpenMP team however many request threads call
            fields = self.embedded_fields
            if self._onnx is not None:
                return self._onnx.run(tasks, self.views, fields)
            return on_torch_thread(
                run_model, self.model, self.tokenizer, tasks, self.batch_size, embed_fields=fields, views=self.views
            )

    @property
    def embedded_fields(self) -> list[str]:
        """The text fields whose sentence embeddings the embedding heads and the cold start's answers read."""
        heads = self.embedding_heads.fields if self.embedding_heads is not None else []
        return sorted({*heads, *(self.prior.fields if self.prior is not None else [])})

    @property
    def has_companions(self) -> bool:
        """Whether n-gram or embedding heads join the encoder's answers."""
        return self.ngram is not None or self.embedding_heads is not None

    def probabilities(self, raw: ModelOutputs, tasks: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The served probabilities of `raw` (the outputs for `tasks`): calibrated, blended with the companions."""
        return served_probabilities(
            raw.probabilities(self.dimensions, self.temperatures),
            raw,
            tasks,
            self.ngram,
            self.embedding_heads,
            self.prior,
            self.thresholds,
        )

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """One Prediction per task `data` dict, in order: calibrated labels and scores for every dimension."""
        if not tasks:
            return []
        raw = self.outputs(tasks)
        return self.predictions(raw, self.probabilities(raw, tasks), len(tasks))

    def predictions(self, raw: ModelOutputs, probs: Mapping[str, np.ndarray], count: int) -> list[Prediction]:
        """One Prediction for each of the `count` records of `raw`, answering from `probs` ([records, labels] per
        choice dimension: the served blend, or another mix of the same outputs)."""
        return [self._prediction(i, probs, raw) for i in range(count)]

    def _prediction(self, i: int, probs: Mapping[str, np.ndarray], raw: ModelOutputs) -> Prediction:
        labels: dict[str, Any] = {}
        scores: dict[str, float] = {}
        distributions: dict[str, tuple[Kind, np.ndarray]] = {}
        for dim in self.dimensions:
            name, values = dim["name"], dim["labels"]
            if dim["kind"] == "single":
                p = probs[name][i]
                best = int(p.argmax())
                labels[name], scores[name] = values[best], float(p[best])
                distributions[name] = ("single", p)
            elif dim["kind"] == "multi":
                p = probs[name][i]
                threshold = self.thresholds.get(name, MULTI_THRESHOLD)
                labels[name] = [v for v, q in zip(values, p, strict=True) if q >= threshold]
                scores[name] = float(np.maximum(p, 1.0 - p).min())
                distributions[name] = ("multi", p)
            else:
                labels[name] = [dict(span) for span in raw.spans[name][i]]
        # the task score is the documented uncertainty measure every rung shares (training.uncertainty), computed on
        # the calibrated distributions, so the "least certain first" tab sorts trained suggestions the same way
        return Prediction(labels=labels, scores=scores, score=task_score(distributions))
