"""The model ladder: which rung answers a project's requests, and why.

  cold start        no accepted label yet (or no instant learner: a predictor without an embedder, in tests)
  instant learner   light heads refitted on every accepted annotation of the project (backend/instant_learner.py)
  fine-tuned model  the registry's promoted model (backend/holder.py); its gate compared it with the instant
                    learner on the same held-out labels (training/pipeline.py), so once promoted it serves

Each Label Studio project has its own instant learner: labels of one project never steer another. The learners
learn from the webhooks and, the first time a project is seen (a /setup, /predict or webhook naming it), from the
project's stored annotations, read from the Label Studio the operator configured (never from a host a request
named), so a restart loses nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from annotation_config.schema import Schema
from backend.holder import ModelHolder
from backend.instant_learner import InstantLearner, InstantPredictor, LearnerWorker
from backend.predictor import Predictor

log = logging.getLogger(__name__)

# project id -> every task of the project with its annotations (a Label Studio JSON export), or None when no
# configured Label Studio holds it.
ProjectLoader = Callable[[str], list[dict] | None]


@dataclass(frozen=True)
class Rung:
    """What serves a project now: the predictor, its rung name and a one-line reason."""

    predictor: Predictor
    name: str  # "cold-start" | "instant" | "trained"
    reason: str


class _Project:
    def __init__(self, project_id: str, learner: InstantLearner, worker: LearnerWorker | None) -> None:
        self.project_id = project_id
        self.learner = learner
        self.worker: LearnerWorker = worker  # type: ignore[assignment]  (set right after construction)
        self.fitted: InstantPredictor | None = None
        self.loaded = False  # stored annotations read (or nothing to read)
        self.load_error: str | None = None


class Ladder:
    """Per-project instant learners on top of the holder's cold start / fine-tuned model."""

    def __init__(
        self,
        schema: Schema,
        holder: ModelHolder,
        loader: ProjectLoader | None = None,
        disabled_reason: str | None = None,
    ) -> None:
        """`disabled_reason`: why no instant learner runs (turned off); the cold start then serves until a
        fine-tuned model is promoted."""
        self.schema = schema
        self.holder = holder
        self._loader = loader
        self._projects: dict[str, _Project] = {}
        self._lock = threading.Lock()
        self._stopped = False
        if disabled_reason is None and getattr(holder.cold_start, "embedder", None) is None:
            disabled_reason = "the cold-start predictor has no embedder to learn on"
        self.disabled_reason = disabled_reason
        self.enabled = disabled_reason is None

    # -- serving --------------------------------------------------------------------------------------------

    def serving(self, project: str | None) -> Rung:
        """The rung that answers `project` (None: the only project seen so far, if there is just one)."""
        base = self.holder.current
        if base.kind == "trained":
            return Rung(base, "trained", f"fine-tuned model {base.model_version} is promoted (it passed the gate)")
        state = self._state(project)
        if state is not None and state.fitted is not None:
            n = state.fitted.n_examples
            reason = f"instant learner on {n} accepted tasks of project {state.project_id}; no fine-tuned model yet"
            return Rung(state.fitted, "instant", reason)
        if not self.enabled:
            return Rung(base, "cold-start", f"no instant learner: {self.disabled_reason}")
        return Rung(base, "cold-start", "no accepted annotation yet")

    # -- learning -------------------------------------------------------------------------------------------

    def seen(self, project: str | None) -> None:
        """Note a project named by a request: the first time, read its stored annotations in the background."""
        self._project(project)

    def apply(self, project: str | None, payload: Mapping[str, Any]) -> bool:
        """Learn from one webhook payload; True when the accepted labels changed (a refit is queued)."""
        state = self._project(project)
        if state is None:
            return False
        changed = state.learner.apply_event(payload)
        if changed:
            state.worker.submit()
        return changed

    def wait(self, project: str | None, timeout: float | None = None) -> bool:
        """Block until the project's learner has fitted everything submitted so far (tests, benchmarks)."""
        state = self._state(project)
        return state is None or state.worker.wait(timeout=timeout)

    def snapshot(self) -> dict[str, Any]:
        """Per project: the instant version, accepted tasks, fits, last fit time and error (for /health)."""
        with self._lock:
            projects = dict(self._projects)
        out: dict[str, Any] = {}
        for project_id, state in projects.items():
            fitted = state.fitted
            out[project_id] = {
                "model_version": fitted.model_version if fitted else None,
                "accepted_tasks": fitted.n_examples if fitted else 0,
                "fits": state.worker.fits,
                "last_fit_seconds": state.worker.last_fit_seconds,
                "last_error": state.worker.last_error or state.load_error,
                "loaded": state.loaded,
            }
        return out

    def versions(self) -> list[str]:
        """The instant versions that serve now, one per project with labels."""
        with self._lock:
            return [s.fitted.model_version for s in self._projects.values() if s.fitted is not None]

    def stop(self) -> None:
        """Stop every learner's worker thread."""
        with self._lock:
            self._stopped = True
            projects = list(self._projects.values())
        for state in projects:
            state.worker.stop()

    # -- internals ------------------------------------------------------------------------------------------

    @staticmethod
    def _id(project: str | None) -> str | None:
        """Label Studio names a project "<id>.<created timestamp>" in /predict and /setup, and by id in webhooks."""
        if project is None:
            return None
        value = str(project).split(".")[0].strip()
        return value or None

    def _state(self, project: str | None) -> _Project | None:
        project_id = self._id(project)
        with self._lock:
            if project_id is None:
                return next(iter(self._projects.values())) if len(self._projects) == 1 else None
            return self._projects.get(project_id)

    def _project(self, project: str | None) -> _Project | None:
        project_id = self._id(project)
        if not self.enabled or project_id is None:
            return self._state(project) if self.enabled else None
        with self._lock:
            state = self._projects.get(project_id)
            if state is not None or self._stopped:
                return state
            cold_start = self.holder.cold_start
            learner = InstantLearner(self.schema, cold_start.embedder, cold_start)
            state = _Project(project_id, learner, None)
            state.worker = LearnerWorker(
                learner, lambda fitted, s=state: self._fitted(project_id, s, fitted), name=f"learner-{project_id}"
            ).start()
            self._projects[project_id] = state
        if self._loader is None:
            state.loaded = True
        else:
            threading.Thread(target=self._load, args=(project_id, state), daemon=True, name="learner-load").start()
        return state

    def _fitted(self, project_id: str, state: _Project, fitted: InstantPredictor | None) -> None:
        state.fitted = fitted
        log.info("project %s: serving %s", project_id, fitted.model_version if fitted else "no instant model")

    def _load(self, project_id: str, state: _Project) -> None:
        assert self._loader is not None
        try:
            tasks = self._loader(project_id)
        except Exception as error:  # Label Studio down, key rejected: webhooks still teach the learner
            state.load_error = f"cannot read project {project_id}'s annotations: {error}"
            log.warning(state.load_error)
            return
        if tasks and state.learner.load_tasks(tasks):
            state.worker.submit()
        state.loaded = True
