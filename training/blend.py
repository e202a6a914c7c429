"""How a trained model's parts make the served probabilities: a weighted average per choice dimension.

A trained model has up to three answers per choice dimension: its encoder's heads (calibrated), the n-gram heads
(training/ngram.py) and the sentence-embedding heads (training/embedding_heads.py). Each companion has a weight;
the encoder gets what is left, 1 - the companions' weights, for the dimensions those companions answer. A companion
without a head for a dimension (too few labels) leaves its share to the encoder there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

Part = tuple[float, Mapping[str, np.ndarray]]  # (weight, probabilities per dimension name)


def blend(encoder: Mapping[str, np.ndarray], parts: Sequence[Part]) -> dict[str, np.ndarray]:
    """Per dimension of `encoder`: (1 - sum of the weights of the parts that answer it) x the encoder's probabilities
    + each such part's weight x its probabilities."""
    out: dict[str, np.ndarray] = {}
    for name, p in encoder.items():
        mine = [(w, probs[name]) for w, probs in parts if w > 0 and name in probs]
        if not mine:
            out[name] = p
            continue
        rest = max(0.0, 1.0 - sum(w for w, _ in mine))
        mixed = rest * np.asarray(p, dtype=np.float64)
        for w, q in mine:
            mixed = mixed + w * np.asarray(q, dtype=np.float64)
        out[name] = mixed
    return out


def encoder_unused(names: Collection[str], parts: Sequence[tuple[float, Collection[str]]]) -> set[str]:
    """The dimensions among `names` whose encoder probabilities `blend` weighs 0: the companions with a head for the
    dimension (`parts`: each companion's weight and the dimensions it has heads for) weigh 1 between them."""
    return {name for name in names if sum(w for w, heads in parts if w > 0 and name in heads) >= 1.0 - 1e-9}
