"""Labelled image folders: ``DIR/roadwork/*`` (label 1) and ``DIR/no_roadwork/*`` (label 0)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
LABEL_DIRS = {"roadwork": 1, "no_roadwork": 0}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


def source_of(path: str | Path) -> str:
    """An image's source for per-source metrics: the leading letters of its file name before ``_`` or
    ``-`` (``gtsdb_00461.jpg`` -> ``gtsdb``, ``ucb_frame10.jpg`` -> ``ucb``), else ``images``. Used by
    scripts/evaluate.py and scripts/train_head.py alike."""
    m = re.match(r"^([A-Za-z]+)[_\-]", Path(path).name)
    return m.group(1).lower() if m else "images"


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
    """The labelled images under ``root``; ``only``: keep just these keys (see :func:`load_split`)."""
    root = Path(root)
    missing = [d for d in LABEL_DIRS if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: expected subfolders roadwork/ and no_roadwork/ (missing: {', '.join(missing)})")
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
