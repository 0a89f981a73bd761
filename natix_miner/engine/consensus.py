"""Consensus (pooling of model votes), calibration remap and the final output guard.

Pooling (docs/architecture.md §4)
-------------------
:func:`pool_geometric` is a weighted geometric pool of probabilities::

    P ∝ Π p_i^{w_i},   Q ∝ Π (1 − p_i)^{w_i},   answer = P / (P + Q)

which is the same as ``sigmoid(bias + Σ w_i · logit(p_i))``: a weighted *sum* of log-odds. The
weights are **not** normalised: they and the bias are meant to be fitted by logistic regression on
the per-model log-odds of labelled images (``evaluation/`` fits them), so agreeing models push the
answer further from 0.5, which is the behaviour we want for an early exit. A single model with
weight 1 and bias 0 returns its own probability.

:func:`pool_design_legacy` keeps the original design's formula as a named option only. It is
**wrong**: because ``log(conf) < 0``, every extra vote on a side makes that side's bucket smaller,
so three models at 0.9 "roadwork" and one at 0.9 "none" answer "none" (see the tests).

Calibration and output
----------------------
:func:`calibrate` shifts the pooled log-odds so that the decision threshold maps to 0.5 and
divides by a temperature. :func:`finalize` turns anything into a safe wire value: a finite Python
float clamped to ``[eps, 1 − eps]`` that is never exactly 0.5 (validators classify with
``np.round``, and 0.5 rounds to 0, so a tie is answered as 0.5 − 1e-4, i.e. explicitly "none").
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from natix_miner.scoring import P_CLIP, logit, sigmoid

__all__ = ["P_CLIP", "calibrate", "confidence", "finalize", "logit", "pool", "pool_design_legacy", "pool_geometric",
           "sigmoid"]

TIE_NUDGE = 1e-4
NEUTRAL = 0.5


def _valid_p(p: object) -> float | None:
    """``p`` as a float, or None when it is missing, NaN, infinite or not a number."""
    if p is None or isinstance(p, bool):
        return None
    try:
        v = float(p)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return v


def _pairs(ps: Iterable[object], weights: Iterable[object]) -> list[tuple[float, float]]:
    out = []
    for p, w in zip(ps, weights):
        pv = _valid_p(p)
        wv = _valid_p(w)
        if pv is None or wv is None or wv <= 0.0:
            continue
        out.append((min(max(pv, 0.0), 1.0), wv))
    return out


def pool_geometric(ps: Sequence[float | None], weights: Sequence[float], bias: float = 0.0) -> float | None:
    """``sigmoid(bias + Σ w_i · logit(p_i))`` over the valid votes (weights not normalised).

    Votes that are None/NaN, or have a weight <= 0, are skipped. Returns None when nothing is
    left (no votes, or zero total weight).
    """
    pairs = _pairs(ps, weights)
    if not pairs:
        return None
    b = _valid_p(bias) or 0.0
    return sigmoid(b + math.fsum(w * logit(p) for p, w in pairs))


def pool_design_legacy(ps: Sequence[float | None], weights: Sequence[float]) -> float | None:
    """The original design's formula. **Wrong; kept only as a documented option.**

    Each model votes "roadwork" when p > 0.5 else "none", with confidence ``max(p, 1 − p)``;
    ``w · log(conf)`` is summed into that side's bucket and the answer is the positive bucket's
    share ``exp(S+) / (exp(S+) + exp(S−))``. Since log(conf) < 0, agreeing votes *shrink* their
    own side: 3 × 0.9 roadwork + 1 × 0.9 none gives 0.729 / (0.729 + 0.9) ≈ 0.45 → "none".
    """
    pairs = _pairs(ps, weights)
    if not pairs:
        return None
    s_pos = 0.0
    s_neg = 0.0
    for p, w in pairs:
        conf = min(max(max(p, 1.0 - p), P_CLIP), 1.0)
        if p > 0.5:
            s_pos += w * math.log(conf)
        else:
            s_neg += w * math.log(conf)
    return sigmoid(s_pos - s_neg)  # == exp(s_pos) / (exp(s_pos) + exp(s_neg)), stably


def pool(method: str, ps: Sequence[float | None], weights: Sequence[float], bias: float = 0.0) -> float | None:
    """Dispatch on the profile's ``consensus.method`` (the legacy formula ignores ``bias``)."""
    if method == "geometric":
        return pool_geometric(ps, weights, bias)
    if method == "design_legacy":
        return pool_design_legacy(ps, weights)
    raise ValueError(f"unknown consensus method {method!r} (geometric | design_legacy)")


def calibrate(p: float, threshold: float = 0.5, temperature: float = 1.0) -> float:
    """Remap so that ``p == threshold`` becomes 0.5: logit(p') = (logit(p) − logit(t)) / T."""
    t = float(threshold)
    temp = float(temperature)
    if not (0.0 < t < 1.0):
        raise ValueError(f"calibration threshold must be in (0, 1), got {threshold!r}")
    if not (temp > 0.0) or not math.isfinite(temp):
        raise ValueError(f"calibration temperature must be > 0, got {temperature!r}")
    if t == 0.5 and temp == 1.0:
        return min(max(float(p), 0.0), 1.0)
    return sigmoid((logit(p) - logit(t)) / temp)


def finalize(p: object, eps: float = 1e-3, fallback: float = NEUTRAL) -> float:
    """A safe wire value: finite float in [eps, 1 − eps], never exactly 0.5.

    None, NaN or non-numbers become ``fallback`` (itself made safe); ±inf clamp to the bounds.
    ``eps`` is limited to [0, 0.49] so the interval always contains 0.5 − 1e-4. A value equal to
    0.5 becomes 0.5 − 1e-4: validators use ``np.round``, which sends 0.5 to class 0 ("none")
    anyway, so the nudge only makes that choice explicit and keeps it stable under float noise.
    """
    e = _valid_p(eps)
    e = 0.0 if e is None else min(max(e, 0.0), 0.49)
    v: float | None
    if p is None or isinstance(p, bool):
        v = None
    else:
        try:
            v = float(p)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            v = None
    if v is None or math.isnan(v):
        fb = _valid_p(fallback)
        v = NEUTRAL if fb is None else fb
    v = min(max(v, e), 1.0 - e)
    if v == 0.5:
        v = 0.5 - TIE_NUDGE
    return float(v)


def confidence(p: float) -> float:
    return max(p, 1.0 - p)
