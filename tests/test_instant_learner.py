"""The instant learner: learns from Label Studio webhook payloads under the acceptance policy, versions every
change of accepted labels, rebuilds the same model from an export, falls back to the cold start where it knows
nothing, follows the labels it is given, and refits in the background one fit per burst of events."""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from pathlib import Path

import pytest

from annotation_config.regions import labels_to_results
from annotation_config.schema import Schema
from backend.cold_start.embedder import SentenceEmbedder
from backend.instant_learner import InstantLearner, InstantPredictor, LearnerWorker
from backend.predictor import Predictor
from training.cold_start import ColdStartPredictor

FIXTURE = Path(__file__).parent / "fixtures" / "label_studio_requests" / "webhook-ANNOTATION_CREATED.json"
RECORDED = json.loads(FIXTURE.read_text(encoding="utf-8"))
THREAT = "threat_characterization"
VERSION = re.compile(r"^instant-[0-9a-f]{8}-[0-9a-f]{10}$")

# Two topics the encoder separates easily, labelled against what the cold start would guess (sport is no
# military threat, propaganda is "manufactured"), so only learning from the labels gets the unseen ones right.
SPORT = [
    "The national football team won the cup final on Sunday after a penalty shoot-out in front of 80,000 fans.",
    "The tennis champion lifted her third trophy of the season after a two-hour match on the clay court.",
    "Thousands of runners crossed the finish line of the city marathon, cheered on by families along the route.",
    "The basketball club signed a new coach and two young players ahead of the league season opener.",
    "Fans of the cycling race lined the mountain roads as the riders climbed towards the final stage finish.",
]
PROPAGANDA = [
    "Officials dismissed the Western warnings as fabricated propaganda and a pretext to send weapons east.",
    "The ministry called the reports of an imminent attack pure hype, invented out of thin air by the media.",
    "Spokesmen said the alleged plans were disinformation spread to justify more troops on the border.",
    "The embassy rejected the claims as unsubstantiated allegations, a fiction meant to scare the public.",
]
UNSEEN_SPORT = "The swimmer broke the world record in the 200 metres freestyle at the championships on Friday."


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    # the encoder the backend serves by default (onnx int8: one text per pass, so a text's vector never depends
    # on which texts came with it)
    return SentenceEmbedder(runtime="onnx", precision="int8", threads=2)


@pytest.fixture(scope="module")
def cold(schema: Schema, embedder: SentenceEmbedder) -> ColdStartPredictor:
    return ColdStartPredictor(schema, embedder)


@pytest.fixture
def learner(schema: Schema, embedder: SentenceEmbedder, cold: ColdStartPredictor) -> InstantLearner:
    return InstantLearner(schema, embedder, cold)


def data_of(task_id: int, text: str | None = None) -> dict:
    """Task data shaped like the sample tasks (the recorded task's fields), with a text of our choosing."""
    data = copy.deepcopy(RECORDED["task"]["data"])
    if text is not None:
        data.update(text=text, key=f"test-{task_id:03d}", paragraph=task_id)
    return data


def stamp(second: int) -> str:
    return f"2026-12-01T10:{second // 60:02d}:{second % 60:02d}.000000Z"


def event(
    schema: Schema,
    action: str,
    annotation_id: int,
    task_id: int,
    labels: dict,
    *,
    data: dict | None = None,
    who: int = 1,
    at: int = 0,
    cancelled: bool = False,
    ground_truth: bool = False,
    with_task: bool = True,
) -> dict:
    """A webhook payload built like the one Label Studio 1.23.2 sent (the recorded fixture), with our labels."""
    payload = copy.deepcopy(RECORDED)
    payload["action"] = action
    data = data or data_of(task_id)
    annotation = payload["annotation"]
    annotation.update(
        id=annotation_id,
        task=task_id,
        result=labels_to_results(schema, labels, data),
        was_cancelled=cancelled,
        ground_truth=ground_truth,
        completed_by=who,
        created_at=stamp(at),
        updated_at=stamp(at),
    )
    if with_task:
        payload["task"].update(id=task_id, data=data)
    else:
        del payload["task"]
    return payload


