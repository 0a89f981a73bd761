"""Logging setup (loguru) and optional Weights & Biases telemetry.

:func:`setup_logging` replaces loguru's default handler with a stderr sink and, when ``log_dir`` is given, a
rotating file sink (``<log_dir>/miner.log``, rotated at ``rotation``, ``retention`` old files kept, written
from a background queue so a slow disk never blocks the axon). ``json=True`` writes one JSON object per line
(loguru's ``serialize``). Tracebacks are logged without variable values (``diagnose=False``) so a wallet path
or an API key in a local variable never ends up in a log file. bittensor keeps its own logger (``bt.logging``,
configured by the neuron with ``set_debug``/``set_trace``/``set_warning``); it is deliberately not routed into
loguru: its output format and levels are what operators know from the official miner, and double-routing
would print every bittensor line twice.

:class:`Telemetry` is entirely optional. It keeps rolling statistics of the miner's answers in memory
(latency, tier exit counts, predictions, and — when a request carries a label — the validator's own scoring
windows) and, when enabled, sends them to a wandb run. ``wandb`` is imported lazily inside; any wandb failure
(import, ``init``, ``log``, ``finish``) logs one warning and switches wandb off for the rest of the process,
while the in-memory statistics keep working. It never raises into the caller.

Scoring windows, computed as ``natix/validator/miner_performance_tracker.py`` does (docs/protocol.md §3.1): the last
100 labelled answers for MCC and the last 10 for accuracy, predictions equal to exactly ``-1`` dropped,
``np.round`` (so 0.5 → class 0), MCC = ``max(0, matthews_corrcoef)`` and 0 unless both the labels and the
rounded predictions contain two distinct values, every metric 0 if a rounded prediction falls outside {0, 1}
(the validator's sklearn call raises then). The reward estimate is ``(0.5·MCC₁₀₀ + 0.5·Acc₁₀)³`` (§3.2).

Mode resolution: ``WANDB_MODE=disabled`` (or ``WANDB_DISABLED=true``) in the environment always wins, as an
operator kill switch; otherwise the ``mode`` argument, then ``WANDB_MODE``, then ``"online"``. ``project``
and ``entity`` default to ``WANDB_PROJECT`` / ``WANDB_ENTITY`` (project falls back to ``"natix-miner"``).
``dir`` defaults to ``WANDB_DIR`` (wandb's own default applies when neither is set). ``offline`` writes
files only (``wandb sync`` uploads them later); ``online`` without an API key fails fast and is switched off.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter, deque
from typing import Any

from loguru import logger

from natix_miner import scoring

__all__ = ["Telemetry", "setup_logging", "validator_metrics"]

_STDERR_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{name}</cyan>:<cyan>{line}</cyan> - <level>{message}</level>"
)
_FILE_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {process} | {name}:{function}:{line} - {message}"


def setup_logging(level: str = "INFO", log_dir: str | None = None, rotation: str | int = "100 MB",
                  retention: int | str = 10, json: bool = False) -> list[int]:
    """Configure loguru: stderr (+ rotating ``<log_dir>/miner.log``). Returns the handler ids.

    Calling it again replaces the previous configuration (all loguru handlers are removed first).
    """
    level = str(level).upper()
    logger.remove()
    ids = [logger.add(sys.stderr, level=level, format=_STDERR_FORMAT, serialize=json,
                      colorize=False if json else None, backtrace=False, diagnose=False)]
    if log_dir:
        log_dir = os.path.expanduser(log_dir)
        os.makedirs(log_dir, exist_ok=True)
        ids.append(logger.add(os.path.join(log_dir, "miner.log"), level=level, format=_FILE_FORMAT,
                              serialize=json, rotation=rotation, retention=retention, enqueue=True,
                              backtrace=False, diagnose=False, encoding="utf-8"))
    return ids


# ---------------------------------------------------------------------------------------------- scoring maths
def validator_metrics(predictions: list[float], labels: list[int]) -> dict[str, float]:
    """Accuracy and clipped MCC of one window, exactly as the validator's tracker computes them."""
    import numpy as np

    zero = {"accuracy": 0.0, "mcc": 0.0, "n": 0}
    pairs = [(float(p), int(y)) for p, y in zip(predictions, labels) if float(p) != -1.0]
    if not pairs:
        return zero
    probs = np.array([p for p, _ in pairs], dtype=np.float64)
    ys = [y for _, y in pairs]
    rounded = np.round(probs)  # banker's rounding: 0.5 -> 0, like the validator
    if not np.all(np.isfinite(rounded)) or not set(rounded.tolist()) <= {0.0, 1.0} or not set(ys) <= {0, 1}:
        return {**zero, "n": len(pairs)}  # sklearn would see a multiclass task and the tracker returns zeros
    preds = [int(r) for r in rounded]
    accuracy = sum(int(p == y) for p, y in zip(preds, ys)) / len(ys)
    return {"accuracy": accuracy, "mcc": scoring.validator_mcc(ys, preds), "n": len(pairs)}


