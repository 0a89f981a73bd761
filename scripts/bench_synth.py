#!/usr/bin/env python
"""Synthesis throughput (images/s) for SDXL image-to-image as the validators run it (strength 0.7, 25 steps,
guidance 8.0, negative prompt), at several input sizes. JSON on stdout / --out.

Preset for one H100/H200 (prepared; run it when a GPU is lent):

    python scripts/bench_synth.py --preset h100 --out reports/bench_synth_h100.json

= --device cuda --dtype float16 --sizes 1024,512 --batch-size 4 --steps 25 --batches 5 --warmup 1, with the real
weights (--model-id, default stabilityai/stable-diffusion-xl-base-1.0, from the Hugging Face cache) or, on a machine
without them, --random-init full: the SDXL base architecture with random weights (the same compute, so the same
images/s; the images are noise). CPU with --random-init tiny is a smoke test only (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natix_miner.ops.json_report import emit_json  # noqa: E402

PRESETS = {"h100": dict(device="cuda", dtype="float16", sizes="1024,512", batch_size=4, steps=25, batches=5,
                        warmup=1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--model-id", default=None, help="real SDXL weights (default: SDXL base 1.0)")
    ap.add_argument("--random-init", choices=["full", "tiny"], default=None,
                    help="build the architecture with random weights instead of loading weights")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--sizes", default="1024,512", help="square i2i input sizes")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batches", type=int, default=5, help="timed batches per size")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.preset:
        for k, v in PRESETS[a.preset].items():
            setattr(a, k, v)
    import numpy as np
    import torch
    from PIL import Image

    from natix_miner.datagen.inputs import RealImage
    from natix_miner.datagen.sdxl_arch import build_random_sdxl
    from natix_miner.datagen.synth import (
        SDXL_BASE,
        Job,
        SynthConfig,
        Synthesizer,
        load_pipelines,
    )

    cfg = SynthConfig(out=os.devnull, model_id=a.model_id or SDXL_BASE, steps=a.steps, batch_size=a.batch_size,
                      device=a.device, dtype=a.dtype)
    syn = Synthesizer(cfg)
    t0 = time.perf_counter()
    if a.random_init:
        i2i, t2i = build_random_sdxl(a.random_init, device=syn.device, dtype=syn.dtype)
    else:
        i2i, t2i = load_pipelines(cfg.model_id, syn.device, syn.dtype)
    load_s = time.perf_counter() - t0
    syn.i2i, syn.t2i = i2i, t2i
    i2i.set_progress_bar_config(disable=True)
    cuda = syn.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    rng = np.random.default_rng(0)
    results = {}
    for size in [int(s) for s in a.sizes.split(",") if s.strip()]:
        imgs = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(a.batch_size)]
        ref = RealImage(key="bench", label=1, load=lambda: None)
        jobs = [Job(id=f"b{i}", kind="i2i", label=i % 2, seed=i, parent=ref) for i in range(a.batch_size)]
        prompts = syn.prompts.prompts([j.label for j in jobs], [None] * len(jobs), random.Random(0))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(a.warmup):
            syn._call("i2i", jobs, prompts, imgs)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.batches):
            syn._call("i2i", jobs, prompts, imgs)
        sync()
        dt = time.perf_counter() - t0
        n = a.batches * a.batch_size
        results[str(size)] = {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 4),
                              "s_per_image": round(dt / n, 4),
                              "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2) if cuda else None}
    out = {
        "what": "SDXL img2img throughput, validator settings (strength 0.7, guidance 8.0, negative prompt)",
        "weights": f"random-init {a.random_init} architecture" if a.random_init else cfg.model_id,
        "device": syn.device, "dtype": str(syn.dtype).replace("torch.", ""),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "batch_size": a.batch_size, "steps": a.steps, "strength": cfg.strength, "load_s": round(load_s, 2),
        "results": results,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    if not cuda:
        out["note"] = "CPU run: a smoke test of the benchmark, not a throughput number"
    emit_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
