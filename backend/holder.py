"""Holds the model that serves; swaps in a newly promoted one without a restart and without mixing requests.

A request reads `holder.current` once and uses that predictor for all its tasks; a swap replaces the reference
after the new model is fully loaded, so requests in flight finish on the old one (Python attribute assignment is
atomic) and no request ever waits for a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from backend.predictor import Predictor

log = logging.getLogger(__name__)

# (version, folder) of the promoted model, or None when nothing is promoted.
CurrentModel = Callable[[], tuple[str, Path] | None]


class ModelHolder:
    """The serving predictor plus a background watcher of the registry pointer."""

    def __init__(
        self,
        cold_start: Callable[[], Predictor],
        current_model: CurrentModel,
        load_trained: Callable[[str, Path], Predictor],
        interval: float = 2.0,
    ) -> None:
        self._cold_start_factory = cold_start
        self._cold_start: Predictor | None = None
        self._current_model = current_model
        self._load_trained = load_trained
        self._interval = interval
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed_version: str | None = None
        self.last_error: str | None = None
        self.current: Predictor = self._fallback()
        self.refresh()

    def _fallback(self) -> Predictor:
        if self._cold_start is None:
            self._cold_start = self._cold_start_factory()
        return self._cold_start

    def refresh(self) -> bool:
        """Serve the promoted model if it changed; True when a swap happened. Never raises."""
        with self._load_lock:
            try:
                promoted = self._current_model()
            except Exception as error:  # a registry being written or unreadable: keep serving
                self.last_error = f"cannot read the registry: {error}"
                return False
            if promoted is None:
                if self.current.kind == "cold-start":
                    return False
                self.current = self._fallback()
                log.info("no promoted model: serving %s", self.current.model_version)
                return True
            version, folder = promoted
            if version == self.current.model_version or version == self._failed_version:
                return False
            try:
                predictor = self._load_trained(version, folder)
            except Exception as error:
                self._failed_version = version
                self.last_error = f"model {version} failed to load ({type(error).__name__}: {error}); still serving "
                self.last_error += self.current.model_version
                log.error(self.last_error)
                return False
            self.current = predictor
            self._failed_version = None
            self.last_error = None
            log.info("now serving %s", version)
            return True

    def start(self) -> None:
        """Watch the registry in a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()
