"""natix_miner.training.metrics: threshold objectives, the metric conventions, per-source/condition, averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from natix_miner.evaluation.metrics import binary_metrics
from natix_miner.training import metrics as M


def imbalanced_scores():
    """1 positive in 11; the positives score lower than a few negatives.

    Just above 0.33 (no false alarm, one positive lost) the data-balance MCC is best; at 0.3 all positives are
    found at the cost of 3 false alarms, which the 50/50 MCC prefers.
    """
    y = np.array([1, 1, 1, 1] + [0] * 40)
    p = np.array([0.9, 0.8, 0.35, 0.3] + [0.32, 0.33, 0.31] + [0.1] * 37)
    return y, p


def test_balanced_and_raw_objectives_choose_different_thresholds_and_balanced_is_default():
    y, p = imbalanced_scores()
    t_bal = M.best_threshold(y, p)
    t_raw = M.best_threshold(y, p, "raw")
    assert t_bal == M.best_threshold(y, p, "balanced")
    assert t_bal <= 0.3 < t_raw
    # each threshold is best under its own objective
    bal = M.threshold_metrics(y, p, t_bal)
    raw = M.threshold_metrics(y, p, t_raw)
    assert bal["mcc_balanced"] > raw["mcc_balanced"] and raw["mcc"] > bal["mcc"]
    assert bal["tpr"] == 1.0 and raw["tpr"] == 0.75 and raw["tnr"] == 1.0
    with pytest.raises(ValueError, match="objective"):
        M.best_threshold(y, p, "f1")


def test_best_threshold_with_kinds_maximises_the_mean_over_views():
    # full views separate at 0.5, crops at 0.2: the mean objective must balance both
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    p = np.array([0.6, 0.4, 0.7, 0.45, 0.3, 0.1, 0.25, 0.15])
    kinds = np.array(["full"] * 4 + ["crop"] * 4)
    t, score = M.best_threshold_score(y, p, kinds=kinds)
    assert score < 1.0 and 0.15 < t <= 0.6
    t_full, s_full = M.best_threshold_score(y[:4], p[:4])
    assert s_full == pytest.approx(1.0) and 0.45 < t_full <= 0.6
    assert 1e-4 <= M.best_threshold([1, 0], [1.0, 0.0]) <= 1 - 1e-4


def test_threshold_metrics_conventions_against_binary_metrics():
    y = np.array([1, 1, 0, 0, 0, 0])
    p = np.array([0.2, 0.9, 0.8, 0.7, 0.1, 0.6])  # worse than chance at 0.5
    m = M.threshold_metrics(y, p, 0.5)
    tp, fp, tn, fn = 1, 3, 1, 1
    raw = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert m["mcc"] == round(raw, 4) < 0  # unclipped (the validator window's mcc clips at 0)
    assert binary_metrics(y, (p >= 0.5).astype(int))["mcc"] == 0.0
    assert m["tpr"] == 0.5 and m["tnr"] == 0.25 and m["accuracy"] == round(2 / 6, 4)
    tpr, tnr = 0.5, 0.25
    bal = (tpr * tnr - (1 - tnr) * (1 - tpr)) / math.sqrt((tpr + 1 - tnr) * 1 * 1 * (tnr + 1 - tpr))
    assert m["mcc_balanced"] == round(bal, 4)
    from sklearn.metrics import roc_auc_score

    assert m["auc"] == round(roc_auc_score(y, p), 4)
    assert (m["n"], m["n_roadwork"]) == (6, 2)
    assert 0.0 <= m["reward"] <= 1.0
    # the decision is p >= threshold (the engine remaps the threshold to 0.5 and never answers exactly 0.5)
    assert M.threshold_metrics([1, 0], [0.3, 0.1], 0.3)["tpr"] == 1.0
    # one class: MCC/AUC are None, not 0
    one = M.threshold_metrics([0, 0, 0], [0.1, 0.9, 0.2], 0.5)
    assert one["mcc"] is None and one["mcc_balanced"] is None and one["auc"] is None and one["tnr"] == round(2 / 3, 4)
    assert one["tpr"] is None


def test_reward_is_the_replicas_simulated_reward():
    from natix_miner.evaluation.calibration import expected_reward

    y, p = imbalanced_scores()
    perfect = M.threshold_metrics(y, (y == 1).astype(float) * 0.9 + 0.05, 0.5)
    assert perfect["reward"] > 0.99  # not 1: the first answers of a stream see one class only (MCC 0)
    m = M.threshold_metrics(y, p, 0.33)
    assert m["reward"] == round(expected_reward(y, (p >= 0.33).astype(float)), 4)
    always_no = M.threshold_metrics(y, np.zeros(len(y)), 0.5)
    assert always_no["reward"] == pytest.approx((0.5 * 0.5) ** 3, abs=0.01)  # MCC 0, accuracy-10 about 0.5


def test_evaluate_scores_per_source_and_condition():
    y = np.array([1, 0, 1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.3])
    src = ["a", "a", "b", "b", "a", "a"]
    cond = ["real", "real", "i2i", "i2i", "real", "pseudo"]
    out = M.evaluate_scores(y, p, 0.5, sources=src, conditions=cond)
    for k in M.METRIC_KEYS:
        assert k in out and k in out["per_source"]["a"]
    assert out["per_source"]["a"]["mcc"] == 1.0 and out["per_source"]["b"]["mcc"] == -1.0
    assert out["per_source"]["a"]["n"] == 4 and set(out["per_condition"]) == {"real", "i2i", "pseudo"}
    assert out["per_condition"]["pseudo"]["n"] == 1 and out["per_condition"]["pseudo"]["mcc"] is None
    assert M.evaluate_scores(y, p, 0.5)["per_source"] == {}
    with pytest.raises(ValueError, match="NaN"):
        M.evaluate_scores(y, np.array([0.1, np.nan, 0.2, 0.3, 0.4, 0.5]), 0.5)
    with pytest.raises(ValueError, match="names"):
        M.evaluate_scores(y, p, 0.5, sources=["a"])


def test_mean_metrics_nested_with_spread():
    runs = [{"all": {"mcc": 0.2, "n": 10, "auc": None}, "x": 1}, {"all": {"mcc": 0.4, "n": 10, "auc": 0.7}, "x": 3}]
    out = M.mean_metrics(runs)
    assert out["all"]["mcc"] == 0.3 and out["all"]["mcc_sd"] == 0.1 and out["all"]["n"] == 10
    assert out["all"]["auc"] == 0.7 and "auc_sd" not in out["all"] and out["x"] == 2
