#!/usr/bin/env python
"""Fetch every model a profile needs into the local caches, then check each one loads OFFLINE.

    python scripts/download_models.py --profile configs/h100x1.yaml [--only NAME ...] \
        [--allow-restricted] [--device cpu|cuda:0] [--include-disabled] [--skip-download | --verify-only]
        [--skip-verify] [--verify-max-mb MB] [--json rows.json]

1. Download (needs internet; the offline switches HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / YOLO_OFFLINE
   are cleared for this step only):
   - hub ids (``model:`` of transformers / vLLM models, and of nested specs such as a depth_check's
     ``options.detector``) -> ``huggingface_hub.snapshot_download`` into the Hugging Face cache, with
     its tqdm progress bars (TensorFlow / Flax / ONNX / Core ML files are skipped);
   - ultralytics release assets (``models/yoloe-26x-seg.pt``, ``models/yolo11x.pt``, ...) ->
     ultralytics' own ``attempt_download_asset`` to exactly the path the profile names (relative
     paths land under the repository root); YOLOE prompt models also fetch their text encoder;
   - local files that no registry holds (fine-tunes, heads, exported engines) are only checked;
   - ``engine: openai`` VLMs run remotely and need nothing here.
   Models whose licence is restricted (``gated: true`` or ``noncommercial: true``) are skipped unless
   ``--allow-restricted`` is given; gated hub repos also need the licence accepted on the hub page and
   a token (``hf auth login`` or ``HF_TOKEN``).
2. Verify, in a child process with the offline switches set (so nothing can download; ``--verify-only``
   runs just this step, in-process): every
   artefact must be in the cache / on disk, then each model is built with the registry and
   ``load(--device)``-ed, unless it is a vLLM engine or its ``memory_mb`` is above ``--verify-max-mb``
   (default 4000 MB on CPU), in which case only its files are checked ("files-ok").

A table ends the run: name, type, model, status (ok / files-ok / missing / failed / skipped) and the
reason. The exit status is 1 when any model is missing or failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="profile YAML (e.g. configs/h100x1.yaml)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these model names")
    ap.add_argument("--allow-restricted", action="store_true",
                    help="also fetch/verify gated and non-commercial models (read their licences first)")
    ap.add_argument("--device", default="cpu", help="device for the offline load check (default cpu)")
    ap.add_argument("--include-disabled", action="store_true", help="also handle disabled models")
    ap.add_argument("--skip-download", action="store_true", help="only verify what is already local")
    ap.add_argument("--skip-verify", action="store_true", help="only download")
    ap.add_argument("--verify-only", action="store_true",
                    help="no download; verify in this process with the offline switches set")
    ap.add_argument("--no-table", action="store_true", help=argparse.SUPPRESS)  # the verification child
    ap.add_argument("--verify-max-mb", type=float, default=None,
                    help="load-check only models up to this memory_mb (default 4000 on cpu, unlimited on cuda)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from natix_miner.ops.download_models import run

    return run(parse_args(argv), cli=Path(__file__).resolve())


if __name__ == "__main__":
    raise SystemExit(main())
