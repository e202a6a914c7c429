"""ColdStartPredictor: one honest prediction per task, in order, for any schema; spans at the right offsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotation_config.regions import Prediction, results_to_labels
from annotation_config.schema import Schema, load_schema, parse_schema
from backend.cold_start.embedder import SentenceEmbedder
from backend.predictor import Predictor
from training.cold_start import (
    ABSTAIN_SCORE,
    MAX_SCORE,
    NOT_CONCERNED_SCORE,
    ColdStartPredictor,
    abstain_label,
)

FIXTURES = Path(__file__).parent / "fixtures"
HONEST = 0.9  # no cold-start score may claim more

MANUFACTURED = (
    "Officials in Moscow dismissed the Western warnings as fabricated propaganda, a pretext for NATO to move "
    "more weapons to Russia's borders."
)
ECONOMIC = (
    "The new sanctions will hit trade between the two countries, raising costs for exporters and cutting investment."
)
GENUINE = (
    "Satellite images show Russia massing more than 100,000 troops near the border, a serious threat of an imminent "
    "invasion, Western intelligence officials warned."
)
OLYMPICS = "Thousands of fans gathered in Beijing for the opening ceremony of the Winter Olympics on Friday."
RECIPE = (
    "Preheat the oven to 200 degrees. Whisk the eggs with the sugar until pale, fold in the flour and bake the cake "
    "for 25 minutes. Let us leave it to cool before slicing."  # "us" is not the US
)
FOOTBALL = (
    "The home side scored twice in the second half and the visitors never recovered; the striker was named man of "
    "the match after a dominant display in front of a sold-out stadium."
)
# Task 20 of the sample corpus: the old cold start answered against / favor / favor, the opposite of the text.
WANG = (
    "Wang clearly signalled Beijing's support for Moscow, declaring that Russia's \"reasonable security concerns "
    'should be taken seriously and resolved." Russia has repeatedly called on the US and its European allies to '
    "guarantee that Ukraine will not be inducted as a NATO member—a move that would bring the US-led military "
    "alliance to the Russian border."
)
AGAINST_WASHINGTON = (
    "Critics condemned Washington's reckless provocations in the Pacific, saying the Biden administration's "
    "aggressive posture endangers the region."
)


class CountingEmbedder:
    """Wraps the real embedder and records each call."""

    def __init__(self, inner: SentenceEmbedder) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(threads=2)


@pytest.fixture(scope="module")
def predictor(schema: Schema, embedder: SentenceEmbedder) -> ColdStartPredictor:
    return ColdStartPredictor(schema, embedder)


@pytest.fixture(scope="module")
def sample_predictions(predictor: ColdStartPredictor, sample_tasks: list[dict]) -> list[Prediction]:
    return predictor.predict(sample_tasks)


def all_scores(item: dict) -> list[float]:
    return [item["score"], *(r["score"] for r in item["result"] if "score" in r)]


def test_is_a_versioned_predictor(predictor: ColdStartPredictor, schema: Schema):
    typed: Predictor = predictor  # the backend holds it as a Predictor
    assert callable(typed.predict)
    assert predictor.kind == "cold-start"
    assert predictor.model_version == f"cold-start-{schema.hash}"
    changed = schema.model_copy(update={"instructions": schema.instructions + " Read twice."})
    assert ColdStartPredictor(changed, predictor.embedder).model_version != predictor.model_version


def test_one_prediction_per_task_in_order(predictor, sample_tasks, sample_predictions):
    assert len(sample_predictions) == len(sample_tasks)
    picked = [sample_tasks[i] for i in (7, 0, 42)]
    alone = [predictor.predict([task])[0] for task in picked]
    together = predictor.predict(picked)
    assert together == alone == [sample_predictions[i] for i in (7, 0, 42)]
    assert predictor.predict([]) == []


def test_one_embedder_call_per_batch(schema, embedder, sample_tasks):
    counting = CountingEmbedder(embedder)
    predictor = ColdStartPredictor(schema, counting)
    counting.calls.clear()
    predictor.predict(sample_tasks[:10])
    assert len(counting.calls) == 1
    assert sorted(counting.calls[0]) == sorted({task["text"] for task in sample_tasks[:10]})


def test_shapes_follow_the_schema(schema, sample_predictions):
    for prediction in sample_predictions:
        for dim in schema.of_kind("single"):
            assert prediction.labels[dim.name] in dim.values
            assert 1 / len(dim.values) <= prediction.scores[dim.name] <= MAX_SCORE
        for dim in schema.of_kind("multi"):
            chosen = prediction.labels[dim.name]
            assert chosen == [v for v in dim.values if v in chosen]  # schema order, no duplicates
            assert 0.5 <= prediction.scores[dim.name] <= MAX_SCORE
        for dim in schema.of_kind("spans"):
            assert dim.name not in prediction.scores
            for span in prediction.labels[dim.name]:
                assert set(span) == {"start", "end", "text", "label", "score"}
                assert span["label"] in dim.values
        choice = [prediction.scores[d.name] for d in schema.of_kind("single", "multi")]
        assert prediction.score == pytest.approx(np.mean(choice))


def test_every_sample_task_converts_and_no_score_claims_certainty(schema, predictor, sample_tasks, sample_predictions):
    for task, prediction in zip(sample_tasks, sample_predictions, strict=True):
        item = prediction.to_label_studio(schema, task, predictor.model_version)
        assert item["model_version"] == predictor.model_version
        assert max(all_scores(item)) <= HONEST
        back = results_to_labels(schema, item["result"], task)  # valid Label Studio JSON for this schema
        assert {k: v for k, v in back.items() if v != []} == {
            k: ([{f: s[f] for f in ("start", "end", "text", "label")} for s in v] if k == "evidence" else v)
            for k, v in prediction.labels.items()
            if v != []
        }
    span_scores = [s["score"] for p in sample_predictions for s in p.labels["evidence"]]
    assert span_scores and max(span_scores) <= 0.5


def test_deterministic(predictor, sample_tasks, sample_predictions):
    predictor.embedder.clear_cache()
    first = predictor.predict(sample_tasks[:5])
    predictor.embedder.clear_cache()
    assert predictor.predict(sample_tasks[:5]) == first
    # Encoded in a batch of 5 rather than 108, the vectors differ by float noise (padding widths), nothing more.
    for prediction, reference in zip(first, sample_predictions[:5], strict=True):
        assert prediction.labels == reference.labels
        assert prediction.scores == pytest.approx(reference.scores, abs=1e-4)


def test_repeated_paragraphs_come_from_the_cache(predictor, sample_tasks):
    predictor.predict(sample_tasks[:3])
    before = predictor.embedder.cache_info()
    predictor.predict(sample_tasks[:3])
    after = predictor.embedder.cache_info()
    assert after["misses"] == before["misses"]
    assert after["hits"] == before["hits"] + 3


def test_missing_or_odd_text_does_not_crash(schema, predictor):
    tasks = [{}, {"text": None}, {"text": 42}, {"text": ""}, {"text": "   "}, {"title": "only a title"}]
    predictions = predictor.predict(tasks)
    assert len(predictions) == len(tasks)
    for task, prediction in zip(tasks, predictions, strict=True):
        for dim in schema.of_kind("single"):
            assert dim.name not in prediction.labels  # no evidence, no answer
            assert prediction.scores[dim.name] == pytest.approx(1 / len(dim.values))
        assert prediction.labels["frames"] == [] and prediction.labels["evidence"] == []
        assert prediction.score < 0.5
        assert prediction.to_label_studio(schema, task, predictor.model_version)["result"] == []


def test_spans_offsets_with_emoji_and_persian(embedder):
    schema = parse_schema(
        {
            "name": "fa",
            "dimensions": [
                {
                    "name": "tone",
                    "kind": "single",
                    "labels": [{"value": "a", "definition": "A."}, {"value": "b", "definition": "B."}],
                },
                {
                    "name": "ents",
                    "kind": "spans",
                    "labels": [
                        {"value": "country", "definition": "A country.", "cues": ["روسیه", "چین", "China", "NATO"]},
                        {"value": "pact", "definition": "An agreement.", "cues": ["پیمان", "a pact", "signed a pact"]},
                    ],
                },
            ],
        }
    )
    predictor = ColdStartPredictor(schema, embedder)
    text = "Russia 😀 and china 🇷🇺 signed  a pact — پیمان روسیه و چین — said NATO. NATOs; می‌روسیه; روسیهٔ"
    [prediction] = predictor.predict([{"text": text}])
    spans = prediction.labels["ents"]
    for span in spans:
        assert text[span["start"] : span["end"]] == span["text"]
        assert 0 < span["score"] <= 0.5
    found = [(s["text"], s["label"]) for s in spans]
    assert found == [
        ("china", "country"),  # case-insensitive
        ("signed  a pact", "pact"),  # any whitespace inside a phrase; the longest cue wins, no overlap
        ("پیمان", "pact"),
        ("روسیه", "country"),
        ("چین", "country"),
        ("NATO", "country"),  # but not "NATOs", nor Persian words joined by ZWNJ or carrying a diacritic
    ]
    assert spans[-1]["start"] == text.index("NATO")  # code points: the emoji and flag count as 1 and 2
    prediction.to_label_studio(schema, {"text": text}, predictor.model_version)


def clickbait(prediction: Prediction) -> tuple[str | None, float]:
    """The headline_body fixture's clickbait answer (None: no answer) and its score."""
    return prediction.labels.get("clickbait"), prediction.scores["clickbait"]


