"""The miner's wiring: its parts built from the config, and its life cycle.

``natix_miner.neuron.miner.Miner`` answers requests (forward, blacklist, priority); this module builds
what it answers with and runs it:

- :func:`make_wallet`, :func:`make_chain`, :func:`miner_profile`, :func:`make_engine`, :func:`make_axon`:
  one part each from a :class:`~natix_miner.neuron.config.MinerConfig`;
- :func:`check_registered`: our hotkey's uid, or ``SystemExit`` with the ``btcli`` command;
- :func:`setup` → :func:`start` → (:func:`sync_loop` in a thread) → :func:`stop`, and :func:`run`, which
  does all of them until SIGINT/SIGTERM. ``Miner.setup/start/stop/run`` call these.

Heavy packages (bittensor, the engine) are imported inside the functions that need them.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from natix_miner.neuron.chain import Chain, ChainSnapshot
from natix_miner.neuron.config import MinerConfig

if TYPE_CHECKING:
    from natix_miner.neuron.miner import Miner
    from natix_miner.profile import Profile
    from natix_miner.types import Engine

# Idle keep-alive of the axon's HTTP server. uvicorn's default (5 s) is shorter than the 15 s an aiohttp
# client (the validators' dendrite) keeps an idle connection: a request sent on a connection the server is
# just closing fails with "Server disconnected" / "Connection reset" (a -1). Longer than the client's, the
# client always closes first and never reuses a connection the server has dropped.
AXON_KEEP_ALIVE_S = 20


# ------------------------------------------------------------------------------ parts
def make_wallet(cfg: MinerConfig) -> tuple[Any, tempfile.TemporaryDirectory | None]:
    """The wallet, and the temporary folder holding it for ``--mock`` without a wallet (else None)."""
    import bittensor as bt

    if cfg.mock and not cfg.wallet_given:
        tmpdir = tempfile.TemporaryDirectory(prefix="natix-mock-wallet-")
        w = bt.Wallet(path=tmpdir.name, name="mock-miner", hotkey="default")
        w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
        logger.info(f"mock: throwaway wallet in {tmpdir.name}")
        return w, tmpdir
    args = cfg.wallet_args()
    w = bt.Wallet(**args)
    hotkey_file = Path(args["path"]) / args["name"] / "hotkeys" / args["hotkey"]
    if not hotkey_file.exists():
        if cfg.mock:
            w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
            logger.warning(f"mock: created wallet {args['name']}/{args['hotkey']} in {args['path']}")
        else:
            raise SystemExit(
                f"hotkey file {hotkey_file} not found. Create the wallet with:\n"
                f"  btcli wallet new_coldkey --wallet-name {args['name']} --wallet-path {args['path']}\n"
                f"  btcli wallet new_hotkey --wallet-name {args['name']} --hotkey {args['hotkey']} "
                f"--wallet-path {args['path']}"
            )
    return w, None


def make_chain(cfg: MinerConfig, hotkey: str) -> Chain:
    """The local mock chain (``--mock``, ``hotkey`` registered as uid 0) or a real subtensor."""
    if cfg.mock:
        from natix_miner.neuron.chain import LocalMockChain

        return LocalMockChain(cfg.netuid, hotkey, cfg.mock_validators, cfg.mock_miners, cfg.mock_validator_stake)
    from natix_miner.neuron.chain import SubtensorChain

    return SubtensorChain(cfg.netuid, cfg.subtensor_network, cfg.subtensor_chain_endpoint)


def miner_profile(cfg: MinerConfig) -> Profile:
    """The profile with the command line's overrides (profiles are frozen: overrides are validated copies)."""
    from natix_miner.profile import load_profile

    profile = load_profile(cfg.profile)
    if cfg.deadline_s is not None:
        profile = profile.replace(deadline_s=cfg.deadline_s)
    if cfg.no_cache:
        profile = profile.replace(cache={"enabled": False})
    return profile


