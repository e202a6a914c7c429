"""The model registries: per project, version folders and a `registry.json` pointer, switched atomically.

Layout: one registry per Label Studio project, so a model trained on one project's labels never serves another.
  models/projects/<project>/registry.json   {"current": version | null, "history": [{"action", "version", ...}]}
  models/projects/<project>/<version>/      weights, tokenizer, label_maps.json, calibration.json, thresholds.json
      (multi-choice decision thresholds), ngram.npz + embedding_heads.npz (the blend's companions), prior.npz,
      metrics.json, manifest.json, README.md (model card), test.jsonl / validation.jsonl (held-out rows for the
      gate), gate_counts.npz (its answers on the test rows, training/gate.py), groups.json (the split groups it
      learnt from)
`<project>` is the Label Studio project id ("1"), or "default" for data that names no project. A models folder of
the older single-registry layout (registry.json and versions at its top) is moved into this one on first use
(`migrate_single_registry`): each version goes to the project its manifest's `source` names.

A version folder is written under a hidden temporary name and renamed when complete, and registry.json is replaced
with os.replace, so a crash never leaves a half-written model or pointer visible. Versions look like
`20261122T193000-<8 hex of the data hash>` (unique, sortable by time). Promotion pushes a version on a stack kept
in the history; rollback pops it. This module imports no torch: the backend polls `current_model()` cheaply.

It also holds the contract between the backend's job runner and the `workbench train` it starts (a job token,
the exit code of a skipped run) and `model_problem`, the one check that a model's label maps fit a schema, used
by promotion and by the backend before it serves a model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotation_config.errors import WorkbenchError
from annotation_config.jsonl import jsonl_lines
from training.pairs import reading

if TYPE_CHECKING:
    from annotation_config.schema import Schema
    from training.gate import Comparison, RowCounts

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
LABEL_MAPS_FILE = "label_maps.json"
TRASH_PREFIX = ".trash-"  # a version being deleted: renamed to this hidden name first, then removed

# Jobs the backend starts (backend/jobs.py). The runner creates an empty token file and names it in
# JOB_TOKEN_ENV; the job may promote only if it removes the token first (`claim_job_token`), and the runner removes
# it when it gives up on the job, so exactly one side wins. A run that `--if-new-data` skipped exits with the
# code in SKIPPED_EXIT_ENV (the runner sets SKIPPED_EXIT_CODE) instead of 0, so the runner can report "skipped".
JOB_TOKEN_ENV = "WORKBENCH_JOB_TOKEN"
SKIPPED_EXIT_ENV = "WORKBENCH_SKIPPED_EXIT_CODE"
SKIPPED_EXIT_CODE = 3
GATE_SPLITS = ("test", "validation")  # a version's held-out rows for the gate: its first non-empty split
GROUPS_FILE = "groups.json"  # {"column": group column, "train": [...], "validation": [...], "test": [...]}
NO_HELD_OUT_ROWS = (
    "no held-out rows to test it on (too few labelled tasks, or too few groups, for a test split), so it would serve "
    "unchecked; label more tasks, or promote with --force if you checked the model"
)
GATE_MIN_UNSEEN = 20  # fewer rows new to the current model than this: the gate compares on the whole split
PROJECTS_DIR = "projects"
DEFAULT_PROJECT = "default"  # the registry of data that names no Label Studio project
_PROJECT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SOURCE_PROJECT = re.compile(r"/projects/(\d+)/?$")  # a manifest's source "<Label Studio URL>/projects/<id>"

# (model folder, gold rows) -> training.gate.RowCounts of the model's answers; the default runs the model.
Answerer = Callable[[Path, Sequence[Mapping[str, Any]]], "RowCounts"]


def _worse_dimensions(report: Mapping[str, Any], rival: Mapping[str, float]) -> str:
    """ "frames 0.48 < 0.61, ..." for the dimensions where the candidate's macro-F1 is below the rival's."""
    from training.evaluation import dimension_score

    worse = []
    for name, theirs in rival.items():
        mine = dimension_score((report.get("dimensions") or {}).get(name) or {})
        if mine is not None and theirs is not None and mine < theirs:
            worse.append(f"{name} {mine:.2f} < {theirs:.2f}")
    return ", ".join(worse)


def project_id(project: object) -> str:
    """The registry name of a project: Label Studio's id ("3" from 3, "3" or "3.1700000000"), DEFAULT_PROJECT for
    None; RegistryError for anything that could name a path outside the models folder."""
    if project is None or str(project).strip() == "":
        return DEFAULT_PROJECT
    value = str(project).strip().split(".")[0]
    if not _PROJECT_ID.match(value):
        raise RegistryError(f"{project!r} is not a project id (digits, letters, '-' or '_')")
    return value


def project_dir(models_dir: str | os.PathLike, project: object) -> Path:
    """The registry folder of one project inside a models folder."""
    return Path(models_dir) / PROJECTS_DIR / project_id(project)


def project_registry(models_dir: str | os.PathLike, project: object) -> Registry:
    """The registry of one project (an older single registry in `models_dir` is migrated first)."""
    migrate_single_registry(models_dir)
    return Registry(project_dir(models_dir, project))


def projects(models_dir: str | os.PathLike) -> list[str]:
    """The projects with a registry folder in `models_dir`, sorted (numbers by value)."""
    root = Path(models_dir) / PROJECTS_DIR
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and _PROJECT_ID.match(p.name)]
    return sorted(names, key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name))


def source_project(manifest: Mapping[str, Any]) -> str:
    """The project a version was trained for, from its manifest's `source` (a Label Studio project URL), else
    DEFAULT_PROJECT (an export file)."""
    match = _SOURCE_PROJECT.search(str(manifest.get("source") or ""))
    return match.group(1) if match else DEFAULT_PROJECT


def migrate_single_registry(models_dir: str | os.PathLike) -> dict[str, str]:
    """Move an older single registry (registry.json and version folders at the top of `models_dir`) into per-project
    registries; returns {version: project} of what moved ({} when there was nothing to do).

    Each version goes to the project its manifest's `source` names; the pointer and the history go with the
    versions they name. Safe to repeat after a crash: folders already moved are found where they went, and the old
    registry.json is renamed to registry.json.migrated only at the end.
    """
    root = Path(models_dir)
    legacy_pointer = root / REGISTRY_FILE
    if not root.is_dir():
        return {}
    legacy_versions = [p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()]
    if not legacy_pointer.exists() and not legacy_versions:
        return {}
    with open(root / ".registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _migrate_locked(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _migrate_locked(root: Path) -> dict[str, str]:
    legacy = Registry(root)
    data = legacy.read() if (root / REGISTRY_FILE).exists() else {"current": None, "history": []}
    where: dict[str, str] = {}
    for folder in [p for p in root.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()]:
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
        project = source_project(manifest)
        target = project_dir(root, project)
        target.mkdir(parents=True, exist_ok=True)
        os.rename(folder, target / folder.name)
        where[folder.name] = project
    for name in projects(root):  # versions moved by an earlier, interrupted migration
        for folder in project_dir(root, name).iterdir():
            if folder.is_dir():
                where.setdefault(folder.name, name)
    per_project: dict[str, dict[str, Any]] = {}
    for entry in data["history"]:
        project = where.get(str(entry.get("version")))
        if project is not None:
            per_project.setdefault(project, {"current": None, "history": []})["history"].append(entry)
    if data["current"] in where:
        per_project.setdefault(where[data["current"]], {"current": None, "history": []})["current"] = data["current"]
    for project, content in per_project.items():
        pointer = project_dir(root, project) / REGISTRY_FILE
        if pointer.exists():  # written by an interrupted migration, or trained into since: keep what it says
            continue
        write_json_atomic(pointer, content)
    if (root / REGISTRY_FILE).exists():
        os.replace(root / REGISTRY_FILE, root / f"{REGISTRY_FILE}.migrated")
    if where:
        log.warning("moved %d model version(s) into per-project registries under %s", len(where), root / PROJECTS_DIR)
    return where


class RegistryError(WorkbenchError, ValueError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to, ...)."""


