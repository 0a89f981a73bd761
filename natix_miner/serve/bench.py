"""``scripts/bench_serve.py``: what serving the cascade on Ray Serve costs, in one run (JSON).

1. ``overhead``: per-request latency, one request at a time (no image key, so no cache), of the same
   profile in process (``CascadeEngine.infer``) and through the service (``RemoteEngine.infer``:
   encode → HTTP → Serve proxy → ingress ``CascadeEngine`` → model deployment handle → back), for
   the given profile (default lite-cpu) and for a zero-cost fake model (pure serving overhead).
   p50 / p99 of each and the differences.
2. ``two_miners``: two ``neurons/miner.py --mock --engine.remote URL`` processes (own hotkeys and
   ports) sharing the service; a validator (in-repo client, real ``bt.Dendrite``) sends a burst of
   10 identical copies to each miner at the same time, ``--rounds`` times with different images;
   latency as the validator measures it, answers, and each miner's RSS. With ``--baseline``, the
   same against two miners that each load the profile in process (today's way).
Everything stays on loopback; Ray is started locally with ``--num-cpus``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from loguru import logger

from natix_miner.profile import REPO_ROOT, load_profile, parse_profile

ZERO_COST = {"name": "zero-cost", "deadline_s": 6.0, "cache": {"enabled": False},
             "tiers": [{"name": "t", "exit_threshold": 0.5,
                        "models": [{"name": "noop", "type": "fake", "licence": "MIT", "options": {"p": 0.7}}]}]}


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, max(0, int(round(q / 100.0 * (len(s) - 1)))))], 2)


def _summary(ms: list[float]) -> dict[str, Any]:
    return {"n": len(ms), "p50_ms": _pct(ms, 50), "p99_ms": _pct(ms, 99), "mean_ms": round(statistics.fmean(ms), 2)
            if ms else None, "max_ms": round(max(ms), 2) if ms else None}


def _images(n: int) -> list[Any]:
    from natix_miner.imaging import decode_image_bytes

    files = sorted((REPO_ROOT / "natix_miner" / "assets" / "samples").glob("*/*.jpg"))
    return [decode_image_bytes(files[i % len(files)].read_bytes()).image for i in range(n)]


async def _sequential(engine: Any, ims: list[Any], deadline_s: float) -> list[float]:
    from natix_miner.engine.deadline import Deadline

    out = []
    for im in ims:
        t0 = time.perf_counter()
        res = await engine.infer(im, deadline=Deadline.after(deadline_s))
        out.append((time.perf_counter() - t0) * 1000.0)
        if res.exit_reason in ("fallback", "deadline"):
            logger.warning(f"bench request answered by {res.exit_reason}")
    return out


def measure_overhead(profile: Any, url: str, n: int, warmup: int) -> dict[str, Any]:
    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.engine.remote import RemoteEngine

    ims = _images(n + warmup)
    local = CascadeEngine(profile)
    local.start()
    try:
        asyncio.run(_sequential(local, ims[:warmup], profile.deadline_s))
        in_proc = asyncio.run(_sequential(local, ims[warmup:], profile.deadline_s))
    finally:
        local.close()
    remote = RemoteEngine(url, profile)
    remote.start()
    try:
        async def both():
            await _sequential(remote, ims[:warmup], profile.deadline_s)
            return await _sequential(remote, ims[warmup:], profile.deadline_s)

        served = asyncio.run(both())
        stats = remote.stats()
    finally:
        remote.close()
    a, b = _summary(in_proc), _summary(served)
    return {"profile": profile.name, "in_process": a, "remote": b,
            "overhead_p50_ms": round(b["p50_ms"] - a["p50_ms"], 2),
            "overhead_p99_ms": round(b["p99_ms"] - a["p99_ms"], 2),
            "remote_fallbacks": stats["fallback_answers"]}


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def two_miners(profile_path: str, url: str | None, rounds: int, ready_timeout: float) -> dict[str, Any]:
    """Bursts of 10 to each of two miners at once; ``url`` None = both miners load the profile."""
    import bittensor as bt

    from natix_miner.imaging import encode_jpeg_b64
    from natix_miner.neuron.launcher import MinerProcess
    from natix_miner.neuron.offline import disable_external_ip_lookup
    from natix_miner.validator.client import make_axon_info, make_dendrite, query

    disable_external_ip_lookup("127.0.0.1")
    tmp = Path(tempfile.mkdtemp(prefix="natix-bench-serve-"))

    def wallet(name: str) -> Any:
        w = bt.Wallet(path=str(tmp), name=name, hotkey="default")
        w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
        return w

    val = wallet("validator")
    miners = []
    import socket

    try:
        for name in ("miner-a", "miner-b"):
            w = wallet(name)
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            args = ["--mock", "--mock.validators", val.hotkey.ss58_address, "--wallet.path", str(tmp), "--wallet.name",
                    name, "--profile", profile_path, "--wandb.off"]
            if url:
                args += ["--engine.remote", url]
            miners.append((MinerProcess(args, port, tmp / f"{name}.log"), w, port))
        t0 = time.monotonic()
        for mp, _, _ in miners:
            mp.wait_ready(timeout=ready_timeout)
        ready_s = time.monotonic() - t0
        ims = _images(rounds + 1)

        async def run() -> list[list[Any]]:
            d = make_dendrite(val, offline=True)
            out = []
            try:
                for i, im in enumerate(ims):
                    b64 = encode_jpeg_b64(im, quality=90)
                    res = await asyncio.gather(*[query(d, make_axon_info("127.0.0.1", port, w.hotkey.ss58_address), b64,
                                                       n_copies=10) for _, w, port in miners])
                    if i > 0:  # the first round warms connections up
                        out.append([r for per in res for r in per])
            finally:
                await d.aclose_session()
            return out

        rounds_out = asyncio.run(run())
        rss = [_rss_mb(mp.proc.pid) for mp, _, _ in miners]
    finally:
        for mp, _, _ in miners:
            mp.stop()
    flat = [r for rnd in rounds_out for r in rnd]
    lat = [r.latency_ms for r in flat if r.answered]
    return {"engine": "remote" if url else "in_process", "rounds": rounds, "requests": len(flat),
            "answered": sum(r.answered for r in flat), "status_200": sum(r.status_code == 200 for r in flat),
            "latency": _summary(lat), "miner_rss_mb": rss, "miners_ready_s": round(ready_s, 1)}


def machine() -> dict[str, Any]:
    d = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        import ray

        d["ray"] = ray.__version__
    except ImportError:  # pragma: no cover
        pass
    return d


def run(profile_path: str | None, n: int, warmup: int, rounds: int, num_cpus: int, baseline: bool,
        ready_timeout: float = 300.0) -> dict[str, Any]:
    """The whole benchmark; returns the JSON-ready report."""
    from ray import serve

    from natix_miner.serve.app import connect_ray, deploy
    from natix_miner.serve.config import ProfileError

    profile_path = profile_path or str(REPO_ROOT / "configs" / "lite-cpu.yaml")
    prof = load_profile(profile_path)
    # the overhead requests carry no key, so no cache answers them (in process or in the service); the miners
    # of the burst test send keys, and their engines (remote: single flight; in process: batch dedup) and
    # the service use the profile's cache as configured
    prof = prof.replace(serve=prof.serve or {"ingress": {"num_cpus": 0.25}, "defaults": {"num_cpus": 1}})
    zero = parse_profile({**ZERO_COST, "serve": {"ingress": {"num_cpus": 0.1}, "defaults": {"num_cpus": 0.1}}})
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    report: dict[str, Any] = {"machine": machine(), "config": {"profile": profile_path, "requests": n, "warmup": warmup,
                                                                "rounds": rounds, "ray_num_cpus": num_cpus}}
    owns = connect_ray(None, num_cpus=num_cpus)
    try:
        t0 = time.monotonic()
        main = deploy(prof, port=port, name="bench", route_prefix="/bench")
        report["deploy_s"] = round(time.monotonic() - t0, 1)
        null = deploy(zero, port=port, name="zero", route_prefix="/zero")
        report["overhead"] = {"zero_cost_model": measure_overhead(zero, null.url, n, warmup),
                              prof.name: measure_overhead(prof, main.url, n, warmup)}
        null.shutdown()
        report["two_miners"] = {"remote": two_miners(profile_path, main.url, rounds, ready_timeout)}
        main.shutdown()
        if baseline:
            report["two_miners"]["in_process"] = two_miners(profile_path, None, rounds, ready_timeout)
    except ProfileError:
        raise
    finally:
        if owns:
            serve.shutdown()
            import ray

            ray.shutdown()
    return report


def write(report: dict[str, Any], out: str | None) -> None:
    text = json.dumps(report, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    print(text)
