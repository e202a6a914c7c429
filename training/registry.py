"""The model registry: `models/<version>/` folders and a `registry.json` pointer, switched atomically.

Layout:
  models/registry.json        {"current": version | null, "history": [{"action", "version", "at", ...}, ...]}
  models/<version>/           weights, tokenizer, label_maps.json, calibration.json, metrics.json, manifest.json,
                              README.md (model card), test.jsonl / validation.jsonl (held-out rows for the gate)

A version folder is written under a hidden temporary name and renamed when complete, and registry.json is replaced
with os.replace, so a crash never leaves a half-written model or pointer visible. Versions look like
`20261122T193000-<8 hex of the data hash>` (unique, sortable by time). Promotion pushes a version on a stack kept
in the history; rollback pops it. This module imports no torch: the backend polls `current_model()` cheaply.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from annotation_config.errors import WorkbenchError

REGISTRY_FILE = "registry.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
GATE_SPLITS = ("test", "validation")  # the candidate's held-out rows the gate compares on, first non-empty wins

# (model folder, rows) -> evaluation report with a "primary" score; the default runs training.evaluation.
Evaluator = Callable[[Path, Sequence[Mapping[str, Any]]], Mapping[str, Any]]


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


def _pid_alive(pid: int) -> bool:
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
        data.setdefault("current", None)
        data.setdefault("history", [])
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
        promoted_ever = {e["version"] for e in self.read()["history"] if e.get("action") == "promote"}
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
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
        for leftover in self.root.glob(".*.tmp"):  # pointer writes cut short by a kill: ".registry.json.<pid>.tmp"
            pid = leftover.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not _pid_alive(int(pid)):
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
        evaluate: Evaluator | None = None,
        tolerance: float = 0.0,
    ) -> PromotionResult:
        """Make `version` current if it is not worse than the current model on the candidate's held-out rows.

        Both models are scored with the same primary metric on the same rows (the candidate's test split, or its
        validation split when the test split is empty). A refusal is recorded in the history and returned with
        its reason; `force=True` skips the comparison.
        """
        folder = self.path(version)
        with self._locked() as data:
            current = data["current"]
            if current == version:
                return PromotionResult(False, version, current, f"{version} is already the current model")
            result = self._gate(version, folder, current, force, evaluate or _default_evaluator, tolerance)
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
            data["history"].append(entry)
            if result.promoted:
                data["current"] = version
            return result

    def _gate(
        self, version: str, folder: Path, current: str | None, force: bool, evaluate: Evaluator, tolerance: float
    ) -> PromotionResult:
        if current is None:
            return PromotionResult(True, version, None, "first promoted model")
        if force:
            return PromotionResult(True, version, current, f"forced over {current}")
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
        for split in GATE_SPLITS:
            rows = read_rows(folder / f"{split}.jsonl")
            if rows:
                break
        else:
            return PromotionResult(
                False,
                version,
                current,
                "no held-out examples to compare on (too little data for a test split); "
                "promote with --force if you checked the model",
            )
        candidate_score = (self.metrics(version).get(split) or {}).get("primary")
        if candidate_score is None:
            candidate_score = evaluate(folder, rows).get("primary")
        current_score = evaluate(self.root / current, rows).get("primary")
        where = f"on the candidate's {split} split (n={len(rows)})"
        if candidate_score is None:
            return PromotionResult(
                False, version, current, f"the candidate has no score {where}", None, current_score, split
            )
        if current_score is None or candidate_score + tolerance >= current_score:
            shown = "n/a" if current_score is None else f"{current_score:.4f}"
            reason = f"not worse than {current}: {candidate_score:.4f} vs {shown} {where}"
            return PromotionResult(True, version, current, reason, candidate_score, current_score, split)
        reason = (
            f"worse than the current model {current}: {candidate_score:.4f} < {current_score:.4f} "
            f"(mean macro-F1) {where}; use --force to promote anyway"
        )
        return PromotionResult(False, version, current, reason, candidate_score, current_score, split)

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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _default_evaluator(folder: Path, rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    from training.evaluation import evaluate_model

    return evaluate_model(folder, rows)


# ---- module-level helpers for the backend and the command line ----


def current_model(models_dir: str | os.PathLike) -> tuple[str, Path] | None:
    """(version, folder) of the promoted model, or None."""
    registry = Registry(models_dir)
    version = registry.current()
    # Through path(): a hand-edited pointer ("../elsewhere") can never make the backend load outside the registry.
    return (version, registry.path(version)) if version else None


def list_versions(models_dir: str | os.PathLike) -> list[str]:
    """All complete versions, oldest first."""
    return Registry(models_dir).versions()


def current(models_dir: str | os.PathLike) -> str | None:
    """The promoted version, or None."""
    return Registry(models_dir).current()


def promote(models_dir: str | os.PathLike, version: str, force: bool = False) -> PromotionResult:
    """Promote a version through the gate (see `Registry.promote`)."""
    return Registry(models_dir).promote(version, force=force)


def rollback(models_dir: str | os.PathLike) -> str:
    """Roll back to the previously promoted version."""
    return Registry(models_dir).rollback()
