"""The acceptance policy over Label Studio annotations, grouped seeded splits, and the data hash."""

from __future__ import annotations

import json

import pytest

from studio.source import ExportError, load_export
from training.data import (
    AcceptancePolicy,
    Example,
    accept,
    build_dataset,
    data_hash,
    split_examples,
    splits_of_folds,
)

TEXT = "Moscow calls the invasion warnings Western propaganda and hype."


def choice(dim: str, *values: str) -> dict:
    return {"from_name": dim, "to_name": "text", "type": "choices", "value": {"choices": list(values)}}


def span(word: str, label: str, text: str = TEXT) -> dict:
    start = text.index(word)
    return {
        "from_name": "evidence",
        "to_name": "text",
        "type": "labels",
        "value": {"start": start, "end": start + len(word), "text": word, "labels": [label]},
    }


def annotation(who: int, *result: dict, **extra) -> dict:
    return {
        "id": 1000 + who,
        "completed_by": who,
        "result": list(result),
        "was_cancelled": False,
        "ground_truth": False,
        "updated_at": f"2026-01-0{who}T00:00:00Z",
        **extra,
    }


def task(*annotations: dict, task_id: int = 1, text: str = TEXT, article: str = "a1") -> dict:
    return {
        "id": task_id,
        "data": {"key": f"k{task_id}", "text": text, "title": "T", "article_id": article},
        "annotations": list(annotations),
    }


def test_majority_wins_for_single_choice(schema):
    t = task(
        annotation(1, choice("threat_characterization", "manufactured")),
        annotation(2, choice("threat_characterization", "manufactured")),
        annotation(3, choice("threat_characterization", "genuine")),
    )
    out = accept([t], schema)
    assert out.examples[0].labels["threat_characterization"] == "manufactured"
    assert out.examples[0].annotators == 3
    assert out.held_out == []


def test_tie_is_held_out_and_other_dimensions_still_count(schema):
    t = task(
        annotation(1, choice("threat_characterization", "manufactured"), choice("stance_us_policy", "against")),
        annotation(2, choice("threat_characterization", "genuine"), choice("stance_us_policy", "against")),
    )
    out = accept([t], schema)
    assert out.examples[0].labels["stance_us_policy"] == "against"
    assert "threat_characterization" not in out.examples[0].labels  # missing, not a label
    (held,) = out.held_out
    assert (held.task_id, held.dimension) == (1, "threat_characterization")
    assert held.reason.startswith("tie")


def test_low_agreement_is_held_out():
    from annotation_config.schema import load_schema

    schema = load_schema()
    votes = ["manufactured", "manufactured", "genuine", "contested", "not_applicable"]
    t = task(*(annotation(i + 1, choice("threat_characterization", v)) for i, v in enumerate(votes)))
    out = accept([t], schema)
    assert out.held_out[0].reason.startswith("low agreement")
    relaxed = accept([t], schema, AcceptancePolicy(min_agreement=0.4))
    assert relaxed.examples[0].labels["threat_characterization"] == "manufactured"


def test_ground_truth_wins_for_the_dimensions_it_answers(schema):
    t = task(
        annotation(1, choice("threat_characterization", "genuine"), choice("stance_us_policy", "favor")),
        annotation(2, choice("threat_characterization", "genuine"), choice("stance_us_policy", "favor")),
        annotation(3, choice("threat_characterization", "manufactured"), ground_truth=True),
    )
    labels = accept([t], schema).examples[0].labels
    assert labels["threat_characterization"] == "manufactured"  # ground truth beats a 2-1 majority
    assert labels["stance_us_policy"] == "favor"  # ground truth did not answer: majority of the others


def test_ground_truth_counts_even_when_its_author_annotated_again_later(schema):
    truth = annotation(3, choice("threat_characterization", "contested"), ground_truth=True)
    later = annotation(3, choice("threat_characterization", "genuine"), updated_at="2026-03-01T00:00:00Z")
    other = annotation(1, choice("threat_characterization", "genuine"))
    labels = accept([task(truth, later, other)], schema).examples[0].labels
    assert labels["threat_characterization"] == "contested"


