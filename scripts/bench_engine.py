#!/usr/bin/env python
"""Benchmark the cascade engine's own overhead and the effect of micro-batching.

Uses only fake adapters (no weights, no network), so the numbers measure the engine, not a model:

- ``overhead``: per-request wall time with a no-op fake adapter (p = 0.7, no sleep), over
  ``--requests`` requests issued one at a time, on the sync path (``infer_batch_sync([img])``)
  and the async path (``await engine.infer(img)``; with ``max_wait_ms`` 0 and with the profile
  default, since a lone request waits up to ``max_wait_ms`` for company);
- ``concurrency``: wall time for ``--concurrent`` simultaneous ``infer`` calls against a fake
  adapter that sleeps ``--latency-ms`` per ``predict`` call, with micro-batching on
  (``max_batch`` 16, ``max_wait_ms`` ``--max-wait-ms``) and off (``max_batch`` 1); median over
  ``--rounds`` rounds, plus how many ``predict`` calls were made;
- ``machine``: platform, CPU count, Python, torch version when importable.

Usage::

    python scripts/bench_engine.py [--out bench.json] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger  # noqa: E402

from natix_miner.engine.cascade import CascadeEngine  # noqa: E402
from natix_miner.profile import parse_profile  # noqa: E402


def _profile(latency_ms: float, max_batch: int, max_wait_ms: float):
    return parse_profile({
        "name": "bench-fake",
        "deadline_s": 6.0,
        "cache": {"enabled": False},
        "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms},
        "tiers": [{"name": "t", "exit_threshold": 0.6, "models": [
            {"name": "m", "type": "fake", "licence": "MIT", "batch_size": 64,
             "options": {"p": 0.7, "latency_ms": latency_ms}}]}],
    })


def _summary(xs_s: list[float]) -> dict:
    ms = sorted(x * 1000.0 for x in xs_s)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 4),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 4),
        "mean_ms": round(statistics.fmean(ms), 4),
    }


def _image():
    from PIL import Image

    return Image.new("RGB", (224, 224), (120, 110, 100))


def bench_sync(n: int) -> dict:
    eng = CascadeEngine(_profile(0.0, 16, 0.0), devices=["cpu"])
    eng.start()
    img = _image()
    try:
        for _ in range(50):
            eng.infer_batch_sync([img])
        xs = []
        for _ in range(n):
            t = time.perf_counter()
            eng.infer_batch_sync([img])
            xs.append(time.perf_counter() - t)
        return _summary(xs)
    finally:
        eng.close()


def bench_async(n: int, max_wait_ms: float) -> dict:
    eng = CascadeEngine(_profile(0.0, 16, max_wait_ms), devices=["cpu"])
    eng.start()
    img = _image()

    async def run() -> list[float]:
        for _ in range(20):
            await eng.infer(img)
        xs = []
        for _ in range(n):
            t = time.perf_counter()
            await eng.infer(img)
            xs.append(time.perf_counter() - t)
        return xs

    try:
        out = _summary(asyncio.run(run()))
        out["max_wait_ms"] = max_wait_ms
        return out
    finally:
        eng.close()


def bench_concurrency(k: int, latency_ms: float, rounds: int, max_batch: int, max_wait_ms: float) -> dict:
    eng = CascadeEngine(_profile(latency_ms, max_batch, max_wait_ms), devices=["cpu"])
    eng.start()
    img = _image()
    ad = eng._runners["m"].adapter

    async def one_round() -> float:
        t = time.perf_counter()
        await asyncio.gather(*[eng.infer(img) for _ in range(k)])
        return time.perf_counter() - t

    calls_after_warmup = 0

    async def run() -> list[float]:
        nonlocal calls_after_warmup
        await one_round()  # warm-up (also teaches the latency tracker)
        calls_after_warmup = ad.calls
        return [await one_round() for _ in range(rounds)]

    try:
        walls = asyncio.run(run())
        calls = ad.calls - calls_after_warmup
        ms = [w * 1000.0 for w in walls]
        return {
            "concurrent_requests": k,
            "model_latency_ms": latency_ms,
            "max_batch": max_batch,
            "max_wait_ms": max_wait_ms,
            "rounds": rounds,
            "wall_ms_median": round(statistics.median(ms), 3),
            "wall_ms_min": round(min(ms), 3),
            "wall_ms_max": round(max(ms), 3),
            "predict_calls_per_round": calls / rounds if rounds else None,
            "batch_sizes_last_round": ad.batches[-(calls // rounds):] if rounds and calls else [],
        }
    finally:
        eng.close()


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        if info["cuda_available"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="write JSON here (default: stdout)")
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per overhead run")
    ap.add_argument("--concurrent", type=int, default=10)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="fake model latency per predict call")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--max-wait-ms", type=float, default=4.0, help="micro-batch window (profile default 4)")
    args = ap.parse_args(argv)

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    t0 = time.perf_counter()
    result = {
        "what": "natix-miner engine overhead and micro-batching, fake adapters only",
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "machine": machine(),
        "overhead": {
            "sync_infer_batch_sync_1_image": bench_sync(args.requests),
            "async_infer_max_wait_0ms": bench_async(args.requests, 0.0),
            f"async_infer_max_wait_{args.max_wait_ms:g}ms": bench_async(args.requests, args.max_wait_ms),
        },
        "concurrency": {
            "batched": bench_concurrency(args.concurrent, args.latency_ms, args.rounds, 16, args.max_wait_ms),
            "unbatched": bench_concurrency(args.concurrent, args.latency_ms, args.rounds, 1, args.max_wait_ms),
        },
    }
    result["bench_wall_s"] = round(time.perf_counter() - t0, 2)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
