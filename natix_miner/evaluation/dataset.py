"""Evaluation folders: labelled ``DIR/roadwork/*`` (label 1) and ``DIR/no_roadwork/*`` (label 0), or a
pseudo-labelled folder (``DIR/soft_labels.jsonl`` from scripts/pseudo_label.py: label = ``prob >= 0.5``, read with
the reader training uses, :func:`natix_miner.datasets.read_soft_labels`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from natix_miner.datasets import IMAGE_EXTS, LABEL_DIRS, SOFT_LABELS, is_pseudo_folder, read_soft_labels, source_of

IMAGE_SUFFIXES = IMAGE_EXTS
__all__ = ["IMAGE_SUFFIXES", "LABEL_DIRS", "LabelledImage", "is_pseudo_folder", "list_labelled", "load_split",
           "source_of"]


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int
    prob: float | None = None  # the pseudo label's probability (soft_labels.jsonl); None for a hard label


def load_split(path: str | Path) -> set[str]:
    """Image keys ``<folder name>/<label dir>/<file>`` of a split: a head's ``provenance.json`` (its
    ``split.heldout_items``, written by scripts/train_head.py) or a text file with one key per line."""
    import json

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        keys = (data.get("split") or {}).get("heldout_items") if isinstance(data, dict) else None
        if not isinstance(keys, list):
            raise ValueError(f"{path}: no split.heldout_items list (is it a train_head provenance.json?)")
        return {str(k) for k in keys}
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def list_labelled(root: str | Path, limit_per_class: int | None = None,
                  only: set[str] | None = None) -> list[LabelledImage]:
    """The labelled images under ``root``; ``only``: keep just these keys (see :func:`load_split`; for a
    pseudo-labelled folder ``<folder name>/<file as listed in soft_labels.jsonl>``)."""
    root = Path(root)
    if is_pseudo_folder(root):
        return _list_pseudo(root, limit_per_class, only)
    missing = [d for d in LABEL_DIRS if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: expected subfolders roadwork/ and no_roadwork/ (missing: {', '.join(missing)}) "
                                f"or a pseudo-labelled folder with {SOFT_LABELS}")
    items: list[LabelledImage] = []
    for d, label in LABEL_DIRS.items():
        files = sorted(p for p in (root / d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if only is not None:
            files = [p for p in files if f"{root.name}/{d}/{p.name}" in only]
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items += [LabelledImage(p, label) for p in files]
    if not items:
        raise FileNotFoundError(f"{root}: no images found in roadwork/ or no_roadwork/"
                                + (" that belong to the given split" if only is not None else ""))
    return items


def _list_pseudo(root: Path, limit_per_class: int | None, only: set[str] | None) -> list[LabelledImage]:
    labels, _ = read_soft_labels(root)  # DatasetError (a ValueError) names the file and line
    if only is not None:
        labels = [sl for sl in labels if f"{root.name}/{sl.rel}" in only]
    items: list[LabelledImage] = []
    for label in (1, 0):
        mine = [LabelledImage(sl.path, label, sl.prob) for sl in labels if sl.label == label]
        items += mine[:limit_per_class] if limit_per_class is not None else mine
    if not items:
        raise FileNotFoundError(f"{root}: no images listed in {SOFT_LABELS}"
                                + (" that belong to the given split" if only is not None else ""))
    return items
