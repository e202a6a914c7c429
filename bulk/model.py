"""Which model `workbench predict` runs, decided once in the driver, and how each actor loads it.

The rung is the one the backend would serve the project: the promoted model of the project's registry in the models
folder (that of data naming no project without --project) when its label maps fit the schema (else, like
backend/holder.py, the best other version that fits), otherwise the cold start. Actors build it with the backend's
own factories (backend.app.default_predictors), so a bulk prediction and a /predict answer of
the same model_version are the same prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation_config.errors import WorkbenchError

if TYPE_CHECKING:
    from annotation_config.schema import Schema
    from backend.predictor import Predictor
    from backend.settings import Settings


class ModelError(WorkbenchError):
    """The model a run needs cannot be used; the message says what to do."""


@dataclass(frozen=True)
class ModelChoice:
    """What runs: `kind` "trained" (with its registry `folder`) or "cold-start", the `version` every prediction
    carries, and `note`, why this rung (printed for the user)."""

    kind: str
    version: str
    folder: Path | None = None
    note: str = ""

    def describe(self) -> str:
        """One line for the user, e.g. "trained model v3 (models/v3)"."""
        where = f" ({self.folder})" if self.folder else ""
        text = f"{'trained model' if self.kind == 'trained' else 'cold start'} {self.version}{where}"
        return f"{text}; {self.note}" if self.note else text


def cold_start_version(schema: Schema) -> str:
    """The cold start's model_version (as backend/routes.py names it for a schema), known without loading it."""
    return f"cold-start-{schema.hash}"


def choose_model(
    settings: Settings, schema: Schema, *, cold_start: bool = False, project: int | str | None = None
) -> ModelChoice:
    """The rung the backend would serve `project` from `settings.models_dir` (torch-free: reads registry files)."""
    from training import registry

    if cold_start:
        return ModelChoice("cold-start", cold_start_version(schema), note="--cold-start")
    models_dir = settings.models_dir
    try:
        promoted = registry.current_model(models_dir, project)
    except Exception as error:  # a pointer to a missing or foreign folder: the backend would not serve it either
        raise ModelError(f"{models_dir}: cannot read the registry ({error}); fix it or pass --cold-start") from None
    name = registry.project_id(project)
    if promoted is None:
        note = f"no promoted model for project {name} in {models_dir}"
        return ModelChoice("cold-start", cold_start_version(schema), note=note)
    version, folder = promoted
    problem = registry.model_problem(folder, schema, version)
    if problem is None:
        return ModelChoice("trained", version, folder)
    for candidate, candidate_folder in registry.serving_candidates(models_dir, project):
        if candidate != version and registry.model_problem(candidate_folder, schema, candidate) is None:
            return ModelChoice("trained", candidate, candidate_folder, note=f"{problem}; the backend serves this one")
    raise ModelError(f"{problem}, and no other version fits: train for this schema or pass --cold-start")


def load_predictor(choice: ModelChoice, settings: Settings, schema: Schema) -> Predictor:
    """Build the chosen model exactly as the backend does (its factories), in the calling process (an actor)."""
    from backend.app import default_predictors

    cold_start, trained = default_predictors(settings, schema)
    predictor = trained(choice.version, choice.folder) if choice.kind == "trained" else cold_start()
    if predictor.model_version != choice.version:  # resume and Label Studio's skip rule both key on the version
        raise ModelError(
            f"the loaded model says it is {predictor.model_version!r}, not {choice.version!r}: "
            "was the registry changed during the run? Run again"
        )
    return predictor


def settings_for(models_dir: Path | None, threads: int, **overrides: Any) -> Settings:
    """The backend's settings (WORKBENCH_* environment variables included) with the run's models folder and each
    actor's thread count: `threads` intra-op threads per actor, so actors do not oversubscribe the cores."""
    from backend.settings import Settings

    values = {"models_dir": models_dir, "threads": threads, **overrides}
    return Settings(**{k: v for k, v in values.items() if v is not None})
