"""The sentence-embedding companion of a trained model: class-balanced logistic heads on the encoder's embedding.

On SemEval-2016 5-fold CV x 3 seeds, a logistic regression on the frozen all-MiniLM-L6-v2 mean-pooled embedding
beat both the fine-tuned encoder's own heads and an n-gram SVM, and its average with the n-gram heads beat every
single part by 3 points (BENCHMARKS.md, "Model quality"): a closed-form fit on a sentence embedding is strong with
tens to thousands of labels, and it takes seconds. So a trained model carries one such head per choice dimension,
fitted on the training rows' embeddings of the dimension's text field (the text alone, never the target: a stance
dimension has its own head), and its probabilities join the served blend (training/blend.py).

The embedding is the mean-pooled, L2-normalised last hidden state of the model's own encoder over the text
(`text_embeddings`): with `--epochs 0` that is the pretrained encoder, exactly the frozen-encoder baseline's
features. Each head also reads, per label, the text's highest cosine similarity to the label's description in the
schema (`Dimension.prototype_texts`: its definition and cue phrases, embedded by the same encoder), scaled up so a
small weight on it is cheap under the L2 penalty: the zero-shot prior the cold start uses, which the head learns
to trust or not from the labels (single choice only, see `label_prototypes`). On the sample dev set it lifted the
mean macro-F1 of the single-choice questions at 20 / 40 / 80 labels from 0.51 / 0.55 / 0.62 to 0.63 / 0.65 / 0.68
(a scratch run, BENCHMARKS.md; the cue phrases were tuned on that set, so part of the gain may not carry over). Saved
as plain arrays in `embedding_heads.npz` (no pickle), the label descriptions' embeddings with them, so serving needs
no schema. Where the cold start knows something, a head also reads its answer for the text (training/prior.py:
the instant learner's stacking).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from annotation_config.schema import Schema
from training.ngram import (
    MIN_ROWS,
    LinearHead,
    fit_head,
    heads_from_arrays,
    heads_to_arrays,
    npz_meta,
    served_hints,
    with_hints,
    write_npz,
)
from training.pairs import embedding_features, fields_of, reading

EMBEDDING_FILE = "embedding_heads.npz"
C_EMBEDDING = 3.0  # inverse L2 strength, chosen on SemEval-2016 CV (1, 3 and 10 tried; BENCHMARKS.md)
MAX_LENGTH = 256  # tokens of text per embedding (the frozen-encoder baseline's length)
PROTOTYPE_SCALE = 10.0  # of the label-description similarities (3 and 10 tried on the sample dev set)


@dataclass(frozen=True)
class Prototypes:
    """A dimension's label descriptions as embeddings, each with the index of the label it describes."""

    label_index: np.ndarray  # [P] int
    vectors: np.ndarray  # [P, hidden], L2-normalised

    def similarities(self, embeddings: np.ndarray, n_labels: int) -> np.ndarray:
        """[rows, n_labels]: per label, the highest cosine of each row's embedding to one of its descriptions (0 for
        a label without one)."""
        cosines = np.asarray(embeddings, dtype=np.float64) @ self.vectors.T.astype(np.float64)
        out = np.zeros((cosines.shape[0], n_labels))
        for j in range(n_labels):
            mine = self.label_index == j
            if mine.any():
                out[:, j] = cosines[:, mine].max(axis=1)
        return out


def label_prototypes(schema: Schema, embed: Callable[[Sequence[str]], np.ndarray]) -> dict[str, Prototypes]:
    """Prototypes of every single-choice dimension of `schema` whose labels are described, embedded by `embed`.

    Not for multi choice: on SemEval-2021 T6 (20 techniques described by a sentence each) the similarities cost 2
    points of micro-F1 (48.8 against 50.9, 5-fold CV x 3 seeds), and on the sample dev set's frames they gained
    under 0.02 with cue phrases tuned on that same set.
    """
    out = {}
    for dim in schema.of_kind("single"):
        if dim.pair_with:  # "agrees with the headline" means nothing without the headline: the pair features decide
            continue
        described = [(j, text) for j, label in enumerate(dim.labels) for text in dim.prototype_texts(label) if text]
        if described:
            vectors = embed([text for _, text in described])
            out[dim.name] = Prototypes(np.array([j for j, _ in described], dtype=np.int64), vectors)
    return out


