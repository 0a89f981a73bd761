"""The miner neuron: wallet, chain view, cascade engine and axon, wired together.

Life cycle (``Miner.run``): build the wallet and the chain view → check our hotkey is registered
(exit with the ``btcli`` command otherwise) → load and warm up the engine (the axon only starts
serving once models are ready) → start the axon (on a real chain also publish it with
``serve_axon``) → resync the metagraph in a background thread → wait for SIGINT/SIGTERM → stop
the axon and the engine within a few seconds.

Request path (``forward``): decode the image in a worker thread (bounded, never on the event
loop) → ``engine.infer`` (micro-batched, worker threads) under a hard deadline → a finite
prediction in [ε, 1−ε], never exactly 0.5. Any failure yields the safe fallback answer instead
of -1.

No ``from __future__ import annotations`` here on purpose: bittensor's ``Axon.attach`` compares
the blacklist/priority signatures, including their annotations, against real types.
"""

import asyncio
import signal
import tempfile
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

from natix_miner import __version__
from natix_miner.engine.consensus import finalize
from natix_miner.neuron.blacklist import BlacklistPolicy, RateLimiter, caller_priority, check_caller
from natix_miner.neuron.chain import ChainSnapshot
from natix_miner.neuron.config import MinerConfig
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse

# A validator waits 9 s (docs/protocol.md §2.5); answer with this much left for the network and the axon.
RESPONSE_MARGIN_S = 1.5
# "no roadwork", never 0.5, only when nothing else can answer; finalize() is the engine's one rule for
# safe wire values (finite, in [eps, 1 - eps], never exactly 0.5)
FALLBACK_PREDICTION = finalize(None)


@dataclass
class MinerStats:
    requests: int = 0
    answered: int = 0
    fallbacks: int = 0
    decode_errors: int = 0
    rate_limited: int = 0
    busy_refused: int = 0
    last_latency_ms: float = 0.0
    started_at: float = field(default_factory=time.time)


