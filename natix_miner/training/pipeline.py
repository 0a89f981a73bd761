"""One training run end to end: data -> splits -> fit -> threshold/temperature -> metrics -> export.

Splits (all grouped: frames of one video, near-duplicates, an i2i image and its parent stay together):

* without ``cv_folds``: ``test_frac`` of the data is held out (``OUT/metrics.json`` only, never used to pick
  anything); of the rest, ``val_frac`` is the validation split (early stopping, threshold at the validators'
  50/50 balance, temperature); the remainder trains.
* with ``cv_folds`` K > 1: :func:`natix_miner.training.cv.nested_cv` (``inner="holdout"``), the protocol
  train_head uses: each of K grouped folds is the test part once; a grouped carve-out of ``val_frac`` of its
  training part early-stops the fit and picks the fold's threshold; the fold's scores are remapped so that
  threshold sits at 0.5 and pooled. ``cv_repeats`` R repeats the whole CV with new folds. ``metrics.json``
  reports the pooled out-of-fold metrics, averaged over repeats with ``<metric>_sd`` the spread across repeats, per
  source, per condition and per view (the same report as scripts/train_head.py's ``nested_cv``). Then a final model
  trains on all data but a validation split, and is exported.

Only rank 0 evaluates, writes metrics and exports; every rank trains.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from natix_miner.training.config import TrainConfig
from natix_miner.training.distributed import (
    DistEnv,
    barrier,
    broadcast,
    setup,
    teardown,
)


def data_modules():
    """(data, splits, metrics) modules of the shared contract (imported when a run starts)."""
    from natix_miner.training import data, metrics, splits

    return data, splits, metrics


def check_data(samples: Sequence[Any], specs: Sequence[str], data_mod) -> None:
    """Refuse an empty data set, a data folder that gave nothing, or a missing class, before any training."""
    if not samples:
        raise data_mod.DataError(f"no samples in {', '.join(specs)}")
    labels = {s.label for s in samples}
    for lab, name in ((1, "roadwork"), (0, "no_roadwork")):
        if lab not in labels:
            raise data_mod.DataError(f"class {name} has no samples in {', '.join(specs)}: both classes are needed")
    datasets = {getattr(s, "dataset", "") or s.source for s in samples}
    for spec in specs:
        folder = Path(spec.split("=", 1)[0]).name
        if datasets and folder not in datasets and not any(d.startswith(folder) for d in datasets):
            raise data_mod.DataError(f"{spec}: no usable samples in this data folder")


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available")
    return device


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and export per ``cfg``; returns the metrics written to ``OUT/metrics.json`` (rank 0)."""
    from natix_miner.training import checkpoint as ckpt

    dist_env = DistEnv.from_env()
    device = setup(dist_env, _resolve_device(cfg.device))
    out = Path(cfg.out)
    try:
        ckpt.seed_everything(cfg.seed)
        data_mod, splits_mod, metrics_mod = data_modules()
        samples = data_mod.scan_data(cfg.data, weights=cfg.data_weight or None, min_confidence=cfg.min_confidence)
        check_data(samples, cfg.data, data_mod)
        api = _api(data_mod, metrics_mod)
        t0 = time.perf_counter()
        if cfg.cv_folds > 1:
            result = _cross_validate(cfg, samples, splits_mod, api, dist_env, device, out)
        else:
            train_all, test = splits_mod.grouped_split(samples, cfg.test_frac, cfg.seed)
            result = _train_one(cfg, train_all, test, splits_mod, api, dist_env, device, out, export=True)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["device"] = device
        result["world_size"] = dist_env.world_size
        if dist_env.main:
            (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json))
            logger.info("wrote {} (test MCC@50/50 {})", out / "metrics.json", result.get("mcc_balanced"))
        barrier(dist_env)
        return result
    finally:
        teardown()


def _json(v: Any) -> Any:
    return float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else str(v)