def test_another_schema_headline_and_body(embedder):
    schema = load_schema(FIXTURES / "headline_body.yaml")
    predictor = ColdStartPredictor(schema, embedder)
    assert predictor.model_version == f"cold-start-{schema.hash}"
    tasks = [
        {
            "id": "1",
            "headline": "You won't believe what Smith did next",
            "body": "The striker scored twice in the final.",
        },
        {"id": "2", "headline": "Parliament passes the budget", "body": "MPs voted 310 to 250 for the spending plan."},
        {"id": "3", "headline": "smith, SMITH and Smithson"},  # no body
    ]
    predictions = predictor.predict(tasks)
    assert len(predictions) == 3
    for task, prediction in zip(tasks, predictions, strict=True):
        item = prediction.to_label_studio(schema, task, predictor.model_version)
        assert max(all_scores(item)) <= HONEST
        for result in item["result"]:
            assert result["to_name"] == ("headline" if result["from_name"] in {"clickbait", "names"} else "body")
        # an answer above chance, or (no abstain label to fall back on) no answer at exactly chance
        answer, score = clickbait(prediction)
        assert (answer in {"yes", "no"} and score > 0.5) if answer is not None else score == pytest.approx(0.5)
    # clickbait is judged on the headline and on nothing else: the same headline over another body gets the same
    # answer; the other headline's words moved into the body do not change that headline's answer
    same_headline, moved = predictor.predict(
        [
            {"id": "4", "headline": tasks[0]["headline"], "body": tasks[1]["body"]},
            {"id": "5", "headline": tasks[1]["headline"], "body": tasks[0]["headline"]},
        ]
    )
    assert clickbait(predictions[0]) != clickbait(predictions[1])  # the two headlines are told apart
    assert clickbait(same_headline) == clickbait(predictions[0])
    assert clickbait(moved) == clickbait(predictions[1])
    assert [s["text"] for s in predictions[0].labels["names"]] == ["Smith"]
    assert predictions[0].labels["names"][0]["start"] == tasks[0]["headline"].index("Smith")
    assert [s["text"] for s in predictions[2].labels["names"]] == ["smith", "SMITH"]
    assert predictions[2].labels["topics"] == []  # no body, no topics


