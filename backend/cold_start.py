"""Cold-start pre-annotations: embedding similarity to the schema's label definitions and cues, plus cue matches.

Used before any model has been trained. Every figure it shows is deliberately modest (never above MAX_SCORE):
a similarity guess must not look like a trained model's confident answer, and low task scores make Label Studio
put these tasks first when annotators sort by uncertainty.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from annotation_config.regions import Prediction
from annotation_config.schema import Dimension, Label, Schema

MAX_SCORE = 0.85  # no cold-start figure goes above this

# single choice: softmax over label similarities / temperature, then mixed with the uniform distribution
SINGLE_TEMPERATURE = 0.07  # cosine differences between labels are small (~0.05-0.2): sharpen them this much
SINGLE_SHRINK = 0.25  # weight of the uniform distribution in the mix
# target-bound dimensions (stance): a paragraph that does not concern the target gives no evidence about a stance
# toward it, whatever its wording; below RELEVANCE_LOW cosine to the target's name/description the answer is pure
# chance, above RELEVANCE_HIGH it is trusted as much as any other (linear in between)
RELEVANCE_LOW = 0.20
RELEVANCE_HIGH = 0.50

# multi choice: a label is on when its similarity clears an absolute floor AND stands out from the paragraph's
# typical label (median over the dimension's labels), so long texts that resemble everything do not tick all labels
MULTI_FLOOR = 0.30
MULTI_MARGIN = 0.10  # over the median; only with MULTI_MIN_LABELS_FOR_MEDIAN labels or more (a median of 2 is noise)
MULTI_MIN_LABELS_FOR_MEDIAN = 3
MULTI_TEMPERATURE = 0.05
MULTI_SHRINK = 0.30  # p is squeezed into [0.15, 0.85]

# spans: a cue match is a hint, not a finding; longer (more specific) cues earn a little more
SPAN_SCORE = 0.35
SPAN_SCORE_PER_EXTRA_WORD = 0.05
SPAN_SCORE_MAX = 0.5


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised vectors, like training.embedding.SentenceEmbedder."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class _DimensionIndex:
    """Where one choice dimension's prototypes sit in the predictor's prototype matrix."""

    rows: np.ndarray  # prototype rows, grouped by label in schema order
    starts: np.ndarray  # [n_labels] offset of each label's first prototype within `rows`
    target_rows: np.ndarray | None  # the target's name and description, for a dimension bound to a target


@dataclass(frozen=True)
class _CuePattern:
    label: str
    pattern: re.Pattern[str]
    check_start: bool  # the cue begins with a word character, so the match must not follow one
    check_end: bool
    score: float


class ColdStartPredictor:
    """Pre-annotations from label definitions and cue phrases, for any schema (implements backend.Predictor)."""

    kind = "cold-start"

    def __init__(self, schema: Schema, embedder: Embedder | None = None) -> None:
        if embedder is None:
            from training.embedding import SentenceEmbedder

            embedder = SentenceEmbedder()
        self.schema = schema
        self.embedder = embedder
        self.model_version = f"cold-start-{schema.hash}"
        self._choice_dims = schema.of_kind("single", "multi")
        self._span_dims = schema.of_kind("spans")
        self._fields = list(dict.fromkeys(dim.field or schema.data.text for dim in schema.dimensions))
        self._prototypes, self._index = self._build_prototypes()
        self._cues = {dim.name: _cue_patterns(dim) for dim in self._span_dims}

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """One Prediction per task `data` dict, in order; all texts of the batch go through one embedder call."""
        rows = [{field: _text_of(task, field) for field in self._fields} for task in tasks]
        choice_fields = {dim.field for dim in self._choice_dims}
        wanted = list(dict.fromkeys(t for row in rows for f, t in row.items() if f in choice_fields and t.strip()))
        vectors = np.asarray(self.embedder.embed(wanted), dtype=np.float32) if wanted else None
        # One matrix-vector product per distinct text (not one matrix product per batch): BLAS picks different
        # kernels for different batch sizes, and a task's scores must not depend on which tasks came with it.
        similarity = {text: self._prototypes @ vectors[i] for i, text in enumerate(wanted)}
        return [self._predict_one(row, similarity) for row in rows]

    def _predict_one(self, row: dict[str, str], similarity: dict[str, np.ndarray]) -> Prediction:
        labels: dict[str, Any] = {}
        scores: dict[str, float] = {}
        for dim in self._choice_dims:
            sims = similarity.get(row[dim.field])
            if sims is None:  # no text: no evidence, so no answer and chance-level confidence
                value, confidence = (None, 1.0 / len(dim.labels)) if dim.kind == "single" else ([], 0.5)
            else:
                index = self._index[dim.name]
                per_label = _label_similarities(sims, index)
                if dim.kind == "single":
                    relevance = float(sims[index.target_rows].max()) if index.target_rows is not None else None
                    value, confidence = _single(dim, per_label, relevance)
                else:
                    value, confidence = _multi(dim, per_label)
            if value is not None:
                labels[dim.name] = value
            scores[dim.name] = _cap(confidence)
        span_scores: list[float] = []
        for dim in self._span_dims:
            spans = _match_cues(row[dim.field], self._cues[dim.name])
            labels[dim.name] = spans
            span_scores.extend(s["score"] for s in spans)
        overall = list(scores.values()) or span_scores  # a spans-only schema falls back to its spans
        score = _cap(float(np.mean(overall))) if overall else 0.0
        return Prediction(labels=labels, scores=scores, score=score)

    def _build_prototypes(self) -> tuple[np.ndarray, dict[str, _DimensionIndex]]:
        """Embed every prototype text once (one embedder call) and index each dimension's rows."""
        groups = {dim.name: [_prototype_texts(dim, label) for label in dim.labels] for dim in self._choice_dims}
        targets = {dim.name: _target_texts(dim) for dim in self._choice_dims if dim.kind == "single" and dim.target}
        texts = [text for dim_groups in groups.values() for group in dim_groups for text in group]
        texts = list(dict.fromkeys([*texts, *(text for target in targets.values() for text in target)]))
        if not texts:
            return np.zeros((0, 0), dtype=np.float32), {}
        matrix = np.ascontiguousarray(self.embedder.embed(texts), dtype=np.float32)
        row_of = {text: i for i, text in enumerate(texts)}
        index = {}
        for dim in self._choice_dims:
            dim_groups = groups[dim.name]
            target = targets.get(dim.name)
            index[dim.name] = _DimensionIndex(
                rows=np.array([row_of[text] for group in dim_groups for text in group]),
                starts=np.cumsum([0, *(len(group) for group in dim_groups[:-1])]),
                target_rows=np.array([row_of[text] for text in target]) if target else None,
            )
        return matrix, index


