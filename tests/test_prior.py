"""The cold start's answers inside a trained model (training/prior.py): features of the embedding heads, and the
answer where no head learnt anything. Real MiniLM weights, a real trained model folder."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from annotation_config.regions import Prediction
from annotation_config.schema import Schema
from training.cold_start import ColdStartPredictor
from training.evaluation import PRIOR_JUDGE_MIN_OTHERS, prior_scores
from training.prior import PRIOR_FILE, ColdStartPrior, answer_distribution, answer_features

RECORDS = [
    {"text": "Moscow calls the invasion warnings Western propaganda and hype, a fabricated pretext."},
    {"text": "NATO enlargement to Finland and Sweden was welcomed by the alliance as a real deterrent."},
    {"text": "The United States sent more troops to Poland as the threat of a Russian attack grew."},
    {"text": "Beijing and Moscow signed an energy deal."},
    {"text": ""},
]


def test_the_answer_rules_read_the_cold_starts_confidence(schema: Schema):
    threat = schema.dimension("threat_characterization")
    answer = Prediction(labels={threat.name: "manufactured"}, scores={threat.name: 0.7}, score=0.7)
    k = len(threat.values)
    features = answer_features(threat, answer)
    assert features[threat.values.index("manufactured")] == 0.7 and features.sum() == pytest.approx(0.7)
    probs = answer_distribution(threat, answer)
    assert probs[threat.values.index("manufactured")] == 0.7 and probs.sum() == pytest.approx(1.0)
    assert np.allclose(np.delete(probs, threat.values.index("manufactured")), 0.3 / (k - 1))
    silent = Prediction(labels={}, scores={threat.name: 0.2}, score=0.2)
    assert np.allclose(answer_distribution(threat, silent), 1.0 / k) and not answer_features(threat, silent).any()
    frames = schema.dimension("frames")
    ticked = Prediction(labels={"frames": [frames.values[1]]}, scores={"frames": 0.8}, score=0.8)
    on = answer_distribution(frames, ticked)
    assert on[1] == pytest.approx(0.8) and np.allclose(np.delete(on, 1), 0.2)


def test_the_prior_answers_as_the_cold_start_from_the_vectors_saved_with_the_model(
    schema: Schema, cold_start_predictor: ColdStartPredictor, tmp_path
):
    embedder = cold_start_predictor.embedder
    prior = ColdStartPrior.build(schema, embedder.embed, weight=3.0)
    prior.save(tmp_path / PRIOR_FILE)
    loaded = ColdStartPrior.load(tmp_path / PRIOR_FILE)  # no encoder: the schema's texts come from the file
    assert loaded.weight == 3.0 and loaded.schema.hash == schema.hash and loaded.fields == ["text"]
    texts = [r["text"] for r in RECORDS]
    answers = loaded.answers(RECORDS, {"text": embedder.embed(texts)})
    expected = cold_start_predictor.predict(RECORDS)
    assert [a.labels for a in answers] == [e.labels for e in expected]
    for answer, cold in zip(answers, expected, strict=True):
        assert answer.scores == pytest.approx(cold.scores)
    features = loaded.features(answers)
    threat = schema.dimension("threat_characterization")
    np.testing.assert_allclose(
        features[threat.name], [3.0 * answer_features(threat, e) for e in expected], rtol=1e-6, atol=1e-9
    )


def test_only_a_cold_start_that_beats_the_most_common_answer_is_read(schema: Schema, cold_start_predictor):
    prior = ColdStartPrior.build(schema, cold_start_predictor.embedder.embed, weight=10.0)
    threat = schema.dimension("threat_characterization")
    labels = ["manufactured"] * 6 + ["genuine"] * PRIOR_JUDGE_MIN_OTHERS
    rows = [{"text": RECORDS[i % 4]["text"], threat.name: label} for i, label in enumerate(labels)]
    right = [Prediction(labels={threat.name: row[threat.name]}, scores={threat.name: 0.6}, score=0.6) for row in rows]
    wrong = [Prediction(labels={threat.name: "contested"}, scores={threat.name: 0.6}, score=0.6) for _ in rows]
    names = list(prior.dimensions)
    scores = prior_scores(schema, names, rows, right)
    assert scores[threat.name] == {"cold_start": 1.0, "most_common": scores[threat.name]["most_common"], "judged": True}
    assert scores["frames"]["judged"] is False  # no frame labelled: nothing to judge the cold start on
    prior.keep_informative(scores)
    assert threat.name in prior.dimensions and "frames" in prior.dimensions
    # one rare answer fewer: too few rows answered otherwise than the most common answer to judge; it stays
    scores = prior_scores(schema, names, rows[:-1], wrong[:-1])
    assert scores[threat.name]["cold_start"] < scores[threat.name]["most_common"]
    assert scores[threat.name]["judged"] is False
    prior.keep_informative(scores)
    assert threat.name in prior.dimensions
    scores = prior_scores(schema, names, rows, wrong)
    assert scores[threat.name]["cold_start"] < scores[threat.name]["most_common"]
    prior.keep_informative(scores)
    assert threat.name not in prior.dimensions and threat.name not in prior.features(wrong)
    assert "frames" in prior.dimensions


def test_a_multi_choice_label_reads_only_the_cold_starts_answer_on_that_label():
    from training.ngram import fit_head

    rng = np.random.default_rng(0)
    n, labels = 40, ["a", "b", "c"]
    x = rng.normal(size=(n, 5))
    ticks = rng.random((n, 3)) < 0.4
    ticks[0], ticks[1] = True, False  # every label both ticked and unticked
    answers = [[v for v, on in zip(labels, row, strict=True) if on] for row in ticks]
    hints = 10.0 * ticks * 0.7  # a cold start that is always right, at confidence 0.7
    dim = {"name": "frames", "kind": "multi", "field": "text", "labels": labels}
    head = fit_head(dim, x, answers, 3.0, hints)
    assert head is not None
    hint_weights = head.coef[:, -3:]
    assert np.all(np.diag(hint_weights) > 0)  # each label trusts its own hint ...
    assert not hint_weights[~np.eye(3, dtype=bool)].any()  # ... and never reads another label's
    plain = fit_head(dim, np.hstack([x, hints]), answers, 3.0)  # hints as plain features: every label reads all
    assert plain is not None and plain.coef[:, -3:][~np.eye(3, dtype=bool)].any()


def test_fill_answers_what_nothing_learnt_and_keeps_the_cold_starts_ticks_at_any_threshold(schema: Schema):
    class Fixed:
        def embed(self, texts):
            return np.ones((len(texts), 4)) / 2.0

    prior = ColdStartPrior(schema, Fixed(), weight=3.0)  # type: ignore[arg-type]
    frames, threat = schema.dimension("frames"), schema.dimension("threat_characterization")
    stance = schema.of_kind("single")[1]
    answers = [
        Prediction(
            labels={"frames": [frames.values[0]], threat.name: "genuine", stance.name: "none"},
            scores={"frames": 0.6, threat.name: 0.6, stance.name: 0.65},
            score=0.6,
        )
    ]
    learnt_mask = np.zeros(len(frames.values), dtype=bool)
    learnt_mask[2:] = True  # labels 0 and 1 were never (or always) ticked in training
    probs = {
        "frames": np.full((1, len(frames.values)), 0.45),
        threat.name: np.full((1, len(threat.values)), 1.0 / len(threat.values)),
        stance.name: np.eye(len(stance.values))[:1],
    }
    learnt = {"frames": learnt_mask, threat.name: np.ones(len(threat.values), dtype=bool)}
    for threshold in (0.2, 0.5, 0.8):
        filled = prior.fill(probs, answers, learnt, {"frames": threshold})
        ticked = filled["frames"][0] >= threshold
        assert ticked[0] and not ticked[1]  # the cold start's own decisions on the labels nothing learnt
        np.testing.assert_array_equal(filled["frames"][0, 2:], probs["frames"][0, 2:])  # the learnt labels kept
    filled = prior.fill(probs, answers, learnt)
    assert filled[threat.name] is probs[threat.name]  # a head answers it
    np.testing.assert_allclose(filled[stance.name][0], answer_distribution(stance, answers[0]))  # no head: prior


def test_a_trained_model_reads_the_cold_start_and_answers_with_it_where_it_learnt_nothing(schema: Schema, tmp_path):
    from tests.test_training_pipeline import TINY, synthetic_export
    from training.embedding_heads import text_embeddings
    from training.pipeline import run_training
    from training.predict import TrainedPredictor

    args = replace(TINY, epochs=0, probe_epochs=2, onnx=False)
    outcome = run_training(synthetic_export(32), schema, tmp_path / "models", args, source="synthetic")
    assert (outcome.model_dir / PRIOR_FILE).exists()
    predictor = TrainedPredictor(outcome.model_dir)
    assert predictor.prior is not None and predictor.embedding_heads is not None
    # the synthetic labels answer the threat question and the US stance; no one labelled the other stances. On the
    # US stance the cold start does no better than the most common answer, so its answers are not read there
    manifest = json.loads((outcome.model_dir / "manifest.json").read_text())
    scores = manifest["prior"]["scores"]
    assert scores["threat_characterization"]["cold_start"] > scores["threat_characterization"]["most_common"]
    assert scores["stance_us_policy"]["cold_start"] <= scores["stance_us_policy"]["most_common"]
    assert scores["stance_russia_china"] == {"cold_start": None, "most_common": None, "judged": False}
    assert set(manifest["prior"]["dimensions"]) == set(predictor.prior.dimensions)
    assert "stance_us_policy" not in predictor.prior.dimensions and "stance_russia_china" in predictor.prior.dimensions
    for companion in (predictor.embedding_heads, predictor.ngram):
        assert companion is not None and "threat_characterization" in companion.hinted
        assert "stance_us_policy" in companion.heads and "stance_us_policy" not in companion.hinted
    unlearnt = [d.name for d in schema.of_kind("single") if d.name not in predictor.embedding_heads.heads]
    assert unlearnt, "the synthetic export should leave some stance question unlabelled"

    class ModelEncoder:  # the cold start reading the trained model's own encoder, computed afresh
        def embed(self, texts):
            return text_embeddings(predictor.model.encoder, predictor.tokenizer, texts)

    expected = ColdStartPredictor(schema, ModelEncoder()).predict(RECORDS)
    served = predictor.predict(RECORDS)
    for name in unlearnt:  # (the empty text: the cold start gives no answer, a trained model always answers)
        assert [p.labels.get(name) for p in served[:-1]] == [e.labels.get(name) for e in expected[:-1]], name
    # a head fitted with the cold start's answers cannot answer without them
    raw = predictor.outputs(RECORDS)
    with pytest.raises(ValueError, match="reads the cold start's answers"):
        predictor.embedding_heads.proba(raw.embeddings)
    with pytest.raises(ValueError, match="reads the cold start's answers"):
        predictor.ngram.proba(RECORDS)
    hints = predictor.prior.features(predictor.prior.answers(RECORDS, raw.embeddings))
    assert predictor.embedding_heads.proba(raw.embeddings, hints)["threat_characterization"].shape == (5, 4)
    # both companions' answers move with the cold start's (the heads learnt a weight for it)
    silent = {name: np.zeros_like(h) for name, h in hints.items()}
    for heads in (predictor.ngram.proba(RECORDS, hints), predictor.ngram.proba(RECORDS, silent)):
        assert heads["threat_characterization"].shape == (5, 4)
    assert not np.allclose(
        predictor.ngram.proba(RECORDS, hints)["threat_characterization"],
        predictor.ngram.proba(RECORDS, silent)["threat_characterization"],
    )
    assert not np.allclose(
        predictor.embedding_heads.proba(raw.embeddings, hints)["threat_characterization"],
        predictor.embedding_heads.proba(raw.embeddings, silent)["threat_characterization"],
    )
    # weight 0: no prior is saved, and the unlabelled questions are the encoder's again
    off = run_training(synthetic_export(16), schema, tmp_path / "off", replace(args, prior_weight=0.0), source="s")
    assert not (off.model_dir / PRIOR_FILE).exists()
    unhinted = TrainedPredictor(off.model_dir)
    assert unhinted.prior is None and unhinted.embedding_heads.hinted == unhinted.ngram.hinted == frozenset()