def test_useful_on_clear_paragraphs(predictor):
    manufactured, economic, genuine, olympics = predictor.predict(
        [{"text": MANUFACTURED}, {"text": ECONOMIC}, {"text": GENUINE}, {"text": OLYMPICS}]
    )
    assert manufactured.labels["threat_characterization"] == "manufactured"
    assert "Security_and_defense" in manufactured.labels["frames"]
    assert "Economic" in economic.labels["frames"]
    assert genuine.labels["threat_characterization"] == "genuine"
    assert "Security_and_defense" in genuine.labels["frames"]
    assert olympics.labels["threat_characterization"] == "not_applicable"
    assert "Economic" not in olympics.labels["frames"]
    evidence = {(s["text"], s["label"]) for s in manufactured.labels["evidence"]}
    assert {("propaganda", "framing_cue"), ("pretext", "framing_cue"), ("NATO", "actor")} <= evidence
    assert ("Russia", "actor") in evidence  # "Russia's": the possessive ends the word


def test_abstains_on_a_paragraph_about_nothing_in_the_schema(schema, predictor):
    """A recipe, a football match: no side taken, no threat, no frame; nothing is stated with any confidence."""
    for prediction in predictor.predict([{"text": RECIPE}, {"text": FOOTBALL}]):
        for dim in schema.of_kind("single"):
            assert prediction.labels.get(dim.name, abstain_label(dim)) == abstain_label(dim), dim.name
            assert prediction.scores[dim.name] <= NOT_CONCERNED_SCORE < 0.7
        assert prediction.scores["threat_characterization"] <= ABSTAIN_SCORE
        assert prediction.labels["frames"] == [] and prediction.labels["evidence"] == []
        assert prediction.score < 0.7


