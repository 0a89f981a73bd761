"""How a NATIX validator scores a miner (docs/protocol.md §3), reproduced exactly.

* :class:`MinerPerformanceTracker`: per UID, ``deque(maxlen=100)`` of predictions and of labels plus
  the hotkey last seen. ``update`` resets both deques when the UID is new or its hotkey changed,
  then appends — every query, including -1 (no answer) and out-of-range values.
* ``get_metrics(uid, window)``: the last ``min(window, len)`` entries; entries whose prediction is
  exactly -1 are dropped; ``np.round`` gives the class (banker's rounding: 0.5 -> 0, 1.5 -> 2);
  sklearn accuracy / precision / recall / F1 (binary, ``zero_division=0``);
  ``MCC = max(0, matthews_corrcoef)`` only when labels *and* predictions both hold two distinct
  values, else 0; ROC AUC on the raw values when the labels hold two classes. Any exception (for
  example a rounded prediction of 2 or -1 turning the binary metrics "multiclass") gives all-zero
  metrics — which is how one out-of-range answer poisons the windows that contain it (§3.3).
* :func:`reward`: ``((0.5·MCC₁₀₀ + 0.5·Accuracy₁₀) · penalty) ** 3``; 0 for a prediction of -1;
  penalty 0 when the prediction is < 0 or > 1; any exception -> 0.
* :class:`ScoreVector`: ``scores = α·scattered + (1-α)·scores`` with α = 0.05, where ``scattered``
  is a copy of the scores with the queried UIDs' rewards written in (numpy fancy assignment: with a
  UID queried several times in one step, the last reward wins); NaN rewards become 0.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

import numpy as np
from loguru import logger

from natix_miner.scoring import (
    ACCURACY_WINDOW,
    MCC_WINDOW,
    REWARD_CURVE_EXPONENT,
    compute_penalty,
    reward_value,
    validator_mcc,
)

__all__ = ["ACCURACY_WINDOW", "MCC_WINDOW", "REWARD_CURVE_EXPONENT", "MinerPerformanceTracker", "ScoreVector",
           "compute_penalty", "empty_metrics", "get_rewards", "reward"]

STORE_LAST_N = 100
MOVING_AVERAGE_ALPHA = 0.05
NO_ANSWER = -1.0

METRIC_KEYS = ("accuracy", "precision", "recall", "f1_score", "mcc", "auc")


def empty_metrics() -> dict[str, float]:
    return {k: 0.0 for k in METRIC_KEYS}


class MinerPerformanceTracker:
    """Per-UID prediction/label history, as the validator keeps it (one tracker per validator)."""

    def __init__(self, store_last_n_predictions: int = STORE_LAST_N):
        self.store_last_n_predictions = store_last_n_predictions
        self.prediction_history: dict[int, deque] = {}
        self.label_history: dict[int, deque] = {}
        self.miner_hotkeys: dict[int, str] = {}

    def reset_miner_history(self, uid: int, miner_hotkey: str) -> None:
        self.prediction_history[uid] = deque(maxlen=self.store_last_n_predictions)
        self.label_history[uid] = deque(maxlen=self.store_last_n_predictions)
        self.miner_hotkeys[uid] = miner_hotkey

    def update(self, uid: int, prediction: float, label: int, miner_hotkey: str) -> None:
        if uid not in self.prediction_history or self.miner_hotkeys.get(uid) != miner_hotkey:
            self.reset_miner_history(uid, miner_hotkey)
        self.prediction_history[uid].append(prediction)
        self.label_history[uid].append(label)

    def get_prediction_count(self, uid: int) -> int:
        return len(self.prediction_history.get(uid, ()))

    def get_metrics(self, uid: int, window: int | None = None) -> dict[str, float]:
        if uid not in self.prediction_history:
            return empty_metrics()
        preds = list(self.prediction_history[uid])
        labels = list(self.label_history[uid])
        if window is not None:
            window = min(window, len(preds))
            preds, labels = preds[len(preds) - window:], labels[len(labels) - window:]
        keep = [i for i, p in enumerate(preds) if p != -1]
        probs = np.array([preds[i] for i in keep])
        y_true = np.array([labels[i] for i in keep])
        if len(y_true) == 0:
            return empty_metrics()
        y_pred = np.round(probs)
        return _metrics(y_true, y_pred, probs)


def _metrics(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    try:
        accuracy = accuracy_score(y_true, y_pred)
        precision = precision_score(y_true, y_pred, zero_division=0)
        recall = recall_score(y_true, y_pred, zero_division=0)
        f1 = f1_score(y_true, y_pred, zero_division=0)
        two_labels = len(np.unique(y_true)) > 1
        mcc = validator_mcc(y_true, y_pred)  # max(0, MCC) only with two classes on both sides
        auc = float(roc_auc_score(y_true, probs)) if two_labels else 0.0
    except Exception as e:  # noqa: BLE001 - the validator swallows every metric error the same way
        logger.trace(f"metric computation failed ({type(e).__name__}: {e}); all-zero metrics")
        return empty_metrics()
    return {"accuracy": float(accuracy), "precision": float(precision), "recall": float(recall),
            "f1_score": float(f1), "mcc": float(mcc), "auc": auc}


def reward(prediction: float, label: int, uid: int, hotkey: str, tracker: MinerPerformanceTracker) -> float:
    """One response's reward, updating ``tracker`` as the validator does (docs/protocol.md §3.2)."""
    try:
        tracked = tracker.miner_hotkeys
        if uid in tracked and tracked[uid] != hotkey:
            tracker.reset_miner_history(uid, hotkey)
        tracker.update(uid, prediction, label, hotkey)
        m100 = tracker.get_metrics(uid, window=MCC_WINDOW)
        m10 = tracker.get_metrics(uid, window=ACCURACY_WINDOW)
        if prediction == -1:
            return 0.0
        return reward_value(m100["mcc"], m10["accuracy"], compute_penalty(prediction))
    except Exception as e:  # noqa: BLE001
        logger.warning(f"reward computation failed for uid {uid} ({type(e).__name__}: {e}); reward 0")
        return 0.0