def _prototype_texts(dim: Dimension, label: Label) -> list[str]:
    """The definition (per-target ones already name their target) and each cue, tied to the target if any.

    A bare stance cue ("condemn") is the same for every target; "condemn NATO enlargement" is not.
    """
    cues = [cue.strip() for cue in label.cues if cue.strip()]
    if dim.target is not None:
        cues = [f"{cue} {dim.target.name}" for cue in cues]
    return list(dict.fromkeys([label.definition.strip(), *cues]))


def _target_texts(dim: Dimension) -> list[str]:
    """What the paragraph is compared with to tell whether it concerns the dimension's target at all."""
    assert dim.target is not None
    return list(dict.fromkeys(t.strip() for t in (dim.target.name, dim.target.description) if t.strip()))


def _label_similarities(sims: np.ndarray, index: _DimensionIndex) -> np.ndarray:
    """[n_labels]: each label's score is the max cosine over its prototypes.

    Max, not mean: the definition and the cues are alternative ways a label shows up; a paragraph needs to match
    one of them, not all (a paragraph about sanctions should not be penalised for not mentioning investment).
    A mean would also punish labels with many cues and blur the definition, the strongest single prototype.
    """
    return np.maximum.reduceat(sims[index.rows], index.starts).astype(np.float64)


def _single(dim: Dimension, sims: np.ndarray, relevance: float | None = None) -> tuple[str, float]:
    k = len(dim.labels)
    logits = sims / SINGLE_TEMPERATURE
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    trust = 1.0 - SINGLE_SHRINK
    if relevance is not None:
        trust *= float(np.clip((relevance - RELEVANCE_LOW) / (RELEVANCE_HIGH - RELEVANCE_LOW), 0.0, 1.0))
    probs = trust * probs + (1.0 - trust) / k  # mixing with uniform keeps the ranking, only lowers the confidence
    best = int(np.argmax(probs))
    return dim.labels[best].value, float(probs[best])


