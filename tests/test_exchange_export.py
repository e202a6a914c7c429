"""`exchange.dataset`: the dataset folder loads with `datasets`, holds exactly the accepted and raw labels, uses the
training splits, pseudonymises annotators, carries a complete card, and is replaced atomically."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from annotation_config.regions import labels_to_results
from studio.provision import DEFAULT_TASKS_PATH, read_tasks, task_data
from training.data import accept, build_dataset

ANNOTATORS = (11, 12, 13)
EMAIL = "carol@example.com"  # one annotation names its annotator by e-mail, as expanded exports do


def _span(text: str, word: str, label: str) -> dict:
    start = text.index(word)
    return {"start": start, "end": start + len(word), "label": label}


def three_annotator_tasks(schema) -> list[dict]:
    """A Label Studio JSON export: 12 sample tasks from 5 articles, 3 annotators, with every case the policy knows.

    Task 0: annotator 13 is ground truth (wins the stance). Task 1: 13 cancelled, 11 and 12 tie on the threat (held
    out). Task 2: 12 answered twice (the later one counts). Task 3: 13 is named by e-mail. Other tasks: 13 dissents
    on the stance every third task. Tasks 10 and 11 have no annotation.
    """
    tasks = read_tasks(DEFAULT_TASKS_PATH, schema)
    picked = [tasks[i] for i in (0, 1, 2, 20, 21, 40, 41, 60, 61, 80, 90, 100)]
    ids = itertools.count(1)
    out = []
    for i, task in enumerate(picked):
        data = task_data(task, schema)
        text = data["text"]
        actor = next((w for w in ("Russia", "China", "NATO", "Washington", "Ukraine") if w in text), None)
        annotations = []
        if i < 10:
            for who in ANNOTATORS:
                stance = ("favor", "against", "none")[i % 3]
                if who == 13 and i % 3 == 0:
                    stance = "none" if stance != "none" else "favor"
                labels = {
                    "stance_russia_china": stance,
                    "threat_characterization": "genuine" if who != 12 or i != 1 else "manufactured",
                    "frames": ["Security_and_defense"] + (["Political"] if who != 12 else []),
                    "evidence": [_span(text, actor, "actor")] if actor and who != 12 else [],
                }
                if i == 1 and who == 13:
                    labels = {}
                annotation = {
                    "id": next(ids),
                    "completed_by": {"id": who, "email": EMAIL} if (i == 3 and who == 13) else who,
                    "result": labels_to_results(schema, labels, data),
                    "was_cancelled": i == 1 and who == 13,
                    "ground_truth": i == 0 and who == 13,
                    "lead_time": 10.0 + who + i,
                    "created_at": f"2026-01-{i + 1:02d}T10:00:{who:02d}.000000Z",
                    "updated_at": f"2026-01-{i + 1:02d}T10:05:{who:02d}.000000Z",
                }
                annotations.append(annotation)
            if i == 2:
                later = dict(annotations[1], id=next(ids), updated_at="2026-01-03T11:00:00.000000Z")
                later["result"] = labels_to_results(schema, {"stance_russia_china": "favor", "frames": []}, data)
                annotations.append(later)
        out.append({"id": 100 + i, "data": data, "annotations": annotations})
    return out


def decode(row: dict, features, schema) -> dict:
    """A dataset row's labels as a label record (names; missing answers left out), like `Example.labels`."""
    labels = {}
    for dim in schema.dimensions:
        value, feature = row[dim.name], features[dim.name]
        if dim.kind == "single":
            if value != -1:
                labels[dim.name] = feature.int2str(value)
        elif value is not None:
            names = feature.feature if dim.kind == "multi" else feature.feature["label"]
            if dim.kind == "multi":
                labels[dim.name] = [names.int2str(v) for v in value]
            else:
                labels[dim.name] = [
                    {"start": s["start"], "end": s["end"], "label": names.int2str(s["label"])} for s in value
                ]
    return labels


def load(folder: Path, config: str, tmp_path: Path):
    from datasets import load_dataset

    return load_dataset(str(folder), config, cache_dir=str(tmp_path / "hf-cache"))


