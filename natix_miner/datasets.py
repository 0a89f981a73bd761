"""Readers of the on-disk data layouts shared by training (natix_miner.training.data) and evaluation
(natix_miner.evaluation.dataset), which must not import each other: file-name sources and pseudo-labelled folders.

A pseudo-labelled folder (written by ``scripts/pseudo_label.py``) holds ``soft_labels.jsonl``, one JSON object per
line: ``{"file": "relative/path.jpg", "prob": 0.93, "confidence": 0.86, "votes": {...}}``. Only the standard
library is imported here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
LABEL_DIRS = {"roadwork": 1, "no_roadwork": 0}
SOFT_LABELS = "soft_labels.jsonl"

__all__ = ["IMAGE_EXTS", "LABEL_DIRS", "SOFT_LABELS", "DatasetError", "SoftLabel", "is_pseudo_folder",
           "read_soft_labels", "source_of"]


class DatasetError(ValueError):
    """A data folder that cannot be read; the message names the file (and line) and what is wrong."""


def source_of(path: str | Path) -> str:
    """An image's source for per-source metrics: the leading letters of its file name before ``_`` or
    ``-`` (``gtsdb_00461.jpg`` -> ``gtsdb``, ``ucb_frame10.jpg`` -> ``ucb``), else ``images``."""
    m = re.match(r"^([A-Za-z]+)[_\-]", Path(path).name)
    return m.group(1).lower() if m else "images"


@dataclass(frozen=True)
class SoftLabel:
    """One line of ``soft_labels.jsonl``: the image (``rel`` to the folder, ``path`` on disk) and its pseudo label."""

    rel: str
    path: Path
    prob: float  # P(roadwork) from the labelling profile
    confidence: float
    record: dict[str, Any] = field(default_factory=dict, compare=False)  # the whole JSON object (votes, licence...)

    @property
    def label(self) -> int:
        return int(self.prob >= 0.5)


def is_pseudo_folder(root: str | Path) -> bool:
    return (Path(root) / SOFT_LABELS).is_file()


def read_soft_labels(root: str | Path, *, min_confidence: float = 0.0) -> tuple[list[SoftLabel], int]:
    """The pseudo labels of ``root/soft_labels.jsonl`` with ``confidence >= min_confidence`` (a missing confidence
    is ``max(prob, 1 - prob)``), and how many lines fell below it. Raises :class:`DatasetError` for a malformed
    line, a ``prob`` outside [0, 1] or a listed file that does not exist."""
    root = Path(root)
    jf = root / SOFT_LABELS
    out: list[SoftLabel] = []
    dropped = 0
    for n, line in enumerate(jf.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            rel, prob = str(rec["file"]), float(rec["prob"])
            conf = float(rec.get("confidence", max(prob, 1 - prob)))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DatasetError(f"{jf}:{n}: expected a JSON object with 'file' and 'prob' "
                               f"({type(e).__name__}: {e})") from None
        if not (0.0 <= prob <= 1.0):
            raise DatasetError(f"{jf}:{n}: prob {prob} is not a probability in [0, 1]")
        if conf < min_confidence:
            dropped += 1
            continue
        f = root / rel
        if not f.is_file():
            raise DatasetError(f"{jf}:{n}: {f} does not exist")
        out.append(SoftLabel(rel=Path(rel).as_posix(), path=f, prob=prob, confidence=conf, record=rec))
    return out, dropped