def deleted(*annotation_ids: int) -> dict:
    """ANNOTATIONS_DELETED: ids only, no task."""
    return {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": i} for i in annotation_ids], "project": {"id": 1}}


def accepted(learner: InstantLearner, dim: str = THREAT) -> dict:
    return {e.task_id: e.labels.get(dim) for e in learner.examples()}


# ---------------------------------------------------------------------------------------------------------------
# events and the acceptance policy


def test_created_event_is_learned_and_served_as_a_versioned_predictor(learner, schema):
    assert learner.fit() is None  # nothing accepted yet: the rung below serves
    assert learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"})) is True
    assert accepted(learner) == {1: "genuine"}
    predictor = learner.fit()
    typed: Predictor = predictor  # the backend holds it as a Predictor
    assert typed.kind == "instant" and isinstance(predictor, InstantPredictor)
    assert VERSION.match(predictor.model_version) and predictor.model_version[8:16] == schema.hash[:8]
    assert learner.fit() is predictor  # no change, no refit


def test_updated_event_replaces_the_old_result(learner, schema):
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}))
    before = learner.fit().model_version
    assert learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: "manufactured"}, at=5)) is True
    assert accepted(learner) == {1: "manufactured"}  # one annotation, its new result; not two votes
    assert learner.fit().model_version != before
    # an update that leaves the accepted labels as they were (re-submitted unchanged) is no change
    assert learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: "manufactured"}, at=9)) is False
    learner.apply_event(deleted(1))
    assert learner.examples() == []  # and no copy of the old result lingers


def test_deleted_event_removes_the_labels_and_falls_back(learner, schema, cold):
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}))
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 2, 2, {THREAT: "manufactured"}, data=data_of(2, SPORT[0])))
    assert learner.fit() is not None
    assert learner.apply_event(deleted(1, 2)) is True  # ids only, no task in the payload
    assert learner.examples() == []
    assert learner.fit() is None  # no label left: the cold start serves again
    assert learner.apply_event(deleted(1)) is False  # deleting again changes nothing


def test_deleted_annotation_is_not_brought_back_by_an_older_export(learner, schema):
    payload = event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"})
    export = [{"id": 1, "data": payload["task"]["data"], "annotations": [payload["annotation"]]}]
    learner.apply_event(payload)
    learner.apply_event(deleted(1))
    learner.load_tasks(export)  # an export read before the deletion arrives late at start-up
    assert learner.examples() == []


def test_cancelled_annotation_is_skipped(learner, schema):
    assert learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}, cancelled=True)) is False
    assert learner.fit() is None
    # skipping after having submitted withdraws the vote
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 2, 2, {THREAT: "genuine"}))
    assert learner.apply_event(event(schema, "ANNOTATION_UPDATED", 2, 2, {THREAT: "genuine"}, at=3, cancelled=True))
    assert learner.fit() is None


def test_ground_truth_wins_over_a_later_annotation_by_someone_else(learner, schema):
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}, who=1, ground_truth=True))
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 2, 1, {THREAT: "manufactured"}, who=2, at=30))
    assert accepted(learner) == {1: "genuine"}
    # without the ground-truth mark the two votes tie, and the policy holds the question out (frames stay)
    learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: "genuine"}, who=1, at=40))
    assert accepted(learner) == {1: None}


def test_bulk_created_event_with_many_annotations_and_tasks(learner, schema):
    one = event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"})
    two = event(schema, "ANNOTATION_CREATED", 2, 2, {THREAT: "not_applicable"}, data=data_of(2, SPORT[0]))
    # LS 1.23 serialises ANNOTATIONS_CREATED with many=True under the singular keys
    bulk = {
        "action": "ANNOTATIONS_CREATED",
        "annotation": [one["annotation"], two["annotation"]],
        "task": [one["task"], two["task"]],
    }
    assert learner.apply_event(bulk) is True
    assert accepted(learner) == {1: "genuine", 2: "not_applicable"}


def test_other_events_are_ignored(learner, schema):
    assert learner.apply_event({"action": "START_TRAINING", "project": {"id": 1}}) is False
    assert learner.apply_event({"action": "ANNOTATION_CREATED"}) is False  # no annotation: nothing to learn
    without_task = event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}, with_task=False)
    assert learner.apply_event(without_task) is False  # no text to learn from (yet)
    assert learner.fit() is None


def test_apply_event_is_fast(learner, schema):
    texts = [*SPORT, *PROPAGANDA] * 25
    for i, text in enumerate(texts):
        learner.apply_event(
            event(schema, "ANNOTATION_CREATED", i + 1, i + 1, {THREAT: "genuine"}, data=data_of(i + 1, f"{text} {i}"))
        )
    started = time.perf_counter()
    for i in range(50):
        learner.apply_event(event(schema, "ANNOTATION_UPDATED", i + 1, i + 1, {THREAT: "manufactured"}, at=60 + i))
    assert (time.perf_counter() - started) / 50 < 0.1  # Label Studio's webhook times out after 1 s


