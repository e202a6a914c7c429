"""Stance toward a per-task claim: a dimension that reads its text paired with another task field (`pair_with`).

Every reader must see both fields: the schema and config, the cold start, the instant learner, the trained model
(its encoder's pair pass and its companions), /predict and the export. The check throughout: swap the headlines
between tasks and the answers change.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from annotation_config.label_config import render_label_config
from annotation_config.regions import labels_to_results
from annotation_config.schema import Schema, SchemaError, load_schema, parse_schema

PAIR_SCHEMA = {
    "name": "headline-body",
    "data": {"text": "body", "key": "key", "group": "body_id", "context": [{"name": "headline", "title": "Headline"}]},
    "dimensions": [
        {
            "name": "stance",
            "kind": "single",
            "field": "body",
            "pair_with": "headline",
            "unrelated_label": "unrelated",
            "labels": [
                {"value": "agree", "definition": "The body confirms the headline."},
                {"value": "disagree", "definition": "The body refutes the headline.", "cues": ["hoax"]},
                {"value": "unrelated", "definition": "The body is about something else."},
            ],
        }
    ],
}
TOPICS = {
    "volcano": "The volcano near the coastal town erupted overnight, sending ash and lava over the valley.",
    "merger": "The two banks agreed on a merger worth four billion dollars, shareholders said on Monday.",
    "vaccine": "The new malaria vaccine cut infections by half in a trial across three countries.",
    "comet": "Astronomers tracked a bright comet passing close to Earth, visible before dawn this week.",
    "strike": "Railway workers began a national strike over pay, halting trains across the country.",
    "drought": "A long drought has dried the rivers and farmers lost most of the wheat harvest.",
}
HEADLINES = {
    "volcano": ("Volcano erupts overnight, ash over the valley", "Volcano eruption story is a hoax"),
    "merger": ("Banks agree four billion dollar merger", "Bank merger report is a hoax"),
    "vaccine": ("Malaria vaccine halves infections in trial", "Malaria vaccine trial is a hoax"),
    "comet": ("Bright comet passes close to Earth", "Comet near Earth is a hoax"),
    "strike": ("Railway workers strike over pay", "Railway strike claim is a hoax"),
    "drought": ("Drought dries rivers, wheat harvest lost", "Drought harvest story is a hoax"),
}


def pair_tasks() -> list[dict]:
    """Per body: an agreeing, a refuting and two unrelated headlines (another body's), labelled."""
    schema = parse_schema(PAIR_SCHEMA)
    topics = list(TOPICS)
    tasks = []
    for b, topic in enumerate(topics):
        other = [topics[(b + 1) % len(topics)], topics[(b + 2) % len(topics)]]
        pairs = [
            (HEADLINES[topic][0], "agree"),
            (HEADLINES[topic][1], "disagree"),
            (HEADLINES[other[0]][0], "unrelated"),
            (HEADLINES[other[1]][1], "unrelated"),
        ]
        for h, (headline, stance) in enumerate(pairs):
            n = len(tasks) + 1
            data = {"key": f"{topic}-{h}", "headline": headline, "body": TOPICS[topic], "body_id": topic}
            result = labels_to_results(schema, {"stance": stance}, data)
            tasks.append({"id": n, "data": data, "annotations": [{"id": n, "completed_by": 1, "result": result}]})
    return tasks


def swapped(records: list[dict]) -> list[dict]:
    """The same bodies, each with the next record's headline."""
    return [{**r, "headline": records[(i + 1) % len(records)]["headline"]} for i, r in enumerate(records)]


@pytest.fixture(scope="module")
def pair_schema() -> Schema:
    return parse_schema(PAIR_SCHEMA)


@pytest.fixture(scope="module")
def pair_schema_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "pairs.yaml"
    path.write_text(yaml.safe_dump(PAIR_SCHEMA))
    return path


@pytest.fixture(scope="module")
def embedder():
    from backend.cold_start.embedder import SentenceEmbedder

    return SentenceEmbedder(runtime="onnx", precision="int8", threads=2)


def test_the_schema_checks_the_paired_field_and_the_config_shows_it(pair_schema: Schema):
    def broken(**changes) -> str:
        raw = json.loads(json.dumps(PAIR_SCHEMA))
        raw["dimensions"][0].update(changes)
        with pytest.raises(SchemaError) as error:
            parse_schema(raw, "s.yaml")
        return str(error.value)

    assert "pair_with: 'claim' must be another text or context field" in broken(pair_with="claim")
    assert "must be another text or context field than 'body'" in broken(pair_with="body")
    assert "unrelated_label: 'off' must be one of" in broken(unrelated_label="off")
    assert "unrelated_label: only for a dimension with pair_with" in broken(pair_with=None)
    assert "schema targets (per_target) or a task field" in broken(per_target=True)
    assert pair_schema.dimension("stance").pair_with == "headline"
    config = render_label_config(pair_schema)
    assert '<Text name="headline" value="$headline" />' in config  # annotators see the claim above the body


def test_the_fnc1_bench_schema_is_valid_and_paired():
    schema = load_schema(Path(__file__).parents[1] / "bench" / "schemas" / "fnc1.yaml")
    assert schema.dimension("stance").pair_with == "headline" and schema.data.group == "body_id"


def test_the_cold_start_answers_unrelated_when_the_two_texts_are_far_apart(pair_schema: Schema, embedder):
    from training.cold_start import ColdStartPredictor

    cold = ColdStartPredictor(pair_schema, embedder)
    body = TOPICS["volcano"]
    related = {"headline": HEADLINES["volcano"][0], "body": body}
    refuted = {"headline": HEADLINES["volcano"][1], "body": body + " Officials called the reports a hoax."}
    unrelated = {"headline": HEADLINES["merger"][0], "body": body}
    answers = [p.labels.get("stance") for p in cold.predict([related, refuted, unrelated])]
    assert answers[0] != "unrelated" and answers[1] == "disagree" and answers[2] == "unrelated"


def test_the_instant_learner_reads_the_headline(pair_schema: Schema, embedder):
    from backend.instant_learner import InstantLearner
    from training.cold_start import ColdStartPredictor

    learner = InstantLearner(pair_schema, embedder, ColdStartPredictor(pair_schema, embedder))
    learner.load_tasks(pair_tasks())
    predictor = learner.fit()
    assert predictor is not None and "stance" in predictor.learned
    records = [t["data"] for t in pair_tasks()[:8]]
    before = [p.labels["stance"] for p in predictor.predict(records)]
    after = [p.labels["stance"] for p in predictor.predict(swapped(records))]
    assert before != after


@pytest.fixture(scope="module")
def trained_pairs(pair_schema: Schema, tmp_path_factory):
    from tests.test_training_pipeline import TINY
    from training.pipeline import run_training

    models = tmp_path_factory.mktemp("pair-models")
    args = replace(TINY, epochs=0, split_ratios=(0.67, 0.17, 0.16))
    outcome = run_training(pair_tasks(), pair_schema, models, args, source="pairs")
    return outcome, models


def test_a_trained_model_reads_both_fields_in_every_part(trained_pairs):
    from training.modeling import encode_views
    from training.predict import TrainedPredictor

    outcome, _ = trained_pairs
    predictor = TrainedPredictor(outcome.model_dir)
    (view,) = predictor.config.views
    assert (view.pair_field, view.field) == ("headline", "body")
    records = [t["data"] for t in pair_tasks()]
    # the encoder's pass holds the headline's tokens, then the body's
    encoded = encode_views(predictor.tokenizer, predictor.config, records[:1])[0][view.id]
    text = predictor.tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)
    assert text.startswith(records[0]["headline"].lower()[:20]) and "ash and lava" in text
    for part in (predictor.ngram, predictor.embedding_heads):  # each companion reads the headline too
        assert part is not None and part.heads["stance"].field == "headline>body"
    assert set(predictor.embedding_heads.fields) == {"headline", "body"}
    answers = [p.labels["stance"] for p in predictor.predict(records)]
    gold = [t["annotations"][0]["result"][0]["value"]["choices"][0] for t in pair_tasks()]
    assert np.mean([a == g for a, g in zip(answers, gold, strict=True)]) >= 0.9  # it learnt the pairs it saw
    assert answers != [p.labels["stance"] for p in predictor.predict(swapped(records))]


