#!/usr/bin/env python
"""Lite0 fine-tuned end to end vs the frozen-feature head, under the same nested grouped CV (issue 11, "Measure").

Both models are scored on the same rows: every image's full frame and the same validator-like 224 crops the
frozen head is scored on (``natix_miner.training.features.validator_augment`` with the head's view seeds: 3
flipped "train" crops for development images, 2 "eval" crops for the held-out split of ``train_head.py``), and
the outer folds are those of ``train_head.py --cv-repeats 1`` (``natix_miner.training.splits`` with the repeat
seed of ``--seed``). The fine-tune's threshold comes from a grouped carve-out of each outer fold's training part
(``nested_cv(inner="holdout")``: one fit per outer fold, the model fitted on the rest scores the carve-out and the
outer fold); ``--head-too`` also scores the frozen head with the same carve-out protocol (features from the
train_head cache) so that the threshold rule is not the difference.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python scripts/experiments/lite0_finetune_cv.py \\
        --data /work/shared/data/gtsdb-dev --out reports/lite0-finetune-cv --image-size 224 --epochs 6

Diagnostics and variants: ``--freeze-backbone`` (only the head learns), ``--lp-epochs N`` (LP-FT: a linear probe
on the frozen backbone first, its scores replayed through the same folds and threshold rule as ``linear_probe``
in the report, then the fine-tune starts from that head), ``--freeze-blocks N`` (stem and the first N stages keep
their weights and BN statistics), ``--score-train`` (AUC of each fold's model on its own training images: a model
that cannot rank its training set points to a pipeline bug, not to overfitting).

Writes ``OUT/report.json`` (per fold thresholds and timings, pooled metrics per view, per source).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--holdout-frac", type=float, default=0.2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layer-decay", type=float, default=0.75)
    ap.add_argument("--ema", type=float, default=0.0)
    ap.add_argument("--freeze-backbone", action="store_true", help="only the classifier learns (sanity run)")
    ap.add_argument("--freeze-blocks", type=int, default=0,
                    help="partial fine-tune: stem and the first N blocks frozen (weights and BN statistics)")
    ap.add_argument("--lp-epochs", type=int, default=0,
                    help="LP-FT: first train only the head (frozen backbone) for N epochs at --lp-lr, then fine-tune")
    ap.add_argument("--lp-lr", type=float, default=5e-3)
    ap.add_argument("--lp-crops", action="store_true", help="score the linear probe on the crops too (slower)")
    ap.add_argument("--score-train", action="store_true",
                    help="also log AUC on each fold's own training images (full frames, eval mode)")
    ap.add_argument("--conditions", default="fullres=0.5,aug-2026-01=0.5")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-folds", type=int, default=0, help="stop after N outer folds (timing trials)")
    ap.add_argument("--head-too", action="store_true", help="also the frozen head, same carve-out protocol")
    ap.add_argument("--head-cache", default=str(Path.home() / ".cache" / "natix-miner" / "train_head"))
    ap.add_argument("--export", default=None, help="also train on everything and export the model here")
    return ap.parse_args(argv)


def views_like_train_head(samples, seed: int):
    """The views train_head.py gives each image: full + 3 train crops (dev), full + 2 eval crops (held out)."""
    from natix_miner.training.splits import grouped_split

    dev, test = grouped_split(samples, 0.25, seed)
    views = {s.key: ["full"] + [f"train{j}" for j in range(3)] for s in dev}
    views.update({s.key: ["full"] + [f"eval{j}" for j in range(2)] for s in test})
    return views


def build_view_tensors(samples, views_of, sha1, size: int, mean, std, seed: int):
    """uint8 (size, size, 3) arrays of every (sample, view), made once: full frame squashed, validator crops."""
    import numpy as np

    from natix_miner.training.data import load_image
    from natix_miner.training.features import _view_seed, validator_augment
    from natix_miner.training.transforms import model_input

    out = {}
    for s in samples:
        image = load_image(s)
        for v in views_of[s.key]:
            im = image if v == "full" else validator_augment(image, np.random.default_rng(
                _view_seed(seed, sha1[s.key], v)), flip=v.startswith("train"))
            out[(s.key, v)] = np.asarray(model_input(im, size, "squash"), dtype=np.uint8)
    return out


def views_from_224(path, samples, size: int):
    """Views at ``size`` from the 224 cache: crops resized (exactly model_input's squash of a 224 crop), full frames
    made again from the originals."""
    import numpy as np
    from PIL import Image

    from natix_miner.training.data import load_image
    from natix_miner.training.transforms import model_input

    by_key = {s.key: s for s in samples}
    out = {}
    with np.load(path) as z:
        x = z["x"]  # read once: each z["x"] decompresses the whole array again
        for i, k in enumerate(z["keys"]):
            key, view = str(k).split("|", 1)
            if view == "full":
                out[(key, view)] = np.asarray(model_input(load_image(by_key[key]), size, "squash"), dtype=np.uint8)
            else:
                out[(key, view)] = np.asarray(Image.fromarray(x[i]).resize((size, size), Image.BILINEAR))
    return out


def finetune_fit_predict(args, views_of, arrays, log, lp_outputs):
    import numpy as np
    import torch

    from natix_miner.training import data, metrics
    from natix_miner.training.config import TrainConfig
    from natix_miner.training.cv import ViewScores
    from natix_miner.training.distributed import DistEnv
    from natix_miner.training.loop import DataAPI, fit
    from natix_miner.training.models import build_model

    api = DataAPI(load_image=data.load_image, sampling_weights=data.sampling_weights,
                  best_threshold=metrics.best_threshold, evaluate_scores=metrics.evaluate_scores,
                  unreadable=(data.ImageUnreadable,))

    def score_sets(model, sets, full_only=False):
        """Scores of every view of every sample of each set (eval mode; the cached model inputs)."""
        was = model.training
        model.eval()
        mean = torch.tensor(model.mean).view(1, 3, 1, 1)
        std = torch.tensor(model.std).view(1, 3, 1, 1)
        out = []
        for part in sets:
            rows, kinds, keys = [], [], []
            for i, s in enumerate(part):
                for v in views_of[s.key]:
                    if full_only and v != "full":
                        continue
                    rows.append(i)
                    kinds.append("full" if v == "full" else "crop")
                    keys.append((s.key, v))
            scores = []
            with torch.inference_mode():
                for b in range(0, len(keys), 32):
                    x = torch.from_numpy(np.stack([arrays[k] for k in keys[b:b + 32]])).permute(0, 3, 1, 2)
                    x = (x.float() / 255.0 - mean) / std
                    scores += torch.sigmoid(model(x).float()).tolist()
            out.append(ViewScores(rows, kinds, scores))
        model.train(was)
        return out

    def fit_predict(train, sets):
        t0 = time.perf_counter()
        cfg = TrainConfig(data=list(args.data), model=args.model, out=tempfile.mkdtemp(prefix="ft-"),
                          epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size,
                          conditions=args.conditions, device="cpu", lr=args.lr,
                          layer_decay=args.layer_decay if args.layer_decay < 1 else None,
                          ema=args.ema or None, workers=args.workers, seed=args.seed, val_frac=0.0, test_frac=0.0,
                          freeze_backbone=args.freeze_backbone)
        model = build_model(args.model, image_size=args.image_size)
        if args.lp_epochs:  # linear probe first: the fine-tune then starts from a fitted head, not a random one
            lp = cfg.model_copy(update={"epochs": args.lp_epochs, "lr": args.lp_lr, "freeze_backbone": True,
                                        "ema": None, "out": tempfile.mkdtemp(prefix="lp-")})
            model.load_state_dict(fit(lp, model, train, [], Path(lp.out), api, DistEnv.from_env(),
                                      "cpu").best_state)
            lp_outputs.append(score_sets(model, sets, full_only=not args.lp_crops))
            model.frozen = False
            for q in model.parameters():
                q.requires_grad_(True)
        if args.freeze_blocks:
            freeze_first_blocks(model, args.freeze_blocks)
        res = fit(cfg, model, train, [], Path(cfg.out), api, DistEnv.from_env(), "cpu")
        model.load_state_dict(res.best_state)
        model.eval()
        t_fit = time.perf_counter() - t0
        mean = torch.tensor(model.mean).view(1, 3, 1, 1)
        std = torch.tensor(model.std).view(1, 3, 1, 1)
        out = score_sets(model, sets)
        entry = {"n_train": len(train), "fit_s": round(t_fit, 1), "total_s": round(time.perf_counter() - t0, 1),
                 "steps": res.step, "final_loss": next((h["loss"] for h in reversed(res.history) if "loss" in h),
                                                       None)}
        if args.score_train:  # can the model rank its own training images at all? (chance here = a bug)
            from sklearn.metrics import roc_auc_score

            keys = [(s.key, "full") for s in train]
            with torch.inference_mode():
                x = torch.from_numpy(np.stack([arrays[k] for k in keys])).permute(0, 3, 1, 2)
                p = torch.cat([torch.sigmoid(model((x[b:b + 32].float() / 255.0 - mean) / std).float())
                               for b in range(0, len(keys), 32)]).tolist()
            entry["train_auc_full"] = round(float(roc_auc_score([s.label for s in train], p)), 4)
        log.append(entry)
        print(json.dumps(log[-1]), flush=True)
        return out

    return fit_predict


def freeze_first_blocks(model, n: int) -> None:
    """Stem and ``blocks[:n]`` of a timm EfficientNet stop learning and keep their BN statistics (eval mode)."""
    net = model.net
    frozen = [net.conv_stem, net.bn1, *list(net.blocks)[:n]]
    for m in frozen:
        for p in m.parameters():
            p.requires_grad_(False)
    cls_train = type(model).train

    def train(mode: bool = True):
        cls_train(model, mode)
        for m in frozen:
            m.eval()
        return model

    model.train = train


def main(argv=None):
    import numpy as np
    import torch

    from natix_miner.training.cv import nested_cv
    from natix_miner.training.data import scan_data
    from natix_miner.training.features import content_sha1
    from natix_miner.training.head import _rows_report
    from natix_miner.training.metrics import mean_metrics

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    samples = scan_data(args.data)
    sha1 = content_sha1(samples)
    views_of = views_like_train_head(samples, args.seed)
    from natix_miner.training.models import build_model

    probe = build_model(args.model, image_size=args.image_size)
    cache = Path(tempfile.gettempdir()) / f"lite0-ft-views-{args.image_size}-{args.seed}.npz"
    base = Path(tempfile.gettempdir()) / f"lite0-ft-views-224-{args.seed}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            x = z["x"]  # read once: each z["x"] decompresses the whole array again
            arrays = {tuple(str(k).split("|", 1)): x[i] for i, k in enumerate(z["keys"])}
    elif base.is_file():  # crops are 224x224 already: squashing the cached crop is what model_input does
        arrays = views_from_224(base, samples, args.image_size)
    else:
        arrays = build_view_tensors(samples, views_of, sha1, args.image_size, probe.mean, probe.std, args.seed)
        keys = sorted(arrays)
        np.savez(cache, keys=np.array([f"{a}|{b}" for a, b in keys]), x=np.stack([arrays[k] for k in keys]))
    del probe
    print(f"views ready: {len(arrays)} in {time.perf_counter() - t0:.0f}s", flush=True)

    todo = samples
    log: list[dict] = []
    lp_outputs: list = []
    fp = finetune_fit_predict(args, views_of, arrays, log, lp_outputs)
    if args.max_folds:
        calls = {"n": 0}
        inner = fp

        def fp(train, sets):
            calls["n"] += 1
            if calls["n"] > args.max_folds:
                raise SystemExit("max folds reached")
            return inner(train, sets)

    report = {"args": vars(args), "hardware": f"{os.cpu_count()}-core CPU (shared), torch {torch.__version__}"}
    res = nested_cv(todo, fp, folds=args.folds, repeats=args.repeats, seed=args.seed, inner="holdout",
                    holdout_frac=args.holdout_frac)
    report["finetune"] = {**res.report(todo), "by_view": mean_metrics([_rows_report(todo, r, 0.5) for r in res.runs]),
                          "folds_log": log}
    if lp_outputs:  # the linear probe (LP stage) replayed through the same folds and threshold rule
        replay = iter(lp_outputs)
        lres = nested_cv(todo, lambda train, sets: next(replay), folds=args.folds, repeats=args.repeats,
                         seed=args.seed, inner="holdout", holdout_frac=args.holdout_frac)
        report["linear_probe"] = {**lres.report(todo), "by_view": mean_metrics(
            [_rows_report(todo, r, 0.5) for r in lres.runs])}
    if args.head_too:
        report["head_same_protocol"] = head_same_protocol(args, samples, views_of, sha1)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    for name in ("finetune", "linear_probe", "head_same_protocol"):
        if name in report:
            m = report[name]["by_view"]["all"]
            print(name, json.dumps({k: {x: (m.get(k) or {}).get(x) for x in ("mcc_balanced", "mcc_balanced_sd", "auc", "mcc",
                                                                  "tpr", "tnr")} for k in ("full", "crop")}))
    return report


def head_same_protocol(args, samples, views_of, sha1):
    """The frozen head (train_head defaults) on the same folds with the same carve-out threshold rule."""
    import hashlib

    from natix_miner.training.cv import nested_cv
    from natix_miner.training.features import (
        FeatureCache,
        build_backbone,
        extract_features,
    )
    from natix_miner.training.head import _rows_report, head_fit_predict
    from natix_miner.training.metrics import mean_metrics
    from scripts.train_head import parse_args as head_args

    hargs = head_args(["--data", *args.data, "--out", "/tmp/unused"])
    backbone = build_backbone(hargs.backbone, hargs.backbone_model, {}, "cpu")
    fmeta = backbone.feature_meta()
    sig = hashlib.sha1(json.dumps({"type": hargs.backbone, "model": hargs.backbone_model, "meta": fmeta},
                                  sort_keys=True).encode()).hexdigest()[:16]
    feats, _ = extract_features(samples, views_of, sha1, backbone, FeatureCache(Path(args.head_cache), sig),
                                args.seed)
    res = nested_cv(samples, head_fit_predict(views_of, feats, hargs), folds=args.folds, repeats=args.repeats,
                    seed=args.seed, inner="holdout", holdout_frac=args.holdout_frac)
    return {**res.report(samples), "by_view": mean_metrics([_rows_report(samples, r, 0.5) for r in res.runs])}


if __name__ == "__main__":
    main()