class PromotionRefused(RegistryError):
    """The promotion gate said no; the message says why."""


class RegistryWriteError(RegistryError, OSError):
    """The models folder could not be written (disk full, not a folder, ...); what was there is unchanged."""


@dataclass
class PromotionResult:
    """What `promote` decided and why."""

    promoted: bool
    version: str
    previous: str | None
    reason: str
    candidate_score: float | None = None
    current_score: float | None = None
    split: str | None = None
    comparison: dict[str, Any] | None = None  # training.gate.Comparison: the paired bootstrap behind the decision

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return asdict(self)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync, then os.replace it over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def claim_job_token(path: str | os.PathLike) -> bool:
    """Take a job token: True for the one caller whose unlink removed it, False for every caller after that.

    unlink is atomic, so the job (just before it promotes) and the runner (when it gives up on the job) can race
    for it without a lock: if the runner wins the job never promotes, if the job wins the runner knows it did.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def model_problem(folder: str | os.PathLike, schema: Schema, version: str | None = None) -> str | None:
    """Why the model in `folder` cannot serve `schema` (one line), or None when its label maps fit it.

    Fits: the same dimensions, each of the same kind, reading the same text field, with the same set of labels
    (the order may differ: the model names its outputs with its own label list).
    """
    folder = Path(folder)
    name, theirs = f"model {version or folder.name}", f"schema {schema.name!r}"
    path = folder / LABEL_MAPS_FILE
    try:
        maps = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{name} has no {LABEL_MAPS_FILE}, so it cannot be checked against {theirs}"
    except (OSError, ValueError) as error:
        return f"{name}: unreadable {LABEL_MAPS_FILE} ({error})"
    if not isinstance(maps, dict) or not all(isinstance(entry, dict) for entry in maps.values()):
        return f"{name}: {LABEL_MAPS_FILE} is not a mapping of dimension -> label map"
    wanted = {dim.name: dim for dim in schema.dimensions}
    missing = [n for n in wanted if n not in maps]
    extra = [n for n in maps if n not in wanted]
    if missing:
        return f"{name} has no dimension {', '.join(map(repr, missing))} but {theirs} has"
    if extra:
        return f"{name} has dimension {', '.join(map(repr, extra))} but {theirs} has not"
    for dim in schema.dimensions:
        entry = maps[dim.name]
        if entry.get("kind") != dim.kind:
            return f"{name}: dimension {dim.name!r} is {entry.get('kind')!r} but {theirs} has {dim.kind!r}"
        id2label = entry.get("id2label") or {}
        try:  # JSON keys are strings: "0", "1", ...
            labels = [str(id2label[key]) for key in sorted(id2label, key=int)]
        except (TypeError, ValueError):
            return f"{name}: dimension {dim.name!r} has an unreadable id2label in {LABEL_MAPS_FILE}"
        if sorted(labels) != sorted(dim.values):
            return f"{name}: dimension {dim.name!r} has labels {labels} but {theirs} has {dim.values}"
        # the view is "<field>", "<field>|<target id>" or "<paired field>><field>" (training/pairs.py)
        field = str(entry.get("view") or "").split("|")[0]
        want = reading(dim.field or schema.data.text, dim.pair_with)
        if field and field != want:
            return f"{name}: dimension {dim.name!r} reads field {field!r} but {theirs} reads {want!r}"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine with that id runs (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """Versions under one models folder, the current pointer, promotion (gated) and rollback."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    # ---- reading (cheap, torch-free) ----

    def read(self) -> dict[str, Any]:
        """The registry file's content ({"current": None, "history": []} when there is none yet)."""
        path = self.root / REGISTRY_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"current": None, "history": []}
        except (OSError, ValueError) as error:
            raise RegistryError(f"{path}: unreadable registry ({error}); restore it or remove it") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{path}: not a registry (expected an object with 'current' and 'history')")
        data.setdefault("current", None)
        data.setdefault("history", [])
        current, history = data["current"], data["history"]
        if not (current is None or isinstance(current, str)) or not isinstance(history, list):
            raise RegistryError(f"{path}: 'current' must be a version or null and 'history' a list; restore it")
        if not all(isinstance(entry, dict) for entry in history):
            raise RegistryError(f"{path}: every 'history' entry must be an object; restore the file")
        return data

    def current(self) -> str | None:
        """The promoted version, or None."""
        return self.read()["current"]

    def current_dir(self) -> Path | None:
        """The promoted version's folder, or None."""
        version = self.current()
        return self.root / version if version else None

    def versions(self) -> list[str]:
        """Complete version folders, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).exists()
        )

    def path(self, version: str) -> Path:
        """The folder of a complete version (RegistryError if there is none)."""
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"{version!r} is not a model version; see `workbench models list`")
        folder = self.root / version
        if not (folder / MANIFEST_FILE).exists():
            known = ", ".join(self.versions()[-5:]) or "none yet"
            raise RegistryError(f"no model version {version!r} in {self.root} (latest: {known})")
        return folder

    def manifest(self, version: str) -> dict[str, Any]:
        """A version's manifest.json."""
        return json.loads((self.path(version) / MANIFEST_FILE).read_text(encoding="utf-8"))

    def metrics(self, version: str) -> dict[str, Any]:
        """A version's metrics.json ({} when absent)."""
        path = self.path(version) / METRICS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def stack(self) -> list[str]:
        """Promoted versions, oldest first, with rolled-back ones removed; the last one is current."""
        stack: list[str] = []
        for entry in self.read()["history"]:
            if entry.get("action") == "promote":
                stack.append(entry["version"])
            elif entry.get("action") == "rollback" and stack:
                stack.pop()
        return stack

    def list(self) -> list[dict[str, Any]]:
        """Every version with its data hash, creation time, test score and status (current/previous/candidate)."""
        current = self.current()
        stack = self.stack()
        history = self.read()["history"]
        promoted_ever = {e["version"] for e in history if e.get("action") == "promote"}
        decided = {e["version"]: e for e in history if e.get("action") in ("promote", "refused")}  # the latest
        out = []
        for version in self.versions():
            try:
                manifest = self.manifest(version)
            except (OSError, ValueError):
                manifest = {}
            status = "current" if version == current else ("previous" if version in stack else "candidate")
            if status == "candidate" and version in promoted_ever:
                status = "rolled back"
            out.append(
                {
                    "version": version,
                    "status": status,
                    "created_at": manifest.get("created_at"),
                    "data_hash": manifest.get("data_hash"),
                    "schema_hash": manifest.get("schema_hash"),
                    "examples": manifest.get("examples"),
                    "primary": (manifest.get("scores") or {}).get("test"),
                    "gate": _gate_summary(decided.get(version)),
                }
            )
        return out

    # ---- writing ----

    def new_version(self, data_hash: str, when: dt.datetime | None = None) -> str:
        """A fresh version string: UTC time to the second plus a short data hash, bumped until unused."""
        when = (when or _now()).astimezone(dt.UTC).replace(microsecond=0)
        while True:
            version = f"{when:%Y%m%dT%H%M%S}-{data_hash[:8]}"
            if not (self.root / version).exists():
                return version
            when += dt.timedelta(seconds=1)

    @contextlib.contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A hidden folder to write a version into; renamed to `<root>/<version>` only when the block succeeds.

        An OSError (disk full, models folder not writable or not a folder) becomes one RegistryWriteError line.
        """
        tmp = self.root / f".staging-{version}-{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._clean_stale_staging()
            target = self.root / version
            if target.exists():
                raise RegistryError(f"model version {version!r} already exists in {self.root}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            if not (tmp / MANIFEST_FILE).exists():
                raise RegistryError(f"model version {version!r} was not finished (no {MANIFEST_FILE} written)")
            os.rename(tmp, target)
            _fsync_dir(self.root)
        except OSError as error:
            raise RegistryWriteError(f"could not save model version {version} in {self.root}: {error}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _clean_stale_staging(self) -> None:
        for folder in self.root.glob(".staging-*"):
            pid = folder.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
        for leftover in self.root.glob(".*.tmp"):  # pointer writes cut short by a kill: ".registry.json.<pid>.tmp"
            pid = leftover.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not pid_alive(int(pid)):
                leftover.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the registry lock and yield its content; write it back atomically when the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".registry.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                data = self.read()
                before = json.dumps(data, sort_keys=True)
                yield data
                if json.dumps(data, sort_keys=True) != before:
                    try:
                        write_json_atomic(self.root / REGISTRY_FILE, data)
                    except OSError as error:  # disk full: the old pointer stays, whole
                        raise RegistryWriteError(f"could not update {self.root / REGISTRY_FILE}: {error}") from None
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def promote(
        self,
        version: str,
        force: bool = False,
        answer: Answerer | None = None,
        *,
        schema: Schema | None = None,
        job_token: str | os.PathLike | None = None,
    ) -> PromotionResult:
        """Make `version` current unless the gate finds it worse than what serves, on evidence.

        The gate scores the candidate and what serves on the same rows of the candidate's held-out split: the
        candidate's answers as its training run saved them (heads fitted without those rows), the current model's on
        the rows it never learnt from (all of the split when fewer than GATE_MIN_UNSEEN are new to it), the first
        model's rivals' as the run recorded them. A paired bootstrap (training/gate.py) refuses only a candidate
        worse with 90% confidence; a candidate with no held-out rows at all is refused (it would serve unchecked).
        A decision is recorded in the history with its reason and interval; `force=True` skips the comparison.
        With `schema`, a model whose label maps do not fit it is refused, forced or not (it could not serve). With
        `job_token` (a backend job), the promotion happens only if this call claims the token: a job the backend
        gave up on never promotes.
        """
        folder = self.path(version)
        with self._locked() as data:
            current = data["current"]
            if current == version:
                return PromotionResult(False, version, current, f"{version} is already the current model")
            if not (folder / MANIFEST_FILE).exists():  # pruned between path() and the lock
                raise RegistryError(f"model version {version!r} was removed from {self.root}")
            problem = model_problem(folder, schema, version) if schema is not None else None
            if problem is not None:
                result = PromotionResult(False, version, current, problem)
            else:
                result = self._gate(version, folder, current, force, answer or _default_answerer)
            # Claimed last, under the lock and after the slow gate, so a give-up during the gate still wins.
            if result.promoted and job_token is not None and not claim_job_token(job_token):
                reason = "the backend gave up on this training job (timed out or shutting down)"
                result = PromotionResult(False, version, current, reason)
            entry = {
                "action": "promote" if result.promoted else "refused",
                "version": version,
                "at": _now().isoformat(),
            }
            entry.update({"previous": current, "reason": result.reason})
            if result.candidate_score is not None:
                entry["candidate_score"] = result.candidate_score
            if result.current_score is not None:
                entry["current_score"] = result.current_score
            if result.comparison is not None:
                entry["comparison"] = result.comparison
            data["history"].append(entry)
            if result.promoted:
                data["current"] = version
            return result

    def _gate(self, version: str, folder: Path, current: str | None, force: bool, answer: Answerer) -> PromotionResult:
        if force:
            return PromotionResult(True, version, current, f"forced over {current}" if current else "forced")
        if current is None:
            return self._against_rivals(version, folder, answer)
        if not (self.root / current / MANIFEST_FILE).exists():
            return PromotionResult(True, version, current, f"the current model folder {current} is missing")
        candidate, serving = self.manifest(version), self.manifest(current)
        if candidate.get("schema_hash") != serving.get("schema_hash"):
            return PromotionResult(
                True,
                version,
                current,
                f"the schema changed ({serving.get('schema_hash')} -> "
                f"{candidate.get('schema_hash')}): the current model cannot answer it",
            )
        split, rows = self.held_out_rows(version)
        if not rows:
            return PromotionResult(False, version, current, NO_HELD_OUT_ROWS)
        unseen = self.unseen_by(current, rows)
        where = f"on the {len(unseen)} rows of its {split} split that {current} never learnt from"
        if len(unseen) < GATE_MIN_UNSEEN:  # too few new rows to judge: all of them, though the current one saw some
            unseen = list(range(len(rows)))
            where = f"on its {split} split, parts of which {current} learnt from (which favours it)"
        from training.gate import paired_bootstrap

        shared = [rows[i] for i in unseen]
        mine = self._own_counts(version, folder, rows, answer).take(unseen)
        comparison = paired_bootstrap(mine, answer(self.root / current, shared))
        return self._decide(version, current, comparison, f"the current model {current}", where, split)

    def _decide(
        self, version: str, current: str | None, comparison: Comparison, rival: str, where: str, split: str
    ) -> PromotionResult:
        """Promote unless the comparison shows the candidate worse with GATE_CONFIDENCE."""
        scores = (comparison.candidate, comparison.current, split, comparison.to_dict())
        if comparison.refused:
            reason = f"worse than {rival} {where}: {comparison.describe()}; use --force to promote anyway"
            return PromotionResult(False, version, current, reason, *scores)
        reason = f"not worse than {rival} {where}: {comparison.describe()}"
        return PromotionResult(True, version, current, reason, *scores)

    def held_out_rows(self, version: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(split, rows) of a version's held-out rows for the gate: its first non-empty split of GATE_SPLITS."""
        for split in GATE_SPLITS:
            rows = read_rows(self.root / version / f"{split}.jsonl")
            if rows:
                return split, rows
        return None, []

    def unseen_by(self, version: str, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Indices of the rows whose split group `version` never learnt from (its served heads are refitted on all
        its splits, so all count); every row when the version does not say (versions before groups.json)."""
        groups = _read_groups(self.root / version)
        if groups is None:
            return list(range(len(rows)))
        column = groups["column"]
        seen = {str(g) for split in ("train", "validation", "test") for g in groups.get(split, [])}
        return [i for i, row in enumerate(rows) if str(row.get(column)) not in seen]

    def _own_counts(self, version: str, folder: Path, rows: Sequence[Mapping[str, Any]], answer: Answerer) -> RowCounts:
        """A version's answers on its held-out rows as its training run saved them (heads that never saw the rows);
        the saved model's own answers for versions from before that file (its served heads may have seen them)."""
        from training.gate import COUNTS_FILE
        from training.gate import RowCounts as Counts

        path = folder / COUNTS_FILE
        if path.exists():
            counts = Counts.load(path)
            if counts.n == len(rows):
                return counts
        return answer(folder, rows)

    def _against_rivals(self, version: str, folder: Path, answer: Answerer) -> PromotionResult:
        """The first fine-tuned model replaces what serves before it (the cold start, then the instant learner) unless
        it is worse than one of them on its held-out rows, where the training run recorded their answers
        (metrics.json "rivals"). A candidate without held-out rows is refused: it would serve unchecked."""
        split, rows = self.held_out_rows(version)
        if not rows:
            return PromotionResult(False, version, None, NO_HELD_OUT_ROWS)
        metrics = self.metrics(version)
        rivals = {
            name: rival
            for name, rival in (metrics.get("rivals") or {}).items()
            if rival and len(rival.get("answers") or []) == len(rows)
        }
        if not rivals:
            score = (metrics.get(split) or {}).get("primary")
            reason = f"first promoted model; no rival was scored on its {split} split (n={len(rows)})"
            return PromotionResult(True, version, None, reason, score, None, split)
        from training.evaluation import answers_row_counts
        from training.gate import paired_bootstrap

        dimensions = self.manifest(version).get("dimensions") or []
        mine = self._own_counts(version, folder, rows, answer)
        shown = {"cold_start": "the cold start", "instant_learner": "the instant learner"}
        where = f"on its {split} split"
        results = []
        for name, rival in rivals.items():
            comparison = paired_bootstrap(mine, answers_row_counts(dimensions, rows, rival["answers"]))
            result = self._decide(version, None, comparison, shown.get(name, name), where, split)
            if not result.promoted:
                worse = _worse_dimensions(metrics.get(split) or {}, rival.get("dimensions") or {})
                if worse:
                    result.reason = result.reason.replace("; use --force", f"; worse on {worse}; use --force")
                return result
            results.append(result)
        best = max(results, key=lambda r: r.current_score if r.current_score is not None else -1.0)
        best.reason = "first promoted model; " + best.reason
        return best

    def prune(self, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions, never the current or the previous one; returns what went.

        Crash-safe: under the registry lock (no promotion or rollback can pick a version meanwhile) each folder is
        renamed to a hidden `.trash-*` name, which removes it from every listing at once and whole; the trash is
        then deleted. A crash in between leaves only hidden trash, which the next prune removes.
        """
        if keep < 1:
            raise RegistryError(f"keep at least one model version (got {keep})")
        removed: list[str] = []
        with self._locked() as data:
            stack = self.stack()
            protected = {data["current"], *stack[-2:]}  # the current one and the rollback target
            for version in self.versions()[:-keep]:
                if version in protected:
                    continue
                try:
                    os.rename(self.root / version, self.root / f"{TRASH_PREFIX}{version}-{os.getpid()}")
                except OSError as error:  # left in place: the next prune tries again
                    log.warning("could not remove model version %s: %s", version, error)
                    continue
                removed.append(version)
            _fsync_dir(self.root)
        for trash in self.root.glob(f"{TRASH_PREFIX}*"):  # ours, and any a crashed prune left
            shutil.rmtree(trash, ignore_errors=True)
        return removed

    def fallback_versions(self) -> list[str]:
        """Versions to serve when the current one cannot, best first: the promotion stack from the top down, then
        every other complete version, newest first."""
        present = self.versions()
        try:
            stack = self.stack()
        except RegistryError:  # an unreadable pointer file: only the folders are known
            stack = []
        order = [v for v in reversed(stack) if v in present]
        return list(dict.fromkeys(order + present[::-1]))

    def rollback(self) -> str:
        """Switch back to the version that was current before the current one was promoted; returns it."""
        with self._locked() as data:
            stack = self.stack()
            if len(stack) < 2:
                raise RegistryError("nothing to roll back to: fewer than two versions were promoted")
            current, previous = stack[-1], stack[-2]
            if not (self.root / previous / MANIFEST_FILE).exists():
                raise RegistryError(f"cannot roll back to {previous}: its folder is missing from {self.root}")
            data["history"].append(
                {"action": "rollback", "version": previous, "from": current, "at": _now().isoformat()}
            )
            data["current"] = previous
            return previous


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file ([] when absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for _, line in jsonl_lines(path.read_text(encoding="utf-8"))]


def _gate_summary(entry: Mapping[str, Any] | None) -> str | None:
    """The gate's last word on a version, for `models list`: the difference and its 90% interval, or the reason."""
    if not entry:
        return None
    comparison = entry.get("comparison") or {}
    if comparison.get("difference") is not None:
        return (
            f"{comparison['difference']:+.3f} [{comparison['low']:+.3f}, {comparison['high']:+.3f}] "
            f"n={comparison['n']}"
        )
    return str(entry.get("reason") or "")[:60] or None


def _read_groups(folder: Path) -> dict[str, Any] | None:
    """A version's groups.json (None for versions from before it was written, or unreadable)."""
    try:
        groups = json.loads((folder / GROUPS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return groups if isinstance(groups, dict) and isinstance(groups.get("column"), str) else None


def _default_answerer(folder: Path, rows: Sequence[Mapping[str, Any]]) -> RowCounts:
    from training.evaluation import model_row_counts

    return model_row_counts(folder, rows)


# ---- module-level helpers for the backend and the command line ----


def current_model(models_dir: str | os.PathLike, project: object = None) -> tuple[str, Path] | None:
    """(version, folder) of a project's promoted model, or None."""
    registry = project_registry(models_dir, project)
    version = registry.current()
    # Through path(): a hand-edited pointer ("../elsewhere") can never make the backend load outside the registry.
    return (version, registry.path(version)) if version else None


def serving_candidates(models_dir: str | os.PathLike, project: object = None) -> list[tuple[str, Path]]:
    """(version, folder) of every version of a project the backend may fall back to, best first."""
    registry = project_registry(models_dir, project)
    return [(version, registry.root / version) for version in registry.fallback_versions()]


def list_versions(models_dir: str | os.PathLike, project: object = None) -> list[str]:
    """All complete versions of a project, oldest first."""
    return project_registry(models_dir, project).versions()
