#!/usr/bin/env python
"""Latency of the embedded CPU model alone (median of 20 single-image predicts per size), as JSON.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/bench_lite_cpu.py
"""
import json
import platform
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from natix_miner.models.registry import build_adapter  # noqa: E402
from natix_miner.profile import load_profile  # noqa: E402

p = load_profile("configs/lite-cpu.yaml")
spec = p.tiers[0].models[0]
a = build_adapter(spec, p)
a.load("cpu")
a.warmup()
out = {"model": spec.name, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()}, "median_ms": {}}
for size in [(224, 224), (1360, 800)]:
    im = Image.new("RGB", size, (120, 110, 100))
    ts = []
    for _ in range(20):
        t = time.perf_counter()
        a.predict([im])
        ts.append((time.perf_counter() - t) * 1000)
    out["median_ms"][f"{size[0]}x{size[1]}"] = round(statistics.median(ts), 1)
print(json.dumps(out, indent=2))
