"""Frozen-backbone features for head training: views of each image, a backbone plug-in and an on-disk cache.

Every image gives a ``full`` view (the image as sent at full resolution, validators' 2026-05 condition) and
validator-like 224×224 crops made by the project's port of the validator augmentation
(:mod:`natix_miner.validator.augment`, docs/protocol.md §2.4) plus the validator's JPEG q75 encoding; training crops are
also flipped at random, which the validator does not do. Each crop comes from a generator seeded by (seed, image
hash, view name), so features are cached once per backbone and reruns cost seconds.

A backbone is a registered adapter type with ``features(images) -> array`` (one row per PIL image) and
``feature_meta() -> dict`` (what inference needs to reproduce the features), loadable with options
``features_only: true``.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from natix_miner.training.data import (
    ImageUnreadable,
    Sample,
    load_image,
    load_image_bytes,
)

AUG_VERSION = "validator-aug/1"  # bump when the augmentation changes: invalidates cached crop features


def content_sha1(samples: list[Sample]) -> dict[str, str | None]:
    """sha1 of each sample's encoded image (None when it cannot be read)."""
    out: dict[str, str | None] = {}
    for s in samples:
        try:
            out[s.key] = hashlib.sha1(load_image_bytes(s)).hexdigest()
        except ImageUnreadable as e:
            logger.warning("{}", e)
            out[s.key] = None
    return out


def validator_augment(image, rng: np.random.Generator, flip: bool = False):
    """One ``aug-2026-01`` challenge image (224×224, levels 0-3) as the miner would decode it; ``flip`` adds a
    random horizontal flip before encoding (training only: the validator's flips are no-ops)."""
    import base64

    from PIL import Image

    from natix_miner.validator.augment import augment, encode_like_validator

    out = augment(image, rng).image
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    data = base64.b64decode(encode_like_validator(out))
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def build_backbone(kind: str, model: str | None, options: dict[str, Any], device: str = "cpu"):
    """A loaded adapter in features-only mode."""
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    spec = ModelSpec(name=f"{kind}-features", type=kind, licence="see adapter", model=model, device=device,
                     options={"features_only": True, **options})
    adapter = build_adapter(spec)
    if not hasattr(adapter, "features") or not hasattr(adapter, "feature_meta"):
        raise SystemExit(f"--backbone {kind}: its adapter has no features()/feature_meta(); see "
                         "natix_miner/training/features.py for the contract")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    adapter.load(device)
    return adapter


class FeatureCache:
    """key -> feature vector, one ``.npz`` per backbone signature under ``root``."""

    def __init__(self, root: Path | None, signature: str):
        self.path = (root / f"features-{signature}.npz") if root is not None else None
        self.data: dict[str, np.ndarray] = {}
        self.dirty = 0
        if self.path is not None and self.path.exists():
            try:
                with np.load(self.path) as z:
                    keys, feats = z["keys"], z["feats"]
                self.data = {str(k): feats[i] for i, k in enumerate(keys)}
            except Exception as e:  # noqa: BLE001 - a broken cache is only a cache
                logger.warning("ignoring unreadable feature cache {}: {}", self.path, e)

    def get(self, key: str) -> np.ndarray | None:
        return self.data.get(key)

    def put(self, key: str, vec: np.ndarray) -> None:
        self.data[key] = vec.astype(np.float16)
        self.dirty += 1

    def save(self) -> None:
        if self.path is None or not self.dirty or not self.data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.data)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(keys), feats=np.stack([self.data[k] for k in keys]))
        os.replace(tmp, self.path)
        self.dirty = 0


def _view_seed(seed: int, sha1: str, view: str) -> int:
    return int(hashlib.sha1(f"{seed}|{sha1}|{view}".encode()).hexdigest()[:12], 16)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def extract_features(samples: list[Sample], views_of: dict[str, list[str]], sha1: dict[str, str | None], backbone,
                     cache: FeatureCache, seed: int, batch: int = 8
                     ) -> tuple[dict[tuple[str, str], np.ndarray], set[str]]:
    """Features of every (sample, view), cached views not recomputed; and the keys of unreadable images (skipped
    and counted, never fatal)."""
    out: dict[tuple[str, str], np.ndarray] = {}
    bad = {s.key for s in samples if sha1.get(s.key) is None}
    todo = []
    for s in samples:
        if s.key in bad:
            continue
        for v in views_of[s.key]:
            ck = f"{sha1[s.key]}|{v}|{AUG_VERSION}|{seed}" if v != "full" else f"{sha1[s.key]}|full"
            hit = cache.get(ck)
            if hit is not None:
                out[(s.key, v)] = hit.astype(np.float32)
            else:
                todo.append((s, v, ck))
    logger.info("features: {} views cached, {} to compute", len(out), len(todo))
    t0, done = time.perf_counter(), 0
    pend_imgs: list[Any] = []
    pend_keys: list[tuple[str, str, str]] = []

    def flush() -> None:
        nonlocal done
        if not pend_imgs:
            return
        feats = np.asarray(_to_numpy(backbone.features(pend_imgs)), dtype=np.float32)
        for (key, v, ck), f in zip(pend_keys, feats):
            f16 = f.astype(np.float16)  # what the cache holds: first and cached runs see the same numbers
            out[(key, v)] = f16.astype(np.float32)
            cache.put(ck, f16)
        done += len(pend_imgs)
        pend_imgs.clear()
        pend_keys.clear()
        if cache.dirty >= 400:
            cache.save()

    last_key, image = None, None
    for s, v, ck in todo:
        if s.key in bad:
            continue
        if s.key != last_key:
            last_key = s.key
            try:
                image = load_image(s)
            except ImageUnreadable as e:
                logger.warning("skipping {}", e)
                bad.add(s.key)
                continue
        if v == "full":
            img = image
        else:
            img = validator_augment(image, np.random.default_rng(_view_seed(seed, sha1[s.key], v)),  # type: ignore[arg-type]
                                    flip=v.startswith("train"))
        pend_imgs.append(img)
        pend_keys.append((s.key, v, ck))
        if len(pend_imgs) >= batch:
            flush()
            if done % (batch * 25) == 0:
                el = time.perf_counter() - t0
                logger.info("features: {}/{} ({:.0f} ms/view)", done, len(todo), 1000 * el / max(done, 1))
    flush()
    cache.save()
    if todo:
        logger.info("features: {} views in {:.1f}s", len(todo), time.perf_counter() - t0)
    for key in bad:  # a sample is used with all its views or not at all
        for v in views_of.get(key, []):
            out.pop((key, v), None)
    return out, bad
