"""Soak test: N simulated validators query one miner for M minutes; latency, misses and memory.

How it works
    By default the miner is started as a child process (``neurons/miner.py --mock`` through
    :class:`~natix_miner.neuron.launcher.MinerProcess`, loopback only, ``--wandb.off``) with N
    throwaway validator wallets passed as ``--mock.validators`` so its blacklist admits them. With
    ``--axon HOST:PORT --hotkey SS58`` an already running miner is soaked instead (its validators
    list must contain the soak wallets: they are kept in ``--wallet-dir`` and printed).

    Each simulated validator is an asyncio task with its own wallet and its own real
    ``bt.Dendrite``. It sends one challenge every ``60 / rate`` seconds (default rate 20/min = one
    every 3 s, the real ~60–75 s cadence of docs/protocol.md §2.1 compressed), at a random phase so the
    validators do not fire in lock-step. A challenge is ``burst`` concurrent copies of the same
    synapse (a lone miner is drawn ten times by the validator's UID deck, docs/protocol.md §2.2), each a
    ``dendrite.call(..., timeout=9, deserialize=False)`` as in docs/protocol.md §2.5. Sending is open-loop:
    a slow miner does not slow the schedule, and the 9 s timeout bounds what is in flight. The run
    is bounded in time (``minutes``) and count (``rate × minutes`` challenges per validator, or
    ``max_challenges`` in total).

    Images come from ``--images`` (any folder, searched recursively), else the packaged samples
    (``natix_miner/assets/samples``), else generated pictures. They are prepared once, before the
    clock starts, the way a validator does it: level 0 (centre square crop, 224×224, ``ToTensor`` →
    ``ToPILImage``) JPEG q75 base64 (:mod:`natix_miner.validator.augment`), or ``--fullres``.

What is measured per request (client side wall time around ``dendrite.call``)
    *answered*: HTTP 200 and a finite prediction in [0, 1] within the timeout; *late*: status 408
    or slower than the timeout; *errors*: any other status, an exception, or a 200 without a valid
    prediction (e.g. -1). ``unanswered`` = late + errors: each one scores 0 with a real validator.
    A sampler thread records the miner process's RSS every ``rss_interval`` seconds (psutil if
    installed, else ``/proc/<pid>/status`` VmRSS); the report carries the series, start/end/max and
    least-squares slopes in MB/min over the whole run and without its first 20 % (warm-up
    allocations inflate the first; a leak shows as a steady positive slope in the second).

The client runs on the same machine as the miner: on a small CPU box its own work (signing,
JSON, JPEG payloads) is part of the measured latency.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loguru import logger

from natix_miner.ops.soak_report import (  # noqa: F401 - re-exported: the report half of the soak
    WARMUP_FRACTION,
    build_report,
    fetch_miner_stats,
    linear_slope_per_min,
    machine_info,
    summary_text,
    write_png,
)
from natix_miner.ops.soak_validators import (  # noqa: F401 - re-exported: the client half of the soak
    VALIDATOR_TIMEOUT_S,
    RequestRecord,
    axon_info,
    classify,
    make_validator_wallets,
    run_validators,
)
from natix_miner.profile import REPO_ROOT

DEFAULT_IMAGES = REPO_ROOT / "natix_miner" / "assets" / "samples"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm")


@dataclass
class SoakConfig:
    validators: int = 3
    minutes: float = 10.0
    rate_per_validator: float = 20.0  # challenges per minute per validator
    burst: int = 10  # concurrent copies per challenge
    timeout: float = VALIDATOR_TIMEOUT_S
    profile: str | None = None
    images: str | None = None
    fullres: bool = False
    max_images: int = 64
    axon: str | None = None  # HOST:PORT of a running miner
    hotkey: str | None = None  # that miner's hotkey
    pid: int | None = None  # that miner's PID (for RSS); looked up by port when psutil can
    wallet_dir: str | None = None
    rss_interval: float = 2.0
    max_challenges: int | None = None
    seed: int = 0
    ready_timeout: float = 300.0
    miner_args: list[str] = field(default_factory=list)
    report: str | None = None
    png: str | None = None

    def validate(self) -> None:
        if self.validators < 1:
            raise ValueError("--validators must be >= 1")
        if not self.minutes > 0:
            raise ValueError("--minutes must be > 0")
        if not self.rate_per_validator > 0:
            raise ValueError("--rate-per-validator must be > 0")
        if self.burst < 1:
            raise ValueError("--burst must be >= 1")
        if not self.timeout > 0:
            raise ValueError("--timeout must be > 0")
        if bool(self.axon) != bool(self.hotkey):
            raise ValueError("--axon and --hotkey go together")

    @property
    def interval_s(self) -> float:
        return 60.0 / self.rate_per_validator

    def challenges_per_validator(self) -> int:
        return max(1, int(math.floor(self.minutes * self.rate_per_validator)))


# ---------------------------------------------------------------------------------------------- images
def find_images(folder: str | Path, limit: int | None = None) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    return files[:limit] if limit else files


def generated_images(n: int = 8, seed: int = 0) -> list[Any]:
    """Dashcam-sized pictures with coloured blocks (reddish and bluish, so both classes of a
    colour-based fake model occur); used when no image folder exists."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(1360, 800), (1280, 720), (1024, 768), (800, 600)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        base = rng.integers(40, 160, size=3)
        arr = np.empty((h, w, 3), dtype=np.uint8)
        arr[:] = base
        tint = np.array([200, 30, 30]) if i % 2 == 0 else np.array([30, 30, 200])
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 100)), int(rng.integers(0, h - 100))
            bw, bh = int(rng.integers(60, w // 2)), int(rng.integers(60, h // 2))
            arr[y0:y0 + bh, x0:x0 + bw] = np.clip(tint + rng.integers(-25, 25, size=3), 0, 255)
        arr = np.clip(arr.astype(np.int16) + rng.integers(-12, 12, size=arr.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, "RGB"))
    return out


def prepare_payloads(images: str | None, *, fullres: bool = False, max_images: int = 64,
                     seed: int = 0) -> tuple[list[str], str]:
    """base64 JPEG payloads, encoded like a validator; returns (payloads, where they came from)."""
    from PIL import Image

    from natix_miner.validator.augment import base_transform, encode_like_validator

    folder = Path(images) if images else (DEFAULT_IMAGES if DEFAULT_IMAGES.is_dir() else None)
    pics: list[Any] = []
    source = "generated"
    if folder is not None:
        files = find_images(folder)
        random.Random(seed).shuffle(files)
        for f in files[:max_images]:
            try:
                with Image.open(f) as im:
                    pics.append(im.convert("RGB"))
            except Exception as e:  # noqa: BLE001 - skip unreadable files
                logger.warning(f"skipping {f}: {e}")
        if pics:
            source = str(folder)
        elif images:
            raise ValueError(f"no readable images under {folder}")
    if not pics:
        pics = generated_images(min(max_images, 8), seed)
    payloads = [encode_like_validator(im if fullres else base_transform(im)) for im in pics]
    return payloads, source


# ---------------------------------------------------------------------------------------------- RSS
def rss_mb(pid: int) -> float | None:
    """Resident memory of ``pid`` in MB (psutil, else /proc/<pid>/status VmRSS); None if gone."""
    try:
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            return None
    except ImportError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def pid_listening_on(port: int) -> int | None:
    """PID of the local process listening on TCP ``port`` (psutil; may need privileges)."""
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return int(c.pid)
    except Exception:  # noqa: BLE001 - ImportError, AccessDenied
        return None
    return None


class RssSampler:
    """Samples ``rss_mb(pid)`` every ``interval`` seconds in a thread (independent of the event loop)."""

    def __init__(self, pid: int | None, interval: float, t0: float, reader: Callable[[int], float | None] = rss_mb):
        self.pid = pid
        self.interval = max(0.1, float(interval))
        self.t0 = t0
        self.reader = reader
        self.samples: list[tuple[float, float]] = []  # (seconds since t0, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        if self.pid is None:
            return
        v = self.reader(self.pid)
        if v is not None:
            self.samples.append((round(time.monotonic() - self.t0, 3), round(v, 2)))

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


# ---------------------------------------------------------------------------------------------- driver
def _parse_hostport(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--axon must be HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def _free_port() -> int:
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_soak(cfg: SoakConfig, *, command: str | None = None) -> dict[str, Any]:
    """Run the whole soak (start the miner unless ``cfg.axon``); returns the report (also written
    to ``cfg.report`` / ``cfg.png`` when set)."""
    cfg.validate()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import bittensor as bt

    from natix_miner.neuron.offline import disable_external_ip_lookup

    bt.logging.set_warning()
    disable_external_ip_lookup("127.0.0.1")
    command = command or shlex.join([sys.executable, *sys.argv])
    tmp = Path(tempfile.mkdtemp(prefix="natix-soak-"))
    wallet_dir = Path(cfg.wallet_dir) if cfg.wallet_dir else tmp / "wallets"
    wallets = make_validator_wallets(wallet_dir, cfg.validators)
    val_hotkeys = [w.hotkey.ss58_address for w in wallets]
    payloads, source = prepare_payloads(cfg.images, fullres=cfg.fullres, max_images=cfg.max_images, seed=cfg.seed)
    logger.info(f"{len(payloads)} payload(s) from {source}; validators: {', '.join(val_hotkeys)}")

    mp = None
    health_port = None
    miner: dict[str, Any] = {}
    try:
        if cfg.axon:
            host, port = _parse_hostport(cfg.axon)
            hotkey = str(cfg.hotkey)
            pid = cfg.pid or pid_listening_on(port)
            miner = {"mode": "external", "axon": f"{host}:{port}", "hotkey": hotkey, "pid": pid}
            if pid is None:
                logger.warning("miner PID unknown (pass --pid): no RSS series")
        else:
            from natix_miner.neuron.launcher import MinerProcess

            miner_w = bt.Wallet(path=str(tmp / "miner-wallet"), name="soak-miner", hotkey="default")
            miner_w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
            host, port, hotkey = "127.0.0.1", _free_port(), miner_w.hotkey.ss58_address
            args = ["--mock", "--mock.validators", ",".join(val_hotkeys), "--wallet.path", str(tmp / "miner-wallet"),
                    "--wallet.name", "soak-miner", "--wallet.hotkey", "default", "--wandb.off"]
            health_port = _free_port()
            args += ["--health.port", str(health_port)]  # /stats: degraded answers and fallbacks
            if cfg.profile:
                args += ["--profile", str(cfg.profile)]
            args += list(cfg.miner_args)
            log_path = tmp / "miner.log"
            mp = MinerProcess(args, port, log_path)
            miner = {"mode": "child", "axon": f"{host}:{port}", "hotkey": hotkey, "pid": mp.proc.pid,
                     "log": str(log_path),
                     "command": shlex.join([sys.executable, "neurons/miner.py", *args, "--axon.port", str(port)])}
            t_start = time.monotonic()
            mp.wait_ready(timeout=cfg.ready_timeout)
            miner["ready_s"] = round(time.monotonic() - t_start, 2)
            logger.info(f"miner ready in {miner['ready_s']} s (pid {mp.proc.pid}, port {port})")
        target = axon_info(host, port, hotkey)
        t0 = time.monotonic()
        sampler = RssSampler(miner.get("pid"), cfg.rss_interval, t0).start()
        try:
            records = asyncio.run(run_validators(cfg, wallets, target, payloads, t0))
        finally:
            sampler.stop()
        wall_s = time.monotonic() - t0
        if health_port is not None:
            miner["stats"] = fetch_miner_stats(health_port)
    finally:
        if mp is not None:
            took = mp.stop()
            miner["exit_code"] = mp.proc.returncode
            miner["stop_s"] = round(took, 2)
            miner["log_tail"] = mp.log_tail(20)
    records.sort(key=lambda r: (r.t_send, r.validator))
    report = build_report(cfg, records, sampler.samples, wall_s=wall_s, command=command, miner=miner,
                          image_source=source, n_payloads=len(payloads), validator_hotkeys=val_hotkeys)
    # the temp folder holds throwaway wallets and the child's log: keep it only when something went wrong
    keep_tmp = report["unanswered"] > 0 or report["requests"] == 0 or miner.get("exit_code", 0) != 0
    if not keep_tmp:
        report["miner"].pop("log", None)
    if cfg.report:
        import json

        Path(cfg.report).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.report).write_text(json.dumps(report, indent=1))
    if cfg.png:
        write_png(report, cfg.png)
    if keep_tmp:
        logger.warning(f"kept {tmp} (miner log, wallets) for inspection")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return report


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="scripts/soak.py",
        description="Soak a miner: N simulated validators (real bt.Dendrite each) send challenges for M minutes; "
                    "reports answered/late/errors, latency percentiles and the miner's RSS over time.",
    )
    p.add_argument("--validators", type=int, default=3)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate-per-validator", type=float, default=20.0,
                   help="challenges per minute per validator (real validators: about 1/min; default 20 = one every 3 s)")
    p.add_argument("--burst", type=int, default=10, help="concurrent copies per challenge (a lone miner gets 10)")
    p.add_argument("--timeout", type=float, default=VALIDATOR_TIMEOUT_S, help="dendrite timeout (validators: 9 s)")
    p.add_argument("--profile", default=None, help="engine profile for the child miner (default: its default)")
    p.add_argument("--images", default=None, help="image folder (default: natix_miner/assets/samples, else generated)")
    p.add_argument("--fullres", action="store_true", help="send full-resolution images (validators since 2026-05)")
    p.add_argument("--max-images", type=int, default=64)
    p.add_argument("--axon", default=None, metavar="HOST:PORT", help="soak this running miner instead of starting one")
    p.add_argument("--hotkey", default=None, help="the running miner's hotkey (with --axon)")
    p.add_argument("--pid", type=int, default=None, help="the running miner's PID, for RSS (with --axon)")
    p.add_argument("--wallet-dir", default=None,
                   help="where the soak-val-<i> validator wallets live (default: a temp folder); with --axon the "
                        "miner must list their hotkeys in --mock.validators")
    p.add_argument("--rss-interval", type=float, default=2.0, help="seconds between RSS samples")
    p.add_argument("--max-challenges", type=int, default=None, help="cap on challenges over all validators")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the child miner")
    p.add_argument("--miner-arg", action="append", default=[], help="extra argument for the child miner (repeatable)")
    p.add_argument("--report", default=None, help="write the JSON report here")
    p.add_argument("--png", default=None, help="write the latency/RSS plot here")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    cfg = SoakConfig(validators=a.validators, minutes=a.minutes, rate_per_validator=a.rate_per_validator,
                     burst=a.burst, timeout=a.timeout, profile=a.profile, images=a.images, fullres=a.fullres,
                     max_images=a.max_images, axon=a.axon, hotkey=a.hotkey, pid=a.pid, wallet_dir=a.wallet_dir,
                     rss_interval=a.rss_interval, max_challenges=a.max_challenges, seed=a.seed,
                     ready_timeout=a.ready_timeout, miner_args=a.miner_arg, report=a.report, png=a.png)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cmd = shlex.join([sys.executable, *(sys.argv if argv is None else ["scripts/soak.py", *argv])])
    report = run_soak(cfg, command=cmd)
    print(summary_text(report))
    if cfg.report:
        print(f"report: {cfg.report}")
    if cfg.png:
        print(f"plot: {cfg.png}")
    return 0 if report["unanswered"] == 0 and report["requests"] > 0 else 1