def _api(data_mod, metrics_mod):
    from natix_miner.training.loop import DataAPI

    unreadable = (OSError, ValueError, getattr(data_mod, "ImageUnreadable", ValueError))
    return DataAPI(load_image=data_mod.load_image, sampling_weights=data_mod.sampling_weights,
                   best_threshold=metrics_mod.best_threshold, evaluate_scores=metrics_mod.evaluate_scores,
                   unreadable=unreadable)


def _scores(model, samples, cfg, api, device):
    from natix_miner.training.loop import predict_logits, transform_spec

    return predict_logits(model, samples, transform_spec(cfg, model), api, cfg, device)


def _train_one(cfg: TrainConfig, train_all, test, splits_mod, api, dist_env: DistEnv, device: str, run_dir: Path,
               *, export: bool) -> dict[str, Any]:
    """Fit on ``train_all`` (minus a validation split), fit T and the threshold on it, score ``test``."""
    from natix_miner.training.export import (
        calibrated,
        fit_temperature,
        profile_snippet,
        write_export,
    )
    from natix_miner.training.loop import fit
    from natix_miner.training.models import build_model

    train, val = splits_mod.grouped_split(train_all, cfg.val_frac, cfg.seed + 1)
    if len({s.label for s in train}) < 2:
        from natix_miner.training.loop import TrainingError

        raise TrainingError("the training split lacks a class; lower --val-frac/--test-frac or add data")
    logger.info("{}: {} train, {} validation, {} test samples", run_dir, len(train), len(val), len(test))
    model = build_model(cfg.model, pretrained=cfg.pretrained, image_size=cfg.image_size)
    res = fit(cfg, model, train, val, run_dir, api, dist_env, device)
    if not dist_env.main:
        return {}
    model.load_state_dict(res.best_state)
    model.eval()
    temperature, threshold, val_skipped = 1.0, 0.5, []
    if val:
        z_val, kept_val, val_skipped = res.best_val or _scores(model, val, cfg, api, device)
        y_val = np.array([s.label for s in kept_val])
        temperature = fit_temperature(z_val, y_val)
        if len(set(y_val.tolist())) == 2:
            threshold = float(api.best_threshold(y_val, calibrated(z_val, temperature)))
    out: dict[str, Any] = {}
    z_test, kept_test, test_skipped = _scores(model, test, cfg, api, device)
    if kept_test:
        y = np.array([s.label for s in kept_test])
        out = api.evaluate_scores(y, calibrated(z_test, temperature), threshold,
                                  sources=[s.source for s in kept_test],
                                  conditions=[getattr(s, "condition", "real") for s in kept_test])
    else:
        out = {"n": 0, "mcc": None, "mcc_balanced": None, "accuracy": None, "auc": None,
               "note": "no test split (test_frac 0 or too few groups)"}
    out.update({"threshold": threshold, "temperature": temperature, "split": "test",
                "n_train": len(train), "n_val": len(val), "n_test": len(test),
                "skipped": {"train": len(res.skipped), "val": len(val_skipped), "test": len(test_skipped),
                            "keys": sorted(set(res.skipped) | set(val_skipped) | set(test_skipped))[:100]},
                "best_val_mcc_balanced": res.best_metric, "best_epoch": res.best_epoch + 1,
                "epochs_run": res.epochs_run, "steps": res.step, "stopped_early": res.stopped_early,
                "history": res.history})
    if export:
        card = {"data": list(cfg.data), "metrics": {k: out.get(k) for k in ("n", "mcc", "mcc_balanced", "accuracy",
                                                                              "auc", "reward")},
                "training": cfg.model_dump(exclude={"out", "resume", "debug_keys"}),
                "metrics_split": "grouped held-out test split, never used for threshold or temperature"}
        folder = write_export(Path(cfg.out) / "model", model, resize=cfg.resize, temperature=temperature,
                              threshold=threshold, card=card)
        print(f"# profile snippet for {folder}\n{profile_snippet(folder)}")
    return out


