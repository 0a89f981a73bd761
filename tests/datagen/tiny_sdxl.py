"""The tiny random-init SDXL for tests (built from configs offline, after diffusers' own SDXL tests)."""

from __future__ import annotations


def build_tiny_pipelines(seed: int = 0):
    from natix_miner.datagen.sdxl_arch import build_random_sdxl

    return build_random_sdxl("tiny", seed=seed)


def save_tiny_sdxl(path) -> str:
    """Write the tiny SDXL as a local diffusers folder (what ``--model-id DIR`` loads)."""
    i2i, _ = build_tiny_pipelines()
    i2i.save_pretrained(str(path), safe_serialization=True)
    return str(path)
