"""Frozen-backbone head training: the embedded Lite0 default's recipe, on the training package's data, splits,
metrics and nested CV (``scripts/train_head.py`` is its command line; the steps are described there).

The head sees cached backbone features (:mod:`natix_miner.training.features`) of a full view and validator-like
crops per image; sampling is balanced (within each data folder both classes weigh the same, times the source
weight, :func:`natix_miner.training.data.sampling_weights`), and within an image the full view and its crops
carry equal weight. The threshold maximises the mean of MCC(full views) and MCC(crop views) — at the validators'
50/50 balance by default — on grouped CV out-of-fold predictions of the development split
(:func:`natix_miner.training.cv.cv_threshold`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from natix_miner.training.cv import ViewScores, cv_threshold, nested_cv
from natix_miner.training.data import Sample, sampling_weights, scan_sources
from natix_miner.training.features import (
    AUG_VERSION,
    FeatureCache,
    build_backbone,
    content_sha1,
    extract_features,
)
from natix_miner.training.metrics import mean_metrics, threshold_metrics
from natix_miner.training.splits import grouped_split

Matrix = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def build_matrix(samples: list[Sample], views_of: dict[str, list[str]], feats,
                 weights: list[float] | None = None) -> Matrix:
    """(X, y, w, keys, kinds, sample index) with one row per (sample, view); the full view and the crops of an
    image carry equal weight."""
    X, y, w, keys, kinds, idx = [], [], [], [], [], []
    for i, s in enumerate(samples):
        vs = views_of[s.key]
        n_crops = sum(1 for v in vs if v != "full")
        base = weights[i] if weights is not None else 1.0
        for v in vs:
            X.append(feats[(s.key, v)])
            y.append(s.label)
            w.append(base * (0.5 if v == "full" else 0.5 / n_crops) if n_crops and "full" in vs else base / len(vs))
            keys.append(s.key)
            kinds.append("full" if v == "full" else "crop")
            idx.append(i)
    dim = len(next(iter(feats.values()))) if feats else 0
    return (np.stack(X).astype(np.float32) if X else np.zeros((0, dim), np.float32), np.array(y, dtype=int),
            np.array(w, dtype=np.float64), np.array(keys), np.array(kinds), np.array(idx, dtype=int))


def fit_head(X: np.ndarray, y: np.ndarray, w: np.ndarray, args: argparse.Namespace):
    """A head module (standardisation folded in) trained on (X, y, w)."""
    import torch

    from natix_miner.models.heads import build_head

    torch.manual_seed(args.seed)  # head init, dropout and sampling are reproducible
    mean, std = X.mean(0), X.std(0) + 1e-4
    head = build_head(args.head, X.shape[1], hidden=args.hidden)
    head.mean.copy_(torch.from_numpy(mean))
    head.std.copy_(torch.from_numpy(std))
    if args.head == "linear":
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=args.C, max_iter=args.max_iter)
        clf.fit((X - mean) / std, y, sample_weight=w * len(w) / w.sum())
        with torch.no_grad():
            head.net.weight.copy_(torch.from_numpy(clf.coef_.astype(np.float32)))
            head.net.bias.copy_(torch.from_numpy(clf.intercept_.astype(np.float32)))
        return head.eval()
    g = torch.Generator().manual_seed(args.seed)  # mlp: balanced sampling through the weights, AdamW, BCE
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(w), num_samples=len(w), replacement=True,
                                                     generator=g)
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay)
    head.train()
    for _ in range(args.epochs):
        order = torch.tensor(list(sampler))
        for s in range(0, len(order), args.batch_size):
            b = order[s:s + args.batch_size]
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


def head_fit_predict(views_of: dict[str, list[str]], feats, args: argparse.Namespace):
    """The head as a :data:`natix_miner.training.cv.FitPredict`: fit on the training samples (weights recomputed
    on them), score every view of each eval set."""

    def fit_predict(train: list[Sample], sets: list[list[Sample]]) -> list[ViewScores]:
        X, y, w, *_ = build_matrix(train, views_of, feats, sampling_weights(train))
        head = fit_head(X, y, w, args)
        out = []
        for part in sets:
            Xs, _, _, _, kinds, idx = build_matrix(part, views_of, feats)
            out.append(ViewScores(idx, kinds, head_probs(head, Xs) if len(Xs) else np.zeros(0)))
        return out

    return fit_predict


def per_source_metrics(samples: list[Sample], keys, kinds, y, p, threshold: float) -> dict[str, Any]:
    """{scope: {full|crop|both: metrics}} for scope = all, each data folder, each source."""
    by_key = {s.key: s for s in samples}
    srcs = np.array([by_key[k].source for k in keys])
    dss = np.array([by_key[k].dataset for k in keys])
    kinds, y, p = np.asarray(kinds), np.asarray(y), np.asarray(p)
    scopes = [("all", np.ones(len(y), bool))] + [(d, dss == d) for d in sorted(set(dss.tolist()))]
    scopes += [(s, srcs == s) for s in sorted(set(srcs.tolist())) if s not in set(dss.tolist())]
    return {name: {kind: threshold_metrics(y[mask & km], p[mask & km], threshold)
                   for kind, km in (("full", kinds == "full"), ("crop", kinds == "crop"),
                                    ("both", np.ones(len(y), bool))) if np.any(mask & km)}
            for name, mask in scopes}


def _rows_report(samples: list[Sample], rows, threshold: float) -> dict[str, Any]:
    keys = np.array([samples[i].key for i in rows.idx])
    y = np.array([samples[i].label for i in rows.idx])
    return per_source_metrics(samples, keys, rows.view, y, rows.score, threshold)


def list_hash(samples: list[Sample], sha1: dict[str, str | None]) -> str:
    lines = sorted(f"{s.key}\t{s.label}\t{sha1.get(s.key)}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _backbone_options(pairs: list[str]) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for kv in pairs or []:
        if "=" not in kv:
            raise SystemExit(f"--backbone-option {kv!r}: expected key=value")
        k, v = kv.split("=", 1)
        options[k.strip()] = yaml.safe_load(v)
    return options


def _data_weights(pairs: list[str]) -> dict[str, float]:
    out = {}
    for kv in pairs:
        name, _, value = kv.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise SystemExit(f"--data-weight {kv!r}: expected NAME=WEIGHT") from None
    return out


def _limit(samples: list[Sample], n: int) -> list[Sample]:
    kept, seen = [], Counter()
    for s in samples:
        if seen[(s.dataset, s.label)] < n:
            kept.append(s)
            seen[(s.dataset, s.label)] += 1
    return kept


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Train, threshold and report a head; writes ``head.pt``, ``provenance.json``, ``metrics.json`` to
    ``args.out``. Returns the metrics report."""
    import torch

    from natix_miner.models.heads import save_head
    from natix_miner.training.data import DataError

    t_start = time.perf_counter()
    try:
        samples, infos = scan_sources(args.data, weights=_data_weights(args.data_weight),
                                      group_block=args.group_block)
    except DataError as e:
        raise SystemExit(str(e)) from None
    if args.limit:
        samples = _limit(samples, args.limit)
    sha1 = content_sha1(samples)
    dev, test = grouped_split(samples, args.test_frac, args.seed)
    logger.info("{} images ({} roadwork): {} development, {} held out", len(samples),
                sum(s.label for s in samples), len(dev), len(test))
    views_of = {s.key: ["full"] + [f"train{j}" for j in range(args.train_crops)] for s in dev}
    views_of.update({s.key: ["full"] + [f"eval{j}" for j in range(args.eval_crops)] for s in test})

    backbone = build_backbone(args.backbone, args.backbone_model, _backbone_options(args.backbone_option),
                              args.device)
    fmeta = backbone.feature_meta()
    signature = hashlib.sha1(json.dumps({"type": args.backbone, "model": args.backbone_model, "meta": fmeta},
                                        sort_keys=True).encode()).hexdigest()[:16]
    cache = FeatureCache(Path(args.cache) if args.cache else None, signature)
    t_feat = time.perf_counter()
    feats, bad = extract_features(dev + test, views_of, sha1, backbone, cache, args.seed, args.feature_batch)
    t_feat = time.perf_counter() - t_feat
    if bad:
        logger.warning("{} unreadable images skipped", len(bad))
        dev, test = [s for s in dev if s.key not in bad], [s for s in test if s.key not in bad]

    # threshold from grouped CV on the development split, then the final head on all of it
    fit_predict = head_fit_predict(views_of, feats, args)
    oof, threshold, cv_obj = cv_threshold(dev, fit_predict, args.val_folds, args.seed, args.threshold_objective,
                                          args.threshold_data or None)
    logger.info("threshold {:.4f} (CV mean MCC full/crop {:.3f})", threshold, cv_obj)
    Xd, yd, wd, *_ = build_matrix(dev, views_of, feats, sampling_weights(dev))
    head = fit_head(Xd, yd, wd, args)

    report: dict[str, Any] = {"threshold": round(threshold, 6), "cv_threshold_objective": round(cv_obj, 4),
                              "unreadable": len(bad)}
    if len(oof.idx):
        report["cv"] = _rows_report(dev, oof, threshold)
    if test:
        Xt, yt, _, kt, kindt, _ = build_matrix(test, views_of, feats)
        report["heldout"] = per_source_metrics(test, kt, kindt, yt, head_probs(head, Xt), threshold)
    if args.cv_repeats:
        t_cv = time.perf_counter()
        everything = dev + test
        res = nested_cv(everything, fit_predict, folds=args.val_folds, repeats=args.cv_repeats, seed=args.seed,
                        objective=args.threshold_objective, inner="cv", inner_folds=args.val_folds,
                        threshold_datasets=args.threshold_data or None)
        report["nested_cv"] = {"repeats": args.cv_repeats, "folds": args.val_folds,
                               "threshold_mean": round(float(np.mean(res.thresholds)), 4) if res.thresholds else None,
                               "threshold_sd": round(float(np.std(res.thresholds)), 4) if res.thresholds else None,
                               "metrics": mean_metrics([_rows_report(everything, r, 0.5) for r in res.runs])}
        logger.info("nested CV ({} repeats) in {:.1f}s: {}", args.cv_repeats, time.perf_counter() - t_cv,
                    json.dumps({k: {m: v.get("full", {}).get(m) for m in ("mcc", "mcc_balanced", "auc")}
                                for k, v in report["nested_cv"]["metrics"].items()}))
    report["timing_s"] = {"features": round(t_feat, 1), "total": round(time.perf_counter() - t_start, 1)}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    meta = {"backbone": args.backbone, "backbone_model": args.backbone_model, **fmeta,
            "feature_dim": int(Xd.shape[1]), "threshold": round(threshold, 6), "head": args.head,
            "trained_on": [i.name for i in infos], "created": created,
            "provenance": "see provenance.json next to this file"}
    save_head(out / "head.pt", head, args.head, meta, hidden=args.hidden)
    weights_file = getattr(backbone, "weights_path", None)
    counts = {"dev": dict(Counter("roadwork" if s.label else "no_roadwork" for s in dev)),
              "heldout": dict(Counter("roadwork" if s.label else "no_roadwork" for s in test))}
    objective = "at 50/50 label balance" if args.threshold_objective == "balanced" else "at the data balance"
    provenance = {
        "created": created,
        "command": "scripts/train_head.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "args": dict(vars(args)),
        "backbone": {"type": args.backbone, "model": args.backbone_model, "feature_meta": fmeta,
                     "weights_file": Path(weights_file).name if weights_file else None,
                     "weights_sha256": _file_sha256(weights_file),
                     "licence": getattr(backbone, "backbone_licence", None)},
        "data": [asdict(i) for i in infos],
        "split": {"rule": "per data folder StratifiedGroupKFold(round(1/test_frac)), fold 0 held out "
                          "(natix_miner.training.splits.grouped_split)",
                  "group_rule": f"file-name prefix + trailing frame number // {args.group_block}; parquet: "
                                f"video_info.vid_id, else file + row // {args.group_block}; i2i: its parent's group",
                  "seed": args.seed, "test_frac": args.test_frac, "counts": counts,
                  "sha256_all": list_hash(samples, sha1), "sha256_dev": list_hash(dev, sha1),
                  "sha256_heldout": list_hash(test, sha1), "heldout_items": sorted(s.key for s in test)},
        "views": {"full": 1, "train_crops": args.train_crops, "eval_crops": args.eval_crops,
                  "augmentation": AUG_VERSION},
        "threshold": {"value": round(threshold, 6), "chosen_on": args.threshold_data or "all data folders",
                      "objective": "mean of MCC(full views) and MCC(crop views) on grouped CV out-of-fold "
                                   f"predictions, {objective}"},
        "software": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote {} (threshold {:.4f}); held-out: {}", out, threshold,
                json.dumps({k: v.get("full", {}).get("mcc") for k, v in report.get("heldout", {}).items()}))
    return report
