#!/usr/bin/env python
"""Labelled synthetic training images made the validators' way (SDXL i2i at strength 0.7 + t2i from label prompts).

    python scripts/synthesize.py --from data/natix --out data/synth --i2i 2000 --t2i 2000 \\
        [--model-id stabilityai/stable-diffusion-xl-base-1.0] [--batch-size 4] [--device cuda] [--dtype float16] \\
        [--caption-model Salesforce/blip2-opt-2.7b-coco --rewrite-model meta-llama/Llama-3.1-8B-Instruct]

Writes OUT/roadwork/, OUT/no_roadwork/, OUT/SOURCES.tsv (kind, parent, generator, generator licence per image) and
OUT/manifest.jsonl; a rerun with the same arguments resumes. --from takes the training pipeline's data specs
(labelled folders or NATIX parquet folders). Prompts come from label templates unless --caption-model is given.
See docs/data-recipe.md.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.json_report import emit_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="inputs", action="append", default=[], metavar="DATA",
                    help="real labelled data (folder or parquet folder); repeatable; needed for --i2i")
    ap.add_argument("--out", required=True)
    ap.add_argument("--i2i", type=int, default=0, help="image-to-image images to make (labels 50/50)")
    ap.add_argument("--t2i", type=int, default=0, help="text-to-image images to make (labels 50/50)")
    ap.add_argument("--model-id", default=None, help="diffusers SDXL model id or local folder (default: SDXL base 1.0)")
    ap.add_argument("--generator-license", default=None, help="licence of a --model-id not known to the tool")
    ap.add_argument("--strength", type=float, default=0.7)
    ap.add_argument("--guidance", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--size", type=int, default=1024, help="t2i height and width")
    ap.add_argument("--max-side", type=int, default=1024, help="i2i inputs with a larger side become SIDE x SIDE")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", default="auto", help="auto (float16 on CUDA) | float16 | bfloat16 | float32")
    ap.add_argument("--caption-model", default=None, help="image-to-text model: prompts from captions")
    ap.add_argument("--rewrite-model", default=None, help="text-generation model that rewrites captions per label")
    ap.add_argument("--report", default=None, help="write a JSON report here")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.i2i and not a.inputs:
        raise SystemExit("--i2i needs real input images: --from DATA")
    if not (a.i2i or a.t2i):
        raise SystemExit("nothing to do: give --i2i N and/or --t2i N")
    from natix_miner.datagen.inputs import real_images
    from natix_miner.datagen.prompts import make_prompt_source
    from natix_miner.datagen.synth import SDXL_BASE, SynthConfig, Synthesizer, report_dict

    cfg = SynthConfig(out=a.out, model_id=a.model_id or SDXL_BASE, n_i2i=a.i2i, n_t2i=a.t2i, strength=a.strength,
                      guidance=a.guidance, steps=a.steps, t2i_size=a.size, i2i_max_side=a.max_side,
                      batch_size=a.batch_size, seed=a.seed, device=a.device, dtype=a.dtype,
                      generator_license=a.generator_license)
    reals = real_images(a.inputs) if a.inputs else []
    syn = Synthesizer(cfg)
    syn.prompts = make_prompt_source(a.caption_model, a.rewrite_model, device=syn.device)
    rep = report_dict(syn.run(reals, progress=not a.no_progress), cfg)
    emit_json(rep, a.report)
    return 0 if rep["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
