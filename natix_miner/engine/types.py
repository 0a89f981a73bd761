"""Plain result types shared by the engine, the adapters, the neuron and the evaluation tools.

Kept free of heavy imports so that everything can depend on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Vote:
    """One model's opinion about one image.

    ``p`` is P(roadwork) in [0, 1]. ``evidence`` is free-form and small (e.g. the detections or
    the prompt scores that produced ``p``); it is logged, never used for the decision.
    """

    p: float
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelVote:
    """A vote as recorded in a cascade result, with where it came from and what it cost."""

    model: str
    tier: str
    p: float | None  # None when the model failed, timed out or was skipped
    weight: float
    latency_ms: float
    error: str | None = None


@dataclass
class CascadeResult:
    """What the engine answers for one image."""

    prediction: float  # calibrated, clamped to [eps, 1 - eps], never exactly 0.5
    confidence: float  # max(prediction, 1 - prediction)
    tiers_used: list[str]
    votes: list[ModelVote]
    latency_ms: float
    exit_reason: str  # "threshold" | "deadline" | "exhausted" | "no_votes" | "cache" | "fallback"
    raw_p: float | None = None  # pooled probability before the calibration remap
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