# ---------------------------------------------------------------------------------------------------------------
# versions and restarts


def test_a_new_version_per_change_and_the_same_version_for_the_same_labels(learner, schema, embedder, cold):
    versions = []
    for i, value in enumerate(["genuine", "manufactured", "not_applicable"]):
        learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: value}, at=i))
        versions.append(learner.fit().model_version)
    assert len(set(versions)) == 3
    learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: "genuine"}, at=10))
    assert learner.fit().model_version == versions[0]  # back to the first labels: the first version
    other = InstantLearner(schema, embedder, cold)  # another process with the same labels
    other.apply_event(event(schema, "ANNOTATION_CREATED", 7, 1, {THREAT: "genuine"}, who=5, at=99))
    assert other.fit().model_version == versions[0]


def labelled_stream(schema: Schema) -> list[dict]:
    """Webhooks of a short session: creations, an update, a deletion, a cancelled one."""
    events = []
    for i, text in enumerate(SPORT[:4]):
        labels = {THREAT: "genuine", "frames": ["Health_and_safety"]}
        events.append(event(schema, "ANNOTATION_CREATED", 10 + i, 1 + i, labels, data=data_of(1 + i, text), at=i))
    for i, text in enumerate(PROPAGANDA[:3]):
        labels = {THREAT: "not_applicable", "frames": ["Economic"], "stance_us_policy": "favor"}
        events.append(event(schema, "ANNOTATION_CREATED", 20 + i, 11 + i, labels, data=data_of(11 + i, text), at=9))
    events.append(
        event(schema, "ANNOTATION_UPDATED", 20, 11, {THREAT: "not_applicable"}, data=data_of(11, PROPAGANDA[0]), at=20)
    )
    events.append(
        event(schema, "ANNOTATION_CREATED", 30, 20, {THREAT: "genuine"}, data=data_of(20, PROPAGANDA[3]), at=21)
    )
    events.append(deleted(30))
    events.append(
        event(schema, "ANNOTATION_CREATED", 31, 21, {THREAT: "genuine"}, data=data_of(21, SPORT[4]), cancelled=True)
    )
    return events


def as_export(events: list[dict]) -> list[dict]:
    """What Label Studio's JSON export holds after these events: each task with its remaining annotations."""
    tasks: dict[int, dict] = {}
    gone = {a["id"] for e in events if e["action"] == "ANNOTATIONS_DELETED" for a in e["annotations"]}
    for e in events:
        if e["action"] == "ANNOTATIONS_DELETED":
            continue
        task = tasks.setdefault(e["task"]["id"], {"id": e["task"]["id"], "data": e["task"]["data"], "annotations": {}})
        if e["annotation"]["id"] not in gone:
            task["annotations"][e["annotation"]["id"]] = {**e["annotation"], "task": e["task"]["id"]}
    return [{**t, "annotations": list(t["annotations"].values())} for t in reversed(list(tasks.values()))]


def test_a_restart_rebuilds_the_same_model_from_the_export(schema, embedder, cold):
    live = InstantLearner(schema, embedder, cold)
    events = labelled_stream(schema)
    for e in events:
        live.apply_event(e)
    restarted = InstantLearner(schema, embedder, cold)
    assert restarted.load_tasks(as_export(events)) is True
    assert [(e.key, e.labels) for e in restarted.examples()] == [(e.key, e.labels) for e in live.examples()]
    a, b = live.fit(), restarted.fit()
    assert a.model_version == b.model_version
    queries = [data_of(100, UNSEEN_SPORT), data_of(101, PROPAGANDA[3]), RECORDED["task"]["data"]]
    assert [p.labels for p in a.predict(queries)] == [p.labels for p in b.predict(queries)]
    assert [p.scores for p in a.predict(queries)] == [pytest.approx(p.scores) for p in b.predict(queries)]


# ---------------------------------------------------------------------------------------------------------------
# what it predicts


