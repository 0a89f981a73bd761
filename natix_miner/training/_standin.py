"""TEMPORARY stand-in for the train-data branch's data/splits/metrics (the COMMON.md contract), used only until
those modules land; labelled folders only. Delete once natix_miner.training.data exists."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Sample:
    key: str
    label: int
    target: float
    source: str
    group: str
    path: str | None = None
    parquet: tuple[str, int] | None = None
    weight: float = 1.0
    condition: str = "real"
    dataset: str = ""


class DataError(ValueError):
    pass


class ImageUnreadable(DataError):
    pass


def scan_data(specs, *, weights=None, min_confidence=0.0):
    out = []
    for spec in specs:
        root = Path(spec)
        if not root.is_dir():
            raise DataError(f"{root}: not a folder")
        for name, lab in (("roadwork", 1), ("no_roadwork", 0)):
            files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            if not files:
                raise DataError(f"{root}: class folder {name}/ is empty or missing")
            out += [Sample(f"{root.name}/{name}/{p.name}", lab, float(lab), root.name, f"{root.name}/{p.stem}",
                           str(p), dataset=root.name) for p in files]
    return out


def load_image(sample):
    from PIL import Image

    try:
        with Image.open(sample.path) as im:
            return im.convert("RGB")
    except Exception as e:
        raise ImageUnreadable(f"{sample.path}: {e}") from e


def grouped_split(samples, test_frac, seed):
    if test_frac <= 0:
        return list(samples), []
    rng = np.random.default_rng(seed)
    test = set()
    for lab in (0, 1):
        groups = sorted({s.group for s in samples if s.label == lab})
        rng.shuffle(groups)
        test.update(groups[:max(1, round(len(groups) * test_frac))])
    return [s for s in samples if s.group not in test], [s for s in samples if s.group in test]


def grouped_folds(samples, k, seed):
    rng = np.random.default_rng(seed)
    groups = sorted({s.group for s in samples})
    rng.shuffle(groups)
    fold = {g: i % k for i, g in enumerate(groups)}
    return [([s for s in samples if fold[s.group] != f], [s for s in samples if fold[s.group] == f]) for f in range(k)]


def sampling_weights(samples, *, class_balanced=True):
    c = Counter(s.label for s in samples)
    w = [(len(samples) / (2 * c[s.label]) if class_balanced else 1.0) * s.weight for s in samples]
    return [x / (sum(w) / len(w)) for x in w]


def best_threshold(y, p, objective="balanced"):
    from natix_miner.evaluation.calibration import mcc_optimal_threshold

    return mcc_optimal_threshold(y, p)


def evaluate_scores(y, p, threshold, *, sources=None, conditions=None):
    from natix_miner.evaluation.metrics import auc_score, binary_metrics

    y, p = np.asarray(y, int), np.asarray(p, float)
    m = binary_metrics(y, (p >= threshold).astype(float))
    out = {"n": len(y), "n_roadwork": int(y.sum()), "mcc": m["mcc_raw"], "mcc_balanced": m["mcc_balanced"],
           "accuracy": m["accuracy"], "auc": auc_score(y, p), "tpr": m["tpr"], "tnr": m["tnr"], "reward": None}
    for key, names in (("per_source", sources), ("per_condition", conditions)):
        out[key] = {}
        if names is not None:
            arr = np.asarray(names)
            for n in sorted(set(arr.tolist())):
                out[key][n] = evaluate_scores(y[arr == n], p[arr == n], threshold)
    return out
