"""Grouped, label-stratified splits and folds of :class:`~natix_miner.training.data.Sample` lists.

Every rule works per data folder (``Sample.dataset``): each folder is split on its own with sklearn's
``StratifiedGroupKFold(shuffle=True, random_state=seed)`` so that its share of each class is kept on both sides, and
a group (frames of one video, near-duplicate frames, an i2i image and its parent) never straddles a split. The
result depends only on the samples (their order included) and the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from loguru import logger

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.training.data import Sample

S = TypeVar("S", bound="Sample")

__all__ = ["fold_assignment", "grouped_folds", "grouped_split", "repeat_seed", "repeated_grouped_folds"]


def _by_dataset(samples: Sequence[S]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        out.setdefault(s.dataset, []).append(i)
    return dict(sorted(out.items()))


def _kfold(n_splits: int, seed: int):
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


def grouped_split(samples: Sequence[S], test_frac: float, seed: int) -> tuple[list[S], list[S]]:
    """(train, test): per data folder, fold 0 of ``round(1/test_frac)`` grouped stratified folds is the test part.

    ``test_frac <= 0`` gives no test part. A folder with fewer groups than folds, or a single class, stays whole in
    the training part (with a warning).
    """
    if test_frac <= 0:
        return list(samples), []
    if test_frac >= 1:
        raise ValueError(f"test_frac must be below 1, got {test_frac}")
    n_splits = max(2, round(1.0 / test_frac))
    test_idx: set[int] = set()
    for ds, idx in _by_dataset(samples).items():
        y = np.array([samples[i].label for i in idx])
        groups = np.array([samples[i].group for i in idx])
        if len(set(groups.tolist())) < n_splits or len(set(y.tolist())) < 2:
            logger.warning("{}: too few groups/classes for a held-out split; all {} samples go to training", ds, len(idx))
            continue
        _, te = next(iter(_kfold(n_splits, seed).split(np.zeros(len(idx)), y, groups)))
        test_idx.update(idx[j] for j in te.tolist())
    train = [s for i, s in enumerate(samples) if i not in test_idx]
    test = [s for i, s in enumerate(samples) if i in test_idx]
    return train, test


def fold_assignment(samples: Sequence[S], k: int, seed: int) -> np.ndarray:
    """Fold number of each sample (0..k-1), or -1 for samples that are never tested (a data folder with fewer
    than two groups or a single class: it is always in the training part)."""
    if k < 2:
        raise ValueError(f"need at least 2 folds, got {k}")
    fold = np.full(len(samples), -1, dtype=int)
    for ds, idx in _by_dataset(samples).items():
        y = np.array([samples[i].label for i in idx])
        groups = np.array([samples[i].group for i in idx])
        n = min(k, len(set(groups.tolist())))
        if n < 2 or len(set(y.tolist())) < 2:
            logger.warning("{}: fewer than 2 groups or a single class; its {} samples are only trained on", ds, len(idx))
            continue
        for f, (_, te) in enumerate(_kfold(n, seed).split(y, y, groups)):
            fold[[idx[j] for j in te.tolist()]] = f
    return fold


def grouped_folds(samples: Sequence[S], k: int, seed: int) -> list[tuple[list[S], list[S]]]:
    """``k`` grouped, stratified (train, test) folds; every sample of a splittable folder is tested exactly once.
    Folds without test samples (a folder with fewer than ``k`` groups) are left out."""
    fold = fold_assignment(samples, k, seed)
    out = []
    for f in sorted(set(fold.tolist()) - {-1}):
        out.append(([s for s, g in zip(samples, fold) if g != f], [s for s, g in zip(samples, fold) if g == f]))
    return out


def repeat_seed(seed: int, repeat: int) -> int:
    """The fold seed of repeat ``repeat`` (0-based) of a repeated CV."""
    return seed + 1000 * (repeat + 1)


def repeated_grouped_folds(samples: Sequence[S], k: int, repeats: int, seed: int
                           ) -> list[list[tuple[list[S], list[S]]]]:
    """``repeats`` independent :func:`grouped_folds` (seeds from :func:`repeat_seed`), for nested CV."""
    return [grouped_folds(samples, k, repeat_seed(seed, r)) for r in range(repeats)]
