"""One copy of each scoring rule: the validator's reward formula, MCC, and the logistic helpers.

Used by the miner's telemetry (:mod:`natix_miner.telemetry`), the offline evaluation
(:mod:`natix_miner.evaluation.metrics`), the validator replica (:mod:`natix_miner.validator.scoring`),
the engine's pooling (:mod:`natix_miner.engine.consensus`) and the model families. See
docs/protocol.md, "Scoring", for the rules themselves.

- :func:`reward_value`: ``((0.5·MCC₁₀₀ + 0.5·Accuracy₁₀) · penalty) ** 3``;
- :func:`compute_penalty`: 0 for an answer outside [0, 1], else 1;
- :func:`validator_mcc`: ``max(0, matthews_corrcoef)`` when labels *and* predictions both hold two
  distinct values, else 0 (sklearn's MCC, as the validator calls it);
- :func:`mcc_from_counts` / :func:`balanced_mcc_from_counts`: MCC from a confusion matrix (counts
  may be rates: the balanced form is MCC at 50/50 prevalence, what a validator's window sees);
- :func:`sigmoid` / :func:`logit`: the logistic pair (numerically stable; logit clips p to
  [1e-6, 1 − 1e-6]).

Light on purpose: only :mod:`math` at import; numpy/sklearn are imported inside the functions
that need them.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

#: the validator scores MCC over a miner's last 100 answers and accuracy over the last 10
MCC_WINDOW = 100
ACCURACY_WINDOW = 10
REWARD_CURVE_EXPONENT = 3.0
#: logit() clips probabilities to [P_CLIP, 1 − P_CLIP]
P_CLIP = 1e-6


def reward_value(mcc100: float, acc10: float, penalty: float = 1.0) -> float:
    """The validator's per-answer reward: ``((0.5·MCC₁₀₀ + 0.5·Accuracy₁₀) · penalty) ** 3``."""
    return float(((0.5 * mcc100 + 0.5 * acc10) * penalty) ** REWARD_CURVE_EXPONENT)


def compute_penalty(prediction: float) -> float:
    """0 for a prediction outside [0, 1], else 1."""
    return 0.0 if (prediction < 0.0 or prediction > 1.0) else 1.0


def mcc(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """sklearn's Matthews correlation of two label sequences (0 when undefined)."""
    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():  # a single class warns about the confusion-matrix shape
        warnings.simplefilter("ignore", UserWarning)
        return float(matthews_corrcoef(y_true, y_pred))


def validator_mcc(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """``max(0, MCC)`` when labels and predictions both hold two distinct values, else 0."""
    if len(set(list(y_true))) > 1 and len(set(list(y_pred))) > 1:
        return max(0.0, mcc(y_true, y_pred))
    return 0.0


def mcc_from_counts(tp: float, fp: float, tn: float, fn: float) -> float:
    """MCC from a confusion matrix; counts may be rates (they scale out). 0 when undefined."""
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if den == 0 else (tp * tn - fp * fn) / den


def balanced_mcc_from_counts(tp: int, fp: int, tn: int, fn: int) -> float:
    """MCC at 50/50 prevalence, from the true-positive and true-negative rates.

    Validators draw each challenge's label 50/50, so over their 100-answer window this is the MCC a
    miner with these error rates is scored with, whatever the balance of the labelled set it was measured
    on. 0 when a class is absent.
    """
    if tp + fn == 0 or tn + fp == 0:
        return 0.0
    tpr, tnr = tp / (tp + fn), tn / (tn + fp)
    return mcc_from_counts(tpr, 1 - tnr, tnr, 1 - tpr)


def logit(p: float) -> float:
    """log(p / (1 − p)) with p clipped to [1e-6, 1 − 1e-6]."""
    p = min(max(float(p), P_CLIP), 1.0 - P_CLIP)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    """Numerically stable logistic function (never overflows)."""
    x = float(x)
    if x >= 0:
        z = math.exp(-x)
        return 1.0 / (1.0 + z)
    z = math.exp(x)
    return z / (1.0 + z)


__all__ = ["ACCURACY_WINDOW", "MCC_WINDOW", "P_CLIP", "REWARD_CURVE_EXPONENT", "balanced_mcc_from_counts",
           "compute_penalty", "logit", "mcc", "mcc_from_counts", "reward_value", "sigmoid", "validator_mcc"]
