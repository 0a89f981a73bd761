"""Nested grouped cross-validation, independent of the model.

The model is a callback ``fit_predict(train, eval_sets) -> list[scores]``: fit on ``train`` (a list of
:class:`~natix_miner.training.data.Sample`), then score each list in ``eval_sets`` with the fitted model. A score
list is either one float per sample, or :class:`ViewScores` when a sample gives several rows (a full frame and
validator-like crops). The callback never sees a threshold: this module chooses it, on the training part only.

Protocol of :func:`nested_cv`, for each of ``repeats`` repeats (fold seed :func:`~.splits.repeat_seed`):
every data folder is split into ``folds`` grouped, label-stratified folds (:func:`~.splits.grouped_folds`); for each
outer fold the threshold is chosen on the other folds only, either by ``inner="cv"`` (grouped ``inner_folds``-fold
CV of the training part gives out-of-fold scores; then the model is refit on the whole training part:
``inner_folds + 1`` fits per outer fold) or by ``inner="holdout"`` (one grouped carve-out of ``holdout_frac`` of the
training part scores the threshold and the model fitted on the rest scores the outer fold: one fit per outer fold,
for costly models); the outer fold's scores are remapped with the engine's own
:func:`natix_miner.engine.consensus.calibrate` so that its threshold sits at 0.5, and pooled. Every image, roadwork
or not, is so predicted once per repeat by a model that never saw its group, with a threshold that never saw it
either. Metrics (:func:`~.metrics.evaluate_scores` at 0.5 on the pooled remapped scores, per source and per
condition) are averaged over repeats, with ``_sd`` the spread across repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from natix_miner.training.metrics import (
    OBJECTIVES,
    best_threshold_score,
    evaluate_scores,
    mean_metrics,
)
from natix_miner.training.splits import fold_assignment, grouped_split, repeat_seed

__all__ = ["CVResult", "FitPredict", "ViewScores", "cv_threshold", "nested_cv"]


@dataclass
class ViewScores:
    """Several score rows per sample: ``rows[i]`` is the index of row i's sample in its eval set, ``views[i]`` its
    view kind (``full``, ``crop`` ...)."""

    rows: Sequence[int]
    views: Sequence[str]
    scores: Sequence[float]


Scores = Sequence[float] | ViewScores
FitPredict = Callable[[list[Any], list[list[Any]]], list[Scores]]


@dataclass
class Rows:
    """Scores of one eval set as flat arrays (one entry per row)."""

    idx: np.ndarray  # sample index in the set
    view: np.ndarray
    score: np.ndarray

    @classmethod
    def of(cls, s: Scores, n: int) -> Rows:
        if isinstance(s, ViewScores):
            r = cls(np.asarray(s.rows, dtype=int), np.asarray(s.views, dtype=object), np.asarray(s.scores, float))
        else:
            r = cls(np.arange(n), np.full(n, "full", dtype=object), np.asarray(s, dtype=float).reshape(-1))
        if not (len(r.idx) == len(r.view) == len(r.score)):
            raise ValueError("fit_predict returned rows, views and scores of different lengths")
        if len(r.idx) and (r.idx.min() < 0 or r.idx.max() >= n):
            raise ValueError(f"fit_predict returned a row index outside the eval set of {n} samples")
        if not np.all(np.isfinite(r.score)):
            raise ValueError("fit_predict returned NaN or infinite scores")
        return r


def _threshold(samples, rows: Rows, objective: str, datasets: Sequence[str] | None) -> tuple[float, float]:
    y = np.array([samples[i].label for i in rows.idx], dtype=int)
    mask = np.ones(len(y), bool)
    if datasets:
        mask &= np.isin(np.array([samples[i].dataset for i in rows.idx], dtype=object), list(datasets))
    if not mask.any() or len(set(y[mask].tolist())) < 2:
        logger.warning("no usable predictions of both classes to choose a threshold: 0.5")
        return 0.5, float("nan")
    return best_threshold_score(y[mask], rows.score[mask], objective, kinds=rows.view[mask])


def cv_threshold(samples: list[Any], fit_predict: FitPredict, folds: int, seed: int, objective: str = "balanced",
                 threshold_datasets: Sequence[str] | None = None) -> tuple[Rows, float, float]:
    """Out-of-fold scores of grouped ``folds``-fold CV over ``samples`` and the threshold (and its objective value)
    chosen on them (rows of ``threshold_datasets`` only, when given). Folds whose training part has one class are
    skipped; samples never predicted are absent from the rows."""
    fold = fold_assignment(samples, max(2, folds), seed)
    parts = []
    for f in sorted(set(fold.tolist()) - {-1}):
        tr = [s for s, g in zip(samples, fold) if g != f]
        te_idx = np.flatnonzero(fold == f)
        if len({s.label for s in tr}) < 2:
            continue
        r = Rows.of(fit_predict(tr, [[samples[i] for i in te_idx]])[0], len(te_idx))
        parts.append(Rows(te_idx[r.idx], r.view, r.score))
    rows = Rows(np.concatenate([p.idx for p in parts]) if parts else np.zeros(0, int),
                np.concatenate([p.view for p in parts]) if parts else np.zeros(0, object),
                np.concatenate([p.score for p in parts]) if parts else np.zeros(0))
    thr, score = _threshold(samples, rows, objective, threshold_datasets)
    return rows, thr, score


@dataclass
class CVResult:
    repeats: int
    folds: int
    inner: str
    objective: str
    thresholds: list[float] = field(default_factory=list)
    # one entry per repeat: pooled rows with every score remapped so that its fold's threshold is 0.5
    runs: list[Rows] = field(default_factory=list)

    def report(self, samples: list[Any]) -> dict[str, Any]:
        """Mean metrics over repeats (``metrics``: all rows; ``views``: per view kind when there are several)."""
        per_run, per_view = [], []
        for rows in self.runs:
            per_run.append(_evaluate(samples, rows))
            kinds = sorted(set(rows.view.tolist()))
            if len(kinds) > 1:
                per_view.append({k: _evaluate(samples, _subset(rows, rows.view == k)) for k in kinds})
        out: dict[str, Any] = {
            "repeats": self.repeats, "folds": self.folds, "inner": self.inner, "objective": self.objective,
            "threshold_mean": round(float(np.mean(self.thresholds)), 6) if self.thresholds else None,
            "threshold_sd": round(float(np.std(self.thresholds)), 6) if self.thresholds else None,
            "metrics": mean_metrics(per_run) if per_run else {}}
        if per_view:
            out["views"] = mean_metrics(per_view)
        return out


def _subset(rows: Rows, mask: np.ndarray) -> Rows:
    return Rows(rows.idx[mask], rows.view[mask], rows.score[mask])


def _evaluate(samples, rows: Rows) -> dict[str, Any]:
    s = [samples[i] for i in rows.idx]
    return evaluate_scores([x.label for x in s], rows.score, 0.5, sources=[x.source for x in s],
                           conditions=[x.condition for x in s])


def _remap(scores: np.ndarray, threshold: float) -> np.ndarray:
    from natix_miner.engine.consensus import calibrate

    return np.array([calibrate(float(q), threshold) for q in scores], dtype=float)


def nested_cv(samples: list[Any], fit_predict: FitPredict, *, folds: int = 5, repeats: int = 1, seed: int = 0,
              objective: str = "balanced", inner: str = "cv", inner_folds: int = 5, holdout_frac: float = 0.2,
              threshold_datasets: Sequence[str] | None = None) -> CVResult:
    """Repeated nested grouped CV (see the module docstring). ``result.report(samples)`` gives the metrics."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if inner not in ("cv", "holdout"):
        raise ValueError(f"inner must be 'cv' or 'holdout', got {inner!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    res = CVResult(repeats=repeats, folds=folds, inner=inner, objective=objective)
    for r in range(repeats):
        rs = repeat_seed(seed, r)
        fold = fold_assignment(samples, folds, rs)
        parts = []
        for f in sorted(set(fold.tolist()) - {-1}):
            tr = [s for s, g in zip(samples, fold) if g != f]
            te_idx = np.flatnonzero(fold == f)
            te = [samples[i] for i in te_idx]
            if len({s.label for s in tr}) < 2:
                logger.warning("repeat {} fold {}: one class in the training part; fold skipped", r, f)
                continue
            if inner == "cv":
                _, thr, _ = cv_threshold(tr, fit_predict, inner_folds, rs + f, objective, threshold_datasets)
                out = Rows.of(fit_predict(tr, [te])[0], len(te))
            else:
                fit, val = grouped_split(tr, holdout_frac, rs + f)
                if not val or len({s.label for s in fit}) < 2:
                    fit, val = tr, []
                    logger.warning("repeat {} fold {}: no usable carve-out; threshold 0.5", r, f)
                got = fit_predict(fit, [val, te] if val else [te])
                thr = _threshold(val, Rows.of(got[0], len(val)), objective, threshold_datasets)[0] if val else 0.5
                out = Rows.of(got[-1], len(te))
            res.thresholds.append(thr)
            parts.append(Rows(te_idx[out.idx], out.view, _remap(out.score, thr)))
            logger.info("nested CV repeat {} fold {}: threshold {:.4f}, {} test rows", r, f, thr, len(out.idx))
        if parts:
            res.runs.append(Rows(np.concatenate([p.idx for p in parts]), np.concatenate([p.view for p in parts]),
                                 np.concatenate([p.score for p in parts])))
    return res
