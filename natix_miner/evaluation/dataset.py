"""Labelled image folders: ``DIR/roadwork/*`` (label 1) and ``DIR/no_roadwork/*`` (label 0)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
LABEL_DIRS = {"roadwork": 1, "no_roadwork": 0}


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


def list_labelled(root: str | Path, limit_per_class: int | None = None) -> list[LabelledImage]:
    root = Path(root)
    missing = [d for d in LABEL_DIRS if not (root / d).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: expected subfolders roadwork/ and no_roadwork/ (missing: {', '.join(missing)})")
    items: list[LabelledImage] = []
    for d, label in LABEL_DIRS.items():
        files = sorted(p for p in (root / d).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit_per_class is not None:
            files = files[:limit_per_class]
        items += [LabelledImage(p, label) for p in files]
    if not items:
        raise FileNotFoundError(f"{root}: no images found in roadwork/ or no_roadwork/")
    return items
