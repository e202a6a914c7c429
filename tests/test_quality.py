"""The model-quality pieces: n-gram heads, their blend into a trained model, cross-validation and its baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from annotation_config.schema import Schema
from training.baselines import majority, ngram_svm
from training.blend import blend
from training.crossval import as_tasks, cross_validate, mean_sd, score_split
from training.data import Example, accept, assign_folds, group_of
from training.embedding_heads import EMBEDDING_FILE, EmbeddingHeads, text_embeddings
from training.ngram import NGRAM_FILE, NgramModel
from training.predict import TrainedPredictor

SINGLE = {"name": "stance", "kind": "single", "field": "text", "labels": ["favor", "against", "none"]}
MULTI = {"name": "frames", "kind": "multi", "field": "text", "labels": ["economy", "security", "never"]}
ROWS = [
    {"text": "we love the plan, great news", "stance": "favor", "frames": ["economy"]},
    {"text": "great plan, we support it", "stance": "favor", "frames": ["economy"]},
    {"text": "shame on this plan, stop it", "stance": "against", "frames": ["security"]},
    {"text": "stop the plan, a disgrace", "stance": "against", "frames": ["security"]},
    {"text": "the plan was announced today", "stance": "none", "frames": []},
    {"text": "officials announced it today", "stance": "none", "frames": ["economy", "security"]},
    {"text": "unlabelled for stance", "stance": None, "frames": None},
]


def assert_same_probabilities(loaded: dict, saved: dict) -> None:
    """A save and load kept every head (weights are stored as float32: equal to 1e-5)."""
    assert set(loaded) == set(saved)
    for name, p in loaded.items():
        np.testing.assert_allclose(p, saved[name], rtol=1e-5, atol=1e-6)


def test_ngram_heads_learn_words_and_survive_a_save_and_load_unchanged(tmp_path):
    model = NgramModel.fit([SINGLE, MULTI], ROWS, weight=0.5)
    records = [{"text": "we support and love it"}, {"text": "stop this disgrace"}, {"text": "zzz qqq"}]
    probs = model.proba(records)
    stance = probs["stance"]
    assert stance.shape == (3, 3) and np.allclose(stance.sum(axis=1), 1.0)
    assert stance[0].argmax() == 0 and stance[1].argmax() == 1  # favor, against
    frames = probs["frames"]
    assert frames[:, 2].tolist() == [0.0, 0.0, 0.0]  # never ticked: its prior, 0
    model.save(tmp_path / NGRAM_FILE)
    loaded = NgramModel.load(tmp_path / NGRAM_FILE)
    assert loaded.weight == 0.5
    assert_same_probabilities(loaded.proba(records), probs)


def test_unseen_ngrams_are_dropped_as_a_vocabulary_would():
    model = NgramModel.fit([SINGLE], ROWS)
    features = model.features["text"]
    assert features.transform(["zzzz qqqq"]).nnz == 0
    assert features.transform(["great plan"]).nnz > 0


def test_the_blend_weighs_the_heads_and_leaves_other_dimensions_alone():
    model = NgramModel.fit([SINGLE], ROWS, weight=0.25)
    records = [{"text": "we love it"}]
    encoder = {"stance": np.array([[0.0, 0.0, 1.0]]), "other": np.array([[1.0, 0.0]])}
    heads = model.proba(records)["stance"]
    blended = blend(encoder, [(model.weight, model.proba(records))])
    np.testing.assert_allclose(blended["stance"], 0.75 * encoder["stance"] + 0.25 * heads)
    assert blended["other"] is encoder["other"]
    assert blend(encoder, [(0.0, model.proba(records))])["stance"] is encoder["stance"]
    # two companions: the encoder keeps what is left; a companion without a head leaves its share to the encoder
    second = {"stance": np.array([[1.0, 0.0, 0.0]])}
    both = blend(encoder, [(0.25, model.proba(records)), (0.5, second)])
    np.testing.assert_allclose(both["stance"], 0.25 * encoder["stance"] + 0.25 * heads + 0.5 * second["stance"])
    assert blend(encoder, [(0.5, {"other": np.array([[0.0, 1.0]])})])["other"].tolist() == [[0.5, 0.5]]


def test_a_multi_choice_label_needs_min_ticks_for_an_ngram_head_of_its_own():
    rows = [{**r, "frames": ["economy"]} if r["text"].startswith("officials") else r for r in ROWS]  # security: 2
    assert NgramModel.fit([MULTI], rows).heads["frames"].fitted.tolist() == [True, True, False]
    assert NgramModel.fit([MULTI], rows, min_ticks=3).heads["frames"].fitted.tolist() == [True, False, False]
    assert "frames" not in NgramModel.fit([MULTI], rows, min_ticks=4).heads  # no label ticked 4 times


def test_a_companion_leaves_its_share_of_a_label_it_did_not_learn_to_those_that_did():
    encoder = {"frames": np.array([[0.1, 0.1, 0.1]]), "stance": np.array([[0.2, 0.3, 0.5]])}
    ngram = {"frames": np.array([[0.2, 0.3, 0.05]]), "stance": np.array([[1.0, 0.0, 0.0]])}
    embedding = {"frames": np.array([[0.6, 0.9, 0.7]])}
    learnt = [{"frames": np.array([True, False, False])}, {"frames": np.array([True, True, False])}]
    mixed = blend(encoder, [(0.25, ngram), (0.5, embedding)], learnt)
    # label 0: both learnt it; label 1: the embedding heads take the n-gram share; label 2: no one did, unchanged
    expected = 0.25 * 0.1 + np.array([0.25 * 0.2 + 0.5 * 0.6, 0.75 * 0.9, 0.25 * 0.05 + 0.5 * 0.7])
    np.testing.assert_allclose(mixed["frames"][0], expected)
    np.testing.assert_allclose(mixed["stance"], 0.75 * encoder["stance"] + 0.25 * ngram["stance"])  # no mask
    np.testing.assert_allclose(
        blend(encoder, [(0.25, ngram), (0.5, embedding)])["frames"][0][1], 0.25 * 0.1 + 0.25 * 0.3 + 0.5 * 0.9
    )


def test_embedding_heads_learn_from_embeddings_and_survive_a_save_and_load(tmp_path):
    rng = np.random.default_rng(0)
    centres = {"favor": rng.normal(size=8), "against": rng.normal(size=8), "none": rng.normal(size=8)}
    rows = [r for r in ROWS if r["stance"] is not None]
    embeddings = {"text": np.stack([centres[r["stance"]] + 0.05 * rng.normal(size=8) for r in rows])}
    heads = EmbeddingHeads.fit([SINGLE, MULTI], rows, embeddings, weight=0.4)
    assert heads.fields == ["text"] and set(heads.heads) == {"stance", "frames"}
    test = {"text": np.stack([centres["against"], centres["favor"]])}
    probs = heads.proba(test)
    assert probs["stance"].argmax(axis=1).tolist() == [1, 0]
    heads.save(tmp_path / EMBEDDING_FILE)
    loaded = EmbeddingHeads.load(tmp_path / EMBEDDING_FILE)
    assert loaded.weight == 0.4
    assert_same_probabilities(loaded.proba(test), probs)


def test_weights_of_the_companions_are_checked():
    from training.training_args import TrainingArguments

    with pytest.raises(ValueError, match="ngram-weight \\+ embedding-weight must be at most 1"):
        TrainingArguments(ngram_weight=0.6, embedding_weight=0.5)
    with pytest.raises(ValueError, match="embedding-weight must be between 0 and 1"):
        TrainingArguments(embedding_weight=-0.1)


def test_a_trained_model_serves_the_blend_and_reports_its_encoder_alone(schema: Schema, tmp_path):
    from dataclasses import replace

    from tests.test_training_pipeline import TINY, choice, synthetic_export
    from training.pipeline import run_training

    args = replace(TINY, ngram_weight=0.3, embedding_weight=0.4)
    export = synthetic_export(16)
    for task in export[:16:5]:  # Economic on 4 rows: below ngram_min_ticks (5), and Security_and_defense on 8
        task["annotations"][0]["result"].append(choice("frames", "Economic"))
    outcome = run_training(export, schema, tmp_path / "models", args, source="synthetic")
    assert (outcome.model_dir / NGRAM_FILE).exists() and (outcome.model_dir / EMBEDDING_FILE).exists()
    assert "test_encoder" in outcome.metrics and "primary" in outcome.metrics["test_encoder"]
    predictor = TrainedPredictor(outcome.model_dir, runtime="torch-fp32")  # compared with torch's encoder below
    assert predictor.ngram is not None and predictor.ngram.weight == 0.3
    assert predictor.embedding_heads is not None and predictor.embedding_heads.weight == 0.4
    records = [{"text": "Moscow calls the warnings Western propaganda and hype.", "article_id": "x"}]
    raw = predictor.outputs(records)
    served = predictor.probabilities(raw, records)
    alone = raw.probabilities(predictor.dimensions, predictor.temperatures)
    # the embedding heads read the model's own encoder's embedding of the text
    embedding = text_embeddings(predictor.model.encoder, predictor.tokenizer, [records[0]["text"]])
    np.testing.assert_allclose(raw.embeddings["text"], embedding, rtol=1e-4, atol=1e-5)
    name = "threat_characterization"
    # ... and the cold start's answers, from that same embedding (training/prior.py)
    hints = predictor.prior.features(predictor.prior.answers(records, {"text": embedding}))
    expected = (
        0.3 * alone[name]
        + 0.3 * predictor.ngram.proba(records, hints)[name]
        + 0.4 * predictor.embedding_heads.proba({"text": embedding}, hints)[name]
    )
    np.testing.assert_allclose(served[name], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(served[name], alone[name])
    # frames: a label ticked too rarely for an n-gram head of its own is the embedding heads' alone, at both shares
    ngram_frames = predictor.ngram.heads["frames"]
    embedding_frames = predictor.embedding_heads.heads["frames"]
    handed_on = embedding_frames.fitted & ~ngram_frames.fitted
    both = embedding_frames.fitted & ngram_frames.fitted
    assert handed_on.any() and both.any()
    frames_ngram = predictor.ngram.proba(records, hints)["frames"]
    frames_embedding = predictor.embedding_heads.proba({"text": embedding}, hints)["frames"]
    np.testing.assert_allclose(
        served["frames"][:, handed_on],
        0.3 * alone["frames"][:, handed_on] + 0.7 * frames_embedding[:, handed_on],
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        served["frames"][:, both],
        0.3 * alone["frames"][:, both] + 0.3 * frames_ngram[:, both] + 0.4 * frames_embedding[:, both],
        rtol=1e-4,
        atol=1e-5,
    )


def _examples(schema: Schema, n: int = 24) -> list[Example]:
    from tests.test_training_pipeline import synthetic_export

    return accept(synthetic_export(n), schema).examples


def test_folds_keep_groups_whole_and_hold_every_example_out_once_per_seed(schema: Schema):
    examples = _examples(schema)
    for seed in (1, 2):
        folds = assign_folds(examples, schema, 3, seed)
        assert sorted(set(folds)) == [0, 1, 2]
        by_group: dict[str, set[int]] = {}
        for example, fold in zip(examples, folds, strict=True):
            by_group.setdefault(group_of(example, schema), set()).add(fold)
        assert all(len(f) == 1 for f in by_group.values())  # an article never straddles two folds
    runs = cross_validate(examples, schema, [majority], folds=3, seeds=(1, 2))
    assert [(s.seed, s.fold) for s in runs.scores] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    for seed in (1, 2):
        assert sum(s.n_test for s in runs.scores if s.seed == seed) == len(examples)
    summary = runs.summary()["majority"]
    assert summary["n"] == 6 and summary["mean"] == pytest.approx(np.mean([s.report["primary"] for s in runs.scores]))


def test_majority_and_svm_baselines_answer_what_they_learnt(schema: Schema):
    examples = [e for e in _examples(schema) if "threat_characterization" in e.labels]
    train, test = examples[:13], examples[13:]  # the first sentence's label 4 times, the others 3
    (answers,) = majority(schema, train, test, 0).values()
    most = "manufactured"
    assert all(a.labels["threat_characterization"] == most for a in answers)
    (svm,) = ngram_svm(schema, train, test, 0).values()
    # each synthetic sentence is repeated, so the SVM recalls its label exactly
    assert [a.labels["threat_characterization"] for a in svm] == [e.labels["threat_characterization"] for e in test]
    split = score_split(train, test, schema, [ngram_svm], seeds=(3,))
    assert split.summary()["n-gram SVM"]["dimensions"]["threat_characterization"]["mean"] == 1.0


def test_as_tasks_round_trips_through_acceptance(schema: Schema):
    examples = _examples(schema, 8)
    again = accept(as_tasks(examples, schema), schema).examples
    assert [(e.key, e.labels) for e in again] == [(e.key, e.labels) for e in examples]


def test_mean_sd():
    assert mean_sd([]) == {"mean": None, "sd": None, "n": 0}
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": 0.0, "n": 1}
    assert mean_sd([0.4, 0.6])["sd"] == pytest.approx(0.1414213, rel=1e-5)


def test_workbench_evaluate_cv_scores_the_rungs_and_baselines_on_the_same_folds(schema: Schema, tmp_path):
    """The command a user runs: `workbench evaluate --cv K --no-fine-tune` (the fine-tuned path is the pipeline,
    tested elsewhere), with the cold start and instant learner from the backend."""
    from tests.test_training_pipeline import synthetic_export
    from workbench.cli import app

    export = tmp_path / "export.json"
    export.write_text(json.dumps(synthetic_export(24)))
    runner = CliRunner()
    done = runner.invoke(
        app, ["evaluate", "--data", str(export), "--cv", "3", "--seeds", "1", "--no-fine-tune", "--json"]
    )
    assert done.exit_code == 0, done.output
    figures = json.loads(done.output[done.output.index("{") :])
    assert set(figures["methods"]) == {"majority", "cold start", "instant learner", "n-gram SVM", "frozen-encoder LR"}
    assert {(f["seed"], f["fold"]) for f in figures["per_fold"]} == {(1, 0), (1, 1), (1, 2)}
    for method in figures["methods"].values():
        assert method["n"] == 3 and 0.0 <= method["mean"] <= 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cv", "1"], "--cv must be at least 2 folds"),
        (["--cv", "3", "--model", "current"], "--model and --cv do not go together"),
        ([], "give --model"),
        (["--cv", "3", "--seeds", "a,b"], "--seeds must be comma-separated integers"),
        (["--cv", "30"], "cannot fill 30 folds"),
    ],
)
def test_workbench_evaluate_cv_refuses_bad_options_in_one_line(schema: Schema, tmp_path, args, message):
    import subprocess
    import sys

    from tests.test_training_pipeline import synthetic_export

    export = tmp_path / "export.json"
    export.write_text(json.dumps(synthetic_export(12)))
    command = [sys.executable, "-m", "workbench", "evaluate", "--data", str(export), "--no-fine-tune", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_epochs_zero_serves_the_heads_fitted_on_the_frozen_encoder(schema: Schema, tmp_path):
    """`--epochs 0`: no fine-tuning; the saved encoder is the pretrained one, the heads are the probe's."""
    from dataclasses import replace

    import torch

    from tests.test_training_pipeline import TINY, synthetic_export
    from training.pipeline import run_training
    from training.training_args import TrainingArguments

    outcome = run_training(synthetic_export(16), schema, tmp_path / "m", replace(TINY, epochs=0), source="synthetic")
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    assert manifest["chosen"]["epochs"] == 0 and outcome.timings["steps"] == 0
    served = TrainedPredictor(outcome.model_dir, runtime="torch-fp32")  # its torch encoder is compared below
    from training.modeling import MultiHeadModel

    fresh = MultiHeadModel.with_encoder(served.config, TINY.encoder)
    pretrained = fresh.encoder.state_dict()
    for name, mine in served.model.encoder.state_dict().items():
        assert torch.equal(mine.cpu(), pretrained[name].cpu()), name
    (prediction,) = served.predict([synthetic_export(1)[0]["data"]])
    assert prediction.labels["threat_characterization"] in schema.dimension("threat_characterization").values
    with pytest.raises(ValueError, match="needs probe-epochs > 0"):
        TrainingArguments(epochs=0, probe_epochs=0)


