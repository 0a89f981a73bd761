"""The miner's view of the chain: who is registered, who holds a validator permit, with what stake.

Two implementations behind one small interface:

- :class:`SubtensorChain` talks to a real subtensor (finney / test / local) through bittensor 10.5.
- :class:`LocalMockChain` is a local chain for ``--mock`` and dry runs: our hotkey is a registered
  miner, the hotkeys given by ``--mock.validators`` are staked validators holding a permit,
  ``--mock.miners`` are registered without a permit. No network access at all.

The blacklist reads an immutable :class:`ChainSnapshot`; the sync loop swaps in a new one, so
readers never lock and never see a half-updated metagraph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ChainSnapshot:
    hotkeys: tuple[str, ...]
    validator_permit: tuple[bool, ...]
    stake: tuple[float, ...]  # TAO
    block: int
    synced_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if not (len(self.hotkeys) == len(self.validator_permit) == len(self.stake)):
            raise ValueError("snapshot arrays differ in length")
        object.__setattr__(self, "_index", {hk: i for i, hk in enumerate(self.hotkeys)})

    def uid_of(self, hotkey: str | None) -> int | None:
        if hotkey is None:
            return None
        return self._index.get(hotkey)  # type: ignore[attr-defined]

    @property
    def n(self) -> int:
        return len(self.hotkeys)


class Chain(Protocol):
    network: str
    netuid: int

    def snapshot(self) -> ChainSnapshot:
        """Fetch a fresh snapshot (may raise on network errors)."""

    def serve_axon(self, axon: Any) -> None:
        """Publish the axon's IP/port on chain (no-op for the mock)."""


class LocalMockChain:
    """A chain-free metagraph for ``--mock``: UID 0 is our miner, then validators, then miners."""

    network = "mock"

    def __init__(self, netuid: int, miner_hotkey: str, validators: list[str] | tuple[str, ...] = (),
                 miners: list[str] | tuple[str, ...] = (), validator_stake: float = 10_000.0):
        self.netuid = netuid
        hotkeys = [miner_hotkey]
        permits = [False]
        stakes = [0.0]
        for hk in validators:
            if hk in hotkeys:
                continue
            hotkeys.append(hk)
            permits.append(True)
            stakes.append(float(validator_stake))
        for hk in miners:
            if hk in hotkeys:
                continue
            hotkeys.append(hk)
            permits.append(False)
            stakes.append(0.0)
        self._hotkeys = tuple(hotkeys)
        self._permits = tuple(permits)
        self._stakes = tuple(stakes)
        self._t0 = time.time()
        self.served: list[tuple[str, int]] = []

    def snapshot(self) -> ChainSnapshot:
        block = int((time.time() - self._t0) / 12.0)  # one mock block per 12 s, like the chain
        return ChainSnapshot(self._hotkeys, self._permits, self._stakes, block)

    def serve_axon(self, axon: Any) -> None:
        self.served.append((getattr(axon, "external_ip", "127.0.0.1"), getattr(axon, "external_port", 0)))


def snapshot_from_metagraph(metagraph: Any) -> ChainSnapshot:
    """Convert a bittensor ``Metagraph`` (numpy or torch backed) into a snapshot."""
    import numpy as np

    def arr(x: Any) -> list:
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        return np.asarray(x).tolist()

    hotkeys = tuple(str(h) for h in metagraph.hotkeys)
    permits = tuple(bool(v) for v in arr(metagraph.validator_permit))
    stake_src = getattr(metagraph, "S", None)
    if stake_src is None:
        stake_src = metagraph.stake
    stakes = tuple(float(v) for v in arr(stake_src))
    block_arr = arr(metagraph.block)
    block = int(block_arr[0] if isinstance(block_arr, list) and block_arr else block_arr or 0)
    return ChainSnapshot(hotkeys, permits, stakes, block)


class SubtensorChain:
    """A real chain through bittensor 10.5 (imported lazily)."""

    def __init__(self, netuid: int, network: str, chain_endpoint: str | None = None):
        import bittensor as bt

        self.netuid = netuid
        self.network = network
        self._subtensor = bt.Subtensor(network=chain_endpoint or network)

    @property
    def subtensor(self) -> Any:
        return self._subtensor

    def snapshot(self) -> ChainSnapshot:
        mg = self._subtensor.metagraph(netuid=self.netuid, lite=True)
        return snapshot_from_metagraph(mg)

    def serve_axon(self, axon: Any) -> None:
        axon.serve(netuid=self.netuid, subtensor=self._subtensor)
