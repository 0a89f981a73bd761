"""The doctor's probes of the outside world: TCP connect, clock offset (SNTP, HTTP Date), free memory, the
Hugging Face cache, the metagraph and the subnet owner's hotkey, this machine's public IP. Tests replace them
through :class:`natix_miner.ops.doctor.DoctorEnv`."""

from __future__ import annotations

import functools
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any, Callable

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01


def tcp_connect(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def sntp_offset(host: str = "pool.ntp.org", port: int = 123, timeout: float = 3.0,
                clock: Callable[[], float] = time.time) -> float:
    """Offset (server − local, seconds) from one SNTP v3 client query: ((t2 − t1) + (t3 − t4)) / 2."""
    packet = b"\x1b" + 47 * b"\0"  # LI 0, version 3, mode 3 (client)
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    with socket.socket(addr[0], socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t1 = clock()
        s.sendto(packet, addr[4])
        data, _ = s.recvfrom(512)
        t4 = clock()
    if len(data) < 48:
        raise ValueError(f"short NTP reply ({len(data)} bytes)")

    def ts(off: int) -> float:
        sec, frac = struct.unpack("!II", data[off:off + 8])
        return sec - NTP_EPOCH_OFFSET + frac / 2**32

    t2, t3 = ts(32), ts(40)
    if t3 <= 0:
        raise ValueError("NTP reply without a transmit time")
    return ((t2 - t1) + (t3 - t4)) / 2.0


def http_date_offset(url: str, timeout: float = 5.0, clock: Callable[[], float] = time.time) -> float:
    """Offset (server − local) from an HTTP ``Date`` header (1 s resolution, so ±1 s)."""
    import urllib.error
    import urllib.request
    from email.utils import parsedate_to_datetime

    req = urllib.request.Request(url, method="HEAD")
    t1 = clock()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            date = r.headers.get("Date")
    except urllib.error.HTTPError as e:  # any reply has a Date
        date = e.headers.get("Date")
    t4 = clock()
    if not date:
        raise ValueError(f"{url} sent no Date header")
    server = parsedate_to_datetime(date).timestamp() + 0.5  # the header truncates to whole seconds
    return server - (t1 + t4) / 2.0


def https_of(endpoint: str) -> str:
    return re.sub(r"^ws", "http", endpoint)


def free_memory_mb(devices: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        import psutil

        out["cpu"] = psutil.virtual_memory().available / 2**20
    except Exception:  # noqa: BLE001
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    out["cpu"] = int(line.split()[1]) / 1024.0
        except OSError:
            pass
    if any(d != "cpu" for d in devices):
        try:
            import torch

            for d in devices:
                if d.startswith("cuda:"):
                    free, _total = torch.cuda.mem_get_info(int(d.split(":")[1]))
                    out[d] = free / 2**20
        except Exception:  # noqa: BLE001
            pass
    return out


def cached_repos() -> set[str] | None:
    try:
        from huggingface_hub import scan_cache_dir
    except ImportError:
        return None
    try:
        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - CacheNotFound: an empty cache
        return set()
    return {r.repo_id for r in info.repos if getattr(r, "repo_type", "model") == "model"}


@functools.lru_cache(maxsize=4)
def _subtensor(endpoint: str) -> Any:
    import bittensor as bt

    return bt.Subtensor(network=endpoint)


def load_metagraph(netuid: int, endpoint: str) -> Any:
    return _subtensor(endpoint).metagraph(netuid=netuid, lite=False)


def owner_hotkey(netuid: int, endpoint: str) -> str | None:
    """The subnet owner's hotkey (``SubnetOwnerHotkey``): upstream validators burn their weight to its UID."""
    return _subtensor(endpoint).get_subnet_owner_hotkey(netuid)


def public_ip() -> str | None:
    from bittensor.utils import networking

    return networking.get_external_ip()


# hosts the download tools need: hub snapshots (HF_ENDPOINT overrides) and ultralytics release assets
DOWNLOAD_HOSTS = {"hf": "huggingface.co", "ultralytics": "github.com"}


def download_host(kind: str) -> str | None:
    import os
    from urllib.parse import urlparse

    if kind == "hf" and os.environ.get("HF_ENDPOINT"):
        return urlparse(os.environ["HF_ENDPOINT"]).hostname
    return DOWNLOAD_HOSTS.get(kind)


def is_network_error(e: BaseException) -> bool:
    """A failure to reach a server (DNS, refused, timeout, offline mode), anywhere in the exception chain."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, (socket.gaierror, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if type(e).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionError", "ReadTimeout",
                                "LocalEntryNotFoundError", "OfflineModeIsEnabled", "NetworkAccessRefused"):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
