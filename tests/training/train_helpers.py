"""Tiny synthetic data and models for the training tests (no downloads, no ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n_per_class: int = 12, size: tuple[int, int] = (48, 40), bad: int = 0,
                seed: int = 0) -> Path:
    """``root/roadwork`` (orange/red with stripes) and ``root/no_roadwork`` (blue/grey) JPEGs, plus ``bad``
    corrupt files in ``roadwork/``. Every image is its own group (distinct frame numbers far apart)."""
    rng = np.random.default_rng(seed)
    for name, base in (("roadwork", (220, 90, 30)), ("no_roadwork", (40, 80, 200))):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = np.clip(rng.normal(base, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            if name == "roadwork":
                arr[:, ::8] = (255, 255, 255)
            Image.fromarray(arr).save(d / f"{name}_{i * 100:05d}.jpg", quality=90)
    for i in range(bad):
        (root / "roadwork" / f"roadwork_{90000 + i * 100:05d}.jpg").write_bytes(b"not a jpeg at all" * (i + 1))
    return root


def tiny_hf_vit(path: Path) -> Path:
    """A random-init two-layer ViT saved as a transformers folder (config + weights + processor)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def train_args(data: Path, out: Path, model: str = "test_convnext", *extra: str) -> list[str]:
    return ["--data", str(data), "--model", model, "--out", str(out), "--no-pretrained", "--image-size", "32",
            "--batch-size", "8", "--workers", "0", "--conditions", "fullres", "--lr", "2e-3", "--ema", "0",
            "--seed", "0", *extra]


def losses(out: Path) -> list[float]:
    history = json.loads((out / "metrics.json").read_text())["history"]
    return [h["loss"] for h in history if "loss" in h]
