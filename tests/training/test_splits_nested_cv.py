"""natix_miner.training.cv: nested grouped CV with a model callback; no leakage of test groups into fits or
thresholds; the 50/50 threshold objective is the default."""

from __future__ import annotations

import numpy as np
import pytest

from natix_miner.training.cv import ViewScores, cv_threshold, nested_cv
from natix_miner.training.data import Sample


def dataset(n_groups=24, per_group=2, seed=0) -> tuple[list[Sample], dict[str, float]]:
    """1 roadwork group in 4, each sample with a fixed score: roadwork mostly high, negatives mostly low."""
    rng = np.random.default_rng(seed)
    out, score = [], {}
    for g in range(n_groups):
        label = int(g % 4 == 0)
        for j in range(per_group):
            s = Sample(key=f"d/{g}/{j}", label=label, target=float(label), source=f"d/src{g % 2}", group=f"d/g{g}",
                       dataset="d", condition="real" if j == 0 else "i2i")
            out.append(s)
            score[s.key] = float(rng.uniform(0.3, 0.9) if label else (rng.uniform(0.3, 0.34) if g % 4 == 1
                                                                        else rng.uniform(0.0, 0.2)))
    return out, score


def two_rules_dataset(n_groups=80) -> tuple[list[Sample], dict[str, float]]:
    """1 roadwork group in 10; half of the roadwork scores 0.25, 2 negative groups in 9 score 0.28.

    MCC at 50/50 is best at a threshold <= 0.25 (every roadwork found, TNR 0.78: 0.80 vs 0.58); MCC at the data's
    1:9 balance is best above 0.28 (no false alarm, half the roadwork lost: 0.69 vs 0.51).
    """
    rng = np.random.default_rng(0)
    out, score = [], {}
    for g in range(n_groups):
        label = int(g % 10 == 0)
        for j in range(2):
            s = Sample(key=f"d/{g}/{j}", label=label, target=float(label), source="d/s", group=f"d/g{g}", dataset="d")
            out.append(s)
            if label:
                score[s.key] = 0.25 + 0.005 * rng.random() if g % 20 == 0 else rng.uniform(0.6, 0.9)
            else:
                score[s.key] = 0.28 + 0.005 * rng.random() if g % 10 in (1, 2) else rng.uniform(0, 0.2)
    return out, score


class Recorder:
    """A 'model' that scores each sample with its fixed score and records what it was fitted on and asked."""

    def __init__(self, score):
        self.score, self.calls = score, []

    def __call__(self, train, sets):
        self.calls.append(({s.key for s in train}, [{s.key for s in x} for x in sets],
                           {s.group for s in train}, [{s.group for s in x} for x in sets]))
        return [[self.score[s.key] for s in x] for x in sets]


def test_nested_cv_predicts_every_sample_once_per_repeat_without_leakage():
    samples, score = dataset()
    rec = Recorder(score)
    res = nested_cv(samples, rec, folds=4, repeats=2, seed=0, inner="cv", inner_folds=3)
    rep = res.report(samples)
    assert rep["metrics"]["n"] == len(samples) and len(res.runs) == 2
    assert sorted(res.runs[0].idx.tolist()) == list(range(len(samples)))
    for _train, _sets, tg, sg in rec.calls:
        for g in sg:
            assert tg.isdisjoint(g)  # no fit ever sees a group it is asked to score
    # inner CV: 3 inner fits + 1 refit per outer fold, 4 outer folds, 2 repeats
    assert len(rec.calls) == 2 * 4 * (3 + 1)
    # the calls made for one outer fold never touch its test samples until the final scoring call
    outer_tests = [c[1][0] for c in rec.calls[3::4]]
    for k, test in enumerate(outer_tests):
        for train, sets, _, _ in rec.calls[4 * k:4 * k + 3]:
            assert test.isdisjoint(train) and all(test.isdisjoint(x) for x in sets)
    for key in ("mcc", "mcc_balanced", "auc", "accuracy", "reward", "tpr", "tnr"):
        assert key in rep["metrics"]
    assert "mcc_sd" in rep["metrics"] and set(rep["metrics"]["per_source"]) == {"d/src0", "d/src1"}
    assert set(rep["metrics"]["per_condition"]) == {"real", "i2i"}
    assert len(res.thresholds) == 8 and rep["threshold_sd"] is not None


def test_nested_cv_uses_the_balanced_objective_by_default():
    """Scores where MCC at 50/50 wants a low threshold (catch every roadwork, a few false alarms) and MCC at the
    data balance a higher one: the default must be the 50/50 rule (a mutation once slipped through here)."""
    samples, score = two_rules_dataset()
    y = np.array([s.label for s in samples])
    p = np.array([score[s.key] for s in samples])
    from natix_miner.training.metrics import best_threshold

    assert best_threshold(y, p) <= 0.25 and best_threshold(y, p, "raw") > 0.285
    default = nested_cv(samples, Recorder(score), folds=4, repeats=1, seed=0, inner_folds=3)
    bal = nested_cv(samples, Recorder(score), folds=4, repeats=1, seed=0, inner_folds=3, objective="balanced")
    raw = nested_cv(samples, Recorder(score), folds=4, repeats=1, seed=0, inner_folds=3, objective="raw")
    assert default.thresholds == bal.thresholds != raw.thresholds
    assert max(default.thresholds) <= 0.255 and min(raw.thresholds) > 0.28
    d, r = default.report(samples)["metrics"], raw.report(samples)["metrics"]
    assert d["tpr"] == 1.0 and d["mcc_balanced"] > r["mcc_balanced"]
    with pytest.raises(ValueError, match="objective"):
        nested_cv(samples, Recorder(score), objective="f1")


def test_holdout_inner_mode_fits_once_per_outer_fold():
    samples, score = dataset()
    rec = Recorder(score)
    res = nested_cv(samples, rec, folds=4, repeats=1, seed=1, inner="holdout", holdout_frac=0.25)
    assert len(rec.calls) == 4
    for train, (val, test), _, _ in rec.calls:
        assert val and test and train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    assert res.report(samples)["metrics"]["n"] == len(samples)


def test_view_scores_and_threshold_datasets():
    samples, score = dataset()

    def two_views(train, sets):
        out = []
        for x in sets:
            rows, views, sc = [], [], []
            for i, s in enumerate(x):
                rows += [i, i]
                views += ["full", "crop"]
                sc += [score[s.key], 0.5 * score[s.key]]
            out.append(ViewScores(rows, views, sc))
        return out

    res = nested_cv(samples, two_views, folds=3, repeats=1, seed=0, inner_folds=3)
    rep = res.report(samples)
    assert rep["metrics"]["n"] == 2 * len(samples)
    assert set(rep["views"]) == {"crop", "full"} and rep["views"]["full"]["n"] == len(samples)
    rows, thr, obj = cv_threshold(samples, two_views, 3, seed=0)
    assert len(rows.idx) == 2 * len(samples) and 0 < thr < 1 and obj > 0
    _, thr_none, _ = cv_threshold(samples, two_views, 3, seed=0, threshold_datasets=["other"])
    assert thr_none == 0.5  # no rows of the named data folder: the neutral threshold


def test_bad_callback_output_is_refused():
    samples, _ = dataset()
    with pytest.raises(ValueError, match="NaN"):
        nested_cv(samples, lambda tr, sets: [[float("nan")] * len(x) for x in sets], folds=3)
    with pytest.raises(ValueError, match="outside"):
        nested_cv(samples, lambda tr, sets: [ViewScores([len(x)], ["full"], [0.1]) for x in sets], folds=3)