def test_the_encoder_learns_from_the_pair_when_its_heads_weigh_something(pair_schema: Schema, tmp_path):
    from tests.test_training_pipeline import TINY
    from training.pipeline import run_training
    from training.predict import TrainedPredictor, run_model

    args = replace(TINY, epochs=0, ngram_weight=0.3, embedding_weight=0.3, split_ratios=(0.67, 0.17, 0.16))
    outcome = run_training(pair_tasks(), pair_schema, tmp_path / "models", args, source="pairs")
    assert "companion_only_views" not in json.loads((outcome.model_dir / "manifest.json").read_text())["chosen"]
    predictor = TrainedPredictor(outcome.model_dir, runtime="torch-fp32")  # run_model below needs torch's encoder
    assert predictor.views is None  # its heads weigh 0.4: the pair pass serves
    records = [t["data"] for t in pair_tasks()]
    raw = run_model(predictor.model, predictor.tokenizer, records)
    flipped = run_model(predictor.model, predictor.tokenizer, swapped(records))
    assert not np.allclose(raw.logits["stance"], flipped.logits["stance"])


def test_without_fine_tuning_a_pass_the_companions_answer_is_not_probed(trained_pairs):
    from training.predict import TrainedPredictor, run_model

    outcome, _ = trained_pairs
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    assert manifest["chosen"]["companion_only_views"] == ["headline>body"]
    predictor = TrainedPredictor(outcome.model_dir, runtime="torch-fp32")  # run_model below needs torch's encoder
    # its heads answer the training rows' add-one smoothed label shares (whole counts over n + 3), whatever the pair
    logits = run_model(predictor.model, predictor.tokenizer, [t["data"] for t in pair_tasks()[:5]]).logits["stance"]
    assert np.allclose(logits, logits[0])
    shares = np.exp(logits[0]) / np.exp(logits[0]).sum()
    train_size = manifest["splits"]["train"]
    assert shares * (train_size + 3) == pytest.approx(np.round(shares * (train_size + 3)), abs=5e-3)


