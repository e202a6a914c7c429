"""The task score's uncertainty strategies (training.uncertainty), checked on distributions worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from training.uncertainty import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Entropy,
    LeastConfidence,
    Margin,
    get_strategy,
    task_score,
)

ALL = [LeastConfidence(), Margin(), Entropy()]
IDS = [s.name for s in ALL]


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_uniform_scores_0_and_one_hot_scores_1(strategy, k):
    assert strategy.certainty(np.full(k, 1.0 / k), "single") == pytest.approx(0.0, abs=1e-9)
    for hot in range(k):
        assert strategy.certainty(np.eye(k)[hot], "single") == pytest.approx(1.0, abs=1e-9)


# Hand-computed values. Single choice p = (0.7, 0.2, 0.1), k = 3:
#   least confidence (0.7 - 1/3) / (1 - 1/3) = 0.3667 / 0.6667 = 0.55
#   margin 0.7 - 0.2 = 0.5
#   entropy H = 0.7*0.35667 + 0.2*1.60944 + 0.1*2.30259 = 0.24967 + 0.32189 + 0.23026 = 0.80182 nats;
#           H / ln 3 = 0.80182 / 1.09861 = 0.72985, certainty 1 - 0.72985 = 0.27015
# Single choice p = (0.8, 0.2), k = 2:
#   least confidence (0.8 - 0.5) / 0.5 = 0.6; margin 0.6
#   entropy H = 0.8*0.22314 + 0.2*1.60944 = 0.17851 + 0.32189 = 0.50040; / ln 2 = 0.72193; certainty 0.27807
# Multi choice q = (0.9, 0.4, 0.05): yes/no pairs (0.9, 0.1), (0.4, 0.6), (0.05, 0.95); the least certain is 0.4
#   least confidence (0.6 - 0.5) / 0.5 = 0.2; margin 0.6 - 0.4 = 0.2
#   entropy H = 0.4*0.91629 + 0.6*0.51083 = 0.36652 + 0.30650 = 0.67301; / ln 2 = 0.97095; certainty 0.02905
HAND = [
    ("single", [0.7, 0.2, 0.1], {"least_confidence": 0.55, "margin": 0.5, "entropy": 0.27015}),
    ("single", [0.8, 0.2], {"least_confidence": 0.6, "margin": 0.6, "entropy": 0.27807}),
    ("multi", [0.9, 0.4, 0.05], {"least_confidence": 0.2, "margin": 0.2, "entropy": 0.02905}),
]


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
@pytest.mark.parametrize(("kind", "probs", "expected"), HAND, ids=["single3", "single2", "multi3"])
def test_intermediate_values_match_the_hand_computation(strategy, kind, probs, expected):
    assert strategy.certainty(np.array(probs), kind) == pytest.approx(expected[strategy.name], abs=1e-4)


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
def test_multi_choice_is_as_certain_as_its_least_certain_label(strategy):
    assert strategy.certainty(np.array([0.0, 0.0, 1.0]), "multi") == pytest.approx(1.0)  # every yes/no is sure
    assert strategy.certainty(np.full(4, 0.5), "multi") == pytest.approx(0.0)
    # one coin-flip label makes the whole dimension unsure, however sure the others are (a minimum, not a mean)
    assert strategy.certainty(np.array([0.999, 0.001, 0.5]), "multi") == pytest.approx(0.0, abs=1e-9)
    # on-probabilities are not a distribution: two labels both unlikely is a confident "neither" (LC: |2*0.2-1|)
    both_off = strategy.certainty(np.array([0.2, 0.2]), "multi")
    assert both_off > 0.25
    assert strategy.certainty(np.array([0.2, 0.2]), "single") == pytest.approx(0.0)  # as a distribution: a tie


def test_multi_least_confidence_and_margin_both_give_the_smallest_abs_2q_minus_1():
    q = np.array([0.6, 0.3, 0.1])
    assert LeastConfidence().certainty(q, "multi") == pytest.approx(0.2)  # |2*0.6 - 1|
    assert Margin().certainty(q, "multi") == pytest.approx(0.2)
    assert LeastConfidence().certainty(q, "single") == pytest.approx(0.4)  # (0.6 - 1/3) / (2/3)


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
def test_single_choice_is_normalised_and_broken_inputs_count_as_unknown(strategy):
    half = strategy.certainty(np.array([0.35, 0.1, 0.05]), "single")  # sums to 0.5: same as (0.7, 0.2, 0.1)
    assert half == pytest.approx(strategy.certainty(np.array([0.7, 0.2, 0.1]), "single"))
    assert strategy.certainty(np.array([np.nan, 0.5]), "single") == 0.0
    assert strategy.certainty(np.array([0.9, np.inf]), "multi") == 0.0
    assert strategy.certainty(np.zeros(3), "single") == 0.0


@pytest.mark.parametrize("strategy", ALL, ids=IDS)
def test_certainty_stays_in_0_1_and_rises_as_mass_moves_to_the_top_label(strategy):
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(2, 7))
        p = rng.dirichlet(np.ones(k))
        assert 0.0 <= strategy.certainty(p, "single") <= 1.0
        assert 0.0 <= strategy.certainty(rng.random(k), "multi") <= 1.0
    previous = -1.0
    for top in (0.34, 0.5, 0.7, 0.9, 0.99):  # (top, rest split evenly) over three labels
        value = strategy.certainty(np.array([top, (1 - top) / 2, (1 - top) / 2]), "single")
        assert value > previous
        previous = value


def test_task_score_is_the_mean_over_dimensions():
    distributions = {
        "stance": ("single", np.array([1.0, 0.0, 0.0])),  # 1
        "threat": ("single", np.full(3, 1 / 3)),  # 0
        "frames": ("multi", np.array([0.9, 0.4, 0.05])),  # 0.2 (least confidence, above)
    }
    assert task_score(distributions) == pytest.approx((1.0 + 0.0 + 0.2) / 3)
    assert task_score(distributions, "margin") == pytest.approx((1.0 + 0.0 + 0.2) / 3)
    assert task_score(distributions, Entropy()) == pytest.approx((1.0 + 0.0 + 0.02905) / 3, abs=1e-4)
    assert task_score({}) == 0.0  # no choice dimension: nothing to be sure of, so it sorts first


def test_a_less_certain_task_scores_lower_for_every_strategy():
    tasks = {
        "sure": {"stance": ("single", np.array([0.95, 0.03, 0.02])), "frames": ("multi", np.array([0.98, 0.01]))},
        "middling": {"stance": ("single", np.array([0.6, 0.3, 0.1])), "frames": ("multi", np.array([0.8, 0.1]))},
        "unsure": {"stance": ("single", np.array([0.4, 0.35, 0.25])), "frames": ("multi", np.array([0.55, 0.45]))},
    }
    for name in STRATEGIES:
        ascending = sorted(tasks, key=lambda t, name=name: task_score(tasks[t], name))  # the Data Manager tab's order
        assert ascending == ["unsure", "middling", "sure"], name


def test_strategies_by_name_and_errors_are_one_line():
    assert DEFAULT_STRATEGY == "least_confidence" and set(STRATEGIES) == {"least_confidence", "margin", "entropy"}
    custom = Margin()
    assert get_strategy(custom) is custom and get_strategy("entropy").name == "entropy"
    with pytest.raises(ValueError, match="unknown uncertainty strategy 'ratio'; use one of least_confidence") as info:
        task_score({"a": ("single", np.array([0.5, 0.5]))}, "ratio")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="kind must be 'single' or 'multi'"):
        task_score({"evidence": ("spans", np.array([0.5]))})  # type: ignore[dict-item]


def test_trained_predictor_scores_tasks_with_the_default_strategy():
    """The fine-tuned rung's task score is `task_score` on its calibrated probabilities (spans left out)."""
    from training.predict import ModelOutputs, TrainedPredictor

    predictor = object.__new__(TrainedPredictor)  # no weights needed: only the scoring step is under test
    predictor.thresholds = {}  # multi-choice at 0.5
    predictor.config = SimpleNamespace(
        dimensions=[
            {"name": "stance", "kind": "single", "labels": ["favor", "against", "none"]},
            {"name": "frames", "kind": "multi", "labels": ["a", "b", "c"]},
            {"name": "evidence", "kind": "spans", "labels": ["actor"]},
        ]
    )
    probs = {"stance": np.array([[0.7, 0.2, 0.1]]), "frames": np.array([[0.9, 0.4, 0.05]])}
    raw = ModelOutputs(spans={"evidence": [[{"start": 0, "end": 1, "text": "x", "label": "actor", "score": 0.1}]]})
    prediction = predictor._prediction(0, probs, raw)
    assert prediction.score == pytest.approx((0.55 + 0.2) / 2)  # least confidence: 0.55 and 0.2, from above
    assert prediction.scores == pytest.approx({"stance": 0.7, "frames": 0.6})  # per-question scores unchanged
    assert prediction.labels["stance"] == "favor" and prediction.labels["frames"] == ["a"]
