#!/usr/bin/env python
"""Train a small roadwork head on frozen backbone features (the embedded Lite0 default and friends).

Usage (the committed head was made with exactly this; see natix_miner/assets/lite0_head/provenance.json)::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_head.py --backbone efficientnet_lite \\
        --data /work/shared/data/gtsdb-dev --out natix_miner/assets/lite0_head --cv-repeats 3

What it does, in order
1. **Data.** Each ``--data DIR`` is either an image folder with ``roadwork/`` and ``no_roadwork/``
   subfolders (optional ``SOURCES.tsv`` with a ``license`` column for provenance), or a folder of
   NATIX-style parquet files with an ``image`` column (bytes, or a struct/dict with ``bytes``) and a
   ``label`` column (1 = roadwork). Parquet is read with pyarrow, else polars, else pandas, whichever is
   installed. Like the validator's cache, parquet rows whose ``scene_description`` disagrees with the
   label (label 0 with a description, label 1 without) are dropped when that column exists.
2. **Sources and groups.** ``source`` (for per-source metrics) is ``<data folder>/<leading alphabetic
   token of the file name>`` (``gtsdb-dev/gtsdb``, ``web-pool/tracon``, ``web-pool/indobs`` ...), or
   ``<folder>/<parquet file stem>``. ``group`` keeps near-duplicates on one side of a split: a file name
   ending in a frame number (``gtsdb_00461``, ``ucb_frame10``) is grouped with the names that share its
   prefix and fall in the same block of ``--group-block`` (30) numbers. For GTSDB this was decided by
   looking at the frames: nearby numbers come from the same drive and the same roadwork sites reappear
   within a few numbers (00459/00461/00464/00465 is one site; 00435-00438 another), and blocks of 30
   keep every such cluster together. Parquet rows are grouped by ``(file, row // group-block)``.
3. **Split.** Per data folder, ``StratifiedGroupKFold(round(1/--test-frac))`` with ``--seed``: fold 0 is
   the held-out test split, never used for fitting or for the threshold.
4. **Views and features (cached).** Every image gives a ``full`` view (the image as sent at full
   resolution, validators' 2026-05 condition) and validator-like 224×224 crops made by the project's port
   of the validator augmentation (:mod:`natix_miner.validator.augment`, docs/protocol.md §2.4: level 0-3, rotation
   ±20° NEAREST with black corners, square random-resized crop of 20-100 % area, CS/CC/"JPEG"/noise/blur
   distortions) plus the validator's JPEG q75 encoding; training crops are also flipped at random, which
   the validator does not do. ``--train-crops`` per development image, ``--eval-crops`` per held-out
   image, each from a generator seeded by (seed, image hash, view name), so features are cached once per
   backbone under ``--cache`` and reruns cost seconds.
5. **Head.** ``linear`` (logistic regression, sklearn, L2 ``--C``) or ``mlp`` (torch, ``--epochs``).
   Sampling is balanced: within each data folder both classes carry equal weight (folders keep their share
   of images), and within an image the full view and its crops carry equal weight (full-res and crop
   conditions count the same).
6. **Threshold.** Grouped ``--val-folds``-fold cross-validation on the development split gives
   out-of-fold probabilities; the threshold maximising the mean of MCC(full views) and MCC(crop views)
   over ``--threshold-data`` (default: all folders) is stored in the head (``meta.threshold``) and printed
   for the profile's ``calibration.threshold`` (the engine remaps it to 0.5). MCC is taken at the
   validators' 50/50 label balance (``--threshold-objective balanced``, from the true-positive and
   true-negative rates): validators draw each challenge's label 50/50, so the MCC they see is that one,
   not the MCC at the data's own (here 1:12) balance, whose optimum is a much higher, low-recall threshold.
7. **Report.** ``--out DIR`` gets ``head.pt``, ``provenance.json`` (sources, licences, counts, seed,
   content hashes of the file lists, args, backbone) and ``metrics.json`` (held-out and cross-validated
   MCC, MCC at 50/50 balance (``mcc_balanced``), TPR/TNR, accuracy, AUC, n per source, for full views,
   crops and both). ``--cv-repeats N`` adds ``nested_cv``: N repeats of nested grouped CV over all images
   (see :func:`nested_cv`), far less noisy than a held-out split with a handful of positives.

Plugging in another backbone
    ``--backbone TYPE`` names a registered adapter type; the adapter must offer ``features(images) ->
    np.ndarray | torch.Tensor`` (one row per PIL image) and ``feature_meta() -> dict`` (everything needed
    to reproduce the features at inference, stored in the head), and must load without a head when its
    options contain ``features_only: true``. ``--backbone-model`` fills ``spec.model`` and
    ``--backbone-option key=value`` (repeatable, YAML-parsed values) fills ``spec.options``. A DINOv2 or
    CLIP ``feature_probe`` adapter would implement ``features`` as the pooled/CLS embedding of
    ``AutoModel`` (``--backbone feature_probe --backbone-model facebook/dinov2-base``) and, at inference,
    load the same head file with :func:`natix_miner.models.heads.load_head`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from loguru import logger

LABEL_DIRS = {"roadwork": 1, "no_roadwork": 0}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
AUG_VERSION = "validator-aug/1"  # bump when the augmentation changes: invalidates cached crop features


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class Item:
    key: str  # stable id: "<folder name>/<relative path>" or "<folder name>/<file>.parquet#<row>"
    label: int
    dataset: str  # --data folder name
    source: str  # for per-source metrics
    group: str  # split group (near-duplicates share one)
    licence: str
    sha1: str  # content hash of the encoded image
    path: str | None = None
    parquet: tuple[str, int] | None = None


def _stem_group(stem: str, block: int) -> str:
    m = re.match(r"^(.*?)(\d+)$", stem)
    return f"{m.group(1)}#{int(m.group(2)) // block}" if m else stem


def _sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _read_sources_tsv(root: Path) -> dict[str, str]:
    f = root / "SOURCES.tsv"
    out: dict[str, str] = {}
    if not f.exists():
        return out
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines:
        return out
    header = lines[0].split("\t")
    if "file" not in header or "license" not in header:
        return out
    fi, li = header.index("file"), header.index("license")
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) > max(fi, li):
            out[cols[fi]] = cols[li]
    return out


def scan_folder(root: Path, block: int) -> list[Item]:
    """An image folder with roadwork/ and no_roadwork/ subfolders."""
    from natix_miner.evaluation.dataset import source_of

    licences = _read_sources_tsv(root)
    items = []
    for sub, label in LABEL_DIRS.items():
        d = root / sub
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*")):
            if f.suffix.lower() not in IMAGE_EXTS or not f.is_file():
                continue
            rel = f.relative_to(root).as_posix()
            stem = f.stem
            items.append(Item(key=f"{root.name}/{rel}", label=label, dataset=root.name,
                              source=f"{root.name}/{source_of(stem)}", group=f"{root.name}/{_stem_group(stem, block)}",
                              licence=licences.get(rel, "unknown"), sha1=_sha1_bytes(f.read_bytes()), path=str(f)))
    return items


def _image_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        b = value.get("bytes")
        return bytes(b) if b is not None else None
    return None


def read_parquet_rows(path: Path, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a parquet file as dicts, with whichever reader is installed (pyarrow, polars, pandas)."""
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if columns:
            table = table.select([c for c in columns if c in table.column_names])
        return table.to_pylist()
    except ImportError:
        pass
    try:
        import polars as pl

        df = pl.read_parquet(path)
        if columns:
            df = df.select([c for c in columns if c in df.columns])
        return df.to_dicts()
    except ImportError:
        pass
    try:
        import pandas as pd

        df = pd.read_parquet(path)
        if columns:
            df = df[[c for c in columns if c in df.columns]]
        return df.to_dict("records")
    except ImportError as e:
        raise SystemExit(f"{path}: reading parquet needs pyarrow, polars or pandas (pip install pyarrow)") from e


