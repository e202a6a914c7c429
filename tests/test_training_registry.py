"""The model registry: atomic pointer switches, the promotion gate, rollback, staging; no model weights needed."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.pipeline import unchanged_since
from training.registry import Registry, RegistryError, current_model, list_versions

SCORES = {}  # folder name -> primary score the fake evaluator reports


def fake_evaluator(folder: Path, rows):
    return {"primary": SCORES[folder.name], "n": len(rows)}


def add_version(
    registry: Registry, version: str, test_score: float | None, *, schema_hash="s1", data_hash="d1", rows=1
) -> str:
    with registry.staging(version) as folder:
        (folder / "metrics.json").write_text(json.dumps({"test": {"primary": test_score}}))
        (folder / "test.jsonl").write_text("".join(json.dumps({"key": f"k{i}"}) + "\n" for i in range(rows)))
        manifest = {
            "version": version,
            "data_hash": data_hash,
            "schema_hash": schema_hash,
            "scores": {"test": test_score},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
    SCORES[version] = test_score
    return version


def promote(registry: Registry, version: str, **kwargs):
    return registry.promote(version, evaluate=fake_evaluator, **kwargs)


def test_first_promotion_switches_the_pointer(tmp_path):
    registry = Registry(tmp_path)
    assert registry.current() is None and current_model(tmp_path) is None
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    result = promote(registry, v1)
    assert result.promoted and result.reason == "first promoted model"
    assert json.loads((tmp_path / "registry.json").read_text())["current"] == v1
    assert current_model(tmp_path) == (v1, tmp_path / v1)
    assert list_versions(tmp_path) == [v1]


def test_gate_refuses_a_worse_model_and_says_why(tmp_path):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.8)
    promote(registry, v1)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.5, rows=3)
    result = promote(registry, v2)
    assert not result.promoted
    assert "worse than the current model 20260101T000000-aaaa0001: 0.5000 < 0.8000" in result.reason
    assert "test split (n=3)" in result.reason and "--force" in result.reason
    assert registry.current() == v1
    assert registry.read()["history"][-1]["action"] == "refused"
    assert [e["status"] for e in registry.list()] == ["current", "candidate"]
    forced = promote(registry, v2, force=True)
    assert forced.promoted and registry.current() == v2


def test_an_equal_model_is_promoted(tmp_path):
    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.7))
    result = promote(registry, add_version(registry, "20260102T000000-bbbb0002", 0.7))
    assert result.promoted and "not worse" in result.reason
    assert (result.candidate_score, result.current_score, result.split) == (0.7, 0.7, "test")


def test_schema_change_promotes_and_no_held_out_rows_refuses(tmp_path):
    registry = Registry(tmp_path)
    promote(registry, add_version(registry, "20260101T000000-aaaa0001", 0.9))
    empty = add_version(registry, "20260102T000000-bbbb0002", None, rows=0)
    refused = promote(registry, empty)
    assert not refused.promoted and "no held-out examples" in refused.reason
    changed = add_version(registry, "20260103T000000-cccc0003", 0.1, schema_hash="s2")
    result = promote(registry, changed)
    assert result.promoted and "schema changed" in result.reason


def test_rollback_pops_back_to_the_previous_promoted_version(tmp_path):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.6)
    v3 = add_version(registry, "20260103T000000-cccc0003", 0.7)
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    promote(registry, v1)
    promote(registry, v2)
    assert registry.rollback() == v1 and registry.current() == v1
    promote(registry, v3)
    assert registry.stack() == [v1, v3]
    assert registry.rollback() == v1
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback()
    statuses = {e["version"]: e["status"] for e in registry.list()}
    assert statuses == {v1: "current", v2: "rolled back", v3: "rolled back"}


def test_a_crash_while_writing_leaves_no_visible_version(tmp_path):
    registry = Registry(tmp_path)
    with pytest.raises(RuntimeError), registry.staging("20260101T000000-aaaa0001") as folder:
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")
    assert registry.versions() == [] and list(tmp_path.iterdir()) == []
    with pytest.raises(RegistryError, match="not finished"), registry.staging("20260101T000000-aaaa0001"):
        pass  # no manifest written
    assert registry.versions() == []


def test_pointer_switch_is_atomic(tmp_path, monkeypatch):
    registry = Registry(tmp_path)
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5)
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.9)
    promote(registry, v1)
    before = (tmp_path / "registry.json").read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        promote(registry, v2)
    monkeypatch.undo()
    assert (tmp_path / "registry.json").read_text() == before  # the old pointer is intact
    assert registry.current() == v1


def test_versions_are_unique_and_sortable(tmp_path):
    registry = Registry(tmp_path)
    when = dt.datetime(2026, 11, 22, 19, 30, tzinfo=dt.UTC)
    first = registry.new_version("0123456789abcdef", when)
    assert first == "20261122T193000-01234567"
    add_version(registry, first, 0.1)
    second = registry.new_version("0123456789abcdef", when)
    assert second == "20261122T193001-01234567" and sorted([second, first]) == [first, second]


def test_unknown_versions_are_one_line_errors(tmp_path):
    with pytest.raises(RegistryError, match="no model version 'nope'"):
        Registry(tmp_path).promote("nope")
    with pytest.raises(RegistryError, match="not a model version"):
        Registry(tmp_path).path("../etc")


def test_if_new_data_sees_the_data_and_schema_of_the_last_model(tmp_path, schema):
    registry = Registry(tmp_path)
    assert unchanged_since(registry, "d1", schema) is None
    v1 = add_version(registry, "20260101T000000-aaaa0001", 0.5, data_hash="d1", schema_hash=schema.hash)
    promote(registry, v1)
    assert unchanged_since(registry, "d1", schema) == v1
    assert unchanged_since(registry, "d2", schema) is None
    v2 = add_version(registry, "20260102T000000-bbbb0002", 0.1, data_hash="d2", schema_hash=schema.hash)
    promote(registry, v2)  # refused: worse, but trained on d2 already
    assert registry.current() == v1 and unchanged_since(registry, "d2", schema) == v2


def test_registry_module_does_not_import_torch():
    code = "import sys, training.registry; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