def text_embeddings(
    encoder: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64, max_length: int = MAX_LENGTH
) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of `encoder` over `texts`, [len(texts), hidden] float32.

    Each distinct text is encoded once: a body paired with many headlines (FNC-1: 30 a body) costs one pass."""
    import torch

    from training.encoder import length_buckets

    distinct = list(dict.fromkeys(texts))
    if len(distinct) < len(texts):
        position = {text: i for i, text in enumerate(distinct)}
        unique = text_embeddings(encoder, tokenizer, distinct, batch_size, max_length)
        return unique[[position[text] for text in texts]]
    device = next(encoder.parameters()).device
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    with torch.inference_mode():
        for batch in length_buckets([len(t) for t in texts], batch_size):
            inputs = tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
            )
            inputs = {k: v.to(device) for k, v in inputs.items()}
            hidden = encoder(**inputs).last_hidden_state.float()
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[batch] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
    encoder.train(was_training)
    return out


def _head_features(prototypes: Prototypes | None, labels: int, embeddings: np.ndarray) -> np.ndarray:
    """The embeddings, then the scaled label-description similarities when the dimension has prototypes."""
    if prototypes is None:
        return embeddings
    return np.hstack([embeddings, PROTOTYPE_SCALE * prototypes.similarities(embeddings, labels)])


class EmbeddingHeads:
    """Logistic heads on sentence embeddings for the choice dimensions of a model (one embedding per text field)."""

    def __init__(
        self,
        heads: Mapping[str, LinearHead],
        weight: float = 0.5,
        prototypes: Mapping[str, Prototypes] | None = None,
        hinted: Sequence[str] = (),
    ) -> None:
        self.heads = dict(heads)
        self.weight = weight  # of these probabilities in the served blend (training/blend.py)
        self.prototypes = {name: p for name, p in (prototypes or {}).items() if name in self.heads}
        self.hinted = frozenset(hinted)  # heads that also read the cold start's answer (training/prior.py)

    def features(
        self, name: str, labels: int, embeddings: np.ndarray, hints: Mapping[str, np.ndarray] | None = None
    ) -> np.ndarray:
        """What head `name` reads: the embeddings, then the scaled label-description similarities if it has any,
        then the cold start's weighted answer (`hints`, ColdStartPrior.features) if it was fitted with it."""
        x = _head_features(self.prototypes.get(name), labels, embeddings)
        return with_hints(x, served_hints("embedding", name, self.hinted, hints))

    @property
    def fields(self) -> list[str]:
        """The text fields whose embeddings the heads read."""
        return sorted({name for head in self.heads.values() for name in fields_of(head.field)})

    @classmethod
    def fit(
        cls,
        dimensions: Sequence[Mapping[str, Any]],
        rows: Sequence[Mapping[str, Any]],
        embeddings: Mapping[str, np.ndarray],
        weight: float = 0.5,
        prototypes: Mapping[str, Prototypes] | None = None,
        hints: Mapping[str, np.ndarray] | None = None,
    ) -> EmbeddingHeads:
        """Fit on dataset rows (a column per dimension, None when unanswered), each field's row embeddings, the
        label descriptions' prototypes per dimension (none: embeddings alone) and the cold start's weighted answers
        per dimension (`hints`, [rows, labels]; none: not read)."""
        prototypes, hints = prototypes or {}, hints or {}
        heads: dict[str, LinearHead] = {}
        for dim in dimensions:
            key = reading(dim["field"], dim.get("pair_with"))
            vectors = embedding_features(embeddings, key)
            if dim["kind"] not in ("single", "multi") or vectors is None:
                continue
            have = [i for i, row in enumerate(rows) if row.get(dim["name"]) is not None]
            if len(have) < MIN_ROWS:
                continue
            x = _head_features(prototypes.get(dim["name"]), len(dim["labels"]), vectors[have])
            answers = [rows[i][dim["name"]] for i in have]
            hinted = hints[dim["name"]][have] if dim["name"] in hints else None
            head = fit_head({**dim, "field": key}, x, answers, C_EMBEDDING, hinted)
            if head is not None:
                heads[dim["name"]] = head
        return cls(heads, weight, prototypes, [name for name in heads if name in hints])

    def proba(
        self, embeddings: Mapping[str, np.ndarray], hints: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Probabilities per fitted head, from each field's embeddings of the same records (and the cold start's
        weighted answers for them, for the heads fitted with those)."""
        return {
            name: head.proba(self.features(name, len(head.labels), embedding_features(embeddings, head.field), hints))
            for name, head in self.heads.items()
        }

    def save(self, path: str | Path) -> None:
        """Write the heads to one .npz file (their descriptions as JSON inside it)."""
        arrays: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.heads):
            if name in self.prototypes:
                arrays[f"p{j}_label_index"] = self.prototypes[name].label_index
                arrays[f"p{j}_vectors"] = self.prototypes[name].vectors.astype(np.float32)
        meta = {
            "heads": heads_to_arrays(self.heads.values(), arrays),
            "weight": self.weight,
            "max_length": MAX_LENGTH,
            "prototype_scale": PROTOTYPE_SCALE,
            "hinted": sorted(self.hinted),
        }
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingHeads:
        """Read heads written by `save` (allow_pickle stays off)."""
        with np.load(path, allow_pickle=False) as data:
            meta = npz_meta(data)
            heads = heads_from_arrays(meta["heads"], data)
            prototypes = {
                name: Prototypes(data[f"p{j}_label_index"], data[f"p{j}_vectors"])
                for j, name in enumerate(heads)
                if f"p{j}_vectors" in data
            }
        return cls(heads, float(meta["weight"]), prototypes, meta.get("hinted", ()))
