"""Compatibility shim: the result types live in :mod:`natix_miner.types` (a neutral module that
models import without importing the engine). Import from there in new code."""

from natix_miner.types import CascadeResult, Deadline, ModelVote, Vote

__all__ = ["CascadeResult", "Deadline", "ModelVote", "Vote"]