def get_rewards(label: int, predictions: Sequence[float], uids: Sequence[int], hotkeys: Sequence[str],
                tracker: MinerPerformanceTracker) -> np.ndarray:
    """Rewards for one challenge's responses, in order (duplicates of a UID each update the tracker)."""
    return np.array([reward(p, label, u, h, tracker) for p, u, h in zip(predictions, uids, hotkeys)], dtype=float)


class ScoreVector:
    """The validator's moving-average score vector (docs/protocol.md §3.4)."""

    def __init__(self, n: int = 1, alpha: float = MOVING_AVERAGE_ALPHA):
        self.alpha = alpha
        self.scores = np.zeros(n, dtype=float)

    def update(self, uids: Iterable[int], rewards: Iterable[float]) -> np.ndarray:
        rewards = np.nan_to_num(np.asarray(list(rewards), dtype=float), nan=0.0)
        uids_arr = np.asarray(list(uids), dtype=int)
        if rewards.size == 0 or uids_arr.size == 0:
            return self.scores
        if rewards.size != uids_arr.size:
            raise ValueError(f"{rewards.size} rewards for {uids_arr.size} uids")
        if uids_arr.max() >= self.scores.size:
            grown = np.zeros(int(uids_arr.max()) + 1, dtype=float)
            grown[: self.scores.size] = self.scores
            self.scores = grown
        scattered = self.scores.copy()
        scattered[uids_arr] = rewards
        self.scores = self.alpha * scattered + (1 - self.alpha) * self.scores
        return self.scores

    def reset(self, uid: int) -> None:
        """A hotkey change zeroes the UID's score at the next metagraph resync."""
        if uid < self.scores.size:
            self.scores[uid] = 0.0

    def __getitem__(self, uid: int) -> float:
        return float(self.scores[uid]) if uid < self.scores.size else 0.0