def test_a_target_the_paragraph_does_not_mention_gets_none(predictor):
    """Loaded words about Washington say nothing about the Russia–China partnership or NATO enlargement."""
    [prediction] = predictor.predict([{"text": AGAINST_WASHINGTON}])
    for name in ("stance_russia_china", "stance_nato_enlargement"):
        assert (prediction.labels[name], prediction.scores[name]) == ("none", NOT_CONCERNED_SCORE)
    assert prediction.labels["stance_us_policy"] == "against"


def test_clear_cases_get_the_right_answer(predictor):
    wang, washington = predictor.predict([{"text": WANG}, {"text": AGAINST_WASHINGTON}])
    assert wang.labels["stance_russia_china"] == "favor"  # "Beijing's support for Moscow"
    # the US and NATO are only mentioned, not judged: abstain rather than guess
    assert wang.labels["stance_us_policy"] == wang.labels["stance_nato_enlargement"] == "none"
    assert wang.scores["stance_us_policy"] == wang.scores["stance_nato_enlargement"] == ABSTAIN_SCORE
    assert washington.labels["stance_us_policy"] == "against"  # condemned, reckless, aggressive: all about the US
    assert ABSTAIN_SCORE < wang.scores["stance_russia_china"] <= washington.scores["stance_us_policy"] < MAX_SCORE


def test_a_negated_cue_is_no_evidence(predictor):
    supported, not_supported = predictor.predict(
        [
            {"text": "China supported Russia's position at the United Nations."},
            {"text": "China did not support Russia's position at the United Nations."},
        ]
    )
    assert supported.labels["stance_russia_china"] == "favor"
    assert (not_supported.labels["stance_russia_china"], not_supported.scores["stance_russia_china"]) == (
        "none",
        ABSTAIN_SCORE,
    )


