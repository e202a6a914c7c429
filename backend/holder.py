"""Holds the model that serves; swaps in a newly promoted one without a restart and without mixing requests.

A request reads `holder.current` once and uses that predictor for all its tasks; a swap replaces the reference
after the new model is fully loaded, so requests in flight finish on the old one (Python attribute assignment is
atomic) and no request ever waits for a load.

Only a model whose label maps fit the served schema is loaded (training.registry.model_problem). When the promoted
model cannot serve (incompatible, corrupt, missing) the holder keeps what it serves; if that is the cold start
(typically right after a restart), it serves the best other version that loads and fits instead and says so in
`last_error`, since any trained model beats the cold start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from backend.predictor import Predictor

if TYPE_CHECKING:
    from annotation_config.schema import Schema

log = logging.getLogger(__name__)

# (version, folder) of the promoted model, or None when nothing is promoted.
CurrentModel = Callable[[], tuple[str, Path] | None]
# (version, folder) of every version to fall back on, best first (training.registry.serving_candidates).
Fallbacks = Callable[[], list[tuple[str, Path]]]


class ModelHolder:
    """The serving predictor of one registry; `refresh()` (called by the ladder's watcher) swaps in a promotion."""

    def __init__(
        self,
        cold_start: Callable[[], Predictor],
        current_model: CurrentModel,
        load_trained: Callable[[str, Path], Predictor],
        *,
        schema: Schema | None = None,
        fallbacks: Fallbacks | None = None,
    ) -> None:
        self._cold_start_factory = cold_start
        self._schema = schema  # None: serve any model (no compatibility check)
        self._fallbacks = fallbacks
        self._no_fallback_for: str | None = None  # the problem for which no fallback loaded (not retried)
        self._cold_start: Predictor | None = None
        self._current_model = current_model
        self._load_trained = load_trained
        self._load_lock = threading.Lock()
        self._failed_version: str | None = None
        self.last_error: str | None = None
        self.current: Predictor = self._fallback()
        self.refresh()

    def _fallback(self) -> Predictor:
        if self._cold_start is None:
            self._cold_start = self._cold_start_factory()
        return self._cold_start

    @property
    def cold_start(self) -> Predictor:
        """The cold-start predictor (the instant learners' fallback and feature source)."""
        return self._fallback()

    def refresh(self) -> bool:
        """Serve the promoted model if it changed; True when a swap happened. Never raises."""
        with self._load_lock:
            try:
                promoted = self._current_model()
            except Exception as error:  # unreadable, or a pointer to a missing folder: keep serving
                return self._unservable(None, f"cannot read the registry: {error}")
            if promoted is None:
                if self.current.kind == "cold-start":
                    return False
                self.current = self._fallback()
                log.info("no promoted model: serving %s", self.current.model_version)
                return True
            version, folder = promoted
            if version == self.current.model_version or version == self._failed_version:
                return False
            predictor, problem = self._load(version, folder)
            if predictor is None:
                self._failed_version = version
                return self._unservable(version, problem)
            self.current = predictor
            self._failed_version = None
            self._no_fallback_for = None
            self.last_error = None
            log.info("now serving %s", version)
            return True

    def _load(self, version: str, folder: Path) -> tuple[Predictor | None, str]:
        """The loaded predictor, or None and why it cannot serve (one line)."""
        if self._schema is not None:
            from training.registry import model_problem  # torch-free

            problem = model_problem(folder, self._schema, version)
            if problem is not None:
                return None, problem
        try:
            return self._load_trained(version, folder), ""
        except Exception as error:
            return None, f"model {version} failed to load ({type(error).__name__}: {error})"

    def _unservable(self, version: str | None, problem: str) -> bool:
        """The promoted model cannot serve: keep a trained model, or replace the cold start by the best fallback."""
        if self.current.kind != "cold-start" or self._fallbacks is None or problem == self._no_fallback_for:
            message = f"{problem}; still serving {self.current.model_version}"
            if problem == self._no_fallback_for:
                message += " (no other version loads and fits)"
            if message != self.last_error:  # once, not at every poll
                log.error(message)
            self.last_error = message
            return False
        try:
            candidates = self._fallbacks()
        except Exception as error:  # the fallback is a bonus: its failure must not stop the watcher
            log.warning("cannot list fallback models: %s", error)
            candidates = []
        for candidate, folder in candidates:
            if candidate == version:
                continue
            predictor, why = self._load(candidate, folder)
            if predictor is None:
                log.warning("fallback %s", why)
                continue
            self.current = predictor
            self.last_error = f"{problem}; serving {candidate} instead (the best other version that loads and fits)"
            log.error(self.last_error)
            return True
        self._no_fallback_for = problem  # every refresh would load every version again: try once per problem
        self.last_error = f"{problem}; still serving {self.current.model_version} (no other version loads and fits)"
        log.error(self.last_error)
        return False