def test_cancelled_annotations_and_empty_tasks_do_not_count(schema):
    skipped = annotation(2, choice("threat_characterization", "genuine"), was_cancelled=True)
    t = task(annotation(1, choice("threat_characterization", "manufactured")), skipped)
    out = accept([t, task(task_id=2), task(skipped, task_id=3)], schema)
    assert [e.key for e in out.examples] == ["k1"]
    assert out.examples[0].labels["threat_characterization"] == "manufactured"
    assert out.examples[0].annotators == 1
    assert out.unlabeled == 2


def test_one_vote_per_annotator_the_latest(schema):
    old = annotation(1, choice("threat_characterization", "genuine"), updated_at="2026-01-01T00:00:00Z")
    new = annotation(1, choice("threat_characterization", "contested"), updated_at="2026-02-01T00:00:00Z")
    assert accept([task(new, old)], schema).examples[0].labels["threat_characterization"] == "contested"


def test_multi_choice_per_label_majority_and_empty_means_no_frames(schema):
    t = task(
        annotation(1, choice("frames", "Economic", "Political")),
        annotation(2, choice("frames", "Political")),
        annotation(3),  # submitted with nothing ticked: answered "no frames"
    )
    labels = accept([t], schema).examples[0].labels
    assert labels["frames"] == ["Political"]  # Political 2 of 3 kept, Economic 1 of 3 dropped
    two = task(annotation(1, choice("frames", "Economic")), annotation(2))
    assert accept([two], schema).examples[0].labels["frames"] == []  # 1 of 2 is not strictly more than half


def test_spans_need_a_strict_majority_and_no_spans_is_missing(schema):
    t = task(
        annotation(1, span("Moscow", "actor"), span("propaganda", "framing_cue")),
        annotation(2, span("Moscow", "actor"), span("hype", "framing_cue")),
        annotation(3, span("Moscow", "actor"), span("propaganda", "framing_cue")),
    )
    spans = accept([t], schema).examples[0].labels["evidence"]
    assert [(TEXT[s["start"] : s["end"]], s["label"]) for s in spans] == [
        ("Moscow", "actor"),
        ("propaganda", "framing_cue"),
    ]
    no_spans = task(annotation(1, choice("threat_characterization", "genuine")))
    assert "evidence" not in accept([no_spans], schema).examples[0].labels
    policy = AcceptancePolicy(empty_spans_answer=True)
    assert accept([no_spans], schema, policy).examples[0].labels["evidence"] == []


def test_invalid_results_hold_the_task_out(schema):
    bad = {"from_name": "threat_characterization", "to_name": "text", "value": {"choices": ["invented"]}}
    t = task(annotation(1, choice("threat_characterization", "genuine")), annotation(2, bad))
    out = accept([t], schema)
    assert out.examples == []
    (held,) = out.held_out
    assert held.dimension is None
    assert held.reason.startswith("invalid result: annotation 1002: result[0] (threat_characterization)")
    assert "unknown label 'invented'" in held.reason


def test_load_export_reads_json_and_reports_bad_files(tmp_path, schema):
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task(annotation(1, choice("stance_us_policy", "none")))]))
    assert accept(load_export(path), schema).examples[0].labels == {"stance_us_policy": "none", "frames": []}
    (tmp_path / "min.json").write_text(json.dumps([{"text": "x", "stance_us_policy": "none"}]))
    with pytest.raises(ExportError, match="JSON_MIN"):
        load_export(tmp_path / "min.json")
    with pytest.raises(ExportError, match="no such export file"):
        load_export(tmp_path / "missing.json")


def labelled(sample_tasks: list[dict]) -> list[Example]:
    cycle = ["favor", "against", "none"]
    return [
        Example(t["key"], i, t, {"stance_russia_china": cycle[i % 3], "frames": ["Political"] if i % 2 else []})
        for i, t in enumerate(sample_tasks)
    ]


def test_splits_are_grouped_by_article_and_deterministic(schema, sample_tasks):
    examples = labelled(sample_tasks)
    parts = split_examples(examples, schema, seed=7)
    groups = {name: {e.data["article_id"] for e in part} for name, part in parts.items()}
    assert groups["train"] and groups["validation"] and groups["test"]
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"])
    assert not groups["validation"] & groups["test"]
    assert sum(len(p) for p in parts.values()) == len(examples)
    again = split_examples(list(reversed(examples)), schema, seed=7)  # input order does not matter
    assert {k: [e.key for e in v] for k, v in again.items()} == {k: [e.key for e in v] for k, v in parts.items()}