def _multi(dim: Dimension, sims: np.ndarray) -> tuple[list[str], float]:
    threshold = np.full_like(sims, MULTI_FLOOR)
    if len(sims) >= MULTI_MIN_LABELS_FOR_MEDIAN:
        threshold = np.maximum(threshold, np.median(sims) + MULTI_MARGIN)
    p = 1.0 / (1.0 + np.exp(-(sims - threshold) / MULTI_TEMPERATURE))
    p = 0.5 + (1.0 - MULTI_SHRINK) * (p - 0.5)
    chosen = [label.value for label, p_label in zip(dim.labels, p, strict=True) if p_label >= 0.5]
    # the set is only as right as its least certain yes/no decision
    confidence = float(np.min(np.maximum(p, 1.0 - p)))
    return chosen, confidence


def _cue_patterns(dim: Dimension) -> list[_CuePattern]:
    patterns = []
    for label in dim.labels:
        for cue in dict.fromkeys(c.strip() for c in label.cues):
            words = cue.split()
            if not words:
                continue
            # case-insensitive (Unicode), any run of whitespace between the words of a phrase
            pattern = re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)
            score = round(min(SPAN_SCORE_MAX, SPAN_SCORE + SPAN_SCORE_PER_EXTRA_WORD * (len(words) - 1)), 3)
            patterns.append(_CuePattern(label.value, pattern, _is_word_char(cue[0]), _is_word_char(cue[-1]), score))
    return patterns


def _is_word_char(ch: str) -> bool:
    """Letters, digits and combining marks of any script, '_' and the zero-width (non-)joiners of Persian/Indic.

    Stricter than regex \\w, whose boundary falls inside Persian words at a ZWNJ or before an Arabic diacritic.
    """
    return ch == "_" or ch in "\u200c\u200d" or unicodedata.category(ch)[0] in "LNM"


def _match_cues(text: str, cues: list[_CuePattern]) -> list[dict]:
    """Whole-word, case-insensitive cue matches; per label non-overlapping (earliest first, then longest)."""
    if not text or not cues:
        return []
    candidates: dict[str, list[tuple[int, int, float]]] = {}
    for cue in cues:
        for match in cue.pattern.finditer(text):
            start, end = match.span()
            if cue.check_start and start > 0 and _is_word_char(text[start - 1]):
                continue
            if cue.check_end and end < len(text) and _is_word_char(text[end]):
                continue
            candidates.setdefault(cue.label, []).append((start, end, cue.score))
    spans = []
    for label, found in candidates.items():
        taken_until = -1
        for start, end, score in sorted(found, key=lambda c: (c[0], -(c[1] - c[0]))):
            if start >= taken_until:
                spans.append({"start": start, "end": end, "text": text[start:end], "label": label, "score": score})
                taken_until = end
    spans.sort(key=lambda s: (s["start"], s["end"], s["label"]))
    return spans


def _text_of(task: Mapping[str, Any], field: str | None) -> str:
    """The task's text in `field`, or "" when it is missing or not a string (the backend validates; we cope)."""
    value = task.get(field) if isinstance(task, Mapping) and field else None
    return value if isinstance(value, str) else ""


def _cap(value: float) -> float:
    return float(min(MAX_SCORE, max(0.0, value)))