def test_the_multi_choice_threshold_maximises_validation_micro_f1():
    from training.calibration import fit_threshold

    labels = [[1, 0], [1, 0], [0, 1], [0, 0]]
    # the true labels sit at 0.3-0.4, the false ones at or below 0.2: 0.25 and 0.3 tick them all, 0.3 is nearer 0.5
    probs = np.array([[0.35, 0.1], [0.3, 0.2], [0.05, 0.4], [0.1, 0.15]])
    assert fit_threshold(probs, labels) == pytest.approx(0.3)
    # a threshold that changes nothing keeps 0.5
    assert fit_threshold(np.array([[0.95, 0.02]]), [[1, 0]]) == 0.5


def test_a_trained_model_decides_multi_choice_at_its_tuned_threshold(schema: Schema, tmp_path):
    from dataclasses import replace

    from tests.test_training_pipeline import TINY, synthetic_export
    from training.calibration import THRESHOLDS_FILE, load_thresholds
    from training.pipeline import run_training

    outcome = run_training(synthetic_export(24), schema, tmp_path / "models", TINY, source="synthetic")
    thresholds = load_thresholds(outcome.model_dir / THRESHOLDS_FILE)
    assert set(thresholds) == {"frames"}
    predictor = TrainedPredictor(outcome.model_dir)
    records = [{"text": "Moscow calls the warnings Western propaganda and hype.", "article_id": "x"}]
    raw = predictor.outputs(records)
    values = predictor.config.dimension("frames")["labels"]
    for threshold in (0.0, 1.01):  # every label ticked, then none: the predictor reads the threshold it holds
        predictor.thresholds = {"frames": threshold}
        # (labels no head learnt answer the cold start's decisions, moved to the right side of the threshold)
        frames = predictor.probabilities(raw, records)["frames"][0]
        ticked = predictor.predict(records)[0].labels["frames"]
        assert ticked == [v for v, p in zip(values, frames, strict=True) if p >= threshold]
    off = run_training(
        synthetic_export(24), schema, tmp_path / "off", replace(TINY, tune_thresholds=False), source="synthetic"
    )
    assert not (off.model_dir / THRESHOLDS_FILE).exists()
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    few = replace(TINY, threshold_min_examples=manifest["splits"]["validation"] + 1)  # one row short of tuning
    assert not (run_training(synthetic_export(24), schema, tmp_path / "few", few).model_dir / THRESHOLDS_FILE).exists()


