"""What the backend needs from any model: a version string and one batched call for many tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from annotation_config.regions import Prediction


class Predictor(Protocol):
    """A loaded model. `predict` takes task `data` dicts and returns one Prediction per task, in order."""

    model_version: str
    kind: str  # "cold-start" or "trained"

    def predict(self, tasks: Sequence[Mapping[str, Any]]) -> list[Prediction]: ...