def scan_parquet(root: Path, block: int) -> tuple[list[Item], dict[str, int]]:
    """A folder of NATIX-style parquet files (image + label [+ scene_description])."""
    items, dropped = [], Counter()
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root).as_posix()
        for i, row in enumerate(read_parquet_rows(f)):
            if "image" not in row or "label" not in row:
                raise SystemExit(f"{f}: parquet needs 'image' and 'label' columns, has {sorted(row)}")
            data = _image_bytes(row["image"])
            if data is None or row["label"] is None:
                dropped["no_image_or_label"] += 1
                continue
            label = int(row["label"])
            desc = row.get("scene_description")
            if "scene_description" in row and (label == 0) == bool(desc and str(desc).strip()):
                dropped["label_description_mismatch"] += 1  # the validator's cache skips these too
                continue
            items.append(Item(key=f"{root.name}/{rel}#{i}", label=1 if label else 0, dataset=root.name,
                              source=f"{root.name}/{f.stem}", group=f"{root.name}/{rel}#{i // block}",
                              licence=str(row.get("license") or row.get("licence") or "see dataset card"),
                              sha1=_sha1_bytes(data), parquet=(str(f), i)))
    return items, dict(dropped)


def scan_data(dirs: Iterable[str], block: int) -> tuple[list[Item], list[dict[str, Any]]]:
    items: list[Item] = []
    info = []
    for d in dirs:
        root = Path(d).expanduser().resolve()
        if not root.is_dir():
            raise SystemExit(f"--data {d}: not a folder")
        if any((root / s).is_dir() for s in LABEL_DIRS):
            found, kind, dropped = scan_folder(root, block), "image-folder", {}
        elif any(root.rglob("*.parquet")):
            (found, dropped), kind = scan_parquet(root, block), "parquet"
        else:
            raise SystemExit(f"--data {d}: expected roadwork/ and no_roadwork/ subfolders or *.parquet files")
        if not found:
            raise SystemExit(f"--data {d}: no labelled images found")
        if any(it.dataset == root.name for it in items):
            raise SystemExit(f"--data {d}: two data folders share the name {root.name!r}")
        items.extend(found)
        lab = Counter(it.label for it in found)
        info.append({"path": str(root), "name": root.name, "kind": kind, "n": len(found),
                     "roadwork": lab[1], "no_roadwork": lab[0], "dropped": dropped,
                     "licences": dict(Counter(it.licence for it in found).most_common())})
    return items, info