def test_export_loads_with_datasets_and_holds_the_accepted_and_raw_labels(tmp_path, schema):
    from datasets import ClassLabel
    from huggingface_hub import DatasetCard

    from exchange.dataset import export_dataset, pseudonym

    tasks = three_annotator_tasks(schema)
    folder, bundle = export_dataset(tasks, schema, tmp_path / "out", salt="pepper", source="a test")
    accepted = accept(tasks, schema)

    aggregated = load(folder, "aggregated", tmp_path)
    rows = {row["key"]: (row, part.features) for part in aggregated.values() for row in part}
    assert sorted(rows) == sorted(e.key for e in accepted.examples)
    for example in accepted.examples:
        row, features = rows[example.key]
        assert decode(row, features, schema) == example.labels
        assert row["text"] == example.data["text"] and row["title"] == example.data["title"]
        assert row["article_id"] == example.data["article_id"] and row["paragraph"] == example.data["paragraph"]
        assert row["n_annotators"] == example.annotators
    features = aggregated["train"].features
    assert isinstance(features["threat_characterization"], ClassLabel)
    assert features["threat_characterization"].names == schema.dimension("threat_characterization").values
    held = rows[tasks[1]["data"]["key"]][0]
    assert held["threat_characterization"] == -1  # the tie is held out: -1, never a guessed label
    assert rows[tasks[0]["data"]["key"]][0]["stance_russia_china"] == features["stance_russia_china"].str2int("none")
    assert held["evidence"] is not None and held["stance_us_policy"] == -1

    raw = load(folder, "raw", tmp_path)["train"]
    submitted = [(t, a) for t in tasks for a in t["annotations"]]
    assert len(raw) == len(submitted) == 31
    for row, (task, annotation) in zip(raw, submitted, strict=True):
        who = annotation["completed_by"]
        assert row["key"] == task["data"]["key"]
        assert row["annotator"] == pseudonym(who["id"] if isinstance(who, dict) else who, "pepper")
        assert re.fullmatch(r"a-[0-9a-f]{16}", row["annotator"])
        assert (row["lead_time"], row["was_cancelled"], row["ground_truth"]) == (
            annotation["lead_time"],
            annotation["was_cancelled"],
            annotation["ground_truth"],
        )
        assert row["updated_at"].isoformat().startswith(annotation["updated_at"][:19])
        if not annotation["was_cancelled"]:
            from annotation_config.regions import results_to_labels

            expected = results_to_labels(schema, annotation["result"], task["data"])
            expected = {k: v for k, v in expected.items() if v is not None}
            got = decode(row, raw.features, schema)
            for dim in schema.of_kind("spans"):
                got.setdefault(dim.name, [])
                expected[dim.name] = [{k: s[k] for k in ("start", "end", "label")} for s in expected[dim.name]]
            assert got == expected
    assert len(set(raw["annotator"])) == 3
    blob = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert EMAIL.encode() not in blob and b"carol" not in blob

    card = DatasetCard.load(folder / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"] and "text-classification" in meta["task_categories"]
    assert meta["pretty_name"] == schema.name
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["aggregated"]["default"] is True
    assert {f["split"] for f in configs["aggregated"]["data_files"]} == set(bundle.split_sizes)
    assert configs["raw"]["data_files"] == [{"split": "train", "path": "raw/train-*.parquet"}]
    for dim in schema.dimensions:
        for label in dim.labels:
            assert label.definition in card.text
    assert "indirect stance counts" in card.text  # the annotator instructions
    assert "| `stance_russia_china` |  | 10 |" in card.text  # agreement row: 10 tasks coded at least twice
    assert "1 task dimensions are held out (1 tie)" in card.text


def test_splits_are_the_training_splits(tmp_path, schema):
    from exchange.dataset import export_dataset

    tasks = three_annotator_tasks(schema)
    _, bundle = export_dataset(tasks, schema, tmp_path / "out", salt="s", seed=7)
    trained = build_dataset(accept(tasks, schema).examples, schema, seed=7)
    for name, part in bundle.aggregated.items():
        assert sorted(part["key"]) == sorted(trained[name]["key"])
    assert sum(bundle.split_sizes.values()) == 10 and len(bundle.split_sizes) >= 2


def test_salt_makes_pseudonyms_linkable_only_when_shared(tmp_path, schema, monkeypatch):
    from exchange.dataset import build_export

    tasks = three_annotator_tasks(schema)
    names = lambda bundle: bundle.raw["train"]["annotator"]  # noqa: E731
    first = build_export(tasks, schema, salt="shared")
    assert names(first) == names(build_export(tasks, schema, salt="shared"))
    assert set(names(first)).isdisjoint(names(build_export(tasks, schema, salt="other")))
    monkeypatch.setenv("WORKBENCH_EXPORT_SALT", "shared")
    from_env = build_export(tasks, schema)
    assert (from_env.salt_source, names(from_env)) == ("environment", names(first))
    monkeypatch.delenv("WORKBENCH_EXPORT_SALT")
    random = build_export(tasks, schema)
    assert random.salt_source == "random" and set(names(random)).isdisjoint(names(first))


def test_writing_is_atomic_and_never_replaces_foreign_folders(tmp_path, schema, monkeypatch):
    from exchange import dataset_card
    from exchange.dataset import DatasetExportError, export_dataset

    tasks = three_annotator_tasks(schema)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetExportError, match="not an export of this tool"):
        export_dataset(tasks, schema, foreign, salt="s")
    assert (foreign / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    export_dataset(tasks, schema, out, salt="s")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(dataset_card, "build_dataset_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_dataset(tasks[:3], schema, out, salt="s")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]  # no temporary folder left behind
    monkeypatch.undo()

    export_dataset(tasks[:1], schema, out, salt="s")  # one group: everything in train
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == [
        "aggregated/train-00000-of-00001.parquet",
        "raw/train-00000-of-00001.parquet",
    ]


def test_nothing_accepted_is_one_line(tmp_path, schema):
    from exchange.dataset import DatasetExportError, export_dataset

    tasks = [dict(t, annotations=[]) for t in three_annotator_tasks(schema)]
    with pytest.raises(DatasetExportError, match="no accepted annotations to export"):
        export_dataset(tasks, schema, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_other_schema_exports_its_own_columns(tmp_path, schema):
    from annotation_config.schema import load_schema
    from exchange.dataset import export_dataset

    other = load_schema(Path(__file__).parent / "fixtures" / "headline_body.yaml")
    data = {"id": "n1", "body": "The match ended 2-1.", "headline": "Smith scores twice"}
    labels = {"clickbait": "no", "topics": ["sport"], "names": [{"start": 0, "end": 5, "label": "person"}]}
    tasks = [
        {
            "id": 1,
            "data": data,
            "annotations": [{"id": 1, "completed_by": 1, "result": labels_to_results(other, labels, data)}],
        }
    ]
    folder, _ = export_dataset(tasks, other, tmp_path / "out", salt="s")
    row = load(folder, "aggregated", tmp_path)["train"][0]
    assert (row["id"], row["headline"], row["clickbait"]) == ("n1", "Smith scores twice", 1)
    assert row["names"] == [{"start": 0, "end": 5, "text": "Smith", "label": 0}]
    assert json.loads(json.dumps(row["topics"])) == [0]


def _export_cli(out: Path, tasks: list[dict], tmp_path: Path, capsys) -> tuple[int, list[str]]:
    """`workbench export --out OUT` in this process (so monkeypatches apply): exit code and stderr lines."""
    from workbench.cli import main

    source = tmp_path / "export.json"
    source.write_text(json.dumps(tasks), encoding="utf-8")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["export", "--out", str(out), "--from-export", str(source), "--salt", "s"])
    return done.value.code, capsys.readouterr().err.strip().splitlines()


def test_export_refuses_a_model_folder_whose_card_carries_the_tool_tag(tmp_path, schema, capsys):
    """`export --out models/<version>` deleted the promoted model: its model card carries the same tag."""
    from training.model_card import build_card

    model = tmp_path / "models" / "20260101T000000-aaaa0001"
    model.mkdir(parents=True)
    build_card({"version": model.name}, {}).save(model / "README.md")
    (model / "manifest.json").write_text('{"version": "20260101T000000-aaaa0001"}')
    (model / "model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    assert "- stance-workbench" in before["README.md"].decode()

    code, lines = _export_cli(model, three_annotator_tasks(schema), tmp_path, capsys)
    assert code == 1 and len(lines) == 1
    assert str(model) in lines[0] and "not an export of this tool" in lines[0] and "--out" in lines[0]
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name]  # no temporary folder beside it

    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export_cli(empty, three_annotator_tasks(schema), tmp_path, capsys)[0] == 0
    assert _export_cli(empty, three_annotator_tasks(schema), tmp_path, capsys)[0] == 0  # its own export: replaced


def test_a_full_disk_is_one_line_and_leaves_the_previous_export_whole(tmp_path, schema, monkeypatch, capsys):
    import errno
    import os

    from datasets import Dataset

    tasks = three_annotator_tasks(schema)
    out = tmp_path / "out"
    assert _export_cli(out, tasks, tmp_path, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / ".workbench-export").is_file()

    def full_disk(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Dataset, "to_parquet", full_disk)
    code, lines = _export_cli(out, tasks[:3], tmp_path, capsys)
    assert code == 1
    assert lines == [
        f"error: cannot write the export to {out} (No space left on device); nothing there was changed: free space "
        "or choose another --out"
    ]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json", "out"]  # no half-written folder left
