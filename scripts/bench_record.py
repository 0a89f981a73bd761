#!/usr/bin/env python
"""Miner latency with request recording on vs off (--record.dir), in one run.

Two miners in this process, each behind a real bt.Axon on loopback, serve the same fake profile (p from colour,
``--model-ms`` per call, result cache off so every request is computed); one records to a temporary folder. A
bt.Dendrite sends ``--bursts`` bursts of ``--burst`` concurrent requests (distinct noise JPEGs of ``--size``, so
every recorded request writes a new image), alternating on/off burst by burst. Reports per-request client-side
latency p50/p99 for each and the ratios, plus the recorder's counters (written, dropped). JSON on stdout/--out.

    python scripts/bench_record.py [--bursts 30] [--burst 10] [--size 1280x720] [--out reports/bench_record.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from natix_miner.ops.json_report import emit_json  # noqa: E402


def _pct(xs: list[float], q: float) -> float:
    import numpy as np

    return round(float(np.percentile(np.asarray(xs), q)), 2)


def _wallet(tmp: Path, name: str):
    import bittensor as bt

    w = bt.Wallet(path=str(tmp), name=name, hotkey="default")
    w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return w


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _miner(tmp: Path, name: str, validator: str, profile: Path, record_dir: Path | None):
    from natix_miner.neuron.config import parse_config
    from natix_miner.neuron.miner import Miner

    _wallet(tmp, name)
    argv = ["--mock", "--mock.validators", validator, "--axon.port", str(_free_port()), "--wallet.path", str(tmp),
            "--wallet.name", name, "--profile", str(profile), "--wandb.off", "--engine.no_cache"]
    if record_dir is not None:
        argv += ["--record.dir", str(record_dir)]
    m = Miner(parse_config(argv))
    m.setup()
    m.start()
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=30)
    ap.add_argument("--burst", type=int, default=10)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--model-ms", type=float, default=20.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import numpy as np
    from loguru import logger
    from PIL import Image

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    w, h = (int(x) for x in a.size.lower().split("x"))
    rng = np.random.default_rng(0)

    def image_b64() -> str:
        base = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
        buf = io.BytesIO()
        Image.fromarray(base[:h, :w]).save(buf, format="JPEG", quality=75)
        return base64.b64encode(buf.getvalue()).decode()

    with tempfile.TemporaryDirectory(prefix="bench-record-") as td:
        tmp = Path(td)
        val = _wallet(tmp, "validator")
        prof = tmp / "fake.yaml"
        prof.write_text(f"name: bench-record\ndeadline_s: 3.0\ntiers:\n  - name: t\n    exit_threshold: 0.95\n"
                        f"    models:\n      - {{name: color, type: fake, licence: MIT, options: "
                        f"{{p_by_color: true, latency_ms: {a.model_ms}}}}}\n")
        miners = {"off": _miner(tmp, "m-off", val.hotkey.ss58_address, prof, None),
                  "on": _miner(tmp, "m-on", val.hotkey.ss58_address, prof, tmp / "rec")}
        warm = [image_b64() for _ in range(a.burst)]
        payloads = [[image_b64() for _ in range(a.burst)] for _ in range(a.bursts)]
        lat: dict[str, list[float]] = {"off": [], "on": []}
        import bittensor as bt

        from natix_miner.protocol import ImageSynapse

        async def one(d, m, b64):
            t0 = time.perf_counter()
            r = await d(axons=[m.axon.info()], synapse=ImageSynapse(image=b64), deserialize=False, timeout=9.0)
            assert r[0].dendrite.status_code == 200, r[0].dendrite.status_message
            return (time.perf_counter() - t0) * 1000.0

        async def run():
            d = bt.Dendrite(wallet=val)
            try:
                for which in ("off", "on"):  # warm-up burst each (connection set-up, first decode)
                    await asyncio.gather(*[one(d, miners[which], p) for p in warm])
                for i, burst in enumerate(payloads):
                    order = ("off", "on") if i % 2 == 0 else ("on", "off")
                    for which in order:
                        lat[which] += await asyncio.gather(*[one(d, miners[which], p) for p in burst])
            finally:
                await d.aclose_session()

        try:
            asyncio.run(run())
            miners["on"].recorder.flush(10.0)
            rec = miners["on"].recorder.snapshot()
        finally:
            for m in miners.values():
                m.stop()
    out = {
        "what": "client-side latency per request through a real axon on loopback, bursts of concurrent requests",
        "bursts": a.bursts, "burst": a.burst, "image_size": [w, h], "model_ms": a.model_ms,
        "image_kb_mean": round(float(np.mean([len(p) * 3 / 4 / 1024 for b in payloads for p in b])), 1),
        "off": {"n": len(lat["off"]), "p50_ms": _pct(lat["off"], 50), "p99_ms": _pct(lat["off"], 99)},
        "on": {"n": len(lat["on"]), "p50_ms": _pct(lat["on"], 50), "p99_ms": _pct(lat["on"], 99)},
        "recorder": {k: rec[k] for k in ("recorded", "images_written", "duplicates", "dropped", "evicted", "bytes",
                                         "enabled")},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    out["ratio_p50"] = round(out["on"]["p50_ms"] / out["off"]["p50_ms"], 3)
    out["ratio_p99"] = round(out["on"]["p99_ms"] / out["off"]["p99_ms"], 3)
    emit_json(out, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
