#!/usr/bin/env python
"""Download the NATIX roadwork dataset (parquet) from the Hugging Face Hub, with progress and resume.

    huggingface-cli login                     # once (or: export HF_TOKEN=hf_...); accept the dataset terms
    python scripts/download_data.py --out data/natix-roadwork
    python scripts/train.py --data data/natix-roadwork --model lite0 --out runs/lite0

Run the same command again after an interruption: finished files are kept and partial ones resume.
Logic: natix_miner/training/download.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # runnable as a plain script from a checkout
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from natix_miner.training.download import DATASET

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", required=True, metavar="DIR", help="local folder for the dataset files")
    ap.add_argument("--repo", default=DATASET, help=f"dataset repository (default {DATASET})")
    ap.add_argument("--token", default=None, help="Hugging Face token (default: HF_TOKEN or the stored login)")
    ap.add_argument("--revision", default=None, help="branch, tag or commit")
    ap.add_argument("--include", action="append", default=None, metavar="GLOB",
                    help="only files matching GLOB (repeatable; default *.parquet, *.md, *.json)")
    ap.add_argument("--max-workers", type=int, default=8, help="parallel file downloads")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from natix_miner.training.download import (
        DownloadConfig,
        DownloadError,
        download_dataset,
    )

    args = parse_args(argv)
    cfg = DownloadConfig(out=args.out, repo_id=args.repo, token=args.token, revision=args.revision,
                         max_workers=args.max_workers)
    if args.include:
        cfg.include = args.include
    try:
        download_dataset(cfg)
    except DownloadError as e:
        print(f"download_data: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
