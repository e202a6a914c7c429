"""The instant learner: light heads on the served encoder's features, refitted from every accepted annotation.

The second rung of the model ladder (cold start -> instant learner -> fine-tuned model). It keeps the project's
annotations as Label Studio sends them (ANNOTATION_CREATED / ANNOTATION_UPDATED / ANNOTATIONS_CREATED /
ANNOTATIONS_DELETED webhooks, or a JSON export at start-up), applies the one acceptance policy
(`training.data.accept`) per task, and fits per dimension on features of the accepted texts: the served
encoder's embedding of the text, plus the fallback's (cold start's) answer stacked on as a few extra features
(its confidence at the label it chose), so each head learns how far to trust the cold start, label by label:

  single choice   linear discriminant analysis (closed form, shrunk covariance, uniform class priors so rare
                  labels are not drowned by the majority: macro-F1 is what annotators feel). Per-target stance
                  dimensions get one head per target by default (`target_mode="separate"`), or one head shared by
                  all targets on [text, text * target, target one-hot] (`"shared"`, measured worse).
  multi choice    one class-balanced binary logistic regression per label; a label never ticked so far is
                  answered by the fallback, a label never left unticked is always on.
  spans           learned cues: whole-word matches of the span texts annotators marked, kept when their marked
                  share among all their occurrences in accepted texts is at least one half; plus the fallback's
                  cue matches that do not overlap them.

A dimension with fewer than `min_labels` accepted answers, or a single class so far, is answered by the fallback
(the cold start), so the learner helps from the first annotation and is never worse than the cold start on what
it knows nothing about. Heads were chosen on data/dev_labels.jsonl, leave-one-article-out: see
bench/instant_learner.py and BENCHMARKS.md.

Fitting reads a snapshot of the accepted labels, so webhooks keep arriving while a fit runs. `LearnerWorker`
refits in a background thread and coalesces events: one fit for however many events came in meanwhile.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from threadpoolctl import threadpool_limits

from annotation_config.annotations import ANNOTATION_FIELDS, stamp
from annotation_config.regions import Prediction
from annotation_config.schema import Dimension, Schema
from backend.predictor import Predictor
from training.cold_start import Embedder, is_word_char, non_overlapping_spans
from training.data import AcceptancePolicy, Example, accept, data_hash
from training.pairs import embedding_features, reading
from training.prior import answer_distribution, answer_features
from training.uncertainty import task_score

log = logging.getLogger(__name__)

# Bump whenever fitting or prediction changes what a given set of labels yields: the version string then changes.
LEARNER_RECIPE = "1"
EDIT_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
BULK_CREATED = "ANNOTATIONS_CREATED"
DELETED = "ANNOTATIONS_DELETED"
MAX_CUE_CHARS = 80  # a marked span longer than this is a passage, not a cue that recurs
MAX_SCORE = 0.99  # no figure claims certainty


@dataclass(frozen=True)
class LearnerConfig:
    """Every knob of the instant learner, with the defaults chosen on the dev set (bench/instant_learner.py)."""

    min_labels: int = 2  # accepted answers a dimension needs before its own head replaces the fallback
    single_head: Literal["lda", "logistic"] = "lda"
    single_class: Literal["fallback", "constant"] = "fallback"  # a dimension with one class seen so far
    lda_shrinkage: float = 0.9  # covariance shrinkage toward the identity: 384 dimensions, tens of examples
    single_c: float = 3.0  # logistic single-choice heads (inverse L2 strength on unit-length embeddings)
    target_mode: Literal["separate", "shared"] = "separate"
    multi_c: float = 30.0
    multi_tol: float = 1e-3  # lbfgs tolerance: 10x sklearn's default, ~10x faster at 1,000 labels, same F1
    multi_threshold: float = 0.5
    # a head fitted on n labels answers with weight n / (n + prior_labels), the fallback with the rest (0: the head
    # alone). Off: 20 gained ~0.02 macro-F1 at 10 labels on the dev set, but kept the cold start's answer after an
    # annotator had corrected it several times, and annotators must see their corrections taken up
    prior_labels: float = 0.0
    # below this many labels a single-choice head must beat the fallback in a k-fold check on the accepted labels
    # (macro-F1) to answer its question; the fallback answers otherwise (0: never check). Dev set: +0.02 mean
    # macro-F1 at 10 labels, +0.01 at 20; from 40 labels on the check's own noise cost more than it saved
    check_below: int = 30
    check_folds: int = 5
    # the fallback's answer (its confidence at the label it chose) is stacked onto the text embedding with this
    # weight, so each head learns how far to trust the cold start per label (0: embeddings only)
    fallback_weight: float = 3.0
    span_min_precision: float = 0.5  # a learned cue's smoothed marked share needed to be suggested

    def digest(self) -> str:
        """A stable text of every knob (part of the model version)."""
        return json.dumps(asdict(self), sort_keys=True)


# ---------------------------------------------------------------------------------------------------------------
# fitted heads: plain read-only arrays, no sklearn objects (immutable, cheap to hold, picklable)


def _frozen(array: np.ndarray) -> np.ndarray:
    out = np.ascontiguousarray(array, dtype=np.float64)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class LinearHead:
    """A fitted linear classifier: probabilities = softmax(W x + b), or sigmoid for a single row of W."""

    classes: tuple[str, ...]
    coef: np.ndarray  # [rows, features]; one row for a binary classifier (the positive class is classes[1])
    intercept: np.ndarray  # [rows]

    def proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for one feature vector, in `classes` order."""
        # one matrix-vector product per text: BLAS picks other kernels for other batch sizes, and a task's
        # answer must not depend on which tasks came with it
        z = self.coef @ x + self.intercept
        if len(z) == 1:
            p = 0.5 * (1.0 + np.tanh(0.5 * z[0]))  # the logistic function, without exp overflow
            return np.array([1.0 - p, p])
        e = np.exp(z - z.max())
        return e / e.sum()


