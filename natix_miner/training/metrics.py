"""Threshold choice and evaluation metrics for training runs.

One metric core for training: :func:`threshold_metrics` reads the counts from
:func:`natix_miner.evaluation.metrics.binary_metrics` applied to the thresholded predictions (``p >= threshold``)
and AUC from the raw scores. Training reports keep their own conventions, which differ from the validator-window
numbers of ``binary_metrics`` on purpose and are tested: ``mcc`` is the *unclipped* MCC at the data's balance
(``binary_metrics``' ``mcc_raw``; the validator clips at 0), MCC/AUC are ``None`` (not 0) when a class is absent,
and every float is rounded to 4 digits.

``mcc_balanced`` is the MCC at the validators' 50/50 label draw (from TPR and TNR); ``reward`` is the replica's
simulated per-query reward (:func:`natix_miner.evaluation.calibration.expected_reward`: rolling MCC-100 and
accuracy-10, cubed, over answer streams resampled 50/50 as validators draw them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "OBJECTIVES",
    "best_threshold",
    "best_threshold_score",
    "evaluate_scores",
    "mean_metrics",
    "threshold_metrics",
]

OBJECTIVES = ("balanced", "raw")
METRIC_KEYS = ("n", "n_roadwork", "mcc", "mcc_balanced", "accuracy", "auc", "tpr", "tnr", "reward")


def _counts(y: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    return tp, fp, tn, fn


def _objective(objective: str):
    from natix_miner.evaluation.metrics import balanced_mcc_from_counts, mcc_from_counts

    if objective not in OBJECTIVES:
        raise ValueError(f"threshold objective must be one of {OBJECTIVES}, got {objective!r}")
    f = balanced_mcc_from_counts if objective == "balanced" else mcc_from_counts
    return lambda y, pred: f(*_counts(y, pred))


def best_threshold_score(y, p, objective: str = "balanced", *, kinds=None) -> tuple[float, float]:
    """(threshold, objective value) maximising MCC of ``p >= threshold``.

    ``objective="balanced"`` (default): MCC at the validators' 50/50 label balance, from TPR and TNR — validators
    draw each challenge's label 50/50, so that is the MCC they see. ``"raw"``: MCC at the data's own balance, which
    on scarce positives picks a far higher, low-recall threshold that a 50/50 stream punishes. ``kinds`` (one view
    kind per row, e.g. ``full``/``crop``): maximise the mean of the per-kind MCCs. Candidates are 401 quantiles of
    ``p``; the threshold is kept inside [1e-4, 1 - 1e-4]; the first best candidate wins.
    """
    score = _objective(objective)
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    if len(y) == 0:
        return 0.5, float("nan")
    kinds = np.asarray(kinds) if kinds is not None else np.zeros(len(y), dtype=int)
    present = [k for k in dict.fromkeys(kinds.tolist())]
    cands = np.unique(np.quantile(p, np.linspace(0.0, 1.0, 401)))
    best_t, best_m = 0.5, -2.0
    for t in cands:
        m = float(np.mean([score(y[kinds == k], (p[kinds == k] >= t).astype(int)) for k in present]))
        if m > best_m:
            best_t, best_m = float(t), m
    return float(min(max(best_t, 1e-4), 1 - 1e-4)), best_m


def best_threshold(y, p, objective: str = "balanced", *, kinds=None) -> float:
    """The threshold of :func:`best_threshold_score`."""
    return best_threshold_score(y, p, objective, kinds=kinds)[0]


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def threshold_metrics(y, p, threshold: float, *, reward: bool = True) -> dict[str, Any]:
    """n, n_roadwork, mcc (unclipped, data balance), mcc_balanced (50/50), accuracy, auc, tpr, tnr, reward for the
    decision ``p >= threshold``."""
    from natix_miner.evaluation.calibration import expected_reward
    from natix_miner.evaluation.metrics import auc_score, binary_metrics

    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    pred = (p >= threshold).astype(int)
    m = binary_metrics(y, pred)  # counts, rates and MCCs of the hard decisions (np.round of 0/1 is exact)
    two = len(set(y.tolist())) == 2
    return {"n": len(y), "n_roadwork": int(y.sum()),
            "mcc": _r(m["mcc_raw"]) if two else None,
            "mcc_balanced": _r(m["mcc_balanced"]) if two else None,
            "accuracy": _r(m["accuracy"]) if len(y) else None,
            "auc": _r(auc_score(y, p)) if two else None,
            "tpr": _r(m["tpr"]), "tnr": _r(m["tnr"]),
            "reward": _r(expected_reward(y, pred.astype(float))) if reward and len(y) else None}


def _by(names, y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    arr = np.asarray(list(names))
    if len(arr) != len(y):
        raise ValueError(f"{len(arr)} names for {len(y)} scores")
    return {str(n): threshold_metrics(y[arr == n], p[arr == n], threshold) for n in sorted(set(arr.tolist()))}


def evaluate_scores(y, p, threshold: float, *, sources: Sequence[str] | None = None,
                    conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`threshold_metrics` over all rows, plus ``per_source`` and ``per_condition`` (empty without names)."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} labels for {len(p)} scores")
    if not np.all(np.isfinite(p)):
        raise ValueError("scores contain NaN or infinity")
    out = threshold_metrics(y, p, threshold)
    out["per_source"] = _by(sources, y, p, threshold) if sources is not None else {}
    out["per_condition"] = _by(conditions, y, p, threshold) if conditions is not None else {}
    return out


def mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average metric dicts (nested dicts recursively) over repeats; ``<key>_sd`` gives the spread of mcc,
    mcc_balanced, auc and reward across repeats. Non-numeric or missing values are skipped."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for r in runs for k in r))
    for key in keys:
        vals = [r[key] for r in runs if key in r]
        if any(isinstance(v, dict) for v in vals):
            out[key] = mean_metrics([v for v in vals if isinstance(v, dict)])
            continue
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out[key] = round(float(np.mean(nums)), 4) if nums else None
        if key in ("mcc", "mcc_balanced", "auc", "reward") and len(nums) > 1:
            out[f"{key}_sd"] = round(float(np.std(nums)), 4)
    return out