class ImageLoader:
    """Decodes items; keeps the last parquet file's rows so a file is read once per pass."""

    def __init__(self) -> None:
        self._pq_path: str | None = None
        self._pq_rows: list[dict[str, Any]] = []

    def __call__(self, item: Item):
        from PIL import Image

        if item.path is not None:
            with Image.open(item.path) as im:
                return im.convert("RGB")
        path, row = item.parquet  # type: ignore[misc]
        if path != self._pq_path:
            self._pq_rows = read_parquet_rows(Path(path), ["image"])
            self._pq_path = path
        data = _image_bytes(self._pq_rows[row]["image"])
        with Image.open(io.BytesIO(data)) as im:  # type: ignore[arg-type]
            return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Validator-like augmentation (docs/protocol.md §2.4): the project's port in natix_miner.validator.augment


def validator_augment(image, rng: np.random.Generator, flip: bool = False):
    """One ``aug-2026-01`` challenge image (224×224, levels 0-3) as the miner would decode it.

    Uses :func:`natix_miner.validator.augment.augment` and its JPEG q75 encoding; ``flip`` adds a random
    horizontal flip before encoding (training only: the validator's flips are no-ops).
    """
    import base64

    from PIL import Image

    from natix_miner.validator.augment import augment, encode_like_validator

    out = augment(image, rng).image
    if flip and rng.random() < 0.5:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    data = base64.b64decode(encode_like_validator(out))
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Backbone plug-in and feature cache