def test_a_dimension_never_labelled_answers_like_the_fallback(learner, schema, cold):
    for i, text in enumerate([*SPORT[:3], *PROPAGANDA[:3]]):
        value = "not_applicable" if i < 3 else "manufactured"
        learner.apply_event(
            event(schema, "ANNOTATION_CREATED", i + 1, i + 1, {THREAT: value}, data=data_of(i + 1, text))
        )
    predictor = learner.fit()
    queries = [data_of(100, UNSEEN_SPORT), RECORDED["task"]["data"], data_of(101, "")]
    for ours, theirs in zip(predictor.predict(queries), cold.predict(queries), strict=True):
        for dim in schema.dimensions:
            if dim.name == THREAT:
                continue
            assert ours.labels.get(dim.name) == theirs.labels.get(dim.name), dim.name
            if dim.kind != "spans":
                assert ours.scores[dim.name] == pytest.approx(theirs.scores[dim.name]), dim.name
    # a question with a single answer so far is still the fallback's
    for i, text in enumerate(SPORT[3:]):
        labels = {"stance_nato_enlargement": "favor"}
        learner.apply_event(event(schema, "ANNOTATION_CREATED", 50 + i, 50 + i, labels, data=data_of(50 + i, text)))
    ours, theirs = learner.fit().predict(queries[:1])[0], cold.predict(queries[:1])[0]
    assert ours.labels.get("stance_nato_enlargement") == theirs.labels.get("stance_nato_enlargement")


def test_predictions_follow_the_labels(learner, schema, cold):
    # sport paragraphs labelled "genuine" with the Health frame, propaganda ones "not_applicable" with Economic:
    # the opposite of what the cold start reads into them
    for i, text in enumerate(SPORT):
        labels = {THREAT: "genuine", "frames": ["Health_and_safety"]}
        learner.apply_event(event(schema, "ANNOTATION_CREATED", i + 1, i + 1, labels, data=data_of(i + 1, text)))
    for i, text in enumerate(PROPAGANDA[:3]):
        labels = {THREAT: "not_applicable", "frames": ["Economic"]}
        learner.apply_event(event(schema, "ANNOTATION_CREATED", 10 + i, 10 + i, labels, data=data_of(10 + i, text)))
    predictor = learner.fit()
    sport, propaganda = predictor.predict([data_of(100, UNSEEN_SPORT), data_of(101, PROPAGANDA[3])])
    assert cold.predict([data_of(100, UNSEEN_SPORT)])[0].labels.get(THREAT) != "genuine"  # not the prior's answer
    assert sport.labels[THREAT] == "genuine" and propaganda.labels[THREAT] == "not_applicable"
    assert "Health_and_safety" in sport.labels["frames"] and "Economic" not in sport.labels["frames"]
    assert "Economic" in propaganda.labels["frames"] and "Health_and_safety" not in propaganda.labels["frames"]
    assert 0.5 < sport.scores[THREAT] < 1.0  # the chosen answer's probability
    assert 0.0 < sport.score <= 1.0


def test_spans_learn_the_cues_annotators_mark(learner, schema, cold):
    text = "The Kremlin said the talks in Geneva were useful, and the Kremlin will send its envoy again."
    data = data_of(1, text)
    first, second = text.index("Kremlin"), text.rindex("Kremlin")
    evidence = [{"start": at, "end": at + 7, "label": "actor"} for at in (first, second)]
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {"evidence": evidence}, data=data))
    query = "NATO officials met Kremlin aides; the Kremlinology crowd was not invited."
    spans = learner.fit().predict([data_of(2, query)])[0].labels["evidence"]
    learned = [s for s in spans if s["text"] == "Kremlin"]
    assert learned == [{"start": 19, "end": 26, "text": "Kremlin", "label": "actor", "score": pytest.approx(0.75)}]
    # the fallback's own cue matches stay ("NATO" is an actor cue of the schema)
    fallback = cold.predict([data_of(2, query)])[0].labels["evidence"]
    assert [s for s in fallback if s["text"] == "NATO"] and [s for s in spans if s["text"] == "NATO"]


def test_a_task_scores_do_not_depend_on_the_batch(learner, schema):
    for i, text in enumerate([*SPORT[:3], *PROPAGANDA[:3]]):
        value = "not_applicable" if i < 3 else "manufactured"
        learner.apply_event(
            event(schema, "ANNOTATION_CREATED", i + 1, i + 1, {THREAT: value}, data=data_of(i + 1, text))
        )
    predictor = learner.fit()
    queries = [data_of(100, UNSEEN_SPORT), data_of(101, PROPAGANDA[3]), RECORDED["task"]["data"]]
    assert predictor.predict(queries) == [predictor.predict([q])[0] for q in queries]
    assert predictor.predict([]) == []


