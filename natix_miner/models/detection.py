"""Shared helpers for detector families: from detections to one roadwork probability.

Detectors (ultralytics, D-FINE / RT-DETR, RF-DETR, OWLv2, Grounding DINO, Florence-2, ...) report boxes
with labels and scores. A profile maps detector labels to roadwork evidence with a per-class weight
(``options.class_map: {traffic cone: 1.0, construction worker: 0.8, ...}``; labels not in the map are
ignored). The roadwork probability is a **noisy-OR** over the evidence:

    p = 1 - (1 - prior) * Π_i (1 - w_c(i) * s_i)      for detections i with score s_i >= min_score

so one confident cone is enough, several weak ones add up, and no evidence gives ``prior`` (a small base
rate, default 0.02). Everything here is plain Python and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

# Default roadwork vocabulary for open-vocabulary detectors (text prompts) and COCO-free class maps.
ROADWORK_PROMPTS: dict[str, float] = {
    "traffic cone": 1.0,
    "construction barrier": 1.0,
    "road barrier": 0.9,
    "construction worker in safety vest": 0.9,
    "road work sign": 0.9,
    "excavator": 0.8,
    "road roller": 0.8,
    "construction vehicle": 0.7,
    "traffic barrel": 1.0,
    "lane closure": 0.9,
}


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in pixels

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4),
                "box": [round(float(v), 1) for v in self.box] if self.box is not None else None}


def normalise_label(label: str) -> str:
    return " ".join(str(label).lower().replace("_", " ").replace("-", " ").split())


def noisy_or(scores: Iterable[float], prior: float = 0.02) -> float:
    q = 1.0 - min(max(prior, 0.0), 1.0)
    for s in scores:
        s = min(max(float(s), 0.0), 1.0)
        q *= 1.0 - s
    return float(min(max(1.0 - q, 0.0), 1.0))


def roadwork_probability(detections: Iterable[Detection], class_map: Mapping[str, float], *,
                         min_score: float = 0.05, prior: float = 0.02) -> tuple[float, list[Detection]]:
    """Noisy-OR over detections whose (normalised) label is in ``class_map``.

    Returns ``(p, evidence)`` where evidence lists the detections that counted, strongest first.
    """
    cmap = {normalise_label(k): float(v) for k, v in class_map.items()}
    used: list[Detection] = []
    terms: list[float] = []
    for d in detections:
        w = cmap.get(normalise_label(d.label))
        if w is None or w <= 0 or d.score < min_score:
            continue
        used.append(d)
        terms.append(min(1.0, w) * float(d.score))
    used.sort(key=lambda d: -d.score)
    return noisy_or(terms, prior=prior), used
