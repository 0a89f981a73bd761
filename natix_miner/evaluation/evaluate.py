"""Offline evaluation of a profile, in process, on a labelled folder.

For each image: optionally apply what a validator does to it (``condition``: ``none`` = the file as
is, ``fullres`` = JPEG q75 at full resolution (2026-05 validators), ``aug-2026-01`` = the ported
augmentation at 224 px then JPEG q75), run the engine, and collect the answer, every model's vote and
the latency. The report has the validator-style metrics for the cascade and for each model, latency
percentiles, tier exit rates, and (with ``out_dir``) plots and a folder of misclassified images.

Latency is per image and does not depend on ``batch_size``: the wall time of each engine call divided by
the number of images it answered (at ``batch_size`` 1, exactly one request's latency). A model's
per-image latency is its call's time divided by the images of that call. (The time from submission to
answer, which includes waiting behind the rest of the batch, is reported apart as
``in_batch_latency_ms``: it grows with the batch size and is not what a validator's single request sees.)
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
DEFAULT_CONDITION = "fullres"  # what validators send today (JPEG q75 at full resolution); evaluate and calibrate
LATENCY_BASIS = "per image: wall time of each engine call / its images"


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
    latencies: dict[str, float] | None = None  # model -> ms per image (its call's time / the call's images)
    level: int | None = None
    in_batch_latency_ms: float | None = None  # submission to answer, including waiting behind batch-mates


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


def per_image_model_latencies(results: list) -> list[dict[str, float]]:
    """Each image's per-model latency: the model call's time divided by the images of that call.

    The engine gives every image of one model call the call's whole time; the images of one call are the
    votes of that model in this batch that carry the very same latency value."""
    calls = Counter((v.model, v.latency_ms) for r in results for v in r.votes)
    return [{v.model: v.latency_ms / calls[(v.model, v.latency_ms)] for v in r.votes} for r in results]


def run_evaluation(images_dir: str | Path, profile_path: str | Path | None, *, condition: str = DEFAULT_CONDITION,
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
            t0 = time.monotonic()
            results = engine.infer_batch_sync([p[0] for p in prepared], keys=[p[1] for p in prepared],
                                              deadline_s=profile.deadline_s)
            per_image_ms = (time.monotonic() - t0) * 1000.0 / max(1, len(chunk))
            model_ms = per_image_model_latencies(results)
            for it, (_, _, level), r, lat in zip(chunk, prepared, results, model_ms):
                records.append(EvalRecord(
                    path=str(it.path), label=it.label, prediction=float(r.prediction), raw_p=r.raw_p,
                    latency_ms=per_image_ms, exit_reason=r.exit_reason, tiers_used=list(r.tiers_used),
                    votes={v.model: v.p for v in r.votes}, latencies=lat, level=level,
                    in_batch_latency_ms=float(r.latency_ms)))
    finally:
        if own_engine:
            engine.close()
    wall = time.monotonic() - t_start
    if records_out is not None:
        records_out.extend(records)
    report = summarize(records, profile_name=profile.name, condition=condition, wall_s=wall,
                       threshold=profile.calibration.threshold, temperature=profile.calibration.temperature)
    report["batch_size"] = batch_size
    report["threshold"] = profile.calibration.threshold
    report["deadline_s"] = profile.deadline_s
    overlap = training_overlap(profile, records)
    if overlap:
        report["training_overlap"] = overlap
        for model, o in overlap.items():
            logger.warning(f"{o['n']} of {len(records)} evaluated images were in the training set of {model} "
                           f"({o['provenance']}): its metrics on them are optimistic (use --split {o['provenance']})")
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


def summarize(records: list[EvalRecord], *, profile_name: str, condition: str, wall_s: float,
              threshold: float = 0.5, temperature: float = 1.0) -> dict:
    """Metrics of the cascade's answers and of each model's vote, the latter at the profile's calibration
    threshold (the vote remapped as the engine remaps the pooled probability), not at a raw 0.5."""
    from natix_miner.engine.consensus import calibrate
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
        m = binary_metrics(ys, [calibrate(p, threshold, temperature) for p in ps])
        m["coverage"] = len(ys) / max(1, len(records))
        m["threshold"] = threshold
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
        "latency_basis": LATENCY_BASIS,
        "in_batch_latency_ms": percentiles([r.in_batch_latency_ms for r in records
                                            if r.in_batch_latency_ms is not None]),
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


def _training_split(prov_path: Path) -> tuple[set[str], set[str], set[str]]:
    """From a head's provenance.json: (``label_dir/file`` of its training images found on this machine,
    ``label_dir/file`` of its held-out images, names of its data folders)."""
    from natix_miner.evaluation.dataset import IMAGE_SUFFIXES, LABEL_DIRS

    prov = json.loads(prov_path.read_text())
    held = {"/".join(str(k).split("/")[-2:]) for k in (prov.get("split") or {}).get("heldout_items") or []}
    seen: set[str] = set()
    names: set[str] = set()
    for d in prov.get("data") or []:
        if d.get("name"):
            names.add(str(d["name"]))
        root = Path(str(d.get("path", "")))
        for lab in LABEL_DIRS:
            if (root / lab).is_dir():
                seen |= {f"{lab}/{f.name}" for f in (root / lab).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES}
    return seen - held, held, names


def training_overlap(profile, records: list[EvalRecord]) -> dict:
    """Per model with a provenance.json beside its head: how many evaluated images were in its training set.

    Training set = the data folders named in provenance.json minus ``split.heldout_items``, matched by
    ``label_dir/file``; when those folders are not on this machine, an image counts when its folder has a
    training folder's name and it is not held out."""
    from natix_miner.neuron.startup import looks_local, weight_refs

    out: dict = {}
    for _, spec in profile.models():
        for _, ref in weight_refs(spec):
            if not looks_local(ref):
                continue
            local = Path(profile.resolve_path(ref)).expanduser()
            prov = next((c for c in (local / "provenance.json", local.parent / "provenance.json") if c.is_file()),
                        None)
            if prov is None:
                continue
            try:
                train, held, names = _training_split(prov)
            except (OSError, ValueError, AttributeError) as e:
                logger.warning(f"{prov}: unreadable provenance ({e}); training overlap not checked")
                break
            hits = []
            for r in records:
                key = "/".join(Path(r.path).parts[-2:])
                folder = Path(r.path).parent.parent.name
                if key in train or (not train and folder in names and key not in held):
                    hits.append(r.path)
            if hits:
                out[spec.name] = {"n": len(hits), "provenance": str(prov), "examples": hits[:5]}
            break
    return out


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
        plots.latency_histogram([r.latency_ms for r in records], out / "latency.png",
                                deadline_ms=1000.0 * report["deadline_s"] if report.get("deadline_s") else None,
                                basis=report.get("latency_basis"))
        plots.score_histogram(labels, preds, out / "scores.png", threshold=0.5,
                              note=f"profile threshold {report.get('threshold', 0.5):g} -> 0.5")
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
