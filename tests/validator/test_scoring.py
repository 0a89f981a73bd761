"""The validator's tracker, reward and EMA (docs/protocol.md §3), checked against hand/sklearn computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

from natix_miner.validator.scoring import (MinerPerformanceTracker, ScoreVector, compute_penalty, get_rewards,
                                           reward)

HK = "5HotkeyA"


def _feed(preds, labels, uid=0, hotkey=HK):
    tr = MinerPerformanceTracker()
    rewards = [reward(p, y, uid, hotkey, tr) for p, y in zip(preds, labels)]
    return tr, rewards


def _expected_reward(preds, labels, i):
    """Reward of query i computed from scratch: windows of 100 and 10 ending at i, -1 dropped."""
    p = preds[i]
    if p == -1:
        return 0.0

    def window(n):
        lo = max(0, i + 1 - n)
        pairs = [(pp, yy) for pp, yy in zip(preds[lo:i + 1], labels[lo:i + 1]) if pp != -1]
        return np.array([q for q, _ in pairs]), np.array([y for _, y in pairs])

    p100, y100 = window(100)
    r100 = np.round(p100)
    mcc = 0.0
    if len(set(y100)) > 1 and len(set(r100)) > 1:
        mcc = max(0.0, matthews_corrcoef(y100, r100))
    p10, y10 = window(10)
    acc = accuracy_score(y10, np.round(p10))
    base = (0.5 * mcc + 0.5 * acc) * (0.0 if p < 0 or p > 1 else 1.0)
    return base ** 3


def test_perfect_miner_gets_one():
    labels = [0, 1] * 10
    preds = [0.1 if y == 0 else 0.9 for y in labels]
    _, r = _feed(preds, labels)
    assert r[0] == pytest.approx(0.5 ** 3)  # one label so far: MCC 0, accuracy 1
    assert r[-1] == pytest.approx(1.0)


def test_hand_computed_small_sequence():
    labels = [1, 0, 1, 1, 0, 0]
    preds = [0.9, 0.2, 0.4, 0.8, 0.7, 0.1]
    tr, r = _feed(preds, labels)
    # after all six: rounded [1,0,0,1,1,0] vs [1,0,1,1,0,0] -> TP 2, TN 2, FP 1, FN 1
    mcc = (2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3)  # = 1/3
    acc = 4 / 6
    assert r[-1] == pytest.approx((0.5 * mcc + 0.5 * acc) ** 3)
    m = tr.get_metrics(0, 100)
    assert m["mcc"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, preds))
    for i in range(len(preds)):
        assert r[i] == pytest.approx(_expected_reward(preds, labels, i)), i


def test_random_sequences_match_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 150).tolist()
    preds = []
    for y in labels:
        u = rng.random()
        if u < 0.05:
            preds.append(-1.0)
        elif u < 0.8:
            preds.append(float(np.clip(y * 0.7 + rng.normal(0.15, 0.2), 0, 1)))
        else:
            preds.append(float(rng.random()))
    _, r = _feed(preds, labels)
    for i in range(len(preds)):
        assert r[i] == pytest.approx(_expected_reward(preds, labels, i), abs=1e-12), i


def test_accuracy_window_is_ten_and_mcc_window_is_hundred():
    labels = [0, 1] * 60  # 120 queries
    preds = [0.0 if y == 1 else 1.0 for y in labels[:100]]  # 100 wrong answers ...
    preds += [float(y) for y in labels[100:]]  # ... then 20 right
    tr, r = _feed(preds, labels)
    assert tr.get_prediction_count(0) == 100  # deque maxlen
    assert tr.get_metrics(0, 10)["accuracy"] == 1.0
    # MCC over the last 100 (80 wrong, 20 right) is negative -> clipped to 0
    assert tr.get_metrics(0, 100)["mcc"] == 0.0
    assert r[-1] == pytest.approx(0.5 ** 3)


def test_half_rounds_to_no_roadwork():
    tr, _ = _feed([0.5, 0.5, 0.51], [0, 1, 1])
    m = tr.get_metrics(0, 10)
    assert m["accuracy"] == pytest.approx(2 / 3)  # 0.5 -> 0 (right, wrong), 0.51 -> 1 (right)


def test_no_answer_is_stored_but_skipped_and_rewarded_zero():
    labels = [0, 1, 0, 1, 1]
    preds = [0.1, 0.9, 0.2, -1.0, 0.8]
    tr, r = _feed(preds, labels)
    assert r[3] == 0.0
    assert tr.get_prediction_count(0) == 5
    assert tr.get_metrics(0, 100)["accuracy"] == 1.0  # the -1 is not counted as wrong
    assert r[4] == pytest.approx(1.0)


def test_constant_answers_have_zero_mcc():
    labels = [0, 1] * 20
    _, r = _feed([0.9] * 40, labels)
    assert r[-1] == pytest.approx((0.5 * 0.5) ** 3)  # ~0.016


def test_out_of_range_value_poisons_the_windows():
    labels = [0, 1] * 10
    preds = [float(y) for y in labels]
    tr, r = _feed(preds, labels)
    assert r[-1] == pytest.approx(1.0)
    assert reward(1.6, 1, 0, HK, tr) == 0.0  # penalty
    # the next nine perfect answers score 0: every window holding the 1.6 (a 2 after rounding) fails
    later = [reward(float(y), y, 0, HK, tr) for y in [0, 1] * 5]
    assert later[:9] == [0.0] * 9
    # once the 1.6 left the 10-window, accuracy is back but MCC (100-window) is still poisoned
    assert later[9] == pytest.approx(0.5 ** 3)
    assert tr.get_metrics(0, 100)["mcc"] == 0.0 and tr.get_metrics(0, 10)["accuracy"] == 1.0
    # ... for 100 queries: the 99th answer after it still sees it, the 100th does not
    more = [reward(float(y), y, 0, HK, tr) for y in [0, 1] * 45]
    assert more[-2] == pytest.approx(0.5 ** 3)
    assert more[-1] == pytest.approx(1.0)


def test_slightly_out_of_range_costs_only_that_query():
    labels = [0, 1] * 10
    tr, _ = _feed([float(y) for y in labels], labels)
    assert reward(1.2, 1, 0, HK, tr) == 0.0  # rounds to 1: no poisoning
    assert reward(0.0, 0, 0, HK, tr) == pytest.approx(1.0)
    assert reward(-0.3, 0, 0, HK, tr) == 0.0  # rounds to -0.0
    assert reward(1.0, 1, 0, HK, tr) == pytest.approx(1.0)


def test_negative_below_half_poisons_too():
    labels = [0, 1] * 10
    tr, _ = _feed([float(y) for y in labels], labels)
    assert reward(-0.7, 0, 0, HK, tr) == 0.0  # rounds to -1 (not the exact -1 sentinel)
    assert reward(1.0, 1, 0, HK, tr) == 0.0


def test_hotkey_change_resets_history():
    labels = [0, 1] * 10
    tr, _ = _feed([float(y) for y in labels], labels)
    assert tr.get_prediction_count(0) == 20
    r = reward(1.0, 1, 0, "5HotkeyB", tr)
    assert tr.get_prediction_count(0) == 1 and tr.miner_hotkeys[0] == "5HotkeyB"
    assert r == pytest.approx(0.5 ** 3)  # fresh start: one label, MCC 0


def test_metric_exception_gives_zeros():
    tr = MinerPerformanceTracker()
    tr.update(0, float("nan"), 1, HK)
    tr.update(0, 0.1, 0, HK)
    m = tr.get_metrics(0, 10)
    assert all(v == 0 for v in m.values())
    assert MinerPerformanceTracker().get_metrics(5, 10)["accuracy"] == 0


def test_penalty():
    assert compute_penalty(0.0) == 1.0 and compute_penalty(1.0) == 1.0
    assert compute_penalty(1.0001) == 0.0 and compute_penalty(-1e-9) == 0.0


def test_get_rewards_with_duplicate_uid_updates_the_tracker_each_time():
    tr = MinerPerformanceTracker()
    r = get_rewards(1, [0.9] * 10, [0] * 10, [HK] * 10, tr)
    assert tr.get_prediction_count(0) == 10
    assert np.allclose(r, 0.5 ** 3)


def test_score_vector_ema():
    sv = ScoreVector(n=3)
    sv.update([1], [1.0])
    assert sv[1] == pytest.approx(0.05) and sv[0] == 0.0
    sv.update([1], [1.0])
    assert sv[1] == pytest.approx(0.05 + 0.95 * 0.05)
    sv.update([2, 2, 2], [0.2, 0.4, float("nan")])  # duplicates: the last write wins, NaN -> 0
    assert sv[2] == 0.0
    for _ in range(200):
        sv.update([0], [0.5])
    assert sv[0] == pytest.approx(0.5, abs=1e-4)
    sv.update([7], [1.0])  # grows with the metagraph
    assert sv[7] == pytest.approx(0.05)
