"""How a trained model's parts make the served probabilities: a weighted average per choice dimension.

A trained model has up to three answers per choice dimension: its encoder's heads (calibrated), the n-gram heads
(training/ngram.py) and the sentence-embedding heads (training/embedding_heads.py). Each companion has a weight;
the encoder gets what is left, 1 - the companions' weights, for the dimensions those companions answer. A companion
without a head for a dimension (too few labels) leaves its share to the encoder there. On a multi-choice dimension,
whose labels are scored one by one, a companion that has a head but did not learn a label (too few ticks) leaves
that label's share to the companions that did: its score there is only the label's base rate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

Part = tuple[float, Mapping[str, np.ndarray]]  # (weight, probabilities per dimension name)


def blend(
    encoder: Mapping[str, np.ndarray],
    parts: Sequence[Part],
    learnt: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Per dimension of `encoder`: (1 - sum of the weights of the parts that answer it) x the encoder's probabilities
    + each such part's weight x its probabilities. `learnt`: per part, for its multi-choice dimensions, which labels
    it learnt ([labels] bool); a part's weight on a label it did not learn goes to the parts that did, in proportion
    to their weights (none learnt it: unchanged)."""
    out: dict[str, np.ndarray] = {}
    masks = list(learnt) if learnt is not None else [{} for _ in parts]
    for name, p in encoder.items():
        pairs = zip(parts, masks, strict=True)
        mine = [(w, probs[name], mask.get(name)) for (w, probs), mask in pairs if w > 0 and name in probs]
        if not mine:
            out[name] = p
            continue
        total = sum(w for w, _, _ in mine)
        width = np.shape(p)[-1]
        given = np.array([np.full(width, w) for w, _, _ in mine])  # [parts, labels]
        learnt_by = np.array([np.ones(width) if m is None else np.asarray(m, dtype=np.float64) for _, _, m in mine])
        shares = given * learnt_by
        have = shares.sum(axis=0)
        weights = np.where(have > 0, shares * total / np.where(have > 0, have, 1.0), given)
        mixed = max(0.0, 1.0 - total) * np.asarray(p, dtype=np.float64)
        for weight, (_, q, _) in zip(weights, mine, strict=True):
            mixed = mixed + weight * np.asarray(q, dtype=np.float64)
        out[name] = mixed
    return out


def encoder_unused(names: Collection[str], parts: Sequence[tuple[float, Collection[str]]]) -> set[str]:
    """The dimensions among `names` whose encoder probabilities `blend` weighs 0: the companions with a head for the
    dimension (`parts`: each companion's weight and the dimensions it has heads for) weigh 1 between them."""
    return {name for name in names if sum(w for w, heads in parts if w > 0 and name in heads) >= 1.0 - 1e-9}