def test_too_few_groups_train_on_everything(schema, sample_tasks):
    examples = [e for e in labelled(sample_tasks) if e.data["article_id"] == sample_tasks[0]["article_id"]]
    parts = split_examples(examples, schema)
    assert len(parts["train"]) == len(examples) and not parts["validation"] and not parts["test"]


def _articles(*sizes: int) -> list[Example]:
    """Examples from one article per size, that many paragraphs each, all answering the same stance."""
    return [
        Example(
            f"a{a}-p{p:02d}",
            None,
            {"key": f"a{a}-p{p:02d}", "text": "t", "article_id": f"a{a}"},
            {"stance_russia_china": "none"},
        )
        for a, size in enumerate(sizes)
        for p in range(size)
    ]


def test_a_grouped_split_gives_train_the_largest_share_of_uneven_groups(schema):
    """40 tasks from articles of 21, 17 and 2 paragraphs: the 2-paragraph article was the training split."""
    parts = split_examples(_articles(21, 17, 2), schema)
    sizes = {name: len(part) for name, part in parts.items()}
    assert sizes["train"] == 21 and sorted([sizes["validation"], sizes["test"]]) == [2, 17]
    assert split_examples(_articles(21, 17, 2, 3, 2), schema)["train"]  # more groups: still closest to 80/10/10


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.2, 0.0)])
def test_each_split_ends_within_a_fold_or_two_of_its_share(ratios):
    """Property, over seeded random fold sizes: every split with a ratio gets a fold, none runs more than the largest
    fold over its target row count (nor two under), and train is the largest split."""
    import random

    rng = random.Random(7)
    for _ in range(300):
        sizes = {fold: rng.randint(1, 30) for fold in range(rng.randint(3, 12))}
        split_of = splits_of_folds(sizes, ratios)
        assert set(split_of) == set(sizes)
        counts = {name: sum(n for fold, n in sizes.items() if split_of[fold] == name) for name in split_of.values()}
        total, largest = sum(sizes.values()), max(sizes.values())
        for name, ratio in zip(("train", "validation", "test"), ratios, strict=True):
            target = ratio * total
            assert (counts.get(name, 0) > 0) == (ratio > 0), (sizes, counts)
            assert -2 * largest <= counts.get(name, 0) - target <= largest, (sizes, counts)
        assert counts["train"] == max(counts.values()), (sizes, counts)


def test_dataset_columns_and_missing_labels(schema, sample_tasks):
    examples = labelled(sample_tasks)
    examples[0].labels["evidence"] = [{"start": 0, "end": 4, "label": "actor"}]
    dataset = build_dataset(examples, schema, seed=1)
    assert set(dataset) == {"train", "validation", "test"}
    assert sum(len(d) for d in dataset.values()) == len(examples)
    row = next(r for split in dataset.values() for r in split if r["key"] == examples[0].key)
    assert row["article_id"] == examples[0].data["article_id"] and row["title"] == examples[0].data["title"]
    assert row["stance_russia_china"] == "favor" and row["stance_us_policy"] is None
    assert row["frames"] == [] and row["threat_characterization"] is None
    assert row["evidence"] == [{"start": 0, "end": 4, "label": "actor"}]


def test_data_hash_is_order_independent_and_sees_label_changes(sample_tasks):
    examples = labelled(sample_tasks)
    assert data_hash(examples) == data_hash(list(reversed(examples)))
    old = examples[3].labels["stance_russia_china"]
    examples[3].labels["stance_russia_china"] = "favor" if old != "favor" else "none"
    assert data_hash(examples) != data_hash(labelled(sample_tasks))


def test_one_group_and_train_only_ratios_build_empty_splits(schema):
    """Regression: an empty split used to crash Dataset.from_list, and (1, 0, 0) crashed the group k-fold."""
    from training.data import Example, build_dataset

    examples = [
        Example(
            key=f"k{i}",
            task_id=i,
            data={"key": f"k{i}", "text": f"t {i}", "article_id": "one"},
            labels={"threat_characterization": "genuine"},
            annotators=1,
        )  # fmt: skip
        for i in range(4)
    ]
    for ratios in ((0.8, 0.1, 0.1), (1, 0, 0)):
        dataset = build_dataset(examples, schema, ratios=ratios)
        assert (len(dataset["train"]), len(dataset["validation"]), len(dataset["test"])) == (4, 0, 0)
        assert dataset["test"].features == dataset["train"].features