def test_embedding_heads_read_the_similarity_to_each_label_description(schema: Schema, tmp_path):
    from training.embedding_heads import PROTOTYPE_SCALE, label_prototypes

    seen: list[str] = []

    def embed(texts):  # a stand-in encoder: a fixed unit vector per text
        seen.extend(texts)
        vectors = np.random.default_rng(len(seen)).normal(size=(len(texts), 8))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    prototypes = label_prototypes(schema, embed)
    threat = schema.dimension("threat_characterization")
    assert set(prototypes) == {d.name for d in schema.of_kind("single")}  # multi choice reads embeddings alone
    described = [j for j, label in enumerate(threat.labels) for _ in threat.prototype_texts(label)]
    assert prototypes[threat.name].label_index.tolist() == described
    assert "condemn NATO enlargement" in seen  # a stance cue is tied to its target
    # the text nearest to a "genuine" description gets that label's similarity 1, in the features the head reads
    genuine = threat.values.index("genuine")
    row = prototypes[threat.name].vectors[described.index(genuine)][None, :]
    dim = {"name": threat.name, "kind": "single", "field": "text", "labels": threat.values}
    rows = [{"text": "x", threat.name: threat.values[i % 4]} for i in range(8)]
    heads = EmbeddingHeads.fit([dim], rows, {"text": embed(["r"] * 8)}, 0.5, prototypes)
    features = heads.features(threat.name, 4, row)
    assert features.shape == (1, 8 + 4) and features[0, 8 + genuine] == pytest.approx(PROTOTYPE_SCALE)
    assert heads.heads[threat.name].coef.shape == (4, 12)
    heads.save(tmp_path / EMBEDDING_FILE)
    loaded = EmbeddingHeads.load(tmp_path / EMBEDDING_FILE)
    assert_same_probabilities(loaded.proba({"text": row}), heads.proba({"text": row}))
    assert set(loaded.prototypes) == {threat.name}


