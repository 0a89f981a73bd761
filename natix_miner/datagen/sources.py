"""Per-condition evaluation of a labelled folder whose SOURCES.tsv has a ``kind`` column (real | i2i | t2i | api),
e.g. one written by scripts/synthesize.py: the metrics of each kind of image, as validators draw them (§12)."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def kinds_of(root: str | Path) -> dict[str, str]:
    """Resolved image path → kind, from ``root/SOURCES.tsv`` (empty when there is no ``kind`` column)."""
    root = Path(root)
    tsv = root / "SOURCES.tsv"
    if not tsv.is_file():
        return {}
    with open(tsv, newline="", encoding="utf-8", errors="replace") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "kind" not in rows[0]:
        return {}
    return {str((root / r["file"]).resolve()): (r.get("kind") or "real").strip().lower() for r in rows if r.get("file")}


def per_condition(root: str | Path, records: Iterable[Any]) -> dict[str, dict] | None:
    """``{kind: binary_metrics}`` over evaluation records (``.path``, ``.label``, ``.prediction``); None when the
    folder declares no kinds. Files without a SOURCES.tsv row count as ``real``."""
    from natix_miner.evaluation.metrics import binary_metrics

    kinds = kinds_of(root)
    if not kinds:
        return None
    by: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for r in records:
        ys, ps = by[kinds.get(str(Path(r.path).resolve()), "real")]
        ys.append(int(r.label))
        ps.append(float(r.prediction))
    return {k: binary_metrics(ys, ps) for k, (ys, ps) in sorted(by.items())}