def make_engine(cfg: MinerConfig, profile: Profile) -> Engine:
    """An in-process ``CascadeEngine``, or a ``RemoteEngine`` for ``--engine.remote URL``."""
    if cfg.engine_remote:
        from natix_miner.engine.remote import make_remote_engine

        return make_remote_engine(cfg.engine_remote, profile, cfg.engine_remote_fallback,
                                  allow_restricted=cfg.allow_restricted, devices=cfg.devices())
    from natix_miner.engine.cascade import CascadeEngine

    return CascadeEngine(profile, allow_restricted=cfg.allow_restricted, devices=cfg.devices())


def check_registered(cfg: MinerConfig, wallet: Any, chain: Chain) -> tuple[ChainSnapshot, int]:
    """A fresh snapshot and our uid; ``SystemExit`` with the ``btcli`` command when not registered."""
    hotkey = wallet.hotkey.ss58_address
    snap = chain.snapshot()
    uid = snap.uid_of(hotkey)
    if uid is None:
        net = cfg.subtensor_network
        raise SystemExit(
            f"hotkey {hotkey} is not registered on netuid {cfg.netuid} ({net}). Register it first "
            f"(this costs TAO; try testnet 323 with --subtensor.network test):\n"
            f"  btcli subnets register --netuid {cfg.netuid} --wallet-name {wallet.name} "
            f"--hotkey {wallet.hotkey_str} --network {net}"
        )
    logger.info(f"hotkey {hotkey} is uid {uid} on netuid {cfg.netuid} ({chain.network}), "
                f"{snap.n} neurons, {sum(snap.validator_permit)} with validator permit")
    return snap, uid


def make_axon(cfg: MinerConfig, wallet: Any, miner: Miner) -> Any:
    """A bittensor axon with the miner's handlers attached for both synapse types (loopback for --mock)."""
    import bittensor as bt

    ip = "127.0.0.1" if cfg.mock else cfg.axon_ip
    external_ip = cfg.axon_external_ip or ("127.0.0.1" if cfg.mock else None)
    axon = bt.Axon(wallet=wallet, port=cfg.axon_port, ip=ip, external_ip=external_ip,
                   external_port=cfg.axon_external_port, max_workers=cfg.axon_max_workers)
    axon.fast_config.timeout_keep_alive = AXON_KEEP_ALIVE_S
    if cfg.mock:
        axon.fast_config.host = "127.0.0.1"  # loopback only
    elif ip in ("[::]", "::"):
        axon.fast_config.host = "::"
    axon.attach(forward_fn=miner.forward, blacklist_fn=miner.blacklist, priority_fn=miner.priority)
    axon.attach(forward_fn=miner.forward_extended, blacklist_fn=miner.blacklist_extended,
                priority_fn=miner.priority_extended)
    return axon


# ------------------------------------------------------------------------------ life cycle
def setup(miner: Miner) -> None:
    """Everything up to (not including) starting the axon. Raises SystemExit with a clear message."""
    from natix_miner.imaging import DecodeLimits
    from natix_miner.imaging import warmup as imaging_warmup

    cfg = miner.config
    if cfg.health_port:
        from natix_miner.neuron.health import HealthServer

        miner._health = HealthServer(cfg.health_host, cfg.health_port, miner.status).start()
    if cfg.mock:
        from natix_miner.neuron.offline import disable_external_ip_lookup

        disable_external_ip_lookup("127.0.0.1")
    miner.decode_limits = DecodeLimits()
    imaging_warmup()
    if miner.wallet is None:
        miner.wallet, miner._tmpdir = make_wallet(cfg)
    if miner.chain is None:
        miner.chain = make_chain(cfg, miner.wallet.hotkey.ss58_address)
    miner.check_registered()
    if miner.engine is None:
        miner.profile = miner_profile(cfg)
        miner.engine = make_engine(cfg, miner.profile)
    t0 = time.monotonic()
    miner.engine.start()
    logger.info(f"engine ready in {time.monotonic() - t0:.1f} s")
    if cfg.record_dir:
        from natix_miner.neuron.recorder import Recorder

        miner.recorder = Recorder(cfg.record_dir, cfg.record_max_gb).start()
    miner.axon = make_axon(cfg, miner.wallet, miner)