# ---------------------------------------------------------------------------------------------- telemetry
class Telemetry:
    """Rolling statistics of the miner's answers, optionally mirrored to wandb. Never raises.

    ``log_request`` is called once per answered request (from the axon's event loop: it only updates
    in-memory windows and queues a ``wandb.log``); every ``histogram_every`` requests it also logs a
    histogram of the recent predictions and a one-line summary to loguru.
    """

    MCC_WINDOW = 100
    ACC_WINDOW = 10

    def __init__(self, enabled: bool = True, project: str | None = None, entity: str | None = None,
                 mode: str | None = None, run_name: str | None = None, config: dict[str, Any] | None = None,
                 dir: str | None = None, *, histogram_every: int = 100, window: int = 1000,
                 init_timeout_s: float = 30.0, system_stats: bool = True):
        self._lock = threading.RLock()
        self.histogram_every = max(1, int(histogram_every))
        self.requests = 0
        self.labelled = 0
        self.latencies_ms: deque[float] = deque(maxlen=max(1, int(window)))
        self.predictions: deque[float] = deque(maxlen=max(1, int(window)))
        self.exit_tiers: Counter[str] = Counter()
        self.exit_reasons: Counter[str] = Counter()
        self._scored: deque[tuple[float, int]] = deque(maxlen=self.MCC_WINDOW)
        self._run: Any = None
        self._wandb: Any = None
        self.project = project or os.environ.get("WANDB_PROJECT") or "natix-miner"
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.mode = self._resolve_mode(mode)
        self.disabled_reason: str | None = None
        if not enabled:
            self.disabled_reason = "disabled by the caller"
        elif self.mode == "disabled":
            self.disabled_reason = "WANDB_MODE=disabled"
        else:
            self._start(run_name, config, dir, init_timeout_s, system_stats)

    # ------------------------------------------------------------------ wandb lifecycle
    @staticmethod
    def _resolve_mode(mode: str | None) -> str:
        env = (os.environ.get("WANDB_MODE") or "").strip().lower()
        if env == "disabled" or (os.environ.get("WANDB_DISABLED") or "").strip().lower() in ("1", "true", "yes"):
            return "disabled"
        chosen = (mode or env or "online").strip().lower()
        if chosen in ("dryrun",):
            chosen = "offline"
        if chosen not in ("online", "offline", "disabled", "shared"):
            logger.warning(f"unknown wandb mode {chosen!r}; using offline")
            chosen = "offline"
        return chosen

    def _start(self, run_name, config, dir, init_timeout_s, system_stats) -> None:
        try:
            import wandb

            self._wandb = wandb
            settings = wandb.Settings(console="off", init_timeout=float(init_timeout_s),
                                      x_disable_stats=not system_stats)
            run_dir = dir or os.environ.get("WANDB_DIR") or None
            if run_dir:
                os.makedirs(run_dir, exist_ok=True)
            self._run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, name=run_name,
                                   config=dict(config or {}), dir=run_dir, settings=settings)
            if self._run is None:
                raise RuntimeError("wandb.init returned None")
            logger.info(f"wandb telemetry on ({self.mode}, project {self.project}"
                        f"{', entity ' + self.entity if self.entity else ''})")
        except BaseException as e:  # noqa: BLE001 - wandb may raise anything (even SystemExit on login)
            if isinstance(e, KeyboardInterrupt):
                raise
            self._disable(f"wandb init failed: {type(e).__name__}: {e}")

    def _disable(self, why: str) -> None:
        run, self._run = self._run, None
        self.disabled_reason = why
        logger.warning(f"{why}; telemetry continues without wandb")
        if run is not None:
            try:
                run.finish(exit_code=1)
            except BaseException:  # noqa: BLE001
                pass

    @property
    def enabled(self) -> bool:
        """True while a wandb run is receiving data."""
        return self._run is not None

    def _log(self, data: dict[str, Any]) -> None:
        run = self._run
        if run is None:
            return
        try:
            run.log(data)
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            self._disable(f"wandb log failed: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ public API
    def log_request(self, latency_ms: float, prediction: float, exit_tier: str | None = None,
                    exit_reason: str | None = None, label: int | None = None) -> None:
        """Record one answered request. ``label`` None or -1 means unknown (the usual case on mainnet)."""
        try:
            with self._lock:
                self.requests += 1
                latency_ms = float(latency_ms)
                prediction = float(prediction)
                self.latencies_ms.append(latency_ms)
                self.predictions.append(prediction)
                tier = exit_tier or "none"
                reason = exit_reason or "unknown"
                self.exit_tiers[tier] += 1
                self.exit_reasons[reason] += 1
                row: dict[str, Any] = {"request/latency_ms": latency_ms, "request/prediction": prediction,
                                       "request/count": self.requests,
                                       f"exit_tier/{tier}": self.exit_tiers[tier],
                                       f"exit_reason/{reason}": self.exit_reasons[reason]}
                if label is not None and int(label) != -1:
                    self.labelled += 1
                    self._scored.append((prediction, int(label)))
                    row.update({f"scoring/{k}": v for k, v in self.rolling_metrics().items()})
                periodic = self.requests % self.histogram_every == 0
                if periodic:
                    row.update({f"window/{k}": v for k, v in self.latency_summary().items()})
                    if self._run is not None and self._wandb is not None:
                        row["window/prediction_hist"] = self._wandb.Histogram(list(self.predictions), num_bins=20)
            if periodic:
                logger.info(self.summary_line())
            self._log(row)
        except Exception as e:  # never let bookkeeping break a request
            logger.debug(f"telemetry log_request failed: {type(e).__name__}: {e}")

    def log_metrics(self, metrics: dict[str, Any], prefix: str | None = None) -> None:
        """Log arbitrary numbers (e.g. the validator replica's metrics) to the wandb run, if any."""
        try:
            data = {(f"{prefix}/{k}" if prefix else str(k)): v for k, v in dict(metrics).items()}
        except Exception as e:
            logger.debug(f"telemetry log_metrics got a non-dict: {e}")
            return
        self._log(data)

    def rolling_metrics(self) -> dict[str, float]:
        """The validator's view of our labelled answers: ``mcc_100``, ``accuracy_10``, ``reward_estimate``
        ((0.5·MCC₁₀₀ + 0.5·Acc₁₀)³) and ``n_labelled`` (labelled answers in the MCC window)."""
        with self._lock:
            scored = list(self._scored)
        m100 = validator_metrics([p for p, _ in scored], [y for _, y in scored])
        last = scored[-self.ACC_WINDOW:]
        m10 = validator_metrics([p for p, _ in last], [y for _, y in last])
        reward = scoring.reward_value(m100["mcc"], m10["accuracy"]) if scored else 0.0
        return {"mcc_100": m100["mcc"], "accuracy_10": m10["accuracy"], "reward_estimate": reward,
                "n_labelled": float(len(scored))}

    def latency_summary(self) -> dict[str, float]:
        """Mean and p50/p95/p99 latency (ms) over the recent window; empty window → zeros."""
        import numpy as np

        with self._lock:
            lat = np.array(self.latencies_ms, dtype=np.float64)
        if lat.size == 0:
            return {"latency_mean_ms": 0.0, "latency_p50_ms": 0.0, "latency_p95_ms": 0.0, "latency_p99_ms": 0.0}
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        return {"latency_mean_ms": float(lat.mean()), "latency_p50_ms": float(p50), "latency_p95_ms": float(p95),
                "latency_p99_ms": float(p99)}

    def summary_line(self) -> str:
        lat = self.latency_summary()
        with self._lock:
            tiers = ", ".join(f"{k}={v}" for k, v in self.exit_tiers.most_common())
            n, labelled = self.requests, self.labelled
        text = (f"telemetry: {n} requests, latency p50 {lat['latency_p50_ms']:.1f} ms p95 "
                f"{lat['latency_p95_ms']:.1f} ms, exits [{tiers}]")
        if labelled:
            m = self.rolling_metrics()
            text += (f", labelled {labelled}: MCC100 {m['mcc_100']:.3f} acc10 {m['accuracy_10']:.2f} "
                     f"reward≈{m['reward_estimate']:.3f}")
        return text

    def close(self) -> None:
        """Finish the wandb run (idempotent)."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish()
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, KeyboardInterrupt):
                raise
            logger.warning(f"wandb finish failed: {type(e).__name__}: {e}")

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
