"""The n-gram companion of a trained model: TF-IDF word and character n-grams -> class-balanced logistic heads.

A linear model on sparse n-grams is the strong baseline of stance and framing work (the SemEval-2016 organisers'
SVM beat most neural systems), and it errs differently from a sentence encoder: it reads names, hashtags and
slogans literally. So every trained model carries one head per choice dimension on these features, fitted in
seconds on the same training rows, and its probabilities are averaged with the encoder's (training/blend.py). On
SemEval-2016 5-fold CV x 3 seeds the average gained 3-4 points of F_avg over either part (BENCHMARKS.md, "Model
quality").

Features: word 1-2-grams and character 2-5-grams within word boundaries, lower-cased, sublinear TF, IDF from the
training texts, each block L2-normalised (scikit-learn's TfidfVectorizer, hashed: HashingVectorizer keeps no
vocabulary, so the fitted state is a few arrays). Only the columns seen in training are kept; unseen n-grams are
dropped at prediction time, as a vocabulary would. A dimension that reads two fields (schema `pair_with`) reads
both and their shared n-grams (training/pairs.py). Saved as plain arrays in `ngram.npz` (no pickle: a model folder
is data, never code).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.pairs import fields_of, ngram_features, reading

NGRAM_FILE = "ngram.npz"
N_FEATURES = 2**20  # hash space per block: few collisions at the vocabulary sizes of a project
BLOCKS = (("word", (1, 2)), ("char_wb", (2, 5)))
C_SINGLE = 10.0  # inverse L2 strength, chosen on SemEval-2016 CV (bench/train_semeval2016.py --cv)
C_MULTI = 10.0
MIN_ROWS = 2  # a head needs this many labelled rows, with at least two classes


def _vectorizers() -> list[Any]:
    from sklearn.feature_extraction.text import HashingVectorizer

    return [
        HashingVectorizer(analyzer=analyzer, ngram_range=ngrams, n_features=N_FEATURES, alternate_sign=False, norm=None)
        for analyzer, ngrams in BLOCKS
    ]


@dataclass(frozen=True)
class NgramFeatures:
    """The fitted TF-IDF transform of one text field: kept hashed columns per block and their IDF weights."""

    columns: tuple[np.ndarray, ...]  # per block: sorted hash indices seen in training
    idf: tuple[np.ndarray, ...]  # per block: IDF of those columns

    @classmethod
    def fit(cls, texts: Sequence[str]) -> NgramFeatures:
        """IDF (scikit-learn's smooth form) over the columns that occur in `texts`."""
        columns, idf = [], []
        n = len(texts)
        distinct, index = _distinct(texts)
        repeats = np.bincount(index, minlength=len(distinct))  # a text's document frequency counts every copy
        for vectorizer in _vectorizers():
            present = vectorizer.transform(distinct)
            present.data[:] = 1
            df = np.asarray(present.T @ repeats).ravel()
            seen = np.flatnonzero(df)
            columns.append(seen.astype(np.int64))
            idf.append((np.log((1.0 + n) / (1.0 + df[seen])) + 1.0).astype(np.float32))
        return cls(tuple(columns), tuple(idf))

    @property
    def width(self) -> int:
        """The number of feature columns."""
        return int(sum(len(c) for c in self.columns))

    def transform(self, texts: Sequence[str]) -> Any:
        """A CSR matrix [len(texts), width]: sublinear TF x IDF, each block L2-normalised. Each distinct text is
        analysed once (a body paired with many headlines)."""
        from scipy import sparse
        from sklearn.preprocessing import normalize

        distinct, index = _distinct(texts)
        blocks = []
        for vectorizer, columns, idf in zip(_vectorizers(), self.columns, self.idf, strict=True):
            counts = vectorizer.transform(distinct).tocsc()[:, columns].tocsr().astype(np.float64)
            counts.data = np.log1p(counts.data)
            blocks.append(normalize(counts.multiply(idf.astype(np.float64)).tocsr()))
        return sparse.hstack(blocks, format="csr")[index]


def with_hints(x: Any, hints: np.ndarray | None) -> Any:
    """A head's features `x` (dense, or sparse n-grams) with the cold start's weighted answers as columns after
    them (training/prior.py); `x` itself without hints."""
    if hints is None:
        return x
    from scipy import sparse

    if sparse.issparse(x):
        return sparse.hstack([x, sparse.csr_matrix(np.asarray(hints, dtype=np.float64))], format="csr")
    return np.hstack([x, hints])


def served_hints(
    companion: str, name: str, hinted: Collection[str], hints: Mapping[str, np.ndarray] | None
) -> np.ndarray | None:
    """What head `name` of `companion` reads of the cold start's answers when it predicts: nothing if it was fitted
    without them (not in `hinted`); an error if it was fitted with them and `hints` lacks them."""
    if name not in hinted:
        return None
    if hints is None or name not in hints:
        raise ValueError(f"{companion} head {name!r} reads the cold start's answers, and none were given")
    return hints[name]


def _distinct(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts in first-seen order, and each text's position among them."""
    position: dict[str, int] = {}
    index = np.array([position.setdefault(text, len(position)) for text in texts], dtype=np.int64)
    return list(position), index


@dataclass(frozen=True)
class LinearHead:
    """A fitted linear head of one dimension: softmax (single) or one sigmoid per label (multi), on any features
    (n-grams here, sentence embeddings in training/embedding_heads.py)."""

    name: str
    kind: str  # "single" | "multi"
    field: str  # what it reads: a text field, or a paired reading "<paired>><field>" (training/pairs.py)
    labels: tuple[str, ...]  # the dimension's labels, in the model's order
    coef: np.ndarray  # [labels, width]
    intercept: np.ndarray  # [labels]
    fitted: np.ndarray  # [labels] bool: False where no head could learn the label (its score is the prior)
    prior: np.ndarray  # [labels] share of training rows with the label

    def proba(self, x: Any) -> np.ndarray:
        """Probabilities [rows, labels] for a feature matrix."""
        z = np.asarray(x @ self.coef.T, dtype=np.float64) + self.intercept
        if self.kind == "single":
            z[:, ~self.fitted] = -np.inf
            z -= z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        return np.where(self.fitted, p, self.prior)


class NgramModel:
    """N-gram heads for the choice dimensions of a model, one feature transform per text field."""

    def __init__(
        self,
        features: Mapping[str, NgramFeatures],
        heads: Mapping[str, LinearHead],
        weight: float = 0.5,
        hinted: Sequence[str] = (),
    ) -> None:
        self.features = dict(features)
        self.heads = dict(heads)
        self.weight = weight  # of the n-gram probabilities in the served blend (training/blend.py)
        self.hinted = frozenset(hinted)  # heads that also read the cold start's answer (training/prior.py)

    @classmethod
    def fit(
        cls,
        dimensions: Sequence[Mapping[str, Any]],
        rows: Sequence[Mapping[str, Any]],
        weight: float = 0.5,
        hints: Mapping[str, np.ndarray] | None = None,
        min_ticks: int = 1,
    ) -> NgramModel:
        """Fit on dataset rows (a column per dimension, None when unanswered) for every choice dimension; `hints`:
        the cold start's weighted answers per dimension ([rows, labels], ColdStartPrior.features), read beside the
        n-grams (none: not read); `min_ticks`: the ticked rows a multi-choice label needs for a head of its own."""
        hints = hints or {}
        dims = [d for d in dimensions if d["kind"] in ("single", "multi")]
        features: dict[str, NgramFeatures] = {}
        for key in sorted({reading(d["field"], d.get("pair_with")) for d in dims}):
            # a paired reading fits one vocabulary on both fields, so an n-gram they share is one column
            texts = [str(row.get(name) or "") for name in fields_of(key) for row in rows]
            if not any(texts):
                continue
            features[key] = NgramFeatures.fit(texts)
        model = cls(features, {}, weight)
        matrices = model._matrices(rows)
        for dim in dims:
            key = reading(dim["field"], dim.get("pair_with"))
            if key not in features:
                continue
            have = [i for i, row in enumerate(rows) if row.get(dim["name"]) is not None]
            if len(have) < MIN_ROWS:
                continue
            answers = [rows[i][dim["name"]] for i in have]
            c = C_SINGLE if dim["kind"] == "single" else C_MULTI
            hinted = hints[dim["name"]][have] if dim["name"] in hints else None
            head = fit_head({**dim, "field": key}, matrices[key][have], answers, c, hinted, min_ticks)
            if head is not None:
                model.heads[dim["name"]] = head
        model.hinted = frozenset(name for name in model.heads if name in hints)
        return model

    def _matrices(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per reading key, the feature matrix of `records`."""
        out = {}
        for key, fitted in self.features.items():
            columns = [fitted.transform([str(r.get(name) or "") for r in records]) for name in fields_of(key)]
            out[key] = columns[0] if len(columns) == 1 else ngram_features(*columns)
        return out

    def proba(
        self, records: Sequence[Mapping[str, Any]], hints: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Probabilities per fitted head for task `data` dicts (and the cold start's weighted answers for them, for
        the heads fitted with those)."""
        matrices = self._matrices(records)
        return {
            name: head.proba(with_hints(matrices[head.field], served_hints("n-gram", name, self.hinted, hints)))
            for name, head in self.heads.items()
        }

    def save(self, path: str | Path) -> None:
        """Write every array to one .npz file (and the head descriptions as JSON inside it)."""
        arrays: dict[str, np.ndarray] = {}
        fields = sorted(self.features)
        for i, field in enumerate(fields):
            fitted = self.features[field]
            for b, (columns, idf) in enumerate(zip(fitted.columns, fitted.idf, strict=True)):
                arrays[f"f{i}_b{b}_columns"], arrays[f"f{i}_b{b}_idf"] = columns, idf
        heads = heads_to_arrays(self.heads.values(), arrays)
        meta = {
            "fields": fields,
            "blocks": len(BLOCKS),
            "heads": heads,
            "n_features": N_FEATURES,
            "weight": self.weight,
            "hinted": sorted(self.hinted),
        }
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> NgramModel:
        """Read a model written by `save` (allow_pickle stays off)."""
        with np.load(path, allow_pickle=False) as data:
            meta = npz_meta(data)
            features = {
                field: NgramFeatures(
                    tuple(data[f"f{i}_b{b}_columns"] for b in range(meta["blocks"])),
                    tuple(data[f"f{i}_b{b}_idf"] for b in range(meta["blocks"])),
                )
                for i, field in enumerate(meta["fields"])
            }
            heads = heads_from_arrays(meta["heads"], data)
        return cls(features, heads, float(meta["weight"]), meta.get("hinted", ()))


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """One compressed .npz of plain arrays, with `meta` as JSON bytes under "meta" (read back by `npz_meta`)."""
    arrays = {**arrays, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def npz_meta(data: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The "meta" JSON of a file `write_npz` wrote."""
    return json.loads(bytes(data["meta"]).decode())


def heads_to_arrays(heads: Iterable[LinearHead], arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Put each head's arrays into `arrays` (keys h<j>_...) and return the heads' JSON descriptions, in order."""
    described = []
    for j, head in enumerate(heads):
        described.append({"name": head.name, "kind": head.kind, "field": head.field, "labels": list(head.labels)})
        arrays[f"h{j}_coef"] = head.coef.astype(np.float32)
        arrays[f"h{j}_intercept"], arrays[f"h{j}_fitted"] = head.intercept, head.fitted
        arrays[f"h{j}_prior"] = head.prior
    return described


def heads_from_arrays(described: Sequence[Mapping[str, Any]], data: Mapping[str, np.ndarray]) -> dict[str, LinearHead]:
    """The heads `heads_to_arrays` wrote, by name."""
    return {
        h["name"]: LinearHead(
            h["name"],
            h["kind"],
            h["field"],
            tuple(h["labels"]),
            data[f"h{j}_coef"].astype(np.float64),
            data[f"h{j}_intercept"],
            data[f"h{j}_fitted"],
            data[f"h{j}_prior"],
        )
        for j, h in enumerate(described)
    }


def fit_head(
    dim: Mapping[str, Any],
    x: Any,
    answers: Sequence[Any],
    c: float,
    hints: np.ndarray | None = None,
    min_ticks: int = 1,
) -> LinearHead | None:
    """A class-balanced logistic head of a choice dimension on features `x` (one row per answer); None when nothing
    can be learnt (a single choice with one class seen, a multi choice with no label both ticked at least
    `min_ticks` times and unticked).

    `hints`: the cold start's weighted answers for the same rows, one column per label, read after `x`
    (`with_hints`, as when served). A multi-choice label reads only its own: on the sample dev set's frames, each
    label reading all 14 cost 0.05 micro-F1 at 20-80 labels (0.705 / 0.759 / 0.771 against 0.755 / 0.792 / 0.817;
    BENCHMARKS.md, issue 15 round 5), as a label learnt from ten ticks would otherwise lean on the cold start's
    other labels."""
    features = with_hints(x, hints)
    if dim["kind"] == "single":
        return _fit_single(dim, features, answers, c)
    return _fit_multi(dim, features, answers, c, 0 if hints is None else hints.shape[1], min_ticks)


def _fit_single(dim: Mapping[str, Any], x: Any, answers: Sequence[str], c: float) -> LinearHead | None:
    from sklearn.linear_model import LogisticRegression

    labels = list(dim["labels"])
    seen = sorted({labels.index(a) for a in answers})
    if len(seen) < 2:
        return None
    y = np.array([labels.index(a) for a in answers])
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
    coef = np.zeros((len(labels), x.shape[1]))
    intercept = np.zeros(len(labels))
    if len(seen) == 2:  # scikit-learn keeps one row for two classes: the positive one is classes_[1]
        coef[seen[1]], intercept[seen[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[seen], intercept[seen] = model.coef_, model.intercept_
    fitted = np.isin(np.arange(len(labels)), seen)
    prior = np.bincount(y, minlength=len(labels)) / len(y)
    return LinearHead(dim["name"], "single", dim["field"], tuple(labels), coef, intercept, fitted, prior)


def _fit_multi(
    dim: Mapping[str, Any], x: Any, answers: Sequence[Sequence[str]], c: float, hints: int = 0, min_ticks: int = 1
) -> LinearHead | None:
    """One binary head per label; with `hints` (the last that many columns, one per label), label j reads the
    columns before them and hint column j: the others keep a zero weight."""
    from sklearn.linear_model import LogisticRegression

    labels = list(dim["labels"])
    y = np.array([[label in answer for label in labels] for answer in answers], dtype=int)
    coef = np.zeros((len(labels), x.shape[1]))
    intercept = np.zeros(len(labels))
    fitted = np.zeros(len(labels), dtype=bool)
    base = x.shape[1] - hints
    for j in range(len(labels)):
        if max(1, min_ticks) <= y[:, j].sum() < len(y):
            columns = np.r_[0:base, base + j] if hints else np.arange(x.shape[1])
            model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x[:, columns], y[:, j])
            coef[j, columns], intercept[j], fitted[j] = model.coef_[0], model.intercept_[0], True
    if not fitted.any():
        return None
    return LinearHead(dim["name"], "multi", dim["field"], tuple(labels), coef, intercept, fitted, y.mean(axis=0))