def test_without_mentions_the_target_names_decide_and_no_abstain_label_means_no_answer(embedder):
    """Any schema: targets without `mentions` are recognised by the names in their title, and a cue judges the
    target named next to it; a dimension with no abstain label leaves a target the text never names unanswered."""
    schema = parse_schema(
        {
            "name": "companies",
            "targets": [{"id": "acme", "name": "Acme Corp"}, {"id": "globex", "name": "the Globex bid"}],
            "dimensions": [
                {
                    "name": "stance",
                    "kind": "single",
                    "per_target": True,
                    "labels": [
                        {"value": "pro", "definition": "Supports {target}.", "cues": ["welcome", "praise"]},
                        {"value": "contra", "definition": "Opposes {target}.", "cues": ["condemn", "block"]},
                        {"value": "neutral", "definition": "No position on {target}."},
                    ],
                },
                {
                    "name": "verdict",
                    "kind": "single",
                    "per_target": True,
                    "labels": [
                        {"value": "good", "definition": "Good news for {target}.", "cues": ["welcome", "praise"]},
                        {"value": "bad", "definition": "Bad news for {target}.", "cues": ["condemn", "block"]},
                    ],
                },
            ],
        }
    )
    predictor = ColdStartPredictor(schema, embedder)
    both, neither = predictor.predict(
        [
            {"text": "Analysts praised Acme but condemned Globex."},
            {"text": "Regulators condemned the steel cartel and vowed to block further price rises."},
        ]
    )
    assert both.labels == {
        "stance_acme": "pro",
        "stance_globex": "contra",
        "verdict_acme": "good",
        "verdict_globex": "bad",
    }
    assert neither.labels == {"stance_acme": "neutral", "stance_globex": "neutral"}  # and no verdict at all
    assert neither.scores["verdict_acme"] == neither.scores["verdict_globex"] == pytest.approx(0.5)


def test_backend_settings_choose_the_encoder_runtime(schema, tmp_path, monkeypatch):
    """WORKBENCH_RUNTIME / WORKBENCH_PRECISION / WORKBENCH_ONNX_CACHE_DIR reach the cold start's embedder."""
    from backend import app as backend_app
    from backend.cold_start import embedder as embedding
    from backend.settings import Settings

    built = []

    class Recorder:
        def __init__(self, encoder=None, **options):
            built.append(options)

        def describe(self) -> str:
            return "recorded"

        def embed(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    monkeypatch.setattr(embedding, "SentenceEmbedder", Recorder)
    monkeypatch.setenv("WORKBENCH_RUNTIME", "onnx")
    monkeypatch.setenv("WORKBENCH_PRECISION", "int8")
    monkeypatch.setenv("WORKBENCH_ONNX_CACHE_DIR", str(tmp_path))
    cold_start, _ = backend_app.default_predictors(Settings(), schema)
    assert isinstance(cold_start(), ColdStartPredictor)
    assert built[-1] | {"threads": None} == {
        "threads": None,
        "cache_size": 4096,
        "runtime": "onnx",
        "precision": "int8",
        "onnx_cache_dir": tmp_path,
    }
    monkeypatch.delenv("WORKBENCH_PRECISION")
    backend_app.default_predictors(Settings(quantize=True, runtime="torch"), schema)[0]()
    assert (built[-1]["runtime"], built[-1]["precision"]) == ("torch", "int8")  # WORKBENCH_QUANTIZE still works
    with pytest.raises(ValueError, match="runtime"):
        Settings(runtime="tensorrt")


def test_onnx_settings_without_onnxruntime_still_serve(schema, tmp_path, monkeypatch):
    """No onnxruntime: the cold start runs on torch fp32 and predicts as usual."""
    import sys

    from backend.app import default_predictors
    from backend.settings import Settings

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    settings = Settings(runtime="onnx", precision="int8", onnx_cache_dir=tmp_path, models_dir=tmp_path / "models")
    predictor = default_predictors(settings, schema)[0]()
    assert predictor.embedder.describe().startswith("torch fp32 (fallback: onnxruntime is not installed")
    [prediction] = predictor.predict([{"text": MANUFACTURED}])
    assert prediction.labels["threat_characterization"] == "manufactured"
