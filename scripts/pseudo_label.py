#!/usr/bin/env python
"""Pseudo-label unlabelled images with a profile (e.g. the VLM tiers) for training as soft targets.

    python scripts/pseudo_label.py --profile configs/h100x1.yaml --images recordings/images --out data/pseudo \\
        [--min-confidence 0.8] [--batch-size 16] [--devices cuda:0] [--report reports/pseudo.json]

The profile runs in process (CascadeEngine) or, for a profile whose models are remote (configs/remote-vlm.yaml,
an OpenAI-compatible endpoint), through that endpoint. OUT becomes a --data folder for scripts/train.py:
OUT/soft_labels.jsonl (file, prob, confidence, votes per model) and OUT/images/. Resumable. See docs/data-recipe.md.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.json_report import emit_json  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="engine profile YAML")
    ap.add_argument("--images", required=True, help="folder of unlabelled images (searched recursively)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-confidence", type=float, default=0.0,
                    help="keep images whose answer confidence max(p, 1-p) is at least this")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--link", default="hardlink", choices=["hardlink", "copy", "symlink"],
                    help="how images are placed under OUT/images (hardlink falls back to copy)")
    ap.add_argument("--deadline-s", type=float, default=None, help="per-batch deadline (default: none, all tiers)")
    ap.add_argument("--tiers", default=None, help="only these tiers of the profile (comma list, e.g. the VLM tiers)")
    ap.add_argument("--all-tiers", action="store_true", help="no early exit: every selected tier votes on every image")
    ap.add_argument("--devices", default=None, help="e.g. cpu or cuda:0,cuda:1")
    ap.add_argument("--allow-restricted", action="store_true")
    ap.add_argument("--report", default=None, help="write a JSON report here")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from natix_miner.datagen.pseudo import PseudoConfig, pseudo_label, report_dict

    try:
        cfg = PseudoConfig(images=a.images, out=a.out, profile=a.profile, min_confidence=a.min_confidence,
                           batch_size=a.batch_size, link=a.link, deadline_s=a.deadline_s,
                           allow_restricted=a.allow_restricted, all_tiers=a.all_tiers,
                           tiers=[t.strip() for t in a.tiers.split(",") if t.strip()] if a.tiers else None,
                           devices=[d.strip() for d in a.devices.split(",")] if a.devices else None)
        rep = report_dict(pseudo_label(cfg, progress=not a.no_progress), cfg)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"pseudo_label: {e}") from None
    emit_json(rep, a.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