def sync_loop(miner: Miner) -> None:
    """Resync the metagraph every ``--neuron.sync_interval`` until the miner stops; keep the last good one."""
    interval = max(1.0, float(miner.config.sync_interval))
    while not miner._stop.wait(interval):
        try:
            snap = miner.chain.snapshot()
            miner.snapshot = snap
            uid = snap.uid_of(miner.wallet.hotkey.ss58_address)
            if uid is None:
                logger.error("our hotkey is no longer registered (deregistered?); validators will not "
                             "query this miner until it is registered again")
            elif uid != miner.uid:
                logger.warning(f"our uid changed {miner.uid} -> {uid}")
                miner.uid = uid
        except Exception as e:  # keep serving on the last good snapshot
            logger.warning(f"metagraph sync failed ({type(e).__name__}: {e}); keeping the last snapshot")


def start(miner: Miner) -> None:
    """Start serving (after :func:`setup`): publish the axon on a real chain, listen, start the sync thread."""
    axon = miner.axon
    if not miner.config.mock:
        try:
            miner.chain.serve_axon(axon)
            logger.info(f"axon published on chain: {axon.external_ip}:{axon.external_port}")
        except Exception as e:
            logger.error(f"serve_axon failed ({e}); validators only query axons published on chain")
    axon.start()
    # Axon.start() returns before uvicorn listens: wait so "ready" means "accepting requests".
    t0 = time.monotonic()
    while not getattr(axon.fast_server, "started", True):
        if time.monotonic() - t0 > 30:
            raise RuntimeError(f"axon did not start listening on port {axon.port} within 30 s (port in use?)")
        time.sleep(0.01)
    miner.ready.set()
    logger.info(f"axon serving on {axon.fast_config.host}:{axon.port} "
                f"(hotkey {miner.wallet.hotkey.ss58_address}); ready")
    miner._sync_thread = threading.Thread(target=sync_loop, args=(miner,), name="metagraph-sync", daemon=True)
    miner._sync_thread.start()


def _quietly(what: str, fn: Any) -> None:
    try:
        fn()
    except Exception as e:
        logger.warning(f"{what}: {e}")


def stop(miner: Miner) -> None:
    """Stop the axon, the engine, the recorder, the health server and telemetry; never raises."""
    miner._stop.set()
    miner.ready.clear()
    if miner.axon is not None:
        _quietly("axon stop", miner.axon.stop)
    if miner.engine is not None:
        _quietly("engine close", miner.engine.close)
    if miner.recorder is not None:
        miner.recorder.close()
    if miner._health is not None:
        _quietly("health server stop", miner._health.stop)
        miner._health = None
    if miner.telemetry is not None:
        _quietly("telemetry close", miner.telemetry.close)
    if miner._tmpdir is not None:
        miner._tmpdir.cleanup()
        miner._tmpdir = None
    logger.info("miner stopped")


def run(miner: Miner, status_interval: float = 60.0) -> None:
    """Set up, serve until SIGINT/SIGTERM (a status line every ``status_interval`` s), then stop. Blocks."""
    def _on_signal(signum: int, _frame: Any) -> None:
        logger.info(f"signal {signal.Signals(signum).name}: stopping")
        miner._stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
    miner.setup()
    try:
        miner.start()
        last = time.monotonic()
        while not miner._stop.wait(0.5):
            if time.monotonic() - last >= status_interval:
                last = time.monotonic()
                s = miner.stats
                logger.info(f"status: uid {miner.uid} requests {s.requests} answered {s.answered} "
                            f"fallbacks {s.fallbacks} decode_errors {s.decode_errors} "
                            f"rate_limited {s.rate_limited} busy_refused {s.busy_refused} degraded {s.degraded} "
                            f"last_latency {s.last_latency_ms:.0f} ms")
    finally:
        miner.stop()