class Miner:
    def __init__(self, config: MinerConfig, *, engine: typing.Any = None, chain: typing.Any = None,
                 wallet: typing.Any = None, telemetry: typing.Any = None):
        self.config = config
        self.engine = engine
        self.chain = chain
        self.wallet = wallet
        self.telemetry = telemetry
        self.axon: typing.Any = None
        self.snapshot: typing.Optional[ChainSnapshot] = None
        self.uid: typing.Optional[int] = None
        self.stats = MinerStats()
        self.policy = BlacklistPolicy(require_permit=config.require_permit, min_stake=config.min_stake)
        self.rate_limiter = RateLimiter(getattr(config, "rate_limit", 0) or 0)
        # Requests in flight, so that a flood cannot queue unbounded work behind validators. The blacklist
        # reserves a slot atomically (requests of a burst reach it before any forward starts); forward
        # claims the reservation by (hotkey, nonce) and frees it at the end. A request refused after the
        # blacklist (bad signature, replay) never reaches forward: its reservation expires.
        self._inflight = 0
        self._inflight_by: dict = {}
        self._reserved: dict = {}  # (hotkey, nonce) -> reserved at (monotonic)
        self._inflight_lock = threading.Lock()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._sync_thread: typing.Optional[threading.Thread] = None
        self._tmpdir: typing.Optional[tempfile.TemporaryDirectory] = None
        self._profile: typing.Any = None
        self._decode_limits: typing.Any = None
        self._health: typing.Any = None

    # ------------------------------------------------------------------------------ setup
    def _make_wallet(self) -> typing.Any:
        import bittensor as bt

        cfg = self.config
        if cfg.mock and not cfg.wallet_given:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="natix-mock-wallet-")
            w = bt.Wallet(path=self._tmpdir.name, name="mock-miner", hotkey="default")
            w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
            logger.info(f"mock: throwaway wallet in {self._tmpdir.name}")
            return w
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
        return w

    def _make_chain(self) -> typing.Any:
        cfg = self.config
        if cfg.mock:
            from natix_miner.neuron.chain import LocalMockChain

            return LocalMockChain(cfg.netuid, self.wallet.hotkey.ss58_address, cfg.mock_validators,
                                  cfg.mock_miners, cfg.mock_validator_stake)
        from natix_miner.neuron.chain import SubtensorChain

        return SubtensorChain(cfg.netuid, cfg.subtensor_network, cfg.subtensor_chain_endpoint)

    def _make_engine(self) -> typing.Any:
        from natix_miner.engine.cascade import CascadeEngine
        from natix_miner.profile import load_profile

        self._profile = load_profile(self.config.profile)
        if self.config.deadline_s is not None:  # profiles are frozen: overrides are validated copies
            self._profile = self._profile.replace(deadline_s=self.config.deadline_s)
        if self.config.no_cache:
            self._profile = self._profile.replace(cache={"enabled": False})
        return CascadeEngine(self._profile, allow_restricted=self.config.allow_restricted,
                             devices=self.config.devices())

    def check_registered(self) -> None:
        hotkey = self.wallet.hotkey.ss58_address
        snap = self.chain.snapshot()
        self.snapshot = snap
        uid = snap.uid_of(hotkey)
        if uid is None:
            cfg = self.config
            net = cfg.subtensor_network
            raise SystemExit(
                f"hotkey {hotkey} is not registered on netuid {cfg.netuid} ({net}). Register it first "
                f"(this costs TAO; try testnet 323 with --subtensor.network test):\n"
                f"  btcli subnets register --netuid {cfg.netuid} --wallet-name {self.wallet.name} "
                f"--hotkey {self.wallet.hotkey_str} --network {net}"
            )
        self.uid = uid
        logger.info(f"hotkey {hotkey} is uid {uid} on netuid {self.config.netuid} ({self.chain.network}), "
                    f"{snap.n} neurons, {sum(snap.validator_permit)} with validator permit")

    def status(self) -> dict:
        """What /health and /stats report."""
        s = self.stats
        out = {
            "ready": self.ready.is_set(),
            "uid": self.uid,
            "hotkey": self.wallet.hotkey.ss58_address if self.wallet is not None else None,
            "netuid": self.config.netuid,
            "network": getattr(self.chain, "network", None),
            "profile": getattr(self._profile, "name", None),
            "version": __version__,
            "uptime_s": round(time.time() - s.started_at, 1),
            "requests": s.requests,
            "answered": s.answered,
            "fallbacks": s.fallbacks,
            "decode_errors": s.decode_errors,
            "rate_limited": s.rate_limited,
            "busy_refused": s.busy_refused,
            "in_flight": self._inflight,
            "last_latency_ms": round(s.last_latency_ms, 1),
            "metagraph_block": self.snapshot.block if self.snapshot is not None else None,
            "metagraph_age_s": round(time.time() - self.snapshot.synced_at, 1) if self.snapshot is not None else None,
        }
        if self.engine is not None and hasattr(self.engine, "stats"):
            try:
                out["engine"] = self.engine.stats()
            except Exception as e:
                out["engine"] = {"error": str(e)}
        return out

    def setup(self) -> None:
        """Everything up to (not including) starting the axon. Raises SystemExit with a clear message."""
        from natix_miner.imaging import DecodeLimits

        if self.config.health_port:
            from natix_miner.neuron.health import HealthServer

            self._health = HealthServer(self.config.health_host, self.config.health_port, self.status).start()

        if self.config.mock:
            from natix_miner.neuron.offline import disable_external_ip_lookup

            disable_external_ip_lookup("127.0.0.1")
        self._decode_limits = DecodeLimits()
        from natix_miner.imaging import warmup as imaging_warmup

        imaging_warmup()
        if self.wallet is None:
            self.wallet = self._make_wallet()
        if self.chain is None:
            self.chain = self._make_chain()
        self.check_registered()
        if self.engine is None:
            self.engine = self._make_engine()
        t0 = time.monotonic()
        self.engine.start()
        logger.info(f"engine ready in {time.monotonic() - t0:.1f} s")
        self.axon = self._make_axon()

    def _make_axon(self) -> typing.Any:
        import bittensor as bt

        cfg = self.config
        ip = "127.0.0.1" if cfg.mock else cfg.axon_ip
        external_ip = cfg.axon_external_ip or ("127.0.0.1" if cfg.mock else None)
        axon = bt.Axon(wallet=self.wallet, port=cfg.axon_port, ip=ip, external_ip=external_ip,
                       external_port=cfg.axon_external_port, max_workers=cfg.axon_max_workers)
        if cfg.mock:
            axon.fast_config.host = "127.0.0.1"  # loopback only
        elif ip in ("[::]", "::"):
            axon.fast_config.host = "::"
        axon.attach(forward_fn=self.forward, blacklist_fn=self.blacklist, priority_fn=self.priority)
        axon.attach(forward_fn=self.forward_extended, blacklist_fn=self.blacklist_extended,
                    priority_fn=self.priority_extended)
        return axon

    # ------------------------------------------------------------------------------ axon handlers
    def blacklist(self, synapse: ImageSynapse) -> typing.Tuple[bool, str]:
        try:
            hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
            blacklisted, reason = check_caller(hotkey, self.snapshot, self.policy)
            if not blacklisted and not self.rate_limiter.allow(hotkey):
                self.stats.rate_limited += 1
                blacklisted, reason = True, f"rate limit exceeded for {hotkey}"
            if not blacklisted:
                busy = self._reserve(hotkey, synapse.dendrite.nonce)
                if busy is not None:
                    self.stats.busy_refused += 1
                    blacklisted, reason = True, busy
            if blacklisted:
                logger.debug(f"blacklisted: {reason}")
            return blacklisted, reason
        except Exception as e:  # never raise inside the axon's blacklist step
            return True, f"blacklist error: {type(e).__name__}"

    RESERVATION_TTL_S = 5.0

    def _count(self, hotkey: typing.Optional[str], delta: int) -> None:
        self._inflight += delta
        if hotkey is not None:
            n = self._inflight_by.get(hotkey, 0) + delta
            if n > 0:
                self._inflight_by[hotkey] = n
            else:
                self._inflight_by.pop(hotkey, None)

    def _reserve(self, hotkey: typing.Optional[str], nonce: typing.Any) -> typing.Optional[str]:
        """Reserve an in-flight slot for this request; a refusal reason when a cap is reached."""
        cap, per = self.config.max_concurrent, self.config.max_concurrent_per_hotkey
        now = time.monotonic()
        with self._inflight_lock:
            for key, t in list(self._reserved.items()):
                if now - t > self.RESERVATION_TTL_S:
                    del self._reserved[key]
                    self._count(key[0], -1)
            if cap and self._inflight >= cap:
                return f"miner busy: {self._inflight} requests in flight (--blacklist.max_concurrent {cap})"
            if per and hotkey is not None and self._inflight_by.get(hotkey, 0) >= per:
                return f"too many requests in flight from {hotkey} (--blacklist.max_concurrent_per_hotkey {per})"
            key = (hotkey, nonce)
            if key not in self._reserved:
                self._reserved[key] = now
                self._count(hotkey, +1)
        return None

    def _claim(self, hotkey: typing.Optional[str], nonce: typing.Any) -> None:
        with self._inflight_lock:
            if self._reserved.pop((hotkey, nonce), None) is None:  # no reservation (expired, direct call)
                self._count(hotkey, +1)

    def _release(self, hotkey: typing.Optional[str]) -> None:
        with self._inflight_lock:
            self._count(hotkey, -1)

    def priority(self, synapse: ImageSynapse) -> float:
        try:
            hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
            return caller_priority(hotkey, self.snapshot)
        except Exception:
            return 0.0

    def blacklist_extended(self, synapse: ExtendedImageSynapse) -> typing.Tuple[bool, str]:
        return self.blacklist(synapse)

    def priority_extended(self, synapse: ExtendedImageSynapse) -> float:
        return self.priority(synapse)

    async def forward_extended(self, synapse: ExtendedImageSynapse) -> ExtendedImageSynapse:
        return await self.forward(synapse)

    async def forward(self, synapse: ImageSynapse) -> ImageSynapse:
        hotkey = synapse.dendrite.hotkey if synapse.dendrite is not None else None
        nonce = synapse.dendrite.nonce if synapse.dendrite is not None else None
        self._claim(hotkey, nonce)
        try:
            return await self._forward(synapse)
        finally:
            self._release(hotkey)

    async def _forward(self, synapse: ImageSynapse) -> ImageSynapse:
        t0 = time.monotonic()
        self.stats.requests += 1
        timeout = synapse.timeout if synapse.timeout and synapse.timeout > 0 else 9.0
        deadline_s = self._profile.deadline_s if self._profile is not None else 6.0
        budget = max(0.2, min(deadline_s, float(timeout) - RESPONSE_MARGIN_S))
        deadline_at = t0 + budget
        exit_tier, exit_reason = None, "fallback"
        prediction = FALLBACK_PREDICTION
        confidence = None
        try:
            from natix_miner.imaging import ImageDecodeError, decode_b64_image

            try:
                decoded = await asyncio.wait_for(
                    asyncio.to_thread(decode_b64_image, synapse.image, self._decode_limits),
                    timeout=max(0.05, deadline_at - time.monotonic()),
                )
            except ImageDecodeError as e:
                self.stats.decode_errors += 1
                logger.warning(f"undecodable image ({getattr(e, 'reason', 'error')}): {e}; answering the fallback")
                decoded = None
            if decoded is not None:
                from natix_miner.engine.deadline import Deadline

                result = await asyncio.wait_for(
                    self.engine.infer(decoded.image, key=decoded.sha256, deadline=Deadline(deadline_at)),
                    timeout=max(0.05, deadline_at - time.monotonic() + 0.25),
                )
                prediction = result.prediction
                confidence = result.confidence
                exit_tier = result.tiers_used[-1] if result.tiers_used else None
                exit_reason = result.exit_reason
        except asyncio.TimeoutError:
            logger.warning(f"request overran its {budget:.2f} s budget; answering the fallback")
        except Exception as e:  # the miner must answer whatever happens
            logger.exception(f"forward failed: {type(e).__name__}: {e}; answering the fallback")
        eps = self._profile.calibration.epsilon if self._profile is not None else 1e-3
        prediction = finalize(prediction, eps)
        if exit_reason == "fallback":
            self.stats.fallbacks += 1
        synapse.prediction = prediction
        synapse.confidence = confidence if confidence is not None else max(prediction, 1 - prediction)
        synapse.exit_tier = exit_tier
        synapse.model_version = f"natix-miner {__version__} / {getattr(self._profile, 'name', 'custom')}"
        latency_ms = (time.monotonic() - t0) * 1000.0
        self.stats.answered += 1
        self.stats.last_latency_ms = latency_ms
        label = synapse.testnet_label if synapse.testnet_label in (0, 1) else None
        if label is not None:
            logger.info(f"testnet_label={label} prediction={prediction:.4f}")
        if self.telemetry is not None:
            try:
                self.telemetry.log_request(latency_ms=latency_ms, prediction=prediction, exit_tier=exit_tier,
                                           exit_reason=exit_reason, label=label)
            except Exception as e:
                logger.debug(f"telemetry failed: {e}")
        logger.debug(f"answered {prediction:.4f} in {latency_ms:.1f} ms ({exit_reason})")
        return synapse

    # ------------------------------------------------------------------------------ run loop
    def _sync_loop(self) -> None:
        interval = max(1.0, float(self.config.sync_interval))
        while not self._stop.wait(interval):
            try:
                snap = self.chain.snapshot()
                self.snapshot = snap
                uid = snap.uid_of(self.wallet.hotkey.ss58_address)
                if uid is None:
                    logger.error("our hotkey is no longer registered (deregistered?); validators will not "
                                 "query this miner until it is registered again")
                elif uid != self.uid:
                    logger.warning(f"our uid changed {self.uid} -> {uid}")
                    self.uid = uid
            except Exception as e:  # keep serving on the last good snapshot
                logger.warning(f"metagraph sync failed ({type(e).__name__}: {e}); keeping the last snapshot")

    def start(self) -> None:
        """Start serving (after :meth:`setup`)."""
        if not self.config.mock:
            try:
                self.chain.serve_axon(self.axon)
                logger.info(f"axon published on chain: {self.axon.external_ip}:{self.axon.external_port}")
            except Exception as e:
                logger.error(f"serve_axon failed ({e}); validators only query axons published on chain")
        self.axon.start()
        # Axon.start() returns before uvicorn listens: wait so "ready" means "accepting requests".
        t0 = time.monotonic()
        while not getattr(self.axon.fast_server, "started", True):
            if time.monotonic() - t0 > 30:
                raise RuntimeError(f"axon did not start listening on port {self.axon.port} within 30 s "
                                   "(port in use?)")
            time.sleep(0.01)
        self.ready.set()
        logger.info(f"axon serving on {self.axon.fast_config.host}:{self.axon.port} "
                    f"(hotkey {self.wallet.hotkey.ss58_address}); ready")
        self._sync_thread = threading.Thread(target=self._sync_loop, name="metagraph-sync", daemon=True)
        self._sync_thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.ready.clear()
        if self.axon is not None:
            try:
                self.axon.stop()
            except Exception as e:
                logger.warning(f"axon stop: {e}")
        if self.engine is not None:
            try:
                self.engine.close()
            except Exception as e:
                logger.warning(f"engine close: {e}")
        if self._health is not None:
            try:
                self._health.stop()
            except Exception:
                pass
            self._health = None
        if self.telemetry is not None:
            try:
                self.telemetry.close()
            except Exception:
                pass
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        logger.info("miner stopped")

    def run(self, status_interval: float = 60.0) -> None:
        """Set up, serve until SIGINT/SIGTERM, then stop. Blocks."""
        def _on_signal(signum, _frame):
            logger.info(f"signal {signal.Signals(signum).name}: stopping")
            self._stop.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _on_signal)
            signal.signal(signal.SIGTERM, _on_signal)
        self.setup()
        try:
            self.start()
            last = time.monotonic()
            while not self._stop.wait(0.5):
                if time.monotonic() - last >= status_interval:
                    last = time.monotonic()
                    s = self.stats
                    logger.info(f"status: uid {self.uid} requests {s.requests} answered {s.answered} "
                                f"fallbacks {s.fallbacks} decode_errors {s.decode_errors} "
                                f"rate_limited {s.rate_limited} last_latency {s.last_latency_ms:.0f} ms")
        finally:
            self.stop()
