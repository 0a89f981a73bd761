"""Plain records shared by the models, the engine, the neuron and the evaluation tools.

This module is the bottom layer: it imports nothing from ``natix_miner`` and nothing heavy, so a
model family can return :class:`Vote` objects and read a :class:`Deadline` without importing the
engine (see docs/architecture.md, "Layers").

- :class:`Deadline`: an absolute instant on the ``time.monotonic()`` clock, safe to hand across
  threads and queues; the axon builds one at receipt, the engine decides with it whether a tier
  still fits, and adapters that budget their own work (the VLM thinking tier) read it.
- :class:`Vote`: one model's opinion about one image (what ``Adapter.predict`` returns).
- :class:`ModelVote`, :class:`CascadeResult`: what the engine answers for one image.
- :class:`Engine`: what the neuron uses of an engine (``CascadeEngine`` in-process, ``RemoteEngine`` over
  HTTP): both satisfy it structurally.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol


class Deadline:
    """An absolute deadline on the ``time.monotonic()`` clock."""

    __slots__ = ("at",)

    def __init__(self, at: float):
        self.at = float(at)

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        """A deadline ``seconds`` from now (None = never)."""
        if seconds is None:
            return cls.never()
        return cls(time.monotonic() + float(seconds))

    @classmethod
    def never(cls) -> "Deadline":
        return cls(math.inf)

    def remaining(self) -> float:
        """Seconds left, >= 0 (``inf`` for a deadline that never expires)."""
        return max(0.0, self.at - time.monotonic())

    def __repr__(self) -> str:
        r = self.at - time.monotonic()
        return f"Deadline(in {r:.3f} s)" if math.isfinite(r) else "Deadline(never)"


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


class ResultLookup(Protocol):
    """An engine's result cache as the neuron reads it (``engine.cache.ResultCache``)."""

    def get(self, key: str | None) -> CascadeResult | None: ...


class Engine(Protocol):
    """The part of an engine the neuron uses (``CascadeEngine``, ``RemoteEngine``)."""

    cache: ResultLookup

    @property
    def ready(self) -> bool: ...

    def start(self) -> Any: ...

    async def infer(self, image: Any, *, key: str | None = None,
                    deadline: Deadline | None = None) -> CascadeResult: ...

    def stats(self) -> dict: ...

    def close(self) -> None: ...
