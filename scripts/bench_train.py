#!/usr/bin/env python
"""Training images/s for a backbone, image size and batch size (JSON on stdout; see docs/training.md).

    scripts/bench_train.py --model lite0 --image-size 224 --batch-size 16
    scripts/bench_train.py --preset cpu                    # the CPU numbers in docs/training.md
    scripts/bench_train.py --preset gpu --device cuda      # prepared one-H100 run (ConvNeXtV2-B, ViT-B/14 reg)
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--preset", choices=("cpu", "gpu"), default=None, help="run the preset list instead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--freeze-backbone", action="store_true")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    from natix_miner.training.bench import (
        CPU_PRESET,
        GPU_PRESET,
        bench_one,
        environment,
    )

    configs = {"cpu": CPU_PRESET, "gpu": GPU_PRESET}.get(args.preset or "", [
        {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size}])
    results = []
    for c in configs:
        r = bench_one(**c, device=args.device, steps=args.steps, warmup=args.warmup,
                      freeze_backbone=args.freeze_backbone)
        print(json.dumps(r), file=sys.stderr)
        results.append(r)
    report = {"environment": environment(args.device), "results": results}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
