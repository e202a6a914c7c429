"""The cold start's answers inside a trained model: features of its companion heads, and the answer where they
learnt nothing.

On the sample dev set the instant learner beat a model trained on the same labels (BENCHMARKS.md, issue 15),
because it stacks the cold start's answer (cue phrases, target mentions, label definitions: knowledge the labels
alone do not teach from tens of examples) onto its features and learns, label by label, how far to trust it. A
trained model does the same, with the same two rules (the instant learner imports them from here):

- features: each choice dimension's embedding head (and a single-choice dimension's n-gram head) reads, beside the
  text's embedding (or n-grams), the cold start's confidence at the label(s) it chose (`answer_features`), times
  `weight` (TrainingArguments.prior_weight); a multi-choice label's head reads only the cold start's answer on
  that label (training.ngram.fit_head);
- fallback: a choice dimension that no companion head could fit (a single class so far) answers the cold start's
  distribution (`answer_distribution`) instead of the encoder's, and so does a multi-choice label that no
  companion fitted (never, or always, ticked) instead of its base rate.

Only where the cold start has shown it knows something: a dimension takes part (`keep_informative`) when the cold
start's macro-F1 on the training rows beats answering the most common label(s) of those rows, or when too few of
those rows have another answer to tell (training.evaluation.PRIOR_JUDGE_MIN_OTHERS). On SemEval-2021 T6
the cold start ticks a technique on one meme in eight, right one time in eight, and reading its answers cost 1.0
point of micro-F1; on the sample dev set they gain 0.04-0.05 mean macro-F1 (BENCHMARKS.md, issue 15 round 4).

The cold start reads sentence embeddings: here the trained model's own (the vectors the embedding heads read,
computed once per text), and the schema's label descriptions and target texts as that encoder embedded them at
training time. Those and the schema are saved with the model (`prior.npz`), so serving needs neither the schema
file nor a second encoder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from annotation_config.regions import Prediction
from annotation_config.schema import Dimension, Schema
from training.cold_start import ColdStartPredictor
from training.ngram import npz_meta, write_npz

PRIOR_FILE = "prior.npz"


def answer_features(dim: Dimension, answer: Prediction) -> np.ndarray:
    """The cold start's answer as features: its confidence at the label(s) it chose, 0 elsewhere.

    The confidence, not a bare one-hot: the cold start says "none, 0.65" (the target is never mentioned) and
    "none, 0.4" (unsure), and a head learns to trust the one and not the other (dev set: +0.06 macro-F1).
    """
    value = answer.labels.get(dim.name)
    chosen = set(value) if isinstance(value, list) else {value}
    confidence = float(answer.scores.get(dim.name, 0.0))
    return np.array([confidence if v in chosen else 0.0 for v in dim.values])


def answer_distribution(dim: Dimension, answer: Prediction) -> np.ndarray:
    """The cold start's answer as probabilities. Single choice: its confidence on its answer, the rest spread evenly
    (uniform when it did not answer). Multi choice: per label, "on" with its confidence in each yes/no decision."""
    k = len(dim.values)
    value = answer.labels.get(dim.name)
    if dim.kind == "multi":
        chosen = set(value or [])
        score = float(answer.scores.get(dim.name, 0.5))
        confidence = max(score, 1.0 - score)
        return np.array([confidence if v in chosen else 1.0 - confidence for v in dim.values])
    if value not in dim.values:
        return np.full(k, 1.0 / k)
    confidence = min(max(float(answer.scores.get(dim.name, 1.0 / k)), 1.0 / k), 1.0)
    probs = np.full(k, (1.0 - confidence) / (k - 1))
    probs[dim.values.index(value)] = confidence
    return probs


class _Recorder:
    """An Embedder that embeds through `embed` and keeps every text's vector (the cold start's schema texts)."""

    def __init__(self, embed: Callable[[Sequence[str]], np.ndarray] | None, known: Mapping[str, np.ndarray]) -> None:
        self.embed_texts, self.vectors = embed, dict(known)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            if self.embed_texts is None:
                raise ValueError(f"{len(missing)} schema text(s) of the cold start were not saved with the model")
            self.vectors.update(zip(missing, np.asarray(self.embed_texts(missing), dtype=np.float32), strict=True))
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


class ColdStartPrior:
    """The cold start of a model's schema, reading the model's own sentence embeddings."""

    def __init__(self, schema: Schema, embedder: _Recorder, weight: float, names: Sequence[str] | None = None) -> None:
        self.schema, self.weight = schema, weight
        self._embedder = embedder
        self._cold_start = ColdStartPredictor(schema, embedder)  # embeds the schema's texts once, here
        # the choice dimensions it takes part in (all, until keep_informative)
        self.dimensions = {d.name: d for d in schema.of_kind("single", "multi") if names is None or d.name in names}

    @classmethod
    def build(cls, schema: Schema, embed: Callable[[Sequence[str]], np.ndarray], weight: float) -> ColdStartPrior:
        """The prior of `schema`, its label descriptions and target texts embedded by `embed` (the model's encoder)."""
        return cls(schema, _Recorder(embed, {}), weight)

    @property
    def fields(self) -> list[str]:
        """The text fields whose embeddings the cold start reads (for every choice dimension: it answers them all,
        whichever of them the model reads)."""
        return sorted({name for dim in self.schema.of_kind("single", "multi") for name in dim.reads})

    def answers(self, records: Sequence[Mapping[str, Any]], embeddings: Mapping[str, np.ndarray]) -> list[Prediction]:
        """The cold start's answer for each record, from each field's embeddings of the same records."""
        vectors: dict[str, np.ndarray] = {}
        for name in self.fields:
            for record, vector in zip(records, embeddings[name], strict=True):
                vectors.setdefault(str(record.get(name) or ""), vector)
        return self._cold_start.predict(records, vectors=vectors)

    def keep_informative(self, scores: Mapping[str, Mapping[str, Any]]) -> None:
        """Keep the dimensions where the cold start scored a higher macro-F1 on the training rows than their most
        common answer, and those the rows cannot judge (`scores` from training.evaluation.prior_scores: "judged" is
        False when fewer than a few rows have another answer than the most common one: that answer is then right
        almost by construction, and the cold start is all that knows of the other labels)."""
        for name in list(self.dimensions):
            score = scores.get(name) or {}
            cold, common = score.get("cold_start"), score.get("most_common")
            if score.get("judged") and (cold is None or common is None or cold <= common):
                del self.dimensions[name]

    def features(self, answers: Sequence[Prediction]) -> dict[str, np.ndarray]:
        """Per choice dimension, [records, labels]: `weight` x the cold start's confidence at what it chose."""
        return {
            name: self.weight * np.array([answer_features(dim, a) for a in answers]).reshape(len(answers), -1)
            for name, dim in self.dimensions.items()
        }

    def fill(
        self,
        probs: Mapping[str, np.ndarray],
        answers: Sequence[Prediction],
        learnt: Mapping[str, np.ndarray],
        thresholds: Mapping[str, float] | None = None,
    ) -> dict[str, np.ndarray]:
        """`probs` with the cold start's answer wherever no companion learnt anything: a dimension missing from
        `learnt` (labels fitted by some companion, per dimension), and a multi-choice label whose mask is False.

        A multi-choice label the cold start answers is ticked exactly when it chose it, whatever the dimension's
        decision threshold (`thresholds`, default 0.5): its probability is moved to that side of the threshold."""
        out = dict(probs)
        for name, dim in self.dimensions.items():
            if name not in out:
                continue
            mask = learnt.get(name)
            if mask is not None and (dim.kind == "single" or mask.all()):
                continue
            prior = np.array([answer_distribution(dim, a) for a in answers]).reshape(len(answers), -1)
            if dim.kind == "multi":
                threshold = (thresholds or {}).get(name, 0.5)
                chosen = np.array([[v in (a.labels.get(name) or []) for v in dim.values] for a in answers])
                chosen = chosen.reshape(prior.shape)
                moved = np.where(chosen, np.maximum(prior, threshold), np.minimum(prior, threshold - 1e-6))
                prior = np.clip(moved, 0.0, 1.0)
            if mask is None:
                out[name] = prior
            else:  # multi choice: only the labels nothing was fitted for
                out[name] = np.where(mask[None, :], out[name], prior)
        return out

    def save(self, path: str | Path) -> None:
        """Write the schema, the weight and the schema texts' embeddings to one .npz file (no pickle)."""
        texts = list(self._embedder.vectors)
        arrays = {"vectors": np.stack([self._embedder.vectors[t] for t in texts]).astype(np.float32)} if texts else {}
        meta = {
            "schema": self.schema.model_dump(mode="json"),
            "weight": self.weight,
            "texts": texts,
            "dimensions": sorted(self.dimensions),
        }
        write_npz(path, arrays, meta)

    @classmethod
    def load(cls, path: str | Path) -> ColdStartPrior:
        """Read a prior written by `save` (allow_pickle stays off)."""
        with np.load(path, allow_pickle=False) as data:
            meta = npz_meta(data)
            vectors = data["vectors"] if meta["texts"] else np.zeros((0, 0), dtype=np.float32)
        known = dict(zip(meta["texts"], vectors, strict=True))
        schema = Schema.model_validate(meta["schema"])
        return cls(schema, _Recorder(None, known), float(meta["weight"]), meta["dimensions"])
