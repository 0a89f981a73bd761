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
from natix_miner.neuron.admission import CHEAP, Admission, SingleFlight
from natix_miner.neuron.blacklist import (BlacklistPolicy, RateLimiter, caller_priority, check_caller,
                                           has_validator_permit)
from natix_miner.neuron.chain import ChainSnapshot
from natix_miner.neuron.config import MinerConfig
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse

# A validator waits 9 s (PROTOCOL §2.5); answer with this much left for the network and the axon.
RESPONSE_MARGIN_S = 1.5
# The hard cut: an engine call still running this long after the request's deadline is abandoned and the
# fallback answered, so every accepted request is answered within deadline + HARD_CUT_GRACE_S of receipt
# (plus the event loop's own scheduling delay), far inside the validators' 9 s.
HARD_CUT_GRACE_S = 0.25
# Idle keep-alive of the axon's HTTP server. uvicorn's default (5 s) is shorter than the 15 s an aiohttp
# client (the validators' dendrite) keeps an idle connection: a request sent on a connection the server is
# just closing fails with "Server disconnected" / "Connection reset" (a -1). Longer than the client's, the
# client always closes first and never reuses a connection the server has dropped.
AXON_KEEP_ALIVE_S = 20
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
    degraded: int = 0  # validator requests answered from the cache / fallback because the engine was too busy
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
        # Requests in flight and deadline-aware admission: hard caps for callers without a validator
        # permit, degraded (cache / fallback) answers instead of 403 for validators (neuron/admission.py)
        self.admission = Admission(config.max_concurrent, config.max_concurrent_per_hotkey)
        self._flights = SingleFlight()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._sync_thread: typing.Optional[threading.Thread] = None
        self._tmpdir: typing.Optional[tempfile.TemporaryDirectory] = None
        self._profile: typing.Any = None
        self._decode_limits: typing.Any = None
        self._health: typing.Any = None
        self.recorder: typing.Any = None  # --record.dir (natix_miner.neuron.recorder)

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
        if self.config.deadline_s is not None:
            self._profile.deadline_s = self.config.deadline_s
        if self.config.no_cache:
            self._profile.cache.enabled = False
        if getattr(self.config, "engine_remote", None):
            from natix_miner.engine.remote import make_remote_engine

            return make_remote_engine(self.config.engine_remote, self._profile, self.config.engine_remote_fallback,
                                      allow_restricted=self.config.allow_restricted, devices=self.config.devices())
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
            "degraded": s.degraded,
            "in_flight": self.admission.inflight,
            "admission": self.admission.snapshot(),
            "last_latency_ms": round(s.last_latency_ms, 1),
            "metagraph_block": self.snapshot.block if self.snapshot is not None else None,
            "metagraph_age_s": round(time.time() - self.snapshot.synced_at, 1) if self.snapshot is not None else None,
        }
        if self.recorder is not None:
            out["recording"] = self.recorder.snapshot()
        if self.engine is not None and hasattr(self.engine, "stats"):
            try:
                out["engine"] = self.engine.stats()
            except Exception as e:
                out["engine"] = {"error": str(e)}
        # a remote engine answering from its fallback (service down or slow) is degraded, not down
        out["degraded"] = bool(getattr(self.engine, "degraded", False))
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
        if getattr(self.config, "record_dir", None):
            from natix_miner.neuron.recorder import Recorder

            self.recorder = Recorder(self.config.record_dir, self.config.record_max_gb).start()
        self.axon = self._make_axon()

    def _make_axon(self) -> typing.Any:
        import bittensor as bt

        cfg = self.config
        ip = "127.0.0.1" if cfg.mock else cfg.axon_ip
        external_ip = cfg.axon_external_ip or ("127.0.0.1" if cfg.mock else None)
        axon = bt.Axon(wallet=self.wallet, port=cfg.axon_port, ip=ip, external_ip=external_ip,
                       external_port=cfg.axon_external_port, max_workers=cfg.axon_max_workers)
        axon.fast_config.timeout_keep_alive = AXON_KEEP_ALIVE_S
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
                busy = self.admission.reserve(hotkey, synapse.dendrite.nonce,
                                              validator=has_validator_permit(hotkey, self.snapshot))
                if busy is not None:
                    self.stats.busy_refused += 1
                    blacklisted, reason = True, busy
            if blacklisted:
                logger.debug(f"blacklisted: {reason}")
            return blacklisted, reason
        except Exception as e:  # never raise inside the axon's blacklist step
            return True, f"blacklist error: {type(e).__name__}"

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
        received_at = self.admission.claim(hotkey, nonce)
        try:
            return await self._forward(synapse, received_at)
        finally:
            self.admission.release(hotkey)

    async def _forward(self, synapse: ImageSynapse, received_at: typing.Optional[float] = None) -> ImageSynapse:
        # the deadline counts from when the request passed the blacklist (the axon's verify/priority steps
        # before forward can take seconds on a saturated machine), else from now
        now = time.monotonic()
        t0 = received_at if received_at is not None and received_at <= now else now
        self.stats.requests += 1
        timeout = synapse.timeout if synapse.timeout and synapse.timeout > 0 else 9.0
        deadline_s = self._profile.deadline_s if self._profile is not None else 6.0
        budget = max(0.2, min(deadline_s, float(timeout) - RESPONSE_MARGIN_S))
        deadline_at = t0 + budget
        exit_tier, exit_reason = None, "fallback"
        prediction = FALLBACK_PREDICTION
        confidence = None
        result = decoded = None
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
            result = await self._answer(decoded, deadline_at) if decoded is not None else None
            if result is not None:
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
        if self.recorder is not None:
            self._record(synapse, t0, latency_ms, decoded, result)
        logger.debug(f"answered {prediction:.4f} in {latency_ms:.1f} ms ({exit_reason})")
        return synapse

    async def _answer(self, decoded: typing.Any, deadline_at: float) -> typing.Any:
        """The engine's result for a decoded image, or None (-> the fallback answer).

        A copy of an image already being computed waits for that computation; a new image runs in the
        engine when the admission plan expects it to finish by the deadline, else it is answered from
        the result cache when possible (a degraded answer, never a refusal)."""
        key = decoded.sha256
        running = self._flights.running(key)
        if running is not None:
            self.admission.stats.joined += 1
            return await self._flights.join(running, deadline_at - time.monotonic() + HARD_CUT_GRACE_S)
        if self.admission.plan(deadline_at) == CHEAP:
            self.stats.degraded += 1
            cache = getattr(self.engine, "cache", None)
            hit = cache.get(key) if cache is not None else None
            logger.debug(f"engine busy ({self.admission.snapshot()}); answering from "
                         f"{'the cache' if hit is not None else 'the fallback'}")
            return hit

        async def compute() -> typing.Any:
            from natix_miner.engine.deadline import Deadline

            ahead = self.admission.begin()
            t0 = time.monotonic()
            elapsed = None
            try:
                res = await asyncio.wait_for(
                    self.engine.infer(decoded.image, key=key, deadline=Deadline(deadline_at)),
                    timeout=max(0.05, deadline_at - time.monotonic() + HARD_CUT_GRACE_S),
                )
                # measure only answers a model computed: a cache hit, a fallback, or a tier the engine skipped
                # for lack of time ("no_votes" with no tier used) returns at once and says nothing about speed
                if getattr(res, "tiers_used", None) and getattr(res, "exit_reason", None) not in ("cache", "fallback"):
                    elapsed = time.monotonic() - t0
                return res
            finally:
                self.admission.end(elapsed, ahead)

        return await self._flights.lead(key, compute)

    def _record(self, synapse: ImageSynapse, t0: float, latency_ms: float, decoded: typing.Any,
                result: typing.Any) -> None:
        """Hand the request to the recorder (a non-blocking queue put; never raises)."""
        from natix_miner.neuron.recorder import RecordItem

        try:
            self.recorder.submit(RecordItem(
                arrival=time.time() - (time.monotonic() - t0), image_b64=synapse.image,
                sha256=getattr(decoded, "sha256", None),
                hotkey=synapse.dendrite.hotkey if synapse.dendrite is not None else None,
                prediction=synapse.prediction, confidence=synapse.confidence, exit_tier=synapse.exit_tier,
                exit_reason=getattr(result, "exit_reason", "fallback"),
                votes={v.model: v.p for v in getattr(result, "votes", None) or []}, latency_ms=latency_ms))
        except Exception as e:
            logger.debug(f"recording skipped: {e}")

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
        if self.recorder is not None:
            self.recorder.close()
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
                                f"rate_limited {s.rate_limited} busy_refused {s.busy_refused} degraded {s.degraded} "
                                f"last_latency {s.last_latency_ms:.0f} ms")
        finally:
            self.stop()
