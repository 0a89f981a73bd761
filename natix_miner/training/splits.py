"""Grouped, label-stratified splits and folds of :class:`~natix_miner.training.data.Sample` lists.

Every rule works per split unit: a data folder (``Sample.dataset``), or the union of folders that share a group
(an i2i image in a synthetic folder and its parent in the real folder), so that a group never straddles a split even
across folders. Each unit is split with sklearn's ``StratifiedGroupKFold(shuffle=True, random_state=seed)`` so that
its share of each class is kept on both sides, and a group (frames of one video, near-duplicate frames, an i2i image
and its parent) stays on one side. A unit too small to stratify (every class has fewer members than the splits)
degrades to an unstratified grouped split (fewer folds when it has fewer groups), with a warning; a unit with fewer
than two groups or a single class only trains. The result depends only on the samples (their order included) and
the seed.
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
    """Sample indices per split unit: a data folder, or the folders joined by a group they share ("a+b")."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[str, str] = {}  # group -> the first folder it was seen in
    for s in samples:
        find(s.dataset)
        other = first.setdefault(s.group, s.dataset)
        if other != s.dataset:
            a, b = find(other), find(s.dataset)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[str]] = {}
    for d in parent:
        members.setdefault(find(d), []).append(d)
    name = {d: "+".join(sorted(members[find(d)])) for d in parent}
    out: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        out.setdefault(name[s.dataset], []).append(i)
    for unit in out:
        if "+" in unit:
            logger.info("{}: these data folders share split groups (i2i parents); they are split together", unit)
    return dict(sorted(out.items()))


def _unit_splits(unit: str, y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray] | None:
    """Test indices of each of ``n_splits`` grouped folds of one split unit (stratified when every fold can hold a
    member of some class, else grouped only, with a warning), or ``None`` when the unit cannot be split (fewer
    than two groups or a single class: it only trains)."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_groups = len(set(groups.tolist()))
    counts = np.unique(y, return_counts=True)[1]
    if n_groups < 2 or len(counts) < 2:
        logger.warning("{}: fewer than 2 groups or a single class; its {} samples are only trained on", unit, len(y))
        return None
    n = min(n_splits, n_groups)
    if n < n_splits:
        logger.warning("{}: {} groups for {} folds; split into {} folds", unit, n_groups, n_splits, n)
    if n > int(counts.max()):  # sklearn refuses: "n_splits cannot be greater than the number of members in each class"
        logger.warning("{}: too few images per class to stratify {} folds ({}); grouped split without stratification",
                       unit, n, dict(zip(*np.unique(y, return_counts=True))))
        ids = {g: i for i, g in enumerate(np.random.default_rng(seed).permutation(sorted(set(groups.tolist()))))}
        shuffled = np.array([ids[g] for g in groups.tolist()])  # GroupKFold itself does not shuffle
        return [te for _, te in GroupKFold(n_splits=n).split(y, y, shuffled)]
    return [te for _, te in StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed).split(y, y, groups)]


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
        if len(set(groups.tolist())) < n_splits:
            logger.warning("{}: too few groups for a held-out split; all {} samples go to training", ds, len(idx))
            continue
        folds = _unit_splits(ds, y, groups, n_splits, seed)
        if folds is not None:
            test_idx.update(idx[j] for j in folds[0].tolist())
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
        for f, te in enumerate(_unit_splits(ds, y, groups, k, seed) or []):
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
