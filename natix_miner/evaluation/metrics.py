"""Binary metrics computed the way the NATIX validator reads answers (docs/protocol.md §3.1).

Predictions are rounded with ``np.round`` (banker's rounding: 0.5 -> 0, i.e. "no roadwork"); MCC is
clipped at 0 and is 0 unless both labels and rounded predictions contain two classes. AUC uses the raw
probabilities. No exception escapes: degenerate inputs give zeros.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from natix_miner.scoring import balanced_mcc_from_counts, mcc_from_counts, reward_value

__all__ = ["auc_score", "balanced_mcc_from_counts", "binary_metrics", "expected_reward", "mcc_from_counts",
           "percentiles"]


def auc_score(labels: Sequence[int], probs: Sequence[float]) -> float | None:
    """ROC AUC by the rank statistic (ties count half); None with fewer than two classes."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def binary_metrics(labels: Sequence[int], probs: Sequence[float]) -> dict:
    """mcc (clipped at 0, validator rule), mcc_raw, mcc_balanced (at 50/50 prevalence, what validators
    see), tpr, tnr, accuracy, auc, confusion counts, n."""
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    out = {"n": int(len(y)), "mcc": 0.0, "mcc_raw": 0.0, "mcc_balanced": 0.0, "tpr": None, "tnr": None,
           "accuracy": 0.0, "auc": None,
           "tp": 0, "fp": 0, "tn": 0, "fn": 0}
    if len(y) == 0:
        return out
    pred = np.round(p).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    raw = mcc_from_counts(tp, fp, tn, fn)
    both = len(set(y.tolist())) == 2 and len(set(pred.tolist())) == 2
    out.update(tp=tp, fp=fp, tn=tn, fn=fn, mcc_raw=float(raw), mcc=float(max(0.0, raw)) if both else 0.0,
               mcc_balanced=float(balanced_mcc_from_counts(tp, fp, tn, fn)),
               tpr=float(tp / (tp + fn)) if tp + fn else None, tnr=float(tn / (tn + fp)) if tn + fp else None,
               accuracy=float((pred == y).mean()), auc=auc_score(y, p))
    return out


def expected_reward(mcc100: float, acc10: float) -> float:
    """The validator's per-query reward for a valid answer: (0.5·MCC100 + 0.5·Acc10)^3."""
    return reward_value(mcc100, acc10)


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return {f"p{int(q)}": None for q in qs}
    return {f"p{int(q)}": float(np.percentile(v, q)) for q in qs}
