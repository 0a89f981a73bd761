#!/usr/bin/env python
"""Evaluate a profile in process on a labelled folder (roadwork/ and no_roadwork/ subfolders) or a
pseudo-labelled folder (soft_labels.jsonl from scripts/pseudo_label.py; labels = prob >= 0.5, reported as such).

    .venv/bin/python scripts/evaluate.py --images natix_miner/assets/samples --profile configs/lite-cpu.yaml \
        --report reports/eval.json [--condition fullres|none|aug-2026-01] [--plots]

Writes the JSON report (mcc, accuracy, n, auc, per-model metrics at the profile's threshold, per-image latency
percentiles, tier exits) and, with --plots, PNGs and a folder of misclassified images beside it. Latency is per
image whatever --batch-size: each engine call's wall time divided by its images. Warns when evaluated images
were in a head's training set (its provenance.json).
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    from natix_miner.evaluation.evaluate import CONDITIONS, DEFAULT_CONDITION

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True)
    ap.add_argument("--profile", default=None, help="profile YAML (default: configs/lite-cpu.yaml)")
    ap.add_argument("--report", required=True, help="output JSON path")
    ap.add_argument("--condition", default=DEFAULT_CONDITION, choices=CONDITIONS,
                    help="what a validator does to an image before sending it (fullres: today's validators)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per engine call (throughput only: "
                    "latency is reported per image)")
    ap.add_argument("--limit-per-class", type=int, default=None)
    ap.add_argument("--split", default=None, metavar="FILE",
                    help="evaluate only the images of a split: a head's provenance.json (its held-out items) "
                         "or a text file of <folder>/<label dir>/<file> keys")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plots", action="store_true", help="write PNG plots and misclassified images beside the report")
    ap.add_argument("--allow-restricted", action="store_true")
    ap.add_argument("--devices", default=None, help="e.g. cpu or cuda:0,cuda:1")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from natix_miner.evaluation.dataset import load_split
    from natix_miner.evaluation.evaluate import run_evaluation

    report_path = Path(a.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    out_dir = report_path.with_suffix("") if a.plots else None
    devices = [d.strip() for d in a.devices.split(",")] if a.devices else None
    rep = run_evaluation(a.images, a.profile, condition=a.condition, batch_size=a.batch_size,
                         limit_per_class=a.limit_per_class, seed=a.seed, allow_restricted=a.allow_restricted,
                         devices=devices, out_dir=out_dir, only=load_split(a.split) if a.split else None)
    if a.split:
        rep["split"] = a.split
    report_path.write_text(json.dumps(rep, indent=2))
    lat = rep["latency_ms"]
    print(f"{rep['profile_name']} on {a.images} ({a.condition}): n={rep['n']} MCC={rep['mcc']:.3f} "
          f"MCC@50/50={rep['mcc_balanced']:.3f} accuracy={rep['accuracy']:.3f} AUC={rep['auc'] if rep['auc'] is None else round(rep['auc'], 3)} "
          f"latency per image p50={lat['p50']:.1f} ms p95={lat['p95']:.1f} ms (batch wall / images, "
          f"--batch-size {a.batch_size})")
    for name, m in rep["per_model"].items():
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}"
        print(f"  {name} (its own vote at the profile's threshold {m['threshold']:g}, before consensus): "
              f"MCC={m['mcc']:.3f} acc={m['accuracy']:.3f} AUC={auc} coverage={m['coverage']:.2f}")
    for name, o in (rep.get("training_overlap") or {}).items():
        print(f"WARNING: {o['n']} of {rep['n']} images were in the training set of {name} ({o['provenance']}); "
              f"its numbers on them are optimistic: evaluate the held-out split with --split {o['provenance']}")
    for kind, m in (rep.get("per_condition") or {}).items():  # SOURCES.tsv kind: real | i2i | t2i | api
        print(f"  condition {kind}: n={m['n']} MCC={m['mcc']:.3f} accuracy={m['accuracy']:.3f}")
    if rep.get("labels") == "pseudo":
        print(f"  NOTE: {rep['labels_note']}")
    print(f"report: {report_path}" + (f", plots: {out_dir}" if out_dir else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