def test_the_served_heads_are_refitted_on_every_accepted_row(schema: Schema, tmp_path):
    from dataclasses import replace

    from tests.test_training_pipeline import TINY, synthetic_export
    from training.pipeline import run_training

    def served_vocabulary_misses(outcome) -> int:
        """How many n-grams of the held-out rows' texts the served n-gram heads never saw."""
        held_out = [
            json.loads(line)["text"]
            for name in ("validation", "test")
            for line in (outcome.model_dir / f"{name}.jsonl").read_text().splitlines()
        ]
        assert held_out
        served = NgramModel.load(outcome.model_dir / NGRAM_FILE).features["text"]
        everything = NgramModel.fit([SINGLE], [{"text": t, "stance": "none"} for t in held_out]).features["text"]
        return int(everything.transform(held_out).nnz - served.transform(held_out).nnz)

    args = replace(TINY, epochs=0)
    refit = run_training(synthetic_export(24), schema, tmp_path / "refit", args, source="synthetic")
    manifest = json.loads((refit.model_dir / "manifest.json").read_text())
    assert manifest["companion_rows"] == sum(manifest["splits"].values())
    assert served_vocabulary_misses(refit) == 0
    kept = run_training(
        synthetic_export(24), schema, tmp_path / "kept", replace(args, refit_heads=False), source="synthetic"
    )
    manifest = json.loads((kept.model_dir / "manifest.json").read_text())
    assert manifest["companion_rows"] == manifest["splits"]["train"]
    assert served_vocabulary_misses(kept) > 0  # "Report 17." and the like were only in held-out rows
