"""Offline evaluation of a profile, in process, on a labelled folder.

For each image: optionally apply what a validator does to it (``condition``: ``none`` = the file as
is, ``fullres`` = JPEG q75 at full resolution (2026-05 validators), ``aug-2026-01`` = the ported
augmentation at 224 px then JPEG q75), run the engine, and collect the answer, every model's vote and
the latency. The report has the validator-style metrics for the cascade and for each model, latency
percentiles, tier exit rates, and (with ``out_dir``) plots and a folder of misclassified images.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from loguru import logger

from natix_miner.evaluation.dataset import LabelledImage, list_labelled, source_of
from natix_miner.evaluation.metrics import binary_metrics, percentiles

CONDITIONS = ("none", "fullres", "aug-2026-01")


@dataclass
class EvalRecord:
    path: str
    label: int
    prediction: float
    raw_p: float | None
    latency_ms: float
    exit_reason: str
    tiers_used: list[str]
    votes: dict[str, float | None]
    latencies: dict[str, float] | None = None  # model -> ms
    level: int | None = None


def prepare_image(path: Path, condition: str, rng: np.random.Generator):
    """Load ``path`` and turn it into what a validator would send, decoded back to a PIL image."""
    from natix_miner.imaging import decode_b64_image

    raw = path.read_bytes()
    level = None
    if condition == "none":
        b64 = base64.b64encode(raw).decode()
    else:
        from PIL import Image

        img = Image.open(io.BytesIO(raw)).convert("RGB")
        if condition == "fullres":
            from natix_miner.validator.augment import encode_like_validator

            b64 = encode_like_validator(img)
        elif condition == "aug-2026-01":
            from natix_miner.validator.augment import augment, encode_like_validator

            res = augment(img, rng=rng)
            level = res.level
            b64 = encode_like_validator(res.image)
        else:
            raise ValueError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    decoded = decode_b64_image(b64)
    return decoded.image, decoded.sha256, level


def run_evaluation(images_dir: str | Path, profile_path: str | Path | None, *, condition: str = "none",
                   records_out: list | None = None,
                   batch_size: int = 8, limit_per_class: int | None = None, seed: int = 0,
                   allow_restricted: bool = False, devices: list[str] | None = None,
                   out_dir: str | Path | None = None, engine=None, only: set[str] | None = None) -> dict:
    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.profile import load_profile

    if engine is not None:
        profile = engine.profile
    elif hasattr(profile_path, "tiers"):  # an already loaded (possibly modified) Profile
        profile = profile_path
    else:
        profile = load_profile(profile_path)
    items: list[LabelledImage] = list_labelled(images_dir, limit_per_class, only)
    rng = np.random.default_rng(seed)
    own_engine = engine is None
    if own_engine:
        engine = CascadeEngine(profile, allow_restricted=allow_restricted, devices=devices)
        engine.start()
    records: list[EvalRecord] = []
    t_start = time.monotonic()
    try:
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            prepared = [prepare_image(it.path, condition, rng) for it in chunk]
            results = engine.infer_batch_sync([p[0] for p in prepared], keys=[p[1] for p in prepared],
                                              deadline_s=profile.deadline_s)
            for it, (_, _, level), r in zip(chunk, prepared, results):
                records.append(EvalRecord(
                    path=str(it.path), label=it.label, prediction=float(r.prediction), raw_p=r.raw_p,
                    latency_ms=float(r.latency_ms), exit_reason=r.exit_reason, tiers_used=list(r.tiers_used),
                    votes={v.model: v.p for v in r.votes},
                    latencies={v.model: v.latency_ms for v in r.votes}, level=level))
    finally:
        if own_engine:
            engine.close()
    wall = time.monotonic() - t_start
    if records_out is not None:
        records_out.extend(records)
    report = summarize(records, profile_name=profile.name, condition=condition, wall_s=wall)
    report["images"] = str(images_dir)
    from natix_miner.evaluation.conditions import per_condition  # SOURCES.tsv `kind`

    if any(it.prob is not None for it in items):  # soft_labels.jsonl: the ground truth is itself a model's guess
        report["labels"] = "pseudo"
        report["labels_note"] = ("pseudo labels from soft_labels.jsonl (label = prob >= 0.5), not human labels: the "
                                 "metrics measure agreement with the labelling profile")
        report["per_condition"] = {"pseudo": binary_metrics([r.label for r in records],
                                                            [r.prediction for r in records])}
    else:
        report["labels"] = "hard"
    if (pc := per_condition(images_dir, records)) is not None:
        report["per_condition"] = pc
    report["profile"] = str(getattr(profile, "source", profile_path))
    if out_dir is not None:
        write_outputs(report, records, Path(out_dir))
    return report


def summarize(records: list[EvalRecord], *, profile_name: str, condition: str, wall_s: float) -> dict:
    labels = [r.label for r in records]
    preds = [r.prediction for r in records]
    overall = binary_metrics(labels, preds)
    per_model: dict[str, dict] = {}
    by_model: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for r in records:
        for name, p in r.votes.items():
            if p is not None:
                by_model[name][0].append(r.label)
                by_model[name][1].append(p)
    for name, (ys, ps) in sorted(by_model.items()):
        m = binary_metrics(ys, ps)
        m["coverage"] = len(ys) / max(1, len(records))
        per_model[name] = m
    exits = Counter(r.tiers_used[-1] if r.tiers_used else "none" for r in records)
    reasons = Counter(r.exit_reason for r in records)
    lat = [r.latency_ms for r in records]
    report = {
        "profile_name": profile_name,
        "condition": condition,
        **{k: overall[k] for k in ("n", "mcc", "accuracy", "auc")},
        "confusion": {k: overall[k] for k in ("tp", "fp", "tn", "fn")},
        "mcc_raw": overall["mcc_raw"],
        **{k: overall[k] for k in ("mcc_balanced", "tpr", "tnr")},
        "per_model": per_model,
        "latency_ms": {**percentiles(lat), "mean": float(np.mean(lat)) if lat else None},
        "tier_exit_rates": {k: v / max(1, len(records)) for k, v in exits.items()},
        "exit_reasons": dict(reasons),
        "wall_s": wall_s,
    }
    levels = sorted({r.level for r in records if r.level is not None})
    if levels:
        report["per_level"] = {
            str(lv): binary_metrics([r.label for r in records if r.level == lv],
                                    [r.prediction for r in records if r.level == lv]) for lv in levels}
    by_source: dict[str, list[EvalRecord]] = defaultdict(list)
    for r in records:
        by_source[source_of(r.path)].append(r)
    if len(by_source) > 1:
        report["per_source"] = {src: binary_metrics([r.label for r in rs], [r.prediction for r in rs])
                                for src, rs in sorted(by_source.items())}
    return report


def write_outputs(report: dict, records: list[EvalRecord], out: Path) -> None:
    from natix_miner.evaluation import plots

    out.mkdir(parents=True, exist_ok=True)
    labels = [r.label for r in records]
    preds = [r.prediction for r in records]
    try:
        plots.reliability_diagram(labels, preds, out / "reliability.png")
        plots.roc_curve_plot(labels, preds, out / "roc.png", report.get("auc"))
        plots.confusion_plot({**report["confusion"], "mcc": report["mcc"], "accuracy": report["accuracy"]},
                             out / "confusion.png")
        plots.bar_plot(report["tier_exit_rates"], out / "tier_exits.png", "Exit tier")
        plots.latency_histogram([r.latency_ms for r in records], out / "latency.png")
    except Exception as e:  # plots are a convenience; the JSON is the result
        logger.warning(f"plotting failed: {e}")
    mis = out / "misclassified"
    if mis.exists():
        shutil.rmtree(mis)
    for r in records:
        if round(r.prediction) != r.label:
            d = mis / ("false_negative" if r.label == 1 else "false_positive")
            d.mkdir(parents=True, exist_ok=True)
            src = Path(r.path)
            shutil.copy2(src, d / f"{r.prediction:.3f}_{src.name}")
    (out / "records.jsonl").write_text("\n".join(json.dumps(r.__dict__) for r in records) + "\n")