def _cross_validate(cfg: TrainConfig, samples, splits_mod, api, dist_env, device, out: Path) -> dict[str, Any]:
    """:func:`natix_miner.training.cv.nested_cv` with ``inner="holdout"``: per outer fold one fit on the training
    part minus a grouped carve-out of ``val_frac``; the carve-out early-stops and picks the threshold."""
    from natix_miner.training.cv import ViewScores, nested_cv
    from natix_miner.training.loop import fit
    from natix_miner.training.models import build_model

    calls = {"n": 0}
    skipped_keys: set[str] = set()

    def fit_predict(train, eval_sets):
        i = calls["n"]
        calls["n"] += 1
        fold_dir = out / "cv" / f"fold{i}"
        done = fold_dir / "scores.json"
        if cfg.resume and done.is_file():
            logger.info("fold {}: done before ({}), reusing its scores", i, done)
            got = json.loads(done.read_text())
            return [ViewScores(g["rows"], ["full"] * len(g["rows"]), g["scores"]) for g in got]
        fold_cfg = cfg.model_copy(update={"out": str(fold_dir), "wandb_project": None})
        val = eval_sets[0] if len(eval_sets) > 1 else []
        model = build_model(cfg.model, pretrained=cfg.pretrained, image_size=cfg.image_size)
        res = fit(fold_cfg, model, train, val, fold_dir, api, dist_env, device)
        got = []
        if dist_env.main:
            model.load_state_dict(res.best_state)
            skipped_keys.update(res.skipped)
            for j, part in enumerate(eval_sets):
                reuse = j == 0 and val and res.best_val is not None  # the carve-out, scored when it was best
                z, kept, sk = res.best_val if reuse else _scores(model, part, cfg, api, device)
                skipped_keys.update(sk)
                pos = {s.key: j for j, s in enumerate(part)}
                got.append({"rows": [pos[s.key] for s in kept], "scores": (1 / (1 + np.exp(-z))).tolist()})
            fold_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps(got))
        got = broadcast(dist_env, got)
        return [ViewScores(g["rows"], ["full"] * len(g["rows"]), g["scores"]) for g in got]

    result = nested_cv(samples, fit_predict, folds=cfg.cv_folds, repeats=cfg.cv_repeats, seed=cfg.seed,
                       inner="holdout", holdout_frac=cfg.val_frac or 0.2)
    report = result.report(samples)
    final_cfg = cfg.model_copy(update={"test_frac": 0.0})
    final = _train_one(final_cfg, samples, [], splits_mod, api, dist_env, device, out / "final", export=True)
    if not dist_env.main:
        return {}
    pooled = dict(report["metrics"])
    card_path = out / "model" / "model_card.json"  # the exported model's card carries the CV metrics
    card = json.loads(card_path.read_text())
    card["metrics"] = {k: pooled.get(k) for k in ("n", "mcc", "mcc_balanced", "accuracy", "auc", "reward")}
    card["metrics_split"] = (f"nested grouped {cfg.cv_folds}-fold CV x {cfg.cv_repeats} of the same recipe "
                             "(out-of-fold, mean over repeats); the exported "
                             "model is the final fit on all data but its validation split")
    card_path.write_text(json.dumps(card, indent=2, default=_json))
    pooled.update({"split": f"nested grouped {cfg.cv_folds}-fold CV x {cfg.cv_repeats} repeats "
                            f"(natix_miner.training.cv, inner holdout of "
                            f"{cfg.val_frac or 0.2}): out-of-fold scores, each fold's threshold from its carve-out",
                   "cv": {k: v for k, v in report.items() if k != "metrics"},
                   "threshold": final.get("threshold"), "temperature": final.get("temperature"),
                   "skipped": {"cv": len(skipped_keys), "final": final.get("skipped"),
                               "keys": sorted(skipped_keys)[:100]},
                   "final_model": {k: final.get(k) for k in ("threshold", "temperature", "n_train", "n_val",
                                                             "best_val_mcc_balanced", "epochs_run", "steps",
                                                             "skipped", "history")}})
    return pooled
