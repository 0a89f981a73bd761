"""Shared helpers for the engine tests (imported as ``engine_helpers``)."""

from __future__ import annotations

from typing import Any

from natix_miner.profile import parse_profile


def fake(name: str, **options: Any) -> dict:
    """A fake model entry; keys that are ModelSpec fields are lifted out of ``options``."""
    spec_keys = {"weight", "device", "memory_mb", "batch_size", "timeout_s", "gated", "noncommercial", "licence",
                 "breaker_failures", "breaker_cooldown_s"}
    spec = {k: options.pop(k) for k in list(options) if k in spec_keys}
    spec.setdefault("licence", "MIT")
    return {"name": name, "type": "fake", "options": options, **spec}


def tier(name: str, threshold: float, *models: dict) -> dict:
    return {"name": name, "exit_threshold": threshold, "models": list(models)}


def make_profile(*tiers: dict, **top: Any):
    data = {"name": "test-engine", "deadline_s": 2.0, "batching": {"max_batch": 16, "max_wait_ms": 2.0}}
    data.update(top)
    data["tiers"] = list(tiers)
    return parse_profile(data)
