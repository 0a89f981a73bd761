"""The simulated validators of the soak (:mod:`natix_miner.ops.soak`): wallets, one ``bt.Dendrite`` each,
open-loop challenges of ``burst`` concurrent copies, and how each response is counted (:func:`classify`).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from natix_miner.ops.chain_checks import VALIDATOR_TIMEOUT_S  # noqa: F401 - the dendrite timeout, re-exported

if TYPE_CHECKING:
    from natix_miner.ops.soak import SoakConfig


@dataclass
class RequestRecord:
    validator: int
    challenge: int
    t_send: float  # seconds since the soak started
    latency_ms: float
    status_code: int | None
    prediction: float | None
    outcome: str  # answered | late | error
    error: str | None = None


def classify(status_code: int | None, prediction: Any, latency_s: float, timeout: float) -> str:
    """answered / late / error, as a validator would count the response."""
    if status_code == 408 or latency_s > timeout:
        return "late"
    if status_code != 200:
        return "error"
    try:
        p = float(prediction)
    except (TypeError, ValueError):
        return "error"
    if not math.isfinite(p) or p < 0.0 or p > 1.0:
        return "error"
    return "answered"


def make_validator_wallets(folder: str | Path, n: int) -> list[Any]:
    """``soak-val-<i>`` wallets without passwords under ``folder`` (reused when they exist)."""
    import bittensor as bt

    out = []
    for i in range(n):
        w = bt.Wallet(path=str(folder), name=f"soak-val-{i}", hotkey="default")
        w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
        out.append(w)
    return out


def axon_info(host: str, port: int, hotkey: str) -> Any:
    import bittensor as bt

    return bt.AxonInfo(version=0, ip=host, port=int(port), ip_type=6 if ":" in host else 4, hotkey=hotkey,
                       coldkey="", protocol=4)


async def _one_request(dendrite: Any, target: Any, image_b64: str, timeout: float) -> tuple[float, int | None, Any, str | None]:
    from natix_miner.protocol import ImageSynapse

    syn = ImageSynapse(image=image_b64)
    t = time.perf_counter()
    try:
        r = await dendrite.call(target_axon=target, synapse=syn, timeout=timeout, deserialize=False)
        latency = time.perf_counter() - t
        code = getattr(getattr(r, "dendrite", None), "status_code", None)
        code = int(code) if code is not None else None
        err = None
        if code != 200:
            err = getattr(getattr(r, "dendrite", None), "status_message", None)
        return latency, code, getattr(r, "prediction", None), err
    except Exception as e:  # noqa: BLE001 - counted as an error
        return time.perf_counter() - t, None, None, f"{type(e).__name__}: {e}"


async def run_validators(cfg: SoakConfig, wallets: list[Any], target: Any, payloads: list[str],
                         t0: float) -> list[RequestRecord]:
    """Run every simulated validator until its schedule ends; returns one record per request."""
    import bittensor as bt

    records: list[RequestRecord] = []
    per_val = cfg.challenges_per_validator()
    budget = [cfg.max_challenges if cfg.max_challenges is not None else per_val * len(wallets)]
    stop_at = t0 + cfg.minutes * 60.0

    async def challenge(idx: int, k: int, dendrite: Any, image: str) -> None:
        t_send = time.monotonic() - t0
        outs = await asyncio.gather(*(_one_request(dendrite, target, image, cfg.timeout) for _ in range(cfg.burst)))
        for latency, code, pred, err in outs:
            outcome = classify(code, pred, latency, cfg.timeout)
            p = None
            try:
                p = float(pred) if pred is not None else None
            except (TypeError, ValueError):
                p = None
            records.append(RequestRecord(idx, k, round(t_send, 3), round(latency * 1000.0, 2), code, p, outcome,
                                         err if outcome != "answered" else None))

    async def validator(idx: int, wallet: Any) -> None:
        rng = random.Random(cfg.seed * 1000 + idx)
        dendrite = bt.Dendrite(wallet=wallet)
        offset = rng.uniform(0.0, min(cfg.interval_s, cfg.minutes * 60.0))
        tasks = []
        try:
            for k in range(per_val):
                send_at = t0 + offset + k * cfg.interval_s
                if send_at >= stop_at or budget[0] <= 0:
                    break
                budget[0] -= 1
                await asyncio.sleep(max(0.0, send_at - time.monotonic()))
                tasks.append(asyncio.create_task(challenge(idx, k, dendrite, payloads[rng.randrange(len(payloads))])))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            await dendrite.aclose_session()

    await asyncio.gather(*(validator(i, w) for i, w in enumerate(wallets)))
    return records
