import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from natix_miner.evaluation.metrics import auc_score, binary_metrics, expected_reward


def test_half_rounds_to_no_roadwork():
    m = binary_metrics([0, 1], [0.5, 0.51])
    assert m["tn"] == 1 and m["tp"] == 1 and m["accuracy"] == 1.0


def test_mcc_zero_unless_both_classes_predicted():
    m = binary_metrics([0, 1, 0, 1], [0.9, 0.9, 0.9, 0.9])
    assert m["mcc"] == 0.0 and m["accuracy"] == 0.5


def test_negative_mcc_is_clipped():
    m = binary_metrics([0, 1, 0, 1], [0.9, 0.1, 0.9, 0.1])
    assert m["mcc_raw"] < 0 and m["mcc"] == 0.0


@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=60))
def test_matches_sklearn(pairs):
    y = [a for a, _ in pairs]
    p = [b for _, b in pairs]
    m = binary_metrics(y, p)
    pred = np.round(p).astype(int)
    if len(set(y)) == 2 and len(set(pred.tolist())) == 2:
        assert abs(m["mcc"] - max(0.0, matthews_corrcoef(y, pred))) < 1e-9
    if len(set(y)) == 2:
        assert abs(auc_score(y, p) - roc_auc_score(y, p)) < 1e-9


def test_reward_formula():
    assert expected_reward(1.0, 1.0) == 1.0
    assert abs(expected_reward(0.0, 0.5) - 0.015625) < 1e-12
