#!/usr/bin/env python
"""Benchmark the cascade served on Ray Serve against in process, on this machine (JSON).

Per-request overhead of ``--engine.remote`` vs in process with the same profile (p50, p99; also
for a zero-cost fake model), and a burst of 10 to each of two miners sharing one service
(``--baseline``: also two miners that each load the profile). See natix_miner/serve/bench.py.

    nice -n 10 .venv/bin/python scripts/bench_serve.py --out reports/bench_serve.json --baseline
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="profile to serve (default: configs/lite-cpu.yaml)")
    ap.add_argument("--requests", type=int, default=60, help="sequential requests per engine for the overhead")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="bursts of 10 per miner (after one warm-up burst)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--baseline", action="store_true", help="also two miners loading the profile in process")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from natix_miner.serve import bench

    report = bench.run(a.profile, a.requests, a.warmup, a.rounds, a.num_cpus, a.baseline)
    report["command"] = " ".join(["scripts/bench_serve.py", *(argv if argv is not None else sys.argv[1:])])
    bench.write(report, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
