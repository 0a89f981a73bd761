"""Fit a profile's consensus weights, bias, calibration threshold and tier exit thresholds.

Input: per-model outputs on a labelled set, collected with every tier forced to run (so that each
image has every model's vote and latency). Steps, each on the *fit* split only:

1. **Weights and bias**: logistic regression on per-model log-odds, ``P = σ(b + Σ w_i·logit(p_i))``,
   which is exactly the engine's weighted geometric pooling (a missing vote contributes 0). Weights are
   kept ≥ 0: a model that gets a negative weight is dropped (weight 0) and the fit repeated.
2. **Calibration threshold**: the decision threshold on the pooled probability that maximises MCC;
   the engine maps it to 0.5.
3. **Exit thresholds**: coordinate search over each tier's threshold to maximise the *simulated
   expected reward* (the validator's rolling MCC-100 / accuracy-10 reward, cubed, averaged over answer
   streams resampled with 50/50 labels, as validators draw them) with the mean simulated latency under a
   budget. The calibration threshold likewise maximises MCC at 50/50 prevalence, not at the labelled
   set's own class balance.

Then the before/after comparison is made on the *held-out* split, and the fitted values can be written
into a copy of the profile.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from natix_miner.engine.consensus import calibrate as remap
from natix_miner.engine.consensus import finalize, logit, pool_geometric


@dataclass
class Sample:
    label: int
    votes: dict[str, float | None]  # model -> p (None = no vote)
    latencies: dict[str, float] = field(default_factory=dict)  # model -> ms


@dataclass
class CascadeParams:
    weights: dict[str, float]
    bias: float
    threshold: float  # calibration threshold (maps to 0.5)
    exit_thresholds: list[float]  # per tier
    temperature: float = 1.0
    epsilon: float = 1e-3


# ---------------------------------------------------------------------------------------------
# The validator's reward, simulated fast


def simulate_reward(labels, preds, window_mcc: int = 100, window_acc: int = 10) -> float:
    """Mean per-query reward the validator would give for answering ``preds`` in this order.

    Same rules as docs/protocol.md §3 (np.round, MCC clipped at 0 and 0 unless both classes appear in the
    window's labels and predictions, reward = (0.5·MCC100 + 0.5·Acc10)^3; answers are all valid here).
    O(n) with cumulative sums.
    """
    y = np.asarray(labels, dtype=np.int64)
    r = np.round(np.asarray(preds, dtype=float)).astype(np.int64)
    n = len(y)
    if n == 0:
        return 0.0

    def csum(x):
        return np.concatenate([[0], np.cumsum(x)])

    tp, fp = csum((r == 1) & (y == 1)), csum((r == 1) & (y == 0))
    tn, fn = csum((r == 0) & (y == 0)), csum((r == 0) & (y == 1))
    correct = csum(r == y)
    ys, rs = csum(y), csum(r)
    rewards = np.empty(n)
    for t in range(n):
        a = max(0, t + 1 - window_mcc)
        b = t + 1
        TP, FP, TN, FN = tp[b] - tp[a], fp[b] - fp[a], tn[b] - tn[a], fn[b] - fn[a]
        m = b - a
        y_pos, r_pos = ys[b] - ys[a], rs[b] - rs[a]
        mcc = 0.0
        if 0 < y_pos < m and 0 < r_pos < m:
            den = math.sqrt(float(TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
            mcc = max(0.0, (TP * TN - FP * FN) / den) if den else 0.0
        a10 = max(0, t + 1 - window_acc)
        acc = (correct[b] - correct[a10]) / (b - a10)
        rewards[t] = (0.5 * mcc + 0.5 * acc) ** 3
    return float(rewards.mean())


def expected_reward(labels, preds, repeats: int = 20, seed: int = 0, length: int = 300) -> float:
    """Mean :func:`simulate_reward` over streams drawn the way a validator draws challenges.

    A validator picks the label uniformly first, then an image of that label (docs/protocol.md §2.3), so each
    stream of ``length`` answers is resampled with balanced labels from the given (often imbalanced)
    set. Without both classes it falls back to shuffles of the set as it is.
    """
    y = np.asarray(labels)
    p = np.asarray(preds)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    vals = []
    for _ in range(repeats):
        if len(pos) and len(neg):
            want = rng.random(length) < 0.5
            idx = np.where(want, rng.choice(pos, length), rng.choice(neg, length))
        else:
            idx = rng.permutation(len(y))
        vals.append(simulate_reward(y[idx], p[idx]))
    return float(np.mean(vals)) if vals else 0.0


def balanced_mcc(labels, preds) -> float:
    """MCC at 50/50 prevalence (what a validator's stream has), from the true-positive and true-negative rates."""
    from natix_miner.evaluation.metrics import balanced_mcc_from_counts

    y = np.asarray(labels, dtype=int)
    r = np.round(np.asarray(preds, dtype=float)).astype(int)
    return balanced_mcc_from_counts(int(((r == 1) & (y == 1)).sum()), int(((r == 1) & (y == 0)).sum()),
                                    int(((r == 0) & (y == 0)).sum()), int(((r == 0) & (y == 1)).sum()))


# ---------------------------------------------------------------------------------------------
# Fitting


def _features(samples: list[Sample], models: list[str]) -> np.ndarray:
    X = np.zeros((len(samples), len(models)))
    for i, s in enumerate(samples):
        for j, m in enumerate(models):
            p = s.votes.get(m)
            if p is not None and math.isfinite(p):
                X[i, j] = logit(min(max(p, 1e-6), 1 - 1e-6))
    return X


def fit_weights(samples: list[Sample], models: list[str], C: float = 1.0) -> tuple[dict[str, float], float]:
    """Non-negative weights and a bias by logistic regression on per-model log-odds."""
    from sklearn.linear_model import LogisticRegression

    y = np.array([s.label for s in samples])
    if len(set(y.tolist())) < 2:
        raise ValueError("calibration needs both classes in the fit split")
    active = list(models)
    while True:
        X = _features(samples, active)
        lr = LogisticRegression(C=C, max_iter=1000)
        lr.fit(X, y)
        w = lr.coef_[0]
        neg = [m for m, v in zip(active, w) if v < 0]
        if not neg or len(active) == 1:
            break
        active = [m for m in active if m not in neg]
    weights = {m: 0.0 for m in models}
    for m, v in zip(active, w):
        weights[m] = float(max(0.0, v))
    return weights, float(lr.intercept_[0])


def mcc_optimal_threshold(labels, probs) -> float:
    """The decision threshold maximising MCC at the validator's 50/50 label balance."""
    p = np.asarray(probs, dtype=float)
    cands = np.unique(np.clip(np.concatenate([p, [0.5]]), 0.01, 0.99))
    best_t, best = 0.5, -2.0
    for t in cands:
        m = balanced_mcc(labels, [remap(x, float(t)) for x in p])
        if m > best + 1e-12 or (abs(m - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = m, float(t)
    return best_t


# ---------------------------------------------------------------------------------------------
# Simulating the cascade on recorded votes


def simulate_cascade(samples: list[Sample], tiers: list[list[str]], params: CascadeParams):
    """Replay the cascade with ``params``; returns (predictions, latencies_ms, exit_tier_index)."""
    preds, lats, exits = [], [], []
    for s in samples:
        ps: list[float | None] = []
        ws: list[float] = []
        lat = 0.0
        pred = finalize(None, params.epsilon)
        exit_i = len(tiers) - 1
        for ti, models in enumerate(tiers):
            lat += max([s.latencies.get(m, 0.0) for m in models] or [0.0])  # models of a tier run in parallel
            for m in models:
                ps.append(s.votes.get(m))
                ws.append(params.weights.get(m, 0.0))
            pooled = pool_geometric(ps, ws, params.bias)  # the engine's pooling (missing/NaN votes skipped)
            if pooled is not None:
                pred = finalize(remap(pooled, params.threshold, params.temperature), params.epsilon)
                if max(pred, 1 - pred) >= params.exit_thresholds[ti]:
                    exit_i = ti
                    break
        preds.append(pred)
        lats.append(lat)
        exits.append(exit_i)
    return preds, lats, exits


def fit_exit_thresholds(samples: list[Sample], tiers: list[list[str]], params: CascadeParams,
                        latency_budget_ms: float | None, grid=None, rounds: int = 2, seed: int = 0) -> list[float]:
    """Coordinate search of per-tier exit thresholds maximising simulated expected reward."""
    grid = grid or [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0]
    labels = [s.label for s in samples]
    best = list(params.exit_thresholds)

    def score(th):
        p = copy.copy(params)
        p.exit_thresholds = th
        preds, lats, _ = simulate_cascade(samples, tiers, p)
        if latency_budget_ms is not None and float(np.mean(lats)) > latency_budget_ms:
            return -1.0
        return expected_reward(labels, preds, repeats=5, seed=seed, length=200)

    best_score = score(best)
    for _ in range(rounds):
        for ti in range(len(tiers) - 1):  # the last tier always ends the cascade
            for g in grid:
                cand = list(best)
                cand[ti] = g
                sc = score(cand)
                if sc > best_score + 1e-9:
                    best, best_score = cand, sc
    best = [max(0.5, min(1.0, t)) for t in best]
    return best


def evaluate_params(samples: list[Sample], tiers: list[list[str]], params: CascadeParams, seed: int = 0) -> dict:
    from natix_miner.evaluation.metrics import binary_metrics

    preds, lats, exits = simulate_cascade(samples, tiers, params)
    labels = [s.label for s in samples]
    m = binary_metrics(labels, preds)
    return {"n": m["n"], "mcc": m["mcc"], "balanced_mcc": balanced_mcc(labels, preds), "accuracy": m["accuracy"],
            "auc": m["auc"],
            "expected_reward": expected_reward(labels, preds, seed=seed),
            "mean_latency_ms": float(np.mean(lats)) if lats else 0.0,
            "exit_rates": {str(i): exits.count(i) / max(1, len(exits)) for i in range(len(tiers))}}


def split(samples: list[Sample], holdout: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified split into (fit, held_out)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for label in (0, 1):
        group = [s for s in samples if s.label == label]
        idx = rng.permutation(len(group))
        k = int(round(len(group) * holdout))
        held += [group[i] for i in idx[:k]]
        fit += [group[i] for i in idx[k:]]
    return fit, held


# ---------------------------------------------------------------------------------------------
# Output: sample-size warnings and the calibrated profile (comments kept)

MIN_SAMPLES_PER_CLASS = 30  # below this per class and split, fitted thresholds are mostly noise


def sample_warnings(fit: list[Sample], held: list[Sample], min_per_class: int = MIN_SAMPLES_PER_CLASS) -> list[str]:
    """Warnings when the fit or held-out split has too few images of a class for the fitted values to mean much."""
    out = []
    for name, part in (("fit", fit), ("held-out", held)):
        pos = sum(s.label == 1 for s in part)
        neg = len(part) - pos
        if min(pos, neg) < min_per_class:
            out.append(f"only {pos} roadwork and {neg} no_roadwork images in the {name} split (< {min_per_class} "
                       "per class): the fitted values and the before/after comparison are mostly noise; use more "
                       "labelled images")
    return out


def calibrated_profile_text(src_text: str, params: CascadeParams, exit_by_tier: dict[str, float],
                            tier_names: list[str], profile_tiers: list[list[str]], name: str,
                            header: str = "") -> str:
    """The source profile's text with the fitted values set and every comment and character kept.

    ``tier_names``/``profile_tiers``: all the profile's tiers in file order and their models' names;
    ``exit_by_tier``: the fitted exit threshold of each (enabled) tier."""
    from natix_miner.evaluation.yaml_edit import set_values

    updates: list[tuple[tuple, object]] = [(("name",), f"{name}-calibrated"),
                                           (("consensus", "method"), "geometric"),
                                           (("consensus", "bias"), round(float(params.bias), 4)),
                                           (("calibration", "threshold"), round(float(params.threshold), 6))]
    for ti, (tname, models) in enumerate(zip(tier_names, profile_tiers)):
        if tname in exit_by_tier:
            updates.append((("tiers", ti, "exit_threshold"), round(float(exit_by_tier[tname]), 4)))
        for mi, m in enumerate(models):
            if m in params.weights:
                updates.append((("tiers", ti, "models", mi, "weight"), round(float(params.weights[m]), 4)))
    return header + set_values(src_text, updates)
