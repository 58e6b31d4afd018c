"""Image metrics with hand-computed values, and the one decision rule (score > threshold)."""

from __future__ import annotations

import numpy as np
import pytest

from spadecam.decision import THRESHOLD_RULE, flag_anomalous, threshold_between
from spadecam.metrics import average_precision, f1_max, image_metrics

# F1 of "flag scores >= cut": cut 0.3 -> tp 3, fp 1, fn 0 -> F1 6/7 (the best);
# 0.5 -> 4/5; 0.2 -> 6/8; 0.4 -> 4/6; everything -> 6/9
LABELS = np.array([0, 0, 1, 0, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])


def test_the_rule_is_strictly_greater():
    assert THRESHOLD_RULE == "anomalous when score > threshold"
    assert flag_anomalous([0.2, 0.3, 0.4], 0.3).tolist() == [0, 0, 1]
    assert flag_anomalous([1.0, 2.0], np.inf).tolist() == [0, 0]
    assert flag_anomalous([1.0, 2.0], -np.inf).tolist() == [1, 1]
    with pytest.raises(ValueError, match="threshold is NaN"):
        flag_anomalous([1.0], float("nan"))


def test_threshold_between_stays_below_the_upper_score():
    assert threshold_between(1.0, 2.0) == 1.5
    a = 1.0
    b = np.nextafter(a, 2.0)  # adjacent floats: the midpoint would round up to b
    t = threshold_between(a, b)
    assert a <= t < b


def test_f1_max_hand_example_gives_a_threshold_of_the_same_rule():
    f1, t = f1_max(LABELS, SCORES)
    assert f1 == pytest.approx(6 / 7)
    assert t == pytest.approx(0.25)  # between 0.2 and the lowest flagged score 0.3
    assert flag_anomalous(SCORES, t).tolist() == [0, 0, 1, 1, 1, 1]


def test_at_threshold_from_the_f1_max_line_reports_the_same_f1():
    # metrics.json used to count score >= t for F1-max but score > t for at_threshold:
    # with t from the F1-max line, F1-max said 1.0 and at_threshold 0.889
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        s = np.round(rng.normal(y * 0.8, 1.0), 2)  # rounding makes ties
        m = image_metrics(y, s)
        again = image_metrics(y, s, threshold=m["image_f1_max_threshold"])
        assert again["at_threshold"]["f1"] == pytest.approx(m["image_f1_max"])


def test_a_score_equal_to_the_threshold_is_normal_in_at_threshold():
    m = image_metrics(LABELS, SCORES, threshold=0.3)
    at = m["at_threshold"]
    assert at["n_flagged"] == 3  # 0.4, 0.5, 0.6; the image scored exactly 0.3 is normal
    assert at["precision"] == pytest.approx(2 / 3) and at["recall"] == pytest.approx(2 / 3)


def test_average_precision_hand_example_and_its_name():
    # scikit-learn's documented example: AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333 (step-wise sum)
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)
    m = image_metrics(LABELS, SCORES)
    assert "image_aupr" not in m
    assert m["image_average_precision"] == pytest.approx(average_precision(LABELS, SCORES))
