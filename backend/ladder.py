"""The model ladder: which rung answers a project's requests, and why.

  cold start        no accepted label yet (or no instant learner: a predictor without an embedder, in tests)
  instant learner   light heads refitted on every accepted annotation of the project (backend/instant_learner.py)
  fine-tuned model  the project's own promoted model (its registry, models/projects/<id>; backend/holder.py)

Everything is per Label Studio project: each has its own instant learner and its own registry, so labels of one
project never steer what another is served. The learners learn from the webhooks and, the first time a project is
seen (a /setup, /predict or webhook naming it), from the project's stored annotations, read from the Label Studio
the operator configured (never from a host a request named), so a restart loses nothing.

What serves is decided on evidence, test-then-train: before a learner learns from a newly accepted annotation,
each rung's suggestion for that task is scored against the accepted labels, and a rung's running score is the
primary metric (training/evaluation.py: mean macro-F1 over the questions) of its suggestions over the last
RUNNING_WINDOW scored annotations. A promoted model serves (it passed its gate) until the instant learner scores
higher on the same recent annotations (at least MIN_SCORED of them); that version then stays down until a new one is
promoted. The instant learner and the cold start are scored too (/health shows every running score), but the
instant learner is not replaced by the cold start: over a few dozen annotations the cold start's abstentions often
tie or beat a learner that is still learning the rare labels, and a learner that stopped serving its fits would
stop showing the annotator what it learnt.

At most `max_projects` projects are held (least recently used first out); one that comes back reads its stored
annotations again.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotation_config.schema import Schema
from backend.holder import ModelHolder
from backend.instant_learner import InstantLearner, InstantPredictor, LearnerWorker
from backend.predictor import Predictor

log = logging.getLogger(__name__)

# project id -> every task of the project with its annotations (a Label Studio JSON export), or None when no
# configured Label Studio holds it.
ProjectLoader = Callable[[str], list[dict] | None]
# project id ("default" for requests that name none) -> the holder of that project's promoted model
HolderFactory = Callable[[str], ModelHolder]

DEFAULT_PROJECT = "default"  # as training.registry.DEFAULT_PROJECT: the registry of requests naming no project
RUNNING_WINDOW = 50  # scored annotations a rung's running score covers
MIN_SCORED = 10  # shared scored annotations before a lower rung may take over: fewer are noise


@dataclass(frozen=True)
class Rung:
    """What serves a project now: the predictor, its rung name and a one-line reason."""

    predictor: Predictor
    name: str  # "cold-start" | "instant" | "trained"
    reason: str


def window_score(scores: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """The primary metric of one rung's suggestions over scored annotations (each a {rung key: RowCounts of one
    row}), from the same per-row counts the promotion gate uses; None when no question had gold labels."""
    from training.gate import RowCounts, primary_scores

    rows = [s[key] for s in scores if key in s]
    if not rows:
        return None
    stacked = RowCounts(rows[0].kinds, {name: np.vstack([r.counts[name] for r in rows]) for name in rows[0].kinds})
    value = primary_scores(stacked, np.ones((1, len(rows))))[0]
    return None if np.isnan(value) else float(value)


class _Project:
    def __init__(self, project_id: str, learner: InstantLearner | None, holder: ModelHolder) -> None:
        self.project_id = project_id
        self.learner = learner
        self.holder = holder
        self.worker: LearnerWorker | None = None
        self.fitted: InstantPredictor | None = None
        self.loaded = False  # stored annotations read (or nothing to read)
        self.load_error: str | None = None
        # per scored annotation: {rung key: its answer's counts (training.gate.RowCounts, one row)}; the trained
        # rung's key names its version
        self.scores: deque[dict[str, Any]] = deque(maxlen=RUNNING_WINDOW)
        self.demoted: dict[str, str] = {}  # fine-tuned version -> why it stopped serving
        self.pending: list[Future] = []  # scorings not finished yet


class Ladder:
    """Per-project rungs: a promoted model of the project's registry, its instant learner, the shared cold start."""

    def __init__(
        self,
        schema: Schema,
        holders: HolderFactory,
        loader: ProjectLoader | None = None,
        disabled_reason: str | None = None,
        *,
        max_projects: int = 50,
        interval: float = 2.0,
    ) -> None:
        """`disabled_reason`: why no instant learner runs (turned off); the cold start then serves until a
        fine-tuned model is promoted. `interval`: seconds between checks of the registries for a promotion."""
        self.schema = schema
        self._holders = holders
        self._loader = loader
        self._projects: OrderedDict[str, _Project] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._stopped = False
        self._stop = threading.Event()
        self._interval = interval
        self._watcher: threading.Thread | None = None
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rung-scores")
        self.max_projects = max_projects
        self._default = holders(DEFAULT_PROJECT)  # serves requests that name no project, and holds the cold start
        self.cold_start = self._default.cold_start
        if disabled_reason is None and getattr(self.cold_start, "embedder", None) is None:
            disabled_reason = "the cold-start predictor has no embedder to learn on"
        self.disabled_reason = disabled_reason
        self.enabled = disabled_reason is None

    # -- serving --------------------------------------------------------------------------------------------

    def serving(self, project: str | None) -> Rung:
        """The rung that answers `project` (None: the only project seen so far, if there is just one)."""
        state = self._state(project)
        holder = state.holder if state is not None else self._default
        rungs = self._available(state, holder)
        top = rungs[0]
        if state is None:
            return top
        for lower in rungs[1:]:
            if (top.name, lower.name) != ("trained", "instant"):
                continue  # see the module docstring: the instant learner is not replaced by the cold start
            behind = self._behind(state, top, lower)
            if behind is None:
                continue
            if top.name == "trained":
                state.demoted.setdefault(top.predictor.model_version, behind)
                log.warning("project %s: %s stops serving: %s", state.project_id, top.predictor.model_version, behind)
            return Rung(lower.predictor, lower.name, f"{lower.reason}; above it, {behind}")
        return top

    def _available(self, state: _Project | None, holder: ModelHolder) -> list[Rung]:
        """The rungs that could serve, highest first (the last one is always the cold start)."""
        rungs = []
        base = holder.current
        if base.kind == "trained":
            why = state.demoted.get(base.model_version) if state is not None else None
            if why is None:
                reason = f"fine-tuned model {base.model_version} is promoted (it passed the gate)"
                rungs.append(Rung(base, "trained", reason))
        if state is not None and state.fitted is not None:
            n = state.fitted.n_examples
            reason = f"instant learner on {n} accepted tasks of project {state.project_id}"
            if base.kind == "trained" and state.demoted.get(base.model_version):
                reason += f"; {state.demoted[base.model_version]}"
            rungs.append(Rung(state.fitted, "instant", reason))
        cold = self.cold_start
        if not self.enabled:
            rungs.append(Rung(cold, "cold-start", f"no instant learner: {self.disabled_reason}"))
        else:
            rungs.append(Rung(cold, "cold-start", "no accepted annotation yet"))
        return rungs

    @staticmethod
    def _key(rung: Rung) -> str:
        return f"trained:{rung.predictor.model_version}" if rung.name == "trained" else rung.name

    def _behind(self, state: _Project, top: Rung, lower: Rung) -> str | None:
        """Why `top` is behind `lower` on the same recent annotations, or None while it is not (or too few)."""
        mine, theirs = self._key(top), self._key(lower)
        shared = [s for s in list(state.scores) if mine in s and theirs in s]
        if len(shared) < MIN_SCORED:
            return None
        top_mean, lower_mean = window_score(shared, mine), window_score(shared, theirs)
        if top_mean is None or lower_mean is None or top_mean >= lower_mean:
            return None
        shown = {"trained": f"the fine-tuned model {top.predictor.model_version}", "instant": "the instant learner"}
        return (
            f"{shown.get(top.name, top.name)} scored lower on the last {len(shared)} accepted annotations "
            f"({top_mean:.2f} vs {lower_mean:.2f} mean macro-F1)"
        )

    def running_scores(self, project: str | None) -> dict[str, dict[str, Any]]:
        """Per rung key: the primary metric of its suggestions on the recent accepted annotations it was scored
        on, and how many."""
        state = self._state(project)
        scores = list(state.scores) if state is not None else []
        keys = dict.fromkeys(key for s in scores for key in s)
        out = {}
        for key in keys:
            value = window_score(scores, key)
            out[key] = {"primary": None if value is None else round(value, 4), "n": sum(key in s for s in scores)}
        return out

    def project_of(self, project: str | None) -> str:
        """The registry a request for `project` is served from: its id, the only project seen, or "default"."""
        state = self._state(project)
        return state.project_id if state is not None else DEFAULT_PROJECT

    def holder(self, project: str | None) -> ModelHolder:
        """The holder of a project's promoted model (the default registry's for None)."""
        state = self._state(project)
        return state.holder if state is not None else self._default

    # -- learning -------------------------------------------------------------------------------------------

    def seen(self, project: str | None) -> None:
        """Note a project named by a request: the first time, read its stored annotations in the background."""
        self._project(project)

    def apply(self, project: str | None, payload: Mapping[str, Any]) -> bool:
        """Learn from one webhook payload; True when the accepted labels changed (a refit is queued). Newly accepted
        tasks are first scored against every rung's suggestion, before the learner learns from them."""
        state = self._project(project)
        if state is None or state.learner is None or state.worker is None:
            return False
        before = state.learner.accepted()
        changed = state.learner.apply_event(payload)
        if changed:
            new = [example for task_id, example in state.learner.accepted().items() if task_id not in before]
            if new:
                rungs = self._available(state, state.holder)  # what served when the annotator labelled them
                with self._lock:
                    state.pending = [f for f in state.pending if not f.done()]
                    state.pending.append(self._scorer.submit(self._score, state, rungs, new))
            state.worker.submit()
        return changed

    def _score(self, state: _Project, rungs: Sequence[Rung], examples: Sequence[Any]) -> None:
        from training.evaluation import answers_row_counts, schema_dimensions

        dimensions = schema_dimensions(self.schema)
        datas = [example.data for example in examples]
        answers = {}
        for rung in rungs:
            try:
                answers[self._key(rung)] = rung.predictor.predict(datas)
            except Exception as error:  # a rung that cannot answer is not scored; serving goes on
                log.warning("project %s: could not score %s: %s", state.project_id, rung.name, error)
        for i, example in enumerate(examples):
            scores = {key: answers_row_counts(dimensions, [example.labels], [p[i]]) for key, p in answers.items()}
            if scores:
                state.scores.append(scores)

    def wait(self, project: str | None, timeout: float | None = None) -> bool:
        """Block until the project's learner has scored and fitted everything submitted so far (tests, benches)."""
        state = self._state(project)
        if state is None or state.worker is None:
            return True
        with self._lock:
            pending = list(state.pending)
        for future in pending:
            future.result(timeout)
        return state.worker.wait(timeout=timeout)

    def snapshot(self) -> dict[str, Any]:
        """Per project: the instant version, accepted tasks, fits, last fit time and error, the promoted model, the
        rung that serves and the rungs' running scores (for /health)."""
        with self._lock:
            projects = dict(self._projects)
        out: dict[str, Any] = {}
        for project_id, state in projects.items():
            fitted = state.fitted
            worker = state.worker
            rung = self.serving(project_id)
            out[project_id] = {
                "model_version": fitted.model_version if fitted else None,
                "accepted_tasks": fitted.n_examples if fitted else 0,
                "fits": worker.fits if worker else 0,
                "last_fit_seconds": worker.last_fit_seconds if worker else None,
                "last_error": (worker.last_error if worker else None) or state.load_error,
                "loaded": state.loaded,
                "promoted": state.holder.current.model_version if state.holder.current.kind == "trained" else None,
                "serving": rung.predictor.model_version,
                "rung": rung.name,
                "running_scores": self.running_scores(project_id),
            }
        return out

    def versions(self, project: str | None = None) -> list[str]:
        """The instant versions that serve now: that of `project`, or one per project with labels (None)."""
        if project is not None:
            state = self._state(project)
            return [state.fitted.model_version] if state is not None and state.fitted is not None else []
        with self._lock:
            return [s.fitted.model_version for s in self._projects.values() if s.fitted is not None]

    def start(self) -> None:
        """Watch every held project's registry for promotions in one daemon thread."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher and every learner's worker thread."""
        self._stop.set()
        with self._lock:
            self._stopped = True
            projects = list(self._projects.values())
        for state in projects:
            if state.worker is not None:
                state.worker.stop()
        self._scorer.shutdown(wait=False, cancel_futures=True)
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def refresh(self) -> None:
        """Check every held registry once for a new promoted model (the watcher does this every interval)."""
        with self._lock:
            holders = [self._default, *(s.holder for s in self._projects.values())]
        for holder in holders:
            holder.refresh()

    # -- internals ------------------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            self.refresh()

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
            state = self._projects.get(project_id)
            if state is not None:
                self._projects.move_to_end(project_id)
            return state

    def _project(self, project: str | None) -> _Project | None:
        project_id = self._id(project)
        if project_id is None:
            return self._state(project)
        with self._lock:
            state = self._projects.get(project_id)
            if state is not None:
                self._projects.move_to_end(project_id)
                return state
            if self._stopped:
                return None
        holder = self._holders(project_id)  # outside the lock: it may load a model
        learner = InstantLearner(self.schema, self.cold_start.embedder, self.cold_start) if self.enabled else None
        with self._lock:
            if project_id in self._projects or self._stopped:  # another request got here first
                return self._projects.get(project_id)
            state = _Project(project_id, learner, holder)
            if learner is not None:
                state.worker = LearnerWorker(
                    learner, lambda fitted, s=state: self._fitted(s, fitted), name=f"learner-{project_id}"
                ).start()
            self._projects[project_id] = state
            evicted = []
            while len(self._projects) > self.max_projects:
                evicted.append(self._projects.popitem(last=False)[1])
        for old in evicted:
            log.info("project %s: dropped (over %d held); reloads when seen", old.project_id, self.max_projects)
            if old.worker is not None:
                old.worker.stop(timeout=0)
        if learner is None or self._loader is None:
            state.loaded = True
        else:
            threading.Thread(target=self._load, args=(project_id, state), daemon=True, name="learner-load").start()
        return state

    def _fitted(self, state: _Project, fitted: InstantPredictor | None) -> None:
        state.fitted = fitted
        log.info("project %s: serving %s", state.project_id, fitted.model_version if fitted else "no instant model")

    def _load(self, project_id: str, state: _Project) -> None:
        assert self._loader is not None and state.learner is not None and state.worker is not None
        try:
            tasks = self._loader(project_id)
        except Exception as error:  # Label Studio down, key rejected: webhooks still teach the learner
            state.load_error = f"cannot read project {project_id}'s annotations: {error}"
            log.warning(state.load_error)
            return
        if tasks and state.learner.load_tasks(tasks):
            state.worker.submit()
        state.loaded = True
