"""What one run of a trained model gives, whatever runs it (torch in training/predict.py, ONNX Runtime in
training/onnx_serving.py): logits per head, decoded spans, sentence embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.calibration import Temperature, sigmoid, softmax
from training.modeling import BIO


@dataclass
class ModelOutputs:
    """Raw outputs for N records: logits of single/multi heads ([N, labels]) and decoded spans per record."""

    logits: dict[str, np.ndarray] = field(default_factory=dict)
    spans: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)  # per text field asked for: [N, hidden]

    @classmethod
    def empty(cls, dimensions: Sequence[Mapping[str, Any]], count: int) -> ModelOutputs:
        """Outputs for `count` records before any pass ran: zero logits per choice head, no spans."""
        return cls(
            logits={
                d["name"]: np.zeros((count, len(d["labels"])), dtype=np.float32)
                for d in dimensions
                if d["kind"] != "spans"
            },
            spans={d["name"]: [[] for _ in range(count)] for d in dimensions if d["kind"] == "spans"},
        )

    def probabilities(
        self, dimensions: Sequence[Mapping[str, Any]], temperatures: Mapping[str, Temperature] | None = None
    ) -> dict[str, np.ndarray]:
        """Softmax (single) or sigmoid (multi) probabilities, each head scaled by its temperature."""
        temperatures = temperatures or {}
        probs = {}
        for dim in dimensions:
            if dim["kind"] == "spans":
                continue
            t = temperatures.get(dim["name"], Temperature()).temperature
            logits = self.logits[dim["name"]]
            probs[dim["name"]] = softmax(logits, t) if dim["kind"] == "single" else sigmoid(logits, t)
        return probs


def decode_spans(
    tag_probs: np.ndarray, offsets: Sequence[Sequence[int]], labels: Sequence[str], text: str
) -> list[dict[str, Any]]:
    """Character spans from per-label BIO probabilities ([T, labels, 3]); score = mean P(inside) of its tokens.

    A span starts at B (or at an I after O) and runs through the following I tokens; its ends are widened to whole
    words, so a span never starts or stops inside a word.
    """
    tags = tag_probs.argmax(-1)
    found: dict[tuple[int, int, str], float] = {}
    for j, label in enumerate(labels):
        current: list[int] = []

        def close(tokens: list[int], label: str = label, j: int = j) -> None:
            if not tokens:
                return
            start, end = int(offsets[tokens[0]][0]), int(offsets[tokens[-1]][1])
            while start > 0 and text[start - 1].isalnum() and text[start].isalnum():
                start -= 1
            while end < len(text) and text[end].isalnum() and text[end - 1].isalnum():
                end += 1
            score = float(np.mean([1.0 - tag_probs[t, j, 0] for t in tokens]))
            key = (start, end, label)
            found[key] = max(score, found.get(key, 0.0))

        for t, (start, end) in enumerate(offsets):
            if start < 0 or end <= start:
                close(current)
                current = []
                continue
            tag = BIO[tags[t, j]]
            if tag == "B" or (tag == "I" and not current):
                close(current)
                current = [t]
            elif tag == "I":
                current.append(t)
            else:
                close(current)
                current = []
        close(current)
    return [
        {"start": s, "end": e, "text": text[s:e], "label": label, "score": score}
        for (s, e, label), score in sorted(found.items())
    ]
