#!/usr/bin/env python
"""Latency of each tier's real architectures (random weights) at batch 1: 224 px, full frame, native size.

    .venv/bin/python scripts/bench_gpu.py --out reports/bench_gpu.json            # GPU (bf16), ~minutes
    .venv/bin/python scripts/bench_gpu.py --only qwen2_5_vl_7b,dinov2_l --iters 50
    .venv/bin/python scripts/bench_gpu.py --device cpu --tiny --out /tmp/b.json   # smoke check, seconds

No weights are downloaded: every model is built from an embedded, approximate config of a
representative checkpoint (``AutoConfig.from_pretrained`` would need the hub) with random weights,
which gives the right FLOPs and memory traffic, hence the right latency. Per model and input size:
``warmup`` untimed calls, then ``iters`` timed calls (CUDA synchronised), p50 / p95 / mean in ms.

Sizes: ``224`` (a validator-style crop), ``full`` (a dash-cam frame, default 1360×800; rounded down to
the model's stride), ``native`` (the size the model's processor resizes to, when fixed: detectors
640, OWLv2 960, DINOv2 / Depth Anything 518). VLMs run the ``vlm`` adapter's transformers engine
end to end for the yes/no answer (processor + one forward + top-k), and also report decode speed
(ms per generated token, the number the thinking tier's budget needs).

``--tiny`` shrinks every config (and the full frame to 320×192) so the whole script runs on a CPU in
seconds; the JSON then measures nothing useful except that the script works.

Output JSON: device name, torch / transformers versions, dtype, and per model: description,
params (millions), peak memory (MB, CUDA only), build seconds, and per size ``{size: [h, w], p50_ms,
p95_ms, mean_ms, n}``; failures go to ``errors`` (``--strict``: exit 1 on any).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.bench_gpu import MODELS  # noqa: E402 - light: torch is imported when a model is built


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke check)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(MODELS)}")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; tiny: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 3; tiny: 1)")
    ap.add_argument("--full-res", default=None, help="full frame WxH (default 1360x800; tiny: 320x192)")
    ap.add_argument("--sizes", default="224,full,native", help="which sizes to time (224, full, native)")
    ap.add_argument("--no-decode", action="store_true", help="skip the VLM decode-speed measurement")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    ap.add_argument("--out", default=None, help="JSON output path (default: print only)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when any model fails")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from natix_miner.ops.bench_gpu import run

    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
