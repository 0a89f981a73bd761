"""The cascade engine (docs/architecture.md §1, §4, §6).

Light on purpose: importing ``natix_miner.engine`` loads nothing heavy. ``CascadeEngine`` and
``Deadline`` are re-exported lazily::

    from natix_miner.engine import CascadeEngine, Deadline

Modules: ``cascade`` (the engine itself: tiers, exits, deadlines, pooling), ``runner`` (one model
behind its worker thread: chunking, abandonment, breaker, output check), ``executor`` (one tier's
calls under per-image deadlines), ``loader`` (choose → build
→ place → load → warm up), ``batcher`` (micro-batching), ``consensus`` (pooling, calibration,
output guard), ``deadline`` (latency estimates), ``breaker`` (per-model circuit breaker), ``cache``
(LRU result cache), ``types`` (a shim for :mod:`natix_miner.types`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["CascadeEngine", "EngineError", "Deadline"]


def __getattr__(name: str) -> Any:
    if name in ("CascadeEngine", "EngineError"):
        from natix_miner.engine import cascade

        return getattr(cascade, name)
    if name == "Deadline":
        from natix_miner.engine.deadline import Deadline

        return Deadline
    raise AttributeError(f"module 'natix_miner.engine' has no attribute {name!r}")