def build_backbone(args: argparse.Namespace):
    """A loaded adapter in features-only mode (see the module docstring for the contract)."""
    import yaml

    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    options: dict[str, Any] = {"features_only": True}
    for kv in args.backbone_option or []:
        if "=" not in kv:
            raise SystemExit(f"--backbone-option {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        options[k.strip()] = yaml.safe_load(v)
    spec = ModelSpec(name=f"{args.backbone}-features", type=args.backbone, licence="see adapter",
                     model=args.backbone_model, device=args.device, options=options)
    adapter = build_adapter(spec)
    if not hasattr(adapter, "features") or not hasattr(adapter, "feature_meta"):
        raise SystemExit(f"--backbone {args.backbone}: its adapter has no features()/feature_meta(); "
                         "see scripts/train_head.py's docstring for the contract")
    device = args.device
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
                    keys = z["keys"]
                    feats = z["feats"]
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


def _view_seed(seed: int, item: Item, view: str) -> int:
    return int(hashlib.sha1(f"{seed}|{item.sha1}|{view}".encode()).hexdigest()[:12], 16)


def extract_features(items: list[Item], views_of: dict[str, list[str]], backbone, cache: FeatureCache,
                     seed: int, batch: int = 8) -> dict[tuple[str, str], np.ndarray]:
    """Features of every (item, view); cached views are not recomputed."""
    load = ImageLoader()
    out: dict[tuple[str, str], np.ndarray] = {}
    todo = []
    for it in items:
        for v in views_of[it.key]:
            ck = f"{it.sha1}|{v}|{AUG_VERSION}|{seed}" if v != "full" else f"{it.sha1}|full"
            hit = cache.get(ck)
            if hit is not None:
                out[(it.key, v)] = hit.astype(np.float32)
            else:
                todo.append((it, v, ck))
    logger.info("features: {} views cached, {} to compute", len(out), len(todo))
    t0, done = time.perf_counter(), 0
    pend_imgs, pend_keys = [], []

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
    for it, v, ck in todo:
        if it.key != last_key:
            image, last_key = load(it), it.key
        if v == "full":
            img = image
        else:
            rng = np.random.default_rng(_view_seed(seed, it, v))
            img = validator_augment(image, rng, flip=v.startswith("train"))
        pend_imgs.append(img)
        pend_keys.append((it.key, v, ck))
        if len(pend_imgs) >= batch:
            flush()
            if done % (batch * 25) == 0:
                el = time.perf_counter() - t0
                logger.info("features: {}/{} ({:.0f} ms/view)", done, len(todo), 1000 * el / max(done, 1))
    flush()
    cache.save()
    if todo:
        logger.info("features: {} views in {:.1f}s", len(todo), time.perf_counter() - t0)
    return out


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Splits, weights, heads, metrics


def split_items(items: list[Item], test_frac: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Per data folder: grouped, stratified; fold 0 of round(1/test_frac) folds is held out."""
    from sklearn.model_selection import StratifiedGroupKFold

    dev, test = [], []
    if test_frac <= 0:
        return list(items), []
    n_splits = max(2, round(1.0 / test_frac))
    for ds in sorted({it.dataset for it in items}):
        part = [it for it in items if it.dataset == ds]
        y = np.array([it.label for it in part])
        groups = np.array([it.group for it in part])
        if len(set(groups)) < n_splits or min(Counter(y.tolist()).values()) < 1 or len(set(y.tolist())) < 2:
            logger.warning("{}: too few groups/classes for a held-out split; all {} images go to training", ds, len(part))
            dev.extend(part)
            continue
        skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, te = next(iter(skf.split(np.zeros(len(part)), y, groups)))
        te_set = set(te.tolist())
        for i, it in enumerate(part):
            (test if i in te_set else dev).append(it)
    return dev, test


def item_weights(items: list[Item], data_weight: dict[str, float] | None = None) -> dict[str, float]:
    """Both classes weigh the same within each data folder; folders keep their share of images,
    multiplied by ``data_weight[folder name]`` when given (``--data-weight``)."""
    by = Counter((it.dataset, it.label) for it in items)
    n_ds = Counter(it.dataset for it in items)
    w = {}
    for it in items:
        classes = sum(1 for lab in (0, 1) if by[(it.dataset, lab)])
        w[it.key] = n_ds[it.dataset] / (classes * by[(it.dataset, it.label)]) * (data_weight or {}).get(it.dataset, 1.0)
    mean = sum(w.values()) / len(w)
    return {k: v / mean for k, v in w.items()}


def build_matrix(items: list[Item], views_of: dict[str, list[str]], feats, weights: dict[str, float] | None = None):
    X, y, w, keys, kinds = [], [], [], [], []
    for it in items:
        vs = views_of[it.key]
        n_crops = sum(1 for v in vs if v != "full")
        for v in vs:
            X.append(feats[(it.key, v)])
            y.append(it.label)
            base = weights[it.key] if weights else 1.0
            # the full view and the crops of an image carry equal weight
            w.append(base * (0.5 if v == "full" else 0.5 / n_crops) if n_crops and "full" in vs else base / len(vs))
            keys.append(it.key)
            kinds.append("full" if v == "full" else "crop")
    return (np.stack(X).astype(np.float32), np.array(y), np.array(w, dtype=np.float64),
            np.array(keys), np.array(kinds))


def fit_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, args: argparse.Namespace):
    """Returns a head module (standardisation folded in) trained on (X, y, w)."""
    import torch

    from natix_miner.models.heads import build_head

    torch.manual_seed(args.seed)  # head init, dropout and sampling are reproducible
    mean = X.mean(0)
    std = X.std(0) + 1e-4
    head = build_head(args.head, X.shape[1], hidden=args.hidden)
    head.mean.copy_(torch.from_numpy(mean))
    head.std.copy_(torch.from_numpy(std))
    Z = (X - mean) / std
    if args.head == "linear":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=args.C, max_iter=args.max_iter)
        clf.fit(Z, y, sample_weight=w * len(w) / w.sum())
        with torch.no_grad():
            head.net.weight.copy_(torch.from_numpy(clf.coef_.astype(np.float32)))
            head.net.bias.copy_(torch.from_numpy(clf.intercept_.astype(np.float32)))
        return head.eval()
    # mlp: balanced sampling through the sample weights, AdamW, BCE
    g = torch.Generator().manual_seed(args.seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(w), num_samples=len(w), replacement=True,
                                                     generator=g)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=args.lr, weight_decay=args.weight_decay)
    head.train()
    for _ in range(args.epochs):
        idx = torch.tensor(list(sampler))
        for s in range(0, len(idx), args.batch_size):
            b = idx[s:s + args.batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(Xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval()


def head_probs(head, X: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        z = head(torch.from_numpy(X)).numpy()
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def _mcc(y: np.ndarray, pred: np.ndarray) -> float:
    tp = float(np.sum((pred == 1) & (y == 1)))
    tn = float(np.sum((pred == 0) & (y == 0)))
    fp = float(np.sum((pred == 1) & (y == 0)))
    fn = float(np.sum((pred == 0) & (y == 1)))
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / den if den else 0.0


def _balanced_mcc(y: np.ndarray, pred: np.ndarray) -> float:
    """MCC at 50/50 prevalence: what a validator measures, since it draws each challenge's label 50/50."""
    from natix_miner.evaluation.calibration import balanced_mcc

    return balanced_mcc(y, pred)


def best_threshold(y: np.ndarray, p: np.ndarray, kinds: np.ndarray, objective: str = "balanced") -> tuple[float, float]:
    """Threshold maximising mean(MCC over full views, MCC over crop views) (kinds present only).

    ``objective="balanced"`` (default) scores MCC at the validators' 50/50 label balance; ``"raw"`` at the
    data's own balance, which on scarce positives picks a far higher threshold (few alarms, low recall) that
    a validator's 50/50 stream punishes.
    """
    score = _balanced_mcc if objective == "balanced" else _mcc
    cands = np.unique(np.quantile(p, np.linspace(0.0, 1.0, 401)))
    present = [k for k in ("full", "crop") if np.any(kinds == k)]
    best_t, best_m = 0.5, -2.0
    for t in cands:
        m = float(np.mean([score(y[kinds == k], (p[kinds == k] >= t).astype(int)) for k in present]))
        if m > best_m:
            best_t, best_m = float(t), m
    # centre the threshold between neighbouring candidates would overfit less; keep it in (0, 1)
    return float(min(max(best_t, 1e-4), 1 - 1e-4)), best_m


def metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = (p >= threshold).astype(int)
    out: dict[str, Any] = {"n": len(y), "n_roadwork": int(y.sum()),
                           "accuracy": round(float(np.mean(pred == y)), 4) if len(y) else None,
                           "mcc": round(_mcc(y, pred), 4) if len(set(y.tolist())) == 2 else None,
                           "mcc_balanced": round(_balanced_mcc(y, pred), 4) if len(set(y.tolist())) == 2 else None,
                           "tpr": round(float(pred[y == 1].mean()), 4) if np.any(y == 1) else None,
                           "tnr": round(float(1 - pred[y == 0].mean()), 4) if np.any(y == 0) else None,
                           "auc": None}
    if len(set(y.tolist())) == 2:
        from sklearn.metrics import roc_auc_score

        out["auc"] = round(float(roc_auc_score(y, p)), 4)
    return out


def per_source_metrics(items: list[Item], keys: np.ndarray, kinds: np.ndarray, y: np.ndarray, p: np.ndarray,
                       threshold: float) -> dict[str, Any]:
    src_of = {it.key: it.source for it in items}
    ds_of = {it.key: it.dataset for it in items}
    srcs = np.array([src_of[k] for k in keys])
    dss = np.array([ds_of[k] for k in keys])
    res: dict[str, Any] = {}
    scopes = [("all", np.ones(len(y), bool))]
    scopes += [(f"{d}", dss == d) for d in sorted(set(dss.tolist()))]
    scopes += [(f"{s}", srcs == s) for s in sorted(set(srcs.tolist())) if s not in set(dss.tolist())]
    for name, mask in scopes:
        res[name] = {kind: metrics(y[mask & km], p[mask & km], threshold)
                     for kind, km in (("full", kinds == "full"), ("crop", kinds == "crop"), ("both", np.ones(len(y), bool)))
                     if np.any(mask & km)}
    return res


def cv_threshold(items: list[Item], X: np.ndarray, y: np.ndarray, w: np.ndarray, keys: np.ndarray,
                 kinds: np.ndarray, args: argparse.Namespace, seed: int) -> tuple[np.ndarray, float, float]:
    """Grouped ``--val-folds`` CV on (X, y): out-of-fold probabilities (NaN where a fold could not be fit),
    the threshold maximising mean(MCC full, MCC crop) over ``--threshold-data`` rows, and that objective."""
    from sklearn.model_selection import StratifiedGroupKFold

    group_of = {it.key: it.group for it in items}
    groups = np.array([group_of[k] for k in keys])
    oof = np.full(len(y), np.nan)
    folds = min(args.val_folds, len(set(groups.tolist())))
    if folds >= 2:
        # stratify on the per-image label, grouped; all views of an image fall in one fold
        for tr, va in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(X, y, groups):
            if len(set(y[tr].tolist())) < 2:
                continue
            oof[va] = head_probs(fit_head(X[tr], y[tr], w[tr], args), X[va])
    mask = ~np.isnan(oof)
    if args.threshold_data:
        ds_of = {it.key: it.dataset for it in items}
        mask &= np.isin(np.array([ds_of[k] for k in keys]), args.threshold_data)
    if mask.sum() and len(set(y[mask].tolist())) == 2:
        threshold, objective = best_threshold(y[mask], oof[mask], kinds[mask], args.threshold_objective)
        return oof, threshold, objective
    logger.warning("no usable CV predictions: threshold left at 0.5")
    return oof, 0.5, float("nan")


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average per-source metric dicts over repeats; ``mcc_sd`` / ``auc_sd`` give the spread."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        vals = [r[key] for r in runs if key in r]
        if isinstance(vals[0], dict):
            out[key] = _mean_metrics(vals)
            continue
        nums = [v for v in vals if isinstance(v, (int, float))]
        out[key] = round(float(np.mean(nums)), 4) if nums else None
        if key in ("mcc", "mcc_balanced", "auc") and len(nums) > 1:
            out[f"{key}_sd"] = round(float(np.std(nums)), 4)
    return out


def nested_cv(items: list[Item], views_of: dict[str, list[str]], feats, args: argparse.Namespace,
              data_weight: dict[str, float]) -> dict[str, Any]:
    """Repeated, nested, grouped cross-validation over *all* images (development + held out).

    Each repeat r splits every data folder into ``--val-folds`` grouped, stratified folds (seed + r); for
    each outer fold the head is trained on the other folds exactly as the final head is (weights, inner
    grouped CV for the threshold), then scored on the outer fold with *its own* threshold, so every image,
    roadwork or not, is predicted once per repeat by a model that never saw its drive. Probabilities are
    remapped per fold so the fold's threshold sits at 0.5 before pooling. Reported: per-source metrics
    averaged over repeats (``mcc_sd``/``auc_sd`` across repeats). Much less noisy than the held-out split
    when positives are scarce; the held-out split stays the reference for the committed head.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from natix_miner.engine.consensus import calibrate

    X, y, _, keys, kinds = build_matrix(items, views_of, feats)
    runs, thresholds = [], []
    for r in range(args.cv_repeats):
        seed = args.seed + 1000 * (r + 1)
        fold_of: dict[str, int] = {}
        for ds in sorted({it.dataset for it in items}):
            part = [it for it in items if it.dataset == ds]
            yy = np.array([it.label for it in part])
            gg = np.array([it.group for it in part])
            n = min(args.val_folds, len(set(gg.tolist())))
            if n < 2 or len(set(yy.tolist())) < 2:
                continue
            for f, (_, te) in enumerate(StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(yy, yy, gg)):
                for i in te:
                    fold_of[part[i].key] = f
        fold = np.array([fold_of.get(k, -1) for k in keys])
        p = np.full(len(y), np.nan)
        for f in sorted(set(fold.tolist()) - {-1}):
            tr, te = np.where(fold != f)[0], np.where(fold == f)[0]
            if len(set(y[tr].tolist())) < 2:
                continue
            train_keys = set(keys[tr].tolist())
            train_items = [it for it in items if it.key in train_keys]
            wt = build_matrix(train_items, views_of, feats, item_weights(train_items, data_weight))[2]
            _, thr, _ = cv_threshold(train_items, X[tr], y[tr], wt, keys[tr], kinds[tr], args, seed + f)
            head = fit_head(X[tr], y[tr], wt, args)
            p[te] = [calibrate(q, thr) for q in head_probs(head, X[te]).tolist()]  # the engine's remap
            thresholds.append(thr)
        ok = ~np.isnan(p)
        runs.append(per_source_metrics(items, keys[ok], kinds[ok], y[ok], p[ok], 0.5))
    return {"repeats": args.cv_repeats, "folds": args.val_folds,
            "threshold_mean": round(float(np.mean(thresholds)), 4) if thresholds else None,
            "threshold_sd": round(float(np.std(thresholds)), 4) if thresholds else None,
            "metrics": _mean_metrics(runs) if runs else {}}


def list_hash(items: list[Item]) -> str:
    lines = sorted(f"{it.key}\t{it.label}\t{it.sha1}" for it in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite", help="registered adapter type with features()")
    ap.add_argument("--backbone-model", default=None, help="spec.model for the backbone adapter (hub id or path)")
    ap.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                    help="spec.options entry for the backbone (repeatable; value parsed as YAML)")
    ap.add_argument("--data", action="append", required=True, metavar="DIR",
                    help="image folder (roadwork/, no_roadwork/) or parquet folder; repeatable")
    ap.add_argument("--out", required=True, metavar="DIR", help="writes head.pt, provenance.json, metrics.json")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "natix-miner" / "train_head"),
                    help="feature cache folder ('' to disable)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-frac", type=float, default=0.25, help="held-out share per data folder (0 = none)")
    ap.add_argument("--val-folds", type=int, default=5, help="grouped CV folds on the dev split for the threshold")
    ap.add_argument("--cv-repeats", type=int, default=0,
                    help="also report repeated nested grouped CV over all images (nested_cv in metrics.json)")
    ap.add_argument("--group-block", type=int, default=30, help="frame numbers per near-duplicate group")
    ap.add_argument("--train-crops", type=int, default=3, help="validator-like crops per development image")
    ap.add_argument("--eval-crops", type=int, default=2, help="validator-like crops per held-out image")
    ap.add_argument("--data-weight", action="append", default=[], metavar="NAME=W",
                    help="multiply the sampling weight of data folder NAME by W (repeatable)")
    ap.add_argument("--threshold-data", action="append", default=[], metavar="NAME",
                    help="data folder name(s) whose CV predictions choose the threshold (default: all)")
    ap.add_argument("--threshold-objective", choices=("balanced", "raw"), default="balanced",
                    help="MCC at the validators' 50/50 label balance (default) or at the data's own balance")
    ap.add_argument("--head", choices=("linear", "mlp"), default="mlp")
    ap.add_argument("--C", type=float, default=0.05, help="inverse L2 strength (linear head)")
    ap.add_argument("--max-iter", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=64, help="MLP hidden units")
    ap.add_argument("--epochs", type=int, default=30, help="MLP epochs")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--feature-batch", type=int, default=8, help="images per backbone call")
    ap.add_argument("--limit", type=int, default=0, help="keep at most N images per data folder and class (quick runs)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from natix_miner.models.heads import save_head

    args = parse_args(argv)
    t_start = time.perf_counter()
    items, data_info = scan_data(args.data, args.group_block)
    if args.limit:
        kept, seen = [], Counter()
        for it in items:
            if seen[(it.dataset, it.label)] < args.limit:
                kept.append(it)
                seen[(it.dataset, it.label)] += 1
        items = kept
    labels = Counter(it.label for it in items)
    if len(labels) < 2:
        raise SystemExit("need images of both classes (roadwork and no_roadwork)")
    dev, test = split_items(items, args.test_frac, args.seed)
    logger.info("{} images ({} roadwork): {} development, {} held out", len(items), labels[1], len(dev), len(test))

    views_of: dict[str, list[str]] = {}
    for it in dev:
        views_of[it.key] = ["full"] + [f"train{j}" for j in range(args.train_crops)]
    for it in test:
        views_of[it.key] = ["full"] + [f"eval{j}" for j in range(args.eval_crops)]

    backbone = build_backbone(args)
    fmeta = backbone.feature_meta()
    signature = hashlib.sha1(json.dumps({"type": args.backbone, "model": args.backbone_model,
                                         "meta": fmeta}, sort_keys=True).encode()).hexdigest()[:16]
    cache = FeatureCache(Path(args.cache) if args.cache else None, signature)
    t_feat = time.perf_counter()
    feats = extract_features(dev + test, views_of, backbone, cache, args.seed, args.feature_batch)
    t_feat = time.perf_counter() - t_feat

    # -- threshold from grouped CV on the development split
    data_weight = {}
    for kv in args.data_weight:
        name, _, value = kv.partition("=")
        if name not in {d["name"] for d in data_info} or not value:
            raise SystemExit(f"--data-weight {kv!r}: expected NAME=WEIGHT with NAME one of the --data folder names")
        data_weight[name] = float(value)
    weights = item_weights(dev, data_weight)
    Xd, yd, wd, kd, kindd = build_matrix(dev, views_of, feats, weights)
    oof, threshold, cv_mcc = cv_threshold(dev, Xd, yd, wd, kd, kindd, args, args.seed)
    ok = ~np.isnan(oof)
    logger.info("threshold {:.4f} (CV mean MCC full/crop {:.3f})", threshold, cv_mcc)

    # -- final head on the whole development split
    head = fit_head(Xd, yd, wd, args)

    report: dict[str, Any] = {"threshold": round(threshold, 6), "cv_threshold_objective": round(cv_mcc, 4)}
    if ok.any():
        report["cv"] = per_source_metrics(dev, kd[ok], kindd[ok], yd[ok], oof[ok], threshold)
    if test:
        Xt, yt, _, kt, kindt = build_matrix(test, views_of, feats)
        pt = head_probs(head, Xt)
        report["heldout"] = per_source_metrics(test, kt, kindt, yt, pt, threshold)
    if args.cv_repeats:
        t_cv = time.perf_counter()
        report["nested_cv"] = nested_cv(dev + test, views_of, feats, args, data_weight)
        logger.info("nested CV ({} repeats) in {:.1f}s: {}", args.cv_repeats, time.perf_counter() - t_cv,
                    json.dumps({k: {m: v.get("full", {}).get(m) for m in ("mcc", "mcc_balanced", "auc")}
                                for k, v in report["nested_cv"]["metrics"].items()}))
    report["timing_s"] = {"features": round(t_feat, 1), "total": round(time.perf_counter() - t_start, 1)}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"backbone": args.backbone, "backbone_model": args.backbone_model, **fmeta,
            "feature_dim": int(Xd.shape[1]), "threshold": round(threshold, 6), "head": args.head,
            "trained_on": [d["name"] for d in data_info], "created": created,
            "provenance": "see provenance.json next to this file"}
    save_head(out / "head.pt", head, args.head, meta, hidden=args.hidden)
    weights_file = getattr(backbone, "weights_path", None)
    provenance = {
        "created": created,
        "command": "scripts/train_head.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": {k: v for k, v in vars(args).items()},
        "backbone": {"type": args.backbone, "model": args.backbone_model, "feature_meta": fmeta,
                     "weights_file": Path(weights_file).name if weights_file else None,
                     "weights_sha256": _file_sha256(weights_file),
                     "licence": getattr(backbone, "backbone_licence", None)},
        "data": data_info,
        "split": {"rule": "per data folder StratifiedGroupKFold(round(1/test_frac)), fold 0 held out",
                  "group_rule": f"file-name prefix + trailing frame number // {args.group_block}; parquet: file + row // {args.group_block}",
                  "seed": args.seed, "test_frac": args.test_frac,
                  "counts": {"dev": dict(Counter("roadwork" if it.label else "no_roadwork" for it in dev)),
                             "heldout": dict(Counter("roadwork" if it.label else "no_roadwork" for it in test))},
                  "sha256_all": list_hash(items), "sha256_dev": list_hash(dev), "sha256_heldout": list_hash(test),
                  "heldout_items": sorted(it.key for it in test)},
        "views": {"full": 1, "train_crops": args.train_crops, "eval_crops": args.eval_crops,
                  "augmentation": AUG_VERSION},
        "threshold": {"value": round(threshold, 6), "chosen_on": args.threshold_data or "all data folders",
                      "objective": f"mean of MCC(full views) and MCC(crop views) on grouped CV out-of-fold predictions, "
                                   f"{'at 50/50 label balance' if args.threshold_objective == 'balanced' else 'at the data balance'}"},
        "software": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote {} (threshold {:.4f}); held-out: {}", out, threshold,
                json.dumps({k: v.get("full", {}).get("mcc") for k, v in report.get("heldout", {}).items()}))
    return report


if __name__ == "__main__":
    main()