def _linear_head(model: Any) -> LinearHead:
    return LinearHead(tuple(str(c) for c in model.classes_), _frozen(model.coef_), _frozen(model.intercept_))


@dataclass(frozen=True)
class ConstantHead:
    """The only answer seen so far, with a Laplace-smoothed probability."""

    classes: tuple[str, ...]
    probs: np.ndarray

    def proba(self, x: np.ndarray) -> np.ndarray:
        """The same distribution for every text."""
        return self.probs


@dataclass(frozen=True)
class SingleHead:
    """How one single-choice dimension is answered: `head` over the features `_single_features` builds."""

    head: LinearHead | ConstantHead
    fallback_weight: float = 0.0  # weight of the fallback's answer among the features (0: not a feature)
    trust: float = 1.0  # the head's share in the answer; the rest is the fallback's distribution
    target: np.ndarray | None = None  # shared-target mode: the target's embedding
    target_index: int = 0
    n_targets: int = 0


@dataclass(frozen=True)
class MultiHead:
    """One multi-choice dimension: per label a binary head, a constant "on" probability, or None (fallback)."""

    labels: tuple[Any, ...]  # LinearHead | float | None per schema label
    threshold: float = 0.5
    fallback_weight: float = 0.0
    trust: float = 1.0


@dataclass(frozen=True)
class LearnedCue:
    """A span text annotators marked, as a whole-word pattern with its smoothed marked share."""

    label: str
    pattern: re.Pattern[str]
    check_start: bool
    check_end: bool
    score: float


@dataclass(frozen=True)
class SpanHead:
    """One span dimension: learned cues, applied before the fallback's own cue matches."""

    cues: tuple[LearnedCue, ...]


Head = SingleHead | MultiHead | SpanHead


# ---------------------------------------------------------------------------------------------------------------
# the fitted predictor


class InstantPredictor:
    """An immutable fitted instant learner (implements backend.predictor.Predictor, kind "instant").

    Dimensions without a head of their own take the fallback's answer, so every dimension is always answered.
    """

    kind = "instant"

    def __init__(
        self,
        schema: Schema,
        embedder: Embedder,
        fallback: Predictor,
        heads: Mapping[str, Head],
        model_version: str,
        n_examples: int,
    ) -> None:
        self.schema = schema
        self.embedder = embedder
        self.fallback = fallback
        self.model_version = model_version
        self.n_examples = n_examples
        self._heads: Mapping[str, Head] = dict(heads)
        self._fields = _embedded_fields(schema)

    @property
    def learned(self) -> list[str]:
        """Dimensions answered (at least in part) by a learned head rather than by the fallback."""
        return [name for name in self._heads]

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[Prediction]:
        """One Prediction per task `data` dict, in order (the fallback predicts the same batch once)."""
        tasks = list(tasks)
        if not tasks:
            return []
        fallback = self.fallback.predict(tasks)
        texts = {f: [_text_of(task, f) for task in tasks] for f in self._fields}
        wanted = list(dict.fromkeys(t for column in texts.values() for t in column if t.strip()))
        vectors = np.asarray(self.embedder.embed(wanted), dtype=np.float64) if wanted else np.zeros((0, 0))
        vector_of = {text: vectors[i] for i, text in enumerate(wanted)}
        return [
            self._predict_one(task, {f: vector_of.get(texts[f][i]) for f in self._fields}, fallback[i])
            for i, task in enumerate(tasks)
        ]

    def _predict_one(self, task: Mapping[str, Any], vectors: dict[str, Any], backup: Prediction) -> Prediction:
        labels: dict[str, Any] = {}
        scores: dict[str, float] = {}
        distributions: dict[str, tuple[str, np.ndarray]] = {}
        for dim in self.schema.dimensions:
            head = self._heads.get(dim.name)
            x = _features_of(dim, vectors)
            if dim.kind == "spans":
                spans = list(backup.labels.get(dim.name) or [])
                if isinstance(head, SpanHead):
                    spans = _merge_spans(_match_learned(_text_of(task, dim.field), head.cues), spans)
                labels[dim.name] = spans
                continue
            if dim.kind == "single":
                if isinstance(head, SingleHead) and x is not None:
                    value, probs = _answer_single(dim, head, x, backup)
                else:
                    value, probs = _fallback_single(dim, backup)
                if value is not None:
                    labels[dim.name] = value
                scores[dim.name] = float(min(MAX_SCORE, probs.max()))
                distributions[dim.name] = ("single", probs)
                continue
            on, decided = _answer_multi(dim, head if isinstance(head, MultiHead) else None, x, backup)
            labels[dim.name] = [v for v, yes in zip(dim.values, decided, strict=True) if yes]
            # the set is only as right as its least certain yes/no decision (Prediction's convention)
            scores[dim.name] = float(min(MAX_SCORE, np.maximum(on, 1.0 - on).min()))
            distributions[dim.name] = ("multi", on)
        return Prediction(labels=labels, scores=scores, score=task_score(distributions))  # type: ignore[arg-type]