def test_a_pass_whose_answers_weigh_nothing_is_skipped_and_changes_nothing(trained_pairs):
    from training.predict import TrainedPredictor

    outcome, _ = trained_pairs
    predictor = TrainedPredictor(outcome.model_dir)
    assert predictor.views == []  # encoder weight 0, both companions have a stance head: no encoder pass serves
    records = [t["data"] for t in pair_tasks()]
    skipped = predictor.predict(records)
    predictor.views = None
    assert [p.labels for p in predictor.predict(records)] == [p.labels for p in skipped]
    full = [p.scores["stance"] for p in predictor.predict(records)]
    assert full == pytest.approx([p.scores["stance"] for p in skipped])
    predictor.embedding_heads.weight = 0.3  # the encoder's heads weigh 0.2 now: its pass serves again
    assert predictor._needed_views() is None


def test_predict_serves_a_per_task_claim(trained_pairs, pair_schema_file):
    from backend.app import create_app
    from backend.settings import Settings

    outcome, models = trained_pairs
    assert outcome.promotion is not None and outcome.promotion.promoted
    app = create_app(Settings(models_dir=models, schema_path=pair_schema_file, reload_interval=0.05))
    records = [t["data"] for t in pair_tasks()[:8]]
    with TestClient(app) as client:

        def stances(datas: list[dict]) -> list[str]:
            body = client.post("/predict", json={"tasks": [{"id": i, "data": d} for i, d in enumerate(datas)]})
            assert body.status_code == 200, body.text
            results = body.json()["results"]
            assert {r["model_version"] for r in results} == {outcome.version}
            return [r["result"][0]["value"]["choices"][0] for r in results]

        assert stances(records) != stances(swapped(records))


def test_the_export_keeps_each_task_s_claim(pair_schema: Schema, tmp_path):
    from datasets import load_dataset

    from exchange.dataset import export_dataset

    folder, _ = export_dataset(pair_tasks(), pair_schema, tmp_path / "out", salt="s", source="a test")
    aggregated = load_dataset(str(folder), "aggregated", cache_dir=str(tmp_path / "hf-cache"))
    rows = [row for part in aggregated.values() for row in part]
    by_key = {row["key"]: row for row in rows}
    assert len(by_key) == len(pair_tasks())
    for task in pair_tasks():
        row = by_key[task["data"]["key"]]
        assert row["headline"] == task["data"]["headline"] and row["body"] == task["data"]["body"]


def test_a_headline_body_csv_imports_one_task_per_pair(pair_schema: Schema, tmp_path):
    import csv

    from exchange.importer import as_label_studio_tasks, read_file
    from training.data import accept

    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:  # no key column: keys come from the content
        writer = csv.writer(handle)
        writer.writerow(["headline", "body", "body_id", "stance"])
        for task in pair_tasks():
            data = task["data"]
            stance = task["annotations"][0]["result"][0]["value"]["choices"][0]
            writer.writerow([data["headline"], data["body"], data["body_id"], stance])
    parsed = read_file(path, pair_schema)
    assert not parsed.rejected and not parsed.duplicates  # one body with four headlines is four tasks
    assert len(parsed.tasks) == len(pair_tasks())
    examples = accept(as_label_studio_tasks(parsed, pair_schema), pair_schema).examples
    assert sorted((e.data["headline"], e.labels["stance"]) for e in examples) == sorted(
        (t["data"]["headline"], t["annotations"][0]["result"][0]["value"]["choices"][0]) for t in pair_tasks()
    )


def test_cross_validation_reports_the_encoder_alone_only_when_it_learnt(pair_schema: Schema):
    from tests.test_training_pipeline import TINY
    from training.crossval import model_method
    from training.data import accept

    examples = accept(pair_tasks(), pair_schema).examples
    train, test = examples[:16], examples[16:]
    unprobed = model_method(replace(TINY, epochs=0))(pair_schema, train, test, 3)
    assert list(unprobed) == ["trained model"]  # its encoder heads answer label shares: nothing to report
    probed = model_method(replace(TINY, epochs=0, ngram_weight=0.3, embedding_weight=0.3))(pair_schema, train, test, 3)
    assert list(probed) == ["trained model", "trained model, encoder heads alone"]
    assert len(probed["trained model, encoder heads alone"]) == len(test)