def test_refit_after_one_more_annotation_is_fast_at_a_few_hundred_labels(learner, schema):
    base = [*SPORT, *PROPAGANDA]
    frames = ["Health_and_safety", "Economic", "Security_and_defense"]
    events = []
    for i in range(300):
        labels = {THREAT: ["genuine", "not_applicable", "manufactured"][i % 3], "frames": [frames[i % 3]]}
        data = data_of(i + 1, f"{base[i % len(base)]} ({i})")
        events.append(event(schema, "ANNOTATION_CREATED", i + 1, i + 1, labels, data=data))
    learner.load_tasks(as_export(events))
    learner.fit()  # warm: the 300 texts are embedded and cached
    labels = {THREAT: "genuine", "frames": ["Economic"]}
    learner.apply_event(event(schema, "ANNOTATION_CREATED", 999, 999, labels, data=data_of(999, UNSEEN_SPORT)))
    started = time.perf_counter()
    predictor = learner.fit()
    assert time.perf_counter() - started < 2.0  # the budget from webhook to serving
    assert predictor.n_examples == 301


# ---------------------------------------------------------------------------------------------------------------
# the background worker


class GatedLearner(InstantLearner):
    """Its fit, once it has read its snapshot of the labels, waits for a gate: events then arrive mid-fit."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.fitting = threading.Event()
        self.fit_calls = 0

    def _prepare(self, examples):
        self.fit_calls += 1
        self.fitting.set()
        assert self.gate.wait(10)
        return super()._prepare(examples)


def test_worker_coalesces_events_into_one_fit_and_reports_each_new_version(schema, embedder, cold):
    learner = GatedLearner(schema, embedder, cold)
    fitted: list = []
    with LearnerWorker(learner, fitted.append) as worker:
        learner.apply_event(event(schema, "ANNOTATION_CREATED", 1, 1, {THREAT: "genuine"}))
        worker.submit()
        assert learner.fitting.wait(10)  # the first fit is running (held at the gate)
        for i, value in enumerate(["manufactured", "not_applicable", "genuine", "manufactured"]):
            learner.apply_event(event(schema, "ANNOTATION_UPDATED", 1, 1, {THREAT: value}, at=1 + i))
            last = worker.submit()
        learner.gate.set()
        assert worker.wait(last, timeout=10)
        # the running fit, then one for the four events that came meanwhile
        assert worker.fits == 2 and learner.fit_calls == 2
        assert len(fitted) == 2 and fitted[0].model_version != fitted[1].model_version
        assert fitted[1].model_version == learner.state_version()  # the second fit saw the last event
        assert accepted(learner) == {1: "manufactured"}
        learner.apply_event(deleted(1))
        assert worker.wait(worker.submit(), timeout=10)
        assert fitted[-1] is None  # no label left: back to the rung below
        assert worker.last_error is None
    assert not worker._thread.is_alive()


def test_worker_survives_a_failing_fit(schema, embedder, cold):
    class Broken(InstantLearner):
        def fit(self):
            raise RuntimeError("disk full")

    fitted: list = []
    with LearnerWorker(Broken(schema, embedder, cold), fitted.append) as worker:
        assert worker.wait(worker.submit(), timeout=10)
        assert worker.last_error == "RuntimeError: disk full" and fitted == []
        assert worker.wait(worker.submit(), timeout=10) and worker.fits == 2


def test_closed_form_lda_head_is_sklearns():
    import numpy as np
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from backend.instant_learner import _lda

    rng = np.random.default_rng(0)
    for k in (2, 3, 4):
        x = rng.normal(size=(40, 12))
        y = np.array([f"c{i % k}" for i in range(40)])
        ours = _lda(x, y, sorted(set(y)), 0.9)
        theirs = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.9, priors=np.full(k, 1 / k)).fit(x, y)
        assert np.allclose(ours.coef, theirs.coef_) and np.allclose(ours.intercept, theirs.intercept_)
        assert np.allclose(np.stack([ours.proba(row) for row in x]), theirs.predict_proba(x))


def test_a_delete_of_ids_never_held_changes_nothing_and_blinds_nothing(learner, schema):
    """Issue 28: one forged ANNOTATIONS_DELETED for ids 1..20000 used to pre-fill the deleted set, so every later
    real annotation with one of those ids was ignored until a restart."""
    assert learner.apply_event(deleted(*range(1, 20_001))) is False
    assert learner.apply_event(event(schema, "ANNOTATION_CREATED", 5, 5, {THREAT: "genuine"})) is True
    assert accepted(learner) == {5: "genuine"}
    # a delete still removes what the learner holds, and an older export does not bring it back
    export = [
        {"id": 5, "data": data_of(5), "annotations": [{**event(schema, "X", 5, 5, {THREAT: "genuine"})["annotation"]}]}
    ]
    assert learner.apply_event(deleted(5)) is True
    learner.load_tasks(export)
    assert learner.examples() == []
