"""Dimensions that read two task fields (schema `pair_with`): what the closed-form heads read for them.

A body's stance toward its headline, or evidence toward a claim, lies in how the two texts relate, not in either
alone: the same body agrees with one headline and is unrelated to the next. So a paired dimension's heads read both
texts and how they meet, the way the strong FNC-1 baselines did (UCL's: term vectors of both texts and their cosine;
the organisers': word overlap):

  embeddings  [text, paired, text * paired, |text - paired|, scale * cosine]  (InferSent's pair features)
  n-grams     [text, paired, text * paired per n-gram (the shared n-grams, IDF-weighted), scale * overlap]

on one n-gram vocabulary fitted on both fields, so a shared n-gram is one column. The encoder's own heads read the
pair inside the encoder instead (training/modeling.py, a view with `pair_field`). Used by the trained model's
companions (training/ngram.py, training/embedding_heads.py) and by the backend's instant learner, so the rule is
written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

SEPARATOR = ">"  # "headline>body": the paired field, then the text (the view id of the encoder's pair pass)
SIMILARITY_SCALE = 10.0  # the cosine and overlap columns, scaled so a small weight on them is cheap under L2


def reading(field: str, pair_with: str | None = None) -> str:
    """What a dimension's heads read: its field, or "<pair_with>><field>" for a paired dimension."""
    return f"{pair_with}{SEPARATOR}{field}" if pair_with else field


def fields_of(key: str) -> tuple[str, ...]:
    """The task fields of a `reading` key: (field,) or (paired field, field)."""
    return tuple(key.split(SEPARATOR))


def embedding_features(vectors: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    """The rows' features for `key` from per-field L2-normalised embeddings [rows, hidden] (None: a field is
    missing)."""
    parts = fields_of(key)
    if any(part not in vectors for part in parts):
        return None
    if len(parts) == 1:
        return np.asarray(vectors[key])
    return embedding_pair(vectors[parts[0]], vectors[parts[1]])


def embedding_pair(paired: np.ndarray, text: np.ndarray) -> np.ndarray:
    """[rows, 4 x hidden + 1] pair features of L2-normalised embeddings of the paired field and the text."""
    paired, text = np.asarray(paired, dtype=np.float64), np.asarray(text, dtype=np.float64)
    product = paired * text
    cosine = product.sum(axis=1, keepdims=True)
    return np.hstack([text, paired, product, np.abs(text - paired), SIMILARITY_SCALE * cosine])


def ngram_features(paired: Any, text: Any) -> Any:
    """CSR features of n-gram matrices (same columns, blocks L2-normalised) of the paired field and the text."""
    from scipy import sparse

    shared = text.multiply(paired).tocsr()
    overlap = sparse.csr_matrix(np.asarray(shared.sum(axis=1)) * SIMILARITY_SCALE)
    return sparse.hstack([text, paired, shared, overlap], format="csr")
