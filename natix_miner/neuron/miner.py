"""The miner neuron's request handlers: forward, blacklist, priority, on parts built by the wiring.

Life cycle (``Miner.run``, in :mod:`natix_miner.neuron.wiring`): build the wallet and the chain view →
check our hotkey is registered (exit with the ``btcli`` command otherwise) → load and warm up the engine
(the axon only starts serving once models are ready) → start the axon (on a real chain also publish it
with ``serve_axon``) → resync the metagraph in a background thread → wait for SIGINT/SIGTERM → stop
the axon and the engine within a few seconds.

Request path (``forward``): decode the image in a worker thread (bounded, never on the event
loop) → ``engine.infer`` (micro-batched, worker threads) under a hard deadline → a finite
prediction in [ε, 1−ε], never exactly 0.5. Any failure yields the safe fallback answer instead
of -1. The deadline and ε come from the profile (``natix_miner.profile`` defaults before one is loaded).

No ``from __future__ import annotations`` here on purpose: bittensor's ``Axon.attach`` compares
the blacklist/priority signatures, including their annotations, against real types.
"""

import asyncio
import tempfile
import threading
import time
import typing
from dataclasses import dataclass, field

from loguru import logger

from natix_miner import __version__
from natix_miner.engine.consensus import finalize
from natix_miner.neuron import wiring
from natix_miner.neuron.admission import CHEAP, Admission, SingleFlight
from natix_miner.neuron.blacklist import (
    BlacklistPolicy,
    RateLimiter,
    caller_priority,
    check_caller,
    has_validator_permit,
)
from natix_miner.neuron.chain import Chain, ChainSnapshot
from natix_miner.neuron.config import MinerConfig
from natix_miner.profile import DEFAULT_DEADLINE_S, DEFAULT_EPSILON
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse
from natix_miner.types import Engine

if typing.TYPE_CHECKING:
    from natix_miner.imaging import DecodeLimits
    from natix_miner.neuron.recorder import Recorder
    from natix_miner.profile import Profile

# A validator waits 9 s (docs/protocol.md §2.5; a synapse without a timeout gets that); answer with
# RESPONSE_MARGIN_S left for the network and the axon.
VALIDATOR_TIMEOUT_S = 9.0
RESPONSE_MARGIN_S = 1.5
# The hard cut: an engine call still running this long after the request's deadline is abandoned and the
# fallback answered, so every accepted request is answered within deadline + HARD_CUT_GRACE_S of receipt
# (plus the event loop's own scheduling delay), far inside the validators' 9 s.
HARD_CUT_GRACE_S = 0.25
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
    """Answers the axon (forward, blacklist, priority); :mod:`natix_miner.neuron.wiring` builds and runs it.

    ``engine``, ``chain``, ``wallet``, ``telemetry``: parts built elsewhere (tests, tools); what is None is
    built by :meth:`setup` from ``config``."""

    def __init__(self, config: MinerConfig, *, engine: typing.Optional[Engine] = None,
                 chain: typing.Optional[Chain] = None, wallet: typing.Any = None, telemetry: typing.Any = None):
        self.config = config
        self.engine: typing.Optional[Engine] = engine
        self.chain: typing.Optional[Chain] = chain
        self.wallet = wallet  # a bittensor Wallet
        self.telemetry = telemetry  # natix_miner.telemetry.Telemetry
        self.profile: typing.Optional[Profile] = None  # the profile the miner built its engine from
        self.decode_limits: typing.Optional[DecodeLimits] = None
        self.axon: typing.Any = None  # a bittensor Axon
        self.recorder: typing.Optional[Recorder] = None  # --record.dir
        self.snapshot: typing.Optional[ChainSnapshot] = None
        self.uid: typing.Optional[int] = None
        self.stats = MinerStats()
        self.policy = BlacklistPolicy(require_permit=config.require_permit, min_stake=config.min_stake)
        self.rate_limiter = RateLimiter(config.rate_limit or 0)
        # Requests in flight and deadline-aware admission: hard caps for callers without a validator
        # permit, degraded (cache / fallback) answers instead of 403 for validators (neuron/admission.py)
        self.admission = Admission(config.max_concurrent, config.max_concurrent_per_hotkey)
        self._flights = SingleFlight()
        self.ready = threading.Event()
        self._stop = threading.Event()
        # owned by the wiring: the metagraph sync thread, the mock wallet's folder, the /health server
        self._sync_thread: typing.Optional[threading.Thread] = None
        self._tmpdir: typing.Optional[tempfile.TemporaryDirectory] = None
        self._health: typing.Any = None

    @property
    def deadline_s(self) -> float:
        """The profile's answer deadline (its default before a profile is loaded)."""
        return self.profile.deadline_s if self.profile is not None else DEFAULT_DEADLINE_S

    @property
    def epsilon(self) -> float:
        """Answers are clamped to [epsilon, 1 - epsilon] (the profile's calibration, else its default)."""
        return self.profile.calibration.epsilon if self.profile is not None else DEFAULT_EPSILON

    # ------------------------------------------------------------------------------ life cycle (wiring.py)
    def setup(self) -> None:
        """Everything up to (not including) starting the axon. Raises SystemExit with a clear message."""
        wiring.setup(self)

    def start(self) -> None:
        """Start serving (after :meth:`setup`)."""
        wiring.start(self)

    def stop(self) -> None:
        wiring.stop(self)

    def run(self, status_interval: float = 60.0) -> None:
        """Set up, serve until SIGINT/SIGTERM, then stop. Blocks."""
        wiring.run(self, status_interval)

    def check_registered(self) -> None:
        """Our uid from a fresh snapshot; SystemExit with the btcli command when not registered."""
        self.snapshot, self.uid = wiring.check_registered(self.config, self.wallet, self.chain)

    def status(self) -> dict:
        """What /health and /stats report."""
        s = self.stats
        out = {
            "ready": self.ready.is_set(),
            "uid": self.uid,
            "hotkey": self.wallet.hotkey.ss58_address if self.wallet is not None else None,
            "netuid": self.config.netuid,
            "network": getattr(self.chain, "network", None),
            "profile": getattr(self.profile, "name", None),
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
        timeout = synapse.timeout if synapse.timeout and synapse.timeout > 0 else VALIDATOR_TIMEOUT_S
        budget = max(0.2, min(self.deadline_s, float(timeout) - RESPONSE_MARGIN_S))
        deadline_at = t0 + budget
        exit_tier, exit_reason = None, "fallback"
        prediction = FALLBACK_PREDICTION
        confidence = None
        result = decoded = None
        try:
            from natix_miner.imaging import ImageDecodeError, decode_b64_image

            try:
                decoded = await asyncio.wait_for(
                    asyncio.to_thread(decode_b64_image, synapse.image, self.decode_limits),
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
        prediction = finalize(prediction, self.epsilon)
        if exit_reason == "fallback":
            self.stats.fallbacks += 1
        synapse.prediction = prediction
        synapse.confidence = confidence if confidence is not None else max(prediction, 1 - prediction)
        synapse.exit_tier = exit_tier
        synapse.model_version = f"natix-miner {__version__} / {getattr(self.profile, 'name', 'custom')}"
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
