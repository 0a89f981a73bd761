import numpy as np
import pytest
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


def test_balanced_mcc_is_the_mcc_of_a_50_50_stream():
    """MCC at 50/50 prevalence equals sklearn's MCC on a resampled balanced set with the same rates."""
    from natix_miner.evaluation.metrics import balanced_mcc_from_counts

    # 20 positives (tpr 0.75) and 200 negatives (tnr 0.9): imbalanced
    m = binary_metrics([1] * 20 + [0] * 200, [0.9] * 15 + [0.1] * 5 + [0.1] * 180 + [0.9] * 20)
    assert m["tpr"] == 0.75 and m["tnr"] == 0.9
    # the same rates on 200 + 200: sklearn on an explicit balanced set
    y = [1] * 200 + [0] * 200
    pred = [1] * 150 + [0] * 50 + [0] * 180 + [1] * 20
    assert m["mcc_balanced"] == pytest.approx(matthews_corrcoef(y, pred))
    assert m["mcc_balanced"] > m["mcc_raw"]  # the raw MCC is dragged down by 20 false alarms vs 15 hits
    assert balanced_mcc_from_counts(0, 0, 10, 0) == 0.0  # one class absent
    assert binary_metrics([0, 0], [0.1, 0.9])["tpr"] is None
