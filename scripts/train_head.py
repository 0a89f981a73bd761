#!/usr/bin/env python
"""Train a small roadwork head on frozen backbone features (the embedded Lite0 default and friends).

Usage (the committed head was made with exactly this; see natix_miner/assets/lite0_head/provenance.json)::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/train_head.py --backbone efficientnet_lite \\
        --data /work/shared/data/gtsdb-dev --out natix_miner/assets/lite0_head --cv-repeats 3

What it does, in order
This script is the command line of :mod:`natix_miner.training.head`, the frozen-backbone mode of the training
package: data, groups, splits, threshold and nested CV are the package's (:mod:`natix_miner.training.data`,
``.splits``, ``.metrics``, ``.cv``), shared with ``scripts/train.py``.

1. **Data.** Each ``--data DIR`` (or ``DIR=W`` for a mixing weight) is an image folder with ``roadwork/`` and
   ``no_roadwork/`` subfolders (optional ``SOURCES.tsv`` with ``license``, ``kind``, ``parent`` columns), a
   folder of NATIX-style parquet files (``image`` as bytes or ``{"bytes": ...}``, ``label``; read with
   pyarrow), or a pseudo-labelled folder (``soft_labels.jsonl``); see :mod:`natix_miner.training.data`. Like
   the validator's cache, parquet rows whose ``scene_description`` disagrees with the label (label 0 with a
   description, label 1 without) are dropped when that column exists. Unreadable images are skipped and
   counted (``unreadable`` in metrics.json).
2. **Sources and groups.** ``source`` (for per-source metrics) is ``<data folder>/<leading alphabetic
   token of the file name>`` (``gtsdb-dev/gtsdb``, ``web-pool/tracon``, ``web-pool/indobs`` ...), or
   ``<folder>/<parquet file stem>``. ``group`` keeps near-duplicates on one side of a split: a file name
   ending in a frame number (``gtsdb_00461``, ``ucb_frame10``) is grouped with the names that share its
   prefix and fall in the same block of ``--group-block`` (30) numbers. For GTSDB this was decided by
   looking at the frames: nearby numbers come from the same drive and the same roadwork sites reappear
   within a few numbers (00459/00461/00464/00465 is one site; 00435-00438 another), and blocks of 30
   keep every such cluster together. Parquet rows are grouped by ``video_info.vid_id`` (all frames of one
   video), else by ``(file, row // group-block)``; an i2i image shares its parent's group.
3. **Split.** Per data folder, ``StratifiedGroupKFold(round(1/--test-frac))`` with ``--seed``: fold 0 is
   the held-out test split, never used for fitting or for the threshold
   (:func:`natix_miner.training.splits.grouped_split`).
4. **Views and features (cached).** Every image gives a ``full`` view (the image as sent at full
   resolution, validators' 2026-05 condition) and validator-like 224×224 crops made by the project's port
   of the validator augmentation (:mod:`natix_miner.validator.augment`, PROTOCOL §2.4: level 0-3, rotation
   ±20° NEAREST with black corners, square random-resized crop of 20-100 % area, CS/CC/"JPEG"/noise/blur
   distortions) plus the validator's JPEG q75 encoding; training crops are also flipped at random, which
   the validator does not do. ``--train-crops`` per development image, ``--eval-crops`` per held-out
   image, each from a generator seeded by (seed, image hash, view name), so features are cached once per
   backbone under ``--cache`` and reruns cost seconds.
5. **Head.** ``linear`` (logistic regression, sklearn, L2 ``--C``) or ``mlp`` (torch, ``--epochs``).
   Sampling is balanced: within each data folder both classes carry equal weight (folders keep their share
   of images, times their ``--data-weight``), recomputed on each fit's own training part, and within an image
   the full view and its crops carry equal weight (full-res and crop conditions count the same).
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
   crops and both; with the replica's simulated ``reward``). ``--cv-repeats N`` adds ``nested_cv``: N
   repeats of nested grouped CV over all images (:func:`natix_miner.training.cv.nested_cv` with inner
   ``--val-folds`` CV for each outer fold's threshold), far less noisy than a held-out split with a handful
   of positives.

Plugging in another backbone (:mod:`natix_miner.training.features`)
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
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite", help="registered adapter type with features()")
    ap.add_argument("--backbone-model", default=None, help="spec.model for the backbone adapter (hub id or path)")
    ap.add_argument("--backbone-option", action="append", default=[], metavar="KEY=VALUE",
                    help="spec.options entry for the backbone (repeatable; value parsed as YAML)")
    ap.add_argument("--data", action="append", required=True, metavar="DIR",
                    help="image folder (roadwork/, no_roadwork/), parquet folder or pseudo-labelled folder, "
                         "optionally DIR=WEIGHT; repeatable")
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
                    help="multiply the sampling weight of data folder (or source) NAME by W (repeatable)")
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
    from natix_miner.training.head import run

    return run(parse_args(argv), argv)


if __name__ == "__main__":
    main()