def _answer_single(dim: Dimension, head: SingleHead, x: np.ndarray, backup: Prediction) -> tuple[str, np.ndarray]:
    local = head.head.proba(_single_features(dim, head, x, backup))
    probs = np.zeros(len(dim.values))
    for cls, p in zip(head.head.classes, local, strict=True):
        probs[dim.values.index(cls)] = p
    if head.trust < 1.0:
        probs = head.trust * probs + (1.0 - head.trust) * _fallback_single(dim, backup)[1]
    return dim.values[int(np.argmax(probs))], probs


def _fallback_single(dim: Dimension, backup: Prediction) -> tuple[str | None, np.ndarray]:
    """The fallback's answer (None when it gave none) and its distribution (training.prior.answer_distribution)."""
    value = backup.labels.get(dim.name)
    return (value if value in dim.values else None), answer_distribution(dim, backup)


def _answer_multi(
    dim: Dimension, head: MultiHead | None, x: np.ndarray | None, backup: Prediction
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label "on" probabilities and decisions; labels without a head of their own take the fallback's."""
    chosen = set(backup.labels.get(dim.name) or [])
    decided = np.array([v in chosen for v in dim.values])
    on = answer_distribution(dim, backup)  # the fallback's confidence in each yes/no decision it made
    if head is None or x is None:
        return on, decided
    hints = answer_features(dim, backup)
    for i, label_head in enumerate(head.labels):
        if isinstance(label_head, LinearHead):
            p = label_head.proba(np.append(x, head.fallback_weight * hints[i]))[1]
        elif label_head is not None:
            p = float(label_head)
        else:
            continue
        on[i] = head.trust * p + (1.0 - head.trust) * on[i]
        decided[i] = on[i] >= head.threshold
    return on, decided


def _single_features(dim: Dimension, head: SingleHead, x: np.ndarray, backup: Prediction) -> np.ndarray:
    """One text's features for a single-choice head (see `_feature_matrix`)."""
    return _feature_matrix(head, x[None, :], answer_features(dim, backup)[None, :])[0]


def _feature_matrix(head: SingleHead, x: np.ndarray, hints: np.ndarray) -> np.ndarray:
    """[text, (shared-target mode: text * target * sqrt(d), target one-hot), weight * fallback hint] per row."""
    parts = [x]
    if head.target is not None:
        onehot = np.zeros((len(x), head.n_targets))
        onehot[:, head.target_index] = 1.0
        parts += [x * head.target * np.sqrt(x.shape[1]), onehot]
    if head.fallback_weight:
        parts.append(head.fallback_weight * hints)
    return np.hstack(parts)


# ---------------------------------------------------------------------------------------------------------------
# spans


def _cue_pattern(text: str) -> re.Pattern[str] | None:
    words = text.split()
    if not words:
        return None
    return re.compile(r"\s+".join(re.escape(w) for w in words), re.IGNORECASE)


def _whole_word_matches(
    text: str, pattern: re.Pattern[str], check_start: bool, check_end: bool
) -> list[tuple[int, int]]:
    """(start, end) of each match not glued to a word character on a side where the cue is a word."""
    found = []
    for match in pattern.finditer(text):
        start, end = match.span()
        if check_start and start > 0 and is_word_char(text[start - 1]):
            continue
        if check_end and end < len(text) and is_word_char(text[end]):
            continue
        found.append((start, end))
    return found


def _match_learned(text: str, cues: Sequence[LearnedCue]) -> list[dict]:
    """Learned-cue matches, per label non-overlapping (earliest first, then longest)."""
    if not text:
        return []
    candidates: dict[str, list[tuple[int, int, float]]] = {}
    for cue in cues:
        for start, end in _whole_word_matches(text, cue.pattern, cue.check_start, cue.check_end):
            candidates.setdefault(cue.label, []).append((start, end, cue.score))
    return non_overlapping_spans(text, candidates)


def _merge_spans(learned: list[dict], fallback: list[dict]) -> list[dict]:
    """Learned spans, plus the fallback's spans that overlap no learned span of the same label."""
    kept = list(learned)
    for span in fallback:
        if not any(s["label"] == span["label"] and s["start"] < span["end"] and span["start"] < s["end"] for s in kept):
            kept.append(span)
    kept.sort(key=lambda s: (s["start"], s["end"], s["label"]))
    return kept


def _fit_span_head(dim: Dimension, examples: Sequence[Example], config: LearnerConfig) -> SpanHead | None:
    """Cues from the marked span texts, scored by (marked occurrences + 1) / (all occurrences + 2)."""
    marked: dict[tuple[str, str], str] = {}  # (label, lowercased cue) -> cue as first seen
    answered = [e for e in examples if e.labels.get(dim.name)]
    for example in answered:
        text = _text_of(example.data, dim.field)
        for span in example.labels[dim.name]:
            cue = " ".join(text[span["start"] : span["end"]].split())
            if 2 <= len(cue) <= MAX_CUE_CHARS:
                marked.setdefault((span["label"], cue.lower()), cue)
    cues = []
    for (label, _), cue in sorted(marked.items()):
        pattern = _cue_pattern(cue)
        if pattern is None:
            continue
        check_start, check_end = is_word_char(cue[0]), is_word_char(cue[-1])
        hits = occurrences = 0
        for example in answered:
            text = _text_of(example.data, dim.field)
            spans = [s for s in example.labels[dim.name] if s["label"] == label]
            for start, end in _whole_word_matches(text, pattern, check_start, check_end):
                occurrences += 1
                hits += any(s["start"] < end and start < s["end"] for s in spans)
        score = (hits + 1) / (occurrences + 2)
        if hits and score >= config.span_min_precision:
            cues.append(LearnedCue(label, pattern, check_start, check_end, round(score, 3)))
    return SpanHead(tuple(cues)) if cues else None


# ---------------------------------------------------------------------------------------------------------------
# fitting


def _fit_classifier(config: LearnerConfig, features: np.ndarray, y: Sequence[str]) -> LinearHead:
    """A class-balanced linear head on `features` (LDA with uniform priors, or balanced logistic regression)."""
    classes = sorted(set(y))
    if config.single_head == "lda" and len(y) > len(classes):  # LDA needs more examples than classes
        return _lda(features, np.asarray(y), classes, config.lda_shrinkage)
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny sets
        model = LogisticRegression(C=config.single_c, class_weight="balanced", max_iter=1000)
        model.fit(features, np.asarray(y))
    return _linear_head(model)


def _lda(x: np.ndarray, y: np.ndarray, classes: list[str], shrinkage: float) -> LinearHead:
    """sklearn's LinearDiscriminantAnalysis(solver="lsqr", shrinkage=s, priors=uniform), in closed form.

    The same estimate (the mean over classes of each class's covariance shrunk toward its mean variance), but
    the pooled covariance comes from one matrix product and the system is solved by Cholesky instead of an SVD
    least-squares: ~5x faster at 1,000 labels (tests check it against sklearn).
    """
    from scipy.linalg import LinAlgError, lstsq, solve

    k, d = len(classes), x.shape[1]
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
    index = np.searchsorted(classes, y)
    centred = (x - means[index]) / np.sqrt(k * counts[index])[:, None]  # each class weighs 1/k, each row 1/n_k
    variance = np.array([np.square(centred[index == i]).sum() * k / d for i in range(k)])  # tr(S_k) / d
    cov = (1.0 - shrinkage) * (centred.T @ centred)
    cov[np.diag_indices(d)] += shrinkage * variance.mean()
    try:
        coef = solve(cov, means.T, assume_a="pos").T
    except (LinAlgError, ValueError):  # singular (e.g. every class a single point): least squares, like sklearn
        coef = lstsq(cov, means.T)[0].T
    intercept = -0.5 * np.einsum("ij,ij->i", means, coef) + np.log(1.0 / k)
    if k == 2:  # one row, as sklearn gives binary problems: p(classes[1]) = sigmoid(w x + b)
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    return LinearHead(tuple(str(c) for c in classes), _frozen(coef), _frozen(intercept))


def _beats_fallback(config: LearnerConfig, x: np.ndarray, y: Sequence[str], fallback: Sequence[Any]) -> bool:
    """Whether a head, cross-validated on the accepted labels, has a macro-F1 at least the fallback's on them."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import KFold

    y = np.asarray(y)
    folds = KFold(n_splits=min(config.check_folds, len(y)), shuffle=True, random_state=0)  # seeded: same labels,
    guessed = np.empty(len(y), dtype=object)  # same decision
    for train, test in folds.split(x):
        if len(set(y[train])) < 2:
            guessed[test] = y[train][0]
            continue
        head = _fit_classifier(config, x[train], y[train])
        guessed[test] = [head.classes[int(np.argmax(head.proba(row)))] for row in x[test]]
    theirs = np.array([str(v) for v in fallback], dtype=object)
    ours = f1_score(y, guessed.astype(str), average="macro", zero_division=0)
    return ours >= f1_score(y, theirs.astype(str), average="macro", zero_division=0)


def _constant_head(dim: Dimension, value: str, n: int) -> ConstantHead:
    k = len(dim.values)
    probs = np.full(k, 1.0 / (n + k))
    probs[dim.values.index(value)] = (n + 1.0) / (n + k)
    return ConstantHead(tuple(dim.values), _frozen(probs))


@dataclass(frozen=True)
class Labelled:
    """One accepted example with what fitting needs: its embedding per field and the fallback's prediction."""

    example: Example
    vectors: Mapping[str, np.ndarray]  # field -> embedding (fields with text only)
    backup: Prediction


def fit_heads(
    schema: Schema,
    labelled: Sequence[Labelled],
    target_vectors: Mapping[str, np.ndarray],
    config: LearnerConfig,
) -> dict[str, Head]:
    """Fit every dimension's head on the accepted examples; a dimension left out is answered by the fallback."""
    heads: dict[str, Head] = {}
    alpha = config.fallback_weight

    def answered(dim: Dimension) -> list[Labelled]:
        return [
            item
            for item in labelled
            if item.example.labels.get(dim.name) is not None and _features_of(dim, item.vectors) is not None
        ]

    def features(dim: Dimension, head: SingleHead, items: Sequence[Labelled]) -> np.ndarray:
        x = np.stack([_features_of(dim, item.vectors) for item in items])
        return _feature_matrix(head, x, np.stack([answer_features(dim, item.backup) for item in items]))

    shared: dict[tuple[str, ...], list[Dimension]] = {}
    for dim in schema.of_kind("single"):
        items = answered(dim)
        seen = sorted({item.example.labels[dim.name] for item in items})
        if len(items) < config.min_labels or not seen:
            continue
        if len(seen) == 1:
            if config.single_class == "constant":
                heads[dim.name] = SingleHead(_constant_head(dim, seen[0], len(items)))
            continue
        if config.target_mode == "shared" and dim.target is not None:
            shared.setdefault(tuple(dim.values), []).append(dim)  # fitted below, with the other targets
            continue
        layout = SingleHead(ConstantHead((), np.zeros(0)), fallback_weight=alpha, trust=_trust(config, len(items)))
        y = [item.example.labels[dim.name] for item in items]
        x = features(dim, layout, items)
        if len(items) < config.check_below and not _beats_fallback(
            config, x, y, [i.backup.labels.get(dim.name) for i in items]
        ):
            continue  # on the labels so far the fallback answers this question better than a head would
        heads[dim.name] = replace(layout, head=_fit_classifier(config, x, y))
    for group in shared.values():
        # one head for every target with these labels, on stacked (text, target) rows
        layouts = [
            SingleHead(
                ConstantHead((), np.zeros(0)),
                fallback_weight=alpha,
                trust=_trust(config, len(answered(d))),
                target=_frozen(target_vectors[d.name]),
                target_index=i,
                n_targets=len(group),
            )
            for i, d in enumerate(group)
        ]
        blocks = [
            (features(d, layout, answered(d)), [it.example.labels[d.name] for it in answered(d)])
            for d, layout in zip(group, layouts, strict=True)
        ]
        head = _fit_classifier(config, np.vstack([b[0] for b in blocks]), [v for b in blocks for v in b[1]])
        for dim, layout in zip(group, layouts, strict=True):
            heads[dim.name] = replace(layout, head=head)
    for dim in schema.of_kind("multi"):
        items = answered(dim)
        if len(items) >= config.min_labels:
            heads[dim.name] = _fit_multi(dim, items, schema, config)
    for dim in schema.of_kind("spans"):
        span_head = _fit_span_head(dim, [item.example for item in labelled], config)
        if span_head is not None:
            heads[dim.name] = span_head
    return heads


def _fit_multi(dim: Dimension, items: Sequence[Labelled], schema: Schema, config: LearnerConfig) -> MultiHead:
    """One class-balanced binary logistic regression per label on [text, weight * fallback's decision]."""
    from sklearn.linear_model import LogisticRegression

    x = np.stack([_features_of(dim, item.vectors) for item in items])
    hints = np.stack([answer_features(dim, item.backup) for item in items]) * config.fallback_weight
    per_label: list[Any] = []
    n = len(items)
    for j, value in enumerate(dim.values):
        y = np.array([value in item.example.labels[dim.name] for item in items], dtype=int)
        positives = int(y.sum())
        if positives == 0:
            per_label.append(None)  # never ticked: the fallback decides
        elif positives == n:
            per_label.append((positives + 1.0) / (n + 2.0))  # never left unticked: on, Laplace-smoothed
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = LogisticRegression(
                    C=config.multi_c, class_weight="balanced", tol=config.multi_tol, max_iter=1000
                ).fit(np.hstack([x, hints[:, [j]]]), y)
            per_label.append(LinearHead(("0", "1"), _frozen(model.coef_), _frozen(model.intercept_)))
    return MultiHead(tuple(per_label), config.multi_threshold, config.fallback_weight, _trust(config, n))


def _trust(config: LearnerConfig, n: int) -> float:
    return n / (n + config.prior_labels) if config.prior_labels > 0 else 1.0


# ---------------------------------------------------------------------------------------------------------------
# the learner: annotation store + fit


@dataclass
class _TaskState:
    data: dict[str, Any] | None = None
    annotations: dict[Any, dict[str, Any]] = field(default_factory=dict)  # annotation id -> kept fields


class InstantLearner:
    """Keeps tasks and their annotations from webhooks or an export; `fit()` gives an InstantPredictor.

    Thread-safe: `apply_event` and `load_tasks` (webhook / start-up threads) and `fit` (a worker) may overlap.
    """

    def __init__(
        self,
        schema: Schema,
        embedder: Embedder,
        fallback: Predictor,
        config: LearnerConfig | None = None,
        policy: AcceptancePolicy | None = None,
    ) -> None:
        self.schema = schema
        self.embedder = embedder
        self.fallback = fallback
        self.config = config or LearnerConfig()
        self.policy = policy or AcceptancePolicy()
        self._lock = threading.Lock()
        self._fit_lock = threading.Lock()  # one fit at a time (the embedding cache and the last fit are shared)
        self._tasks: dict[Any, _TaskState] = {}
        self._task_of: dict[Any, Any] = {}  # annotation id -> task id (ANNOTATIONS_DELETED carries ids only)
        # ids of held annotations that a delete removed: an export read earlier must not bring them back. Only ids
        # the learner held go here, so a delete naming ids it never saw changes nothing.
        self._deleted: set[Any] = set()
        self._accepted: dict[Any, Example] = {}
        self._vectors: dict[str, np.ndarray] = {}  # text -> embedding, for the texts of accepted tasks
        self._backups: dict[str, Prediction] = {}  # task data -> the fallback's prediction of it
        self._backup_version: str | None = None
        self._target_vectors: dict[str, np.ndarray] | None = None
        self._last: InstantPredictor | None = None

    # -- events ---------------------------------------------------------------------------------------------

    def apply_event(self, payload: Mapping[str, Any]) -> bool:
        """Apply one Label Studio webhook payload; True when the accepted labels changed (then refit)."""
        if not isinstance(payload, Mapping):
            return False
        action = payload.get("action")
        with self._lock:
            if action in EDIT_ACTIONS:
                task = payload.get("task")
                return self._upsert([payload.get("annotation")], [task] if isinstance(task, Mapping) else [])
            if action == BULK_CREATED:
                # LS 1.23 sends {"annotation": [...], "task": [...]} (many=True under the singular keys)
                annotations = _as_list(payload.get("annotation", payload.get("annotations")))
                return self._upsert(annotations, _as_list(payload.get("task", payload.get("tasks"))))
            if action == DELETED:
                return self._delete(_as_list(payload.get("annotations", payload.get("annotation"))))
        return False

    def load_tasks(self, tasks: Iterable[Mapping[str, Any]]) -> bool:
        """Merge tasks of a Label Studio JSON export (as provision.export_tasks returns); True when labels changed.

        An annotation already held keeps whichever copy was updated last; one deleted here stays deleted.
        """
        changed = False
        with self._lock:
            for task in tasks:
                if not isinstance(task, Mapping) or task.get("id") is None:
                    continue
                # tasks without annotations are not kept: a big project has many
                annotations = [
                    {**a, "task": task["id"]} for a in _as_list(task.get("annotations")) if isinstance(a, Mapping)
                ]
                if annotations:
                    changed |= self._upsert(annotations, [task], newer_only=True)
        return changed

    def _upsert(self, annotations: list[Any], tasks: list[Any], newer_only: bool = False) -> bool:
        data_of = {t.get("id"): t.get("data") for t in tasks if isinstance(t, Mapping)}
        touched: set[Any] = set()
        for annotation in annotations:
            if not isinstance(annotation, Mapping) or annotation.get("id") is None:
                continue
            task_id = annotation.get("task")
            if isinstance(task_id, Mapping):
                task_id = task_id.get("id")
            if task_id is None and len(data_of) == 1:
                task_id = next(iter(data_of))
            if task_id is None or (newer_only and annotation["id"] in self._deleted):
                continue  # an export never brings back what a delete removed; a webhook after the delete may
            self._deleted.discard(annotation["id"])
            state = self._tasks.setdefault(task_id, _TaskState())
            if isinstance(data_of.get(task_id), Mapping):
                state.data = dict(data_of[task_id])
            kept = copy.deepcopy({k: annotation.get(k) for k in ANNOTATION_FIELDS})  # the caller's dict may change
            held = state.annotations.get(annotation["id"])
            if newer_only and held is not None and stamp(held) > stamp(kept):
                continue  # a webhook brought a newer copy than the export read earlier
            moved_from = self._task_of.get(annotation["id"])
            if moved_from is not None and moved_from != task_id and moved_from in self._tasks:
                self._tasks[moved_from].annotations.pop(annotation["id"], None)
                touched.add(moved_from)
            state.annotations[annotation["id"]] = kept
            self._task_of[annotation["id"]] = task_id
            touched.add(task_id)
        return self._reaccept(touched)

    def _delete(self, annotations: list[Any]) -> bool:
        touched: set[Any] = set()
        for annotation in annotations:
            annotation_id = annotation.get("id") if isinstance(annotation, Mapping) else annotation
            if not isinstance(annotation_id, int | str) or annotation_id not in self._task_of:
                continue  # only what the learner holds is removed; ids it never saw are not remembered
            self._deleted.add(annotation_id)
            task_id = self._task_of.pop(annotation_id, None)
            if task_id is not None and task_id in self._tasks:
                self._tasks[task_id].annotations.pop(annotation_id, None)
                touched.add(task_id)
        return self._reaccept(touched)

    def _reaccept(self, task_ids: Iterable[Any]) -> bool:
        """Run the acceptance policy again on the tasks that changed; True when any accepted label changed."""
        changed = False
        for task_id in task_ids:
            state = self._tasks.get(task_id)
            example = None
            if state is not None and state.data is not None and state.annotations:
                # id order: both routes (webhooks, export) hand the policy the same list in the same order
                ordered = [state.annotations[k] for k in sorted(state.annotations, key=_sort_key)]
                accepted = accept(
                    [{"id": task_id, "data": state.data, "annotations": ordered}], self.schema, self.policy
                )
                example = accepted.examples[0] if accepted.examples else None
            if state is not None and not state.annotations:
                del self._tasks[task_id]
            before = self._accepted.get(task_id)
            if example is None:
                self._accepted.pop(task_id, None)
            else:
                self._accepted[task_id] = example
            if _signature(before) != _signature(example):
                changed = True
        return changed

    # -- state ----------------------------------------------------------------------------------------------

    def accepted(self) -> dict[Any, Example]:
        """A copy of the accepted example of each task id (to tell which tasks an event newly accepted)."""
        with self._lock:
            return dict(self._accepted)

    def examples(self) -> list[Example]:
        """The accepted examples now, in a stable order (by task key, then id)."""
        with self._lock:
            examples = list(self._accepted.values())
        return sorted(examples, key=lambda e: (e.key, str(e.task_id)))

    def state_version(self, examples: Sequence[Example] | None = None) -> str | None:
        """The model_version a fit of these (default: the current) accepted labels gets; None without labels."""
        examples = self.examples() if examples is None else examples
        if not examples:
            return None
        digest = hashlib.sha256(
            "\x1f".join(
                [LEARNER_RECIPE, self.config.digest(), str(self.fallback.model_version), data_hash(examples)]
            ).encode()
        ).hexdigest()
        return f"instant-{self.schema.hash[:8]}-{digest[:10]}"

    # -- fit ------------------------------------------------------------------------------------------------

    def fit(self) -> InstantPredictor | None:
        """Fit on a snapshot of the accepted labels; None while no label is accepted. Same labels, same model."""
        with self._fit_lock:
            examples = self.examples()
            version = self.state_version(examples)
            if version is None:
                self._last = None
                return None
            if self._last is not None and self._last.model_version == version:
                return self._last
            labelled = self._prepare(examples)
            # one BLAS thread: on a busy 2-core machine, threaded BLAS spin-waits for cores the web server and
            # the encoder hold (a 384x384 solve: 0.2-0.7 s threaded under load, 0.07 s on one thread)
            with threadpool_limits(1):
                targets = self._targets() if self.config.target_mode == "shared" else {}
                heads = fit_heads(self.schema, labelled, targets, self.config)
            self._last = InstantPredictor(self.schema, self.embedder, self.fallback, heads, version, len(examples))
            return self._last

    def _prepare(self, examples: Sequence[Example]) -> list[Labelled]:
        """Embeddings and fallback predictions of the examples, computed once per text and kept between fits."""
        fields = _embedded_fields(self.schema)
        needed = {t for e in examples for f in fields if (t := _text_of(e.data, f)).strip()}
        fresh = sorted(needed - self._vectors.keys())
        if fresh:  # one embedder call for every text never seen (usually the one just annotated)
            embedded = np.asarray(self.embedder.embed(fresh), dtype=np.float64)
            for text, vector in zip(fresh, embedded, strict=True):
                self._vectors[text] = _frozen(vector)
        for text in self._vectors.keys() - needed:
            del self._vectors[text]
        if self._backup_version != self.fallback.model_version:
            self._backups.clear()
            self._backup_version = self.fallback.model_version
        keys = [_data_key(e.data) for e in examples]
        missing = {k: e.data for k, e in zip(keys, examples, strict=True) if k not in self._backups}
        if missing:
            for key, prediction in zip(missing, self.fallback.predict(list(missing.values())), strict=True):
                self._backups[key] = prediction
        for key in self._backups.keys() - set(keys):
            del self._backups[key]
        return [
            Labelled(e, {f: self._vectors[t] for f in fields if (t := _text_of(e.data, f)).strip()}, self._backups[k])
            for e, k in zip(examples, keys, strict=True)
        ]

    def _targets(self) -> dict[str, np.ndarray]:
        if self._target_vectors is None:
            dims = [d for d in self.schema.of_kind("single") if d.target is not None]
            texts = [f"{d.target.name}: {d.target.description}".strip(": ") for d in dims if d.target]
            embedded = np.asarray(self.embedder.embed(texts), dtype=np.float64) if texts else []
            self._target_vectors = {d.name: _frozen(v) for d, v in zip(dims, embedded, strict=True)}
        return self._target_vectors


# ---------------------------------------------------------------------------------------------------------------
# background worker


class LearnerWorker:
    """Refits in a background thread: `submit()` after an event that changed labels; events that arrive during
    a fit are coalesced into one more fit. `on_fitted(predictor)` gets each new version (None: no label left).
    """

    def __init__(
        self,
        learner: InstantLearner,
        on_fitted: Callable[[InstantPredictor | None], None],
        name: str = "instant-learner",
    ) -> None:
        self.learner = learner
        self.on_fitted = on_fitted
        self._name = name
        self._cond = threading.Condition()
        self._requested = 0  # submit() tickets handed out
        self._done = 0  # the highest ticket a finished fit covers
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._delivered: str | None = None
        self.fits = 0
        self.last_error: str | None = None
        self.last_fit_seconds: float | None = None

    def start(self) -> LearnerWorker:
        """Start the thread (idempotent); returns self."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return self

    def submit(self) -> int:
        """Ask for a refit; returns a ticket for `wait`. Never blocks."""
        with self._cond:
            self._requested += 1
            self._cond.notify_all()
            return self._requested

    def wait(self, ticket: int | None = None, timeout: float | None = None) -> bool:
        """Block until a fit that saw every event up to `ticket` (default: the latest) has finished."""
        with self._cond:
            wanted = self._requested if ticket is None else ticket
            return self._cond.wait_for(lambda: self._done >= wanted or self._stopping, timeout)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread after the fit in progress, if any."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def __enter__(self) -> LearnerWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        import time

        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._requested > self._done)
                if self._stopping:
                    return
                ticket = self._requested  # everything submitted so far is in the snapshot this fit reads
            started = time.perf_counter()
            try:
                predictor = self.learner.fit()
                version = predictor.model_version if predictor is not None else None
                if version != self._delivered:
                    self.on_fitted(predictor)
                    self._delivered = version
                self.last_error = None
            except Exception as error:  # keep serving the last good model; the next event tries again
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("instant learner fit failed")
            self.last_fit_seconds = time.perf_counter() - started
            with self._cond:
                self.fits += 1
                self._done = max(self._done, ticket)
                self._cond.notify_all()


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _embedded_fields(schema: Schema) -> list[str]:
    """The task fields whose embeddings the choice heads read (a paired dimension's two)."""
    return list(dict.fromkeys(name for d in schema.dimensions if d.kind != "spans" for name in d.reads))


def _features_of(dim: Dimension, vectors: Mapping[str, Any]) -> np.ndarray | None:
    """What a choice head reads from one task's field embeddings: the field's, or a paired dimension's pair features
    (training/pairs.py); None when a field it reads has no text."""
    present = {name: np.asarray(v)[None, :] for name, v in vectors.items() if v is not None}
    x = embedding_features(present, reading(dim.field or "", dim.pair_with))
    return None if x is None else x[0]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Mapping) or not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return [value]
    return list(value)


def _sort_key(annotation_id: Any) -> tuple[int, Any]:
    return (0, annotation_id) if isinstance(annotation_id, int) else (1, str(annotation_id))


def _signature(example: Example | None) -> str | None:
    if example is None:
        return None
    return json.dumps([example.key, example.data, example.labels], sort_keys=True, default=str)


def _data_key(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=str)


def _text_of(task: Mapping[str, Any], name: str | None) -> str:
    value = task.get(name) if isinstance(task, Mapping) and name else None
    return value if isinstance(value, str) else ""
