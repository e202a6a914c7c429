"""The simple baselines every quality figure stands next to, fitted on a fold's training examples.

  majority     per dimension, the most common answer (multi choice: the labels ticked on more than half the rows)
  ngram_svm    per dimension, a linear SVM on TF-IDF word 1-3-grams and character 2-5-grams, class-balanced (the
               SemEval-2016 organisers' baseline)
  frozen_lr    per dimension, a class-balanced logistic regression on the frozen encoder's mean-pooled embedding

Each is a `crossval.Method`: (schema, train examples, test examples, seed) -> {name: one Prediction per test
example}. Span dimensions get no spans from any of them (0 F1: a baseline marks nothing). A paired dimension (schema
`pair_with`) reads both fields and how they meet, as the trained model's heads do (training/pairs.py): a baseline
blind to the headline could not tell "unrelated" at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from annotation_config.regions import Prediction
from annotation_config.schema import Schema
from training.data import Example
from training.pairs import embedding_pair, fields_of, ngram_features, reading


def majority(schema: Schema, train: Sequence[Example], test: Sequence[Example], seed: int) -> dict[str, list]:
    """The most common answer per dimension, for every test example."""
    labels = most_common_answers(schema, [e.labels for e in train])
    return {"majority": [Prediction(labels=dict(labels)) for _ in test]}


def most_common_answers(schema: Schema, labelled: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per choice dimension answered in `labelled` (label dicts, None when unanswered): its most common answer."""
    labels: dict[str, Any] = {}
    for dim in schema.dimensions:
        answers = [row[dim.name] for row in labelled if row.get(dim.name) is not None]
        if not answers or dim.kind == "spans":
            continue
        if dim.kind == "single":
            labels[dim.name] = Counter(answers).most_common(1)[0][0]
        else:
            ticked = Counter(v for answer in answers for v in answer)
            labels[dim.name] = [v for v in dim.values if ticked[v] * 2 > len(answers)]
    return labels


def ngram_svm(schema: Schema, train: Sequence[Example], test: Sequence[Example], seed: int) -> dict[str, list]:
    """A linear SVM per dimension on word and character n-grams of the dimension's text field."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    def features(texts: Sequence[str]) -> Any:
        union = make_union(
            TfidfVectorizer(ngram_range=(1, 3), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
        )
        union.fit(texts)
        return union.transform

    def fit(x: Any, y: Any) -> Any:
        from sklearn.svm import LinearSVC

        return LinearSVC(C=0.5, class_weight="balanced").fit(x, y)

    return {"n-gram SVM": _per_dimension(schema, train, test, features, fit, ngram_features)}


def frozen_lr(
    schema: Schema, train: Sequence[Example], test: Sequence[Example], seed: int, encoder: str | None = None
) -> dict[str, list]:
    """Logistic regression per dimension on the frozen encoder's mean-pooled, L2-normalised embeddings."""
    cache = _EMBEDDINGS.setdefault(str(encoder), {})  # the same texts recur in every fold and seed

    def features(texts: Sequence[str]) -> Any:
        def embed(batch: Sequence[str]) -> np.ndarray:
            missing = [t for t in dict.fromkeys(batch) if t not in cache]
            if missing:
                cache.update(zip(missing, frozen_embeddings(missing, encoder), strict=True))
            return np.stack([cache[t] for t in batch])

        return embed

    def fit(x: Any, y: Any) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=3.0, class_weight="balanced", max_iter=2000).fit(x, y)

    return {"frozen-encoder LR": _per_dimension(schema, train, test, features, fit, embedding_pair)}


_EMBEDDINGS: dict[str, dict[str, np.ndarray]] = {}


def frozen_embeddings(texts: Sequence[str], encoder: str | None = None, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of the (not fine-tuned) encoder, [len(texts), hidden]."""
    from transformers import AutoModel, AutoTokenizer

    from training.embedding_heads import text_embeddings
    from training.encoder import resolve_encoder_path
    from training.modeling import quiet_transformers

    path = resolve_encoder_path(encoder)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
    return text_embeddings(model, tokenizer, texts, batch_size)


def _per_dimension(
    schema: Schema,
    train: Sequence[Example],
    test: Sequence[Example],
    features: Callable[[Sequence[str]], Callable[[Sequence[str]], Any]],
    fit: Callable[[Any, Any], Any],
    pair: Callable[[Any, Any], Any],
) -> list[Prediction]:
    """One classifier per choice dimension (one per label for multi choice) on `features` of its text field, or on
    `pair`(paired field's, text's features) for a paired dimension."""
    predictions = [Prediction(labels={}) for _ in test]
    transforms: dict[str, Callable[[Sequence[str]], Any]] = {}
    for dim in schema.dimensions:
        if dim.kind == "spans":
            continue
        rows = [e for e in train if e.labels.get(dim.name) is not None]
        key = reading(dim.field or schema.data.text, dim.pair_with)
        if not rows:
            continue
        if key not in transforms:  # a paired reading: one transform fitted on both fields
            transforms[key] = features([str(e.data.get(f) or "") for f in fields_of(key) for e in train])
        transform = transforms[key]

        def x_of(examples: Sequence[Example], transform: Callable = transform, key: str = key) -> Any:
            parts = [transform([str(e.data.get(f) or "") for e in examples]) for f in fields_of(key)]
            return parts[0] if len(parts) == 1 else pair(*parts)

        x_train, x_test = x_of(rows), x_of(test)
        if dim.kind == "single":
            answers = [e.labels[dim.name] for e in rows]
            one = len(set(answers)) < 2
            guessed = [answers[0]] * len(test) if one else list(fit(x_train, answers).predict(x_test))
            for prediction, answer in zip(predictions, guessed, strict=True):
                prediction.labels[dim.name] = str(answer)
            continue
        chosen: list[list[str]] = [[] for _ in test]
        for value in dim.values:
            y = [int(value in e.labels[dim.name]) for e in rows]
            ticked = fit(x_train, y).predict(x_test) if 0 < sum(y) < len(y) else [y[0]] * len(test)
            for answer, on in zip(chosen, ticked, strict=True):
                if on:
                    answer.append(value)
        for prediction, answer in zip(predictions, chosen, strict=True):
            prediction.labels[dim.name] = answer
    return predictions
