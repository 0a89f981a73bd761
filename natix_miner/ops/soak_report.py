"""The soak's report: counts, latency percentiles, RSS slopes, the miner's own counters, summary and plot.

Split from :mod:`natix_miner.ops.soak` (the driver: wallets, payloads, validators, the child miner).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.ops.soak import RequestRecord, SoakConfig

WARMUP_FRACTION = 0.2  # the RSS slope is also fitted without the first 20 % of the run


def linear_slope_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of MB against minutes; None with fewer than 2 distinct times."""
    if len(samples) < 2:
        return None
    ts = [t / 60.0 for t, _ in samples]
    ys = [y for _, y in samples]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var


def _percentiles(values: list[float]) -> dict[str, float | None]:
    from natix_miner.evaluation.metrics import percentiles

    out = percentiles(values, (50, 95, 99))
    out["max"] = max(values) if values else None
    out["mean"] = sum(values) / len(values) if values else None
    return {k: (round(v, 2) if v is not None else None) for k, v in out.items()}


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        info["ram_mb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import bittensor

        info["bittensor"] = bittensor.__version__
    except Exception:  # noqa: BLE001
        pass
    if "torch" in sys.modules:  # imported by the image preparation; do not import it just for this
        torch = sys.modules["torch"]
        try:
            info["torch"] = torch.__version__
            if torch.cuda.is_available():
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001
            pass
    return info


def build_report(cfg: SoakConfig, records: list[RequestRecord], rss: list[tuple[float, float]], *,
                 wall_s: float, command: str, miner: dict[str, Any], image_source: str, n_payloads: int,
                 validator_hotkeys: list[str]) -> dict[str, Any]:
    answered = sum(r.outcome == "answered" for r in records)
    late = sum(r.outcome == "late" for r in records)
    errors = sum(r.outcome == "error" for r in records)
    status_counts: dict[str, int] = {}
    for r in records:
        k = str(r.status_code) if r.status_code is not None else "exception"
        status_counts[k] = status_counts.get(k, 0) + 1
    err_samples = sorted({r.error for r in records if r.error})[:10]
    lat_all = [r.latency_ms for r in records]
    lat_ok = [r.latency_ms for r in records if r.outcome == "answered"]
    ys = [y for _, y in rss]
    slope = linear_slope_per_min(rss)
    # model loading and first-request allocations inflate the early slope; also fit after the first 20 %
    t_warm = WARMUP_FRACTION * (rss[-1][0] if rss else 0.0)
    slope_warm = linear_slope_per_min([(t, y) for t, y in rss if t >= t_warm])
    return {
        "requests": len(records),
        "answered": answered,
        "late": late,
        "errors": errors,
        "unanswered": late + errors,
        "unanswered_fraction": round((late + errors) / len(records), 6) if records else None,
        "status_codes": status_counts,
        "error_samples": err_samples,
        "latency_ms": _percentiles(lat_all),
        "latency_ms_answered": _percentiles(lat_ok),
        "throughput_rps": round(len(records) / wall_s, 3) if wall_s > 0 else None,
        "rss_mb": {
            "pid": miner.get("pid"),
            "interval_s": cfg.rss_interval,
            "series": [[t, y] for t, y in rss],
            "start": ys[0] if ys else None,
            "end": ys[-1] if ys else None,
            "max": max(ys) if ys else None,
            "slope_mb_per_min": round(slope, 4) if slope is not None else None,
            "slope_mb_per_min_after_warmup": round(slope_warm, 4) if slope_warm is not None else None,
            "warmup_s": round(t_warm, 3),
        },
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("report", "png")},
        "challenges_per_validator_planned": cfg.challenges_per_validator(),
        "images": {"source": image_source, "count": n_payloads, "condition": "fullres" if cfg.fullres else "level-0 224x224"},
        "validator_hotkeys": validator_hotkeys,
        "miner": miner,
        "wall_s": round(wall_s, 3),
        "machine": machine_info(),
        "command": command,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "records": [asdict(r) for r in records],
    }


def write_png(report: dict[str, Any], path: str | Path) -> None:
    """Two panels: per-request latency over time (by outcome) and the miner's RSS over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = report["records"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    colors = {"answered": "tab:blue", "late": "tab:orange", "error": "tab:red"}
    for outcome, c in colors.items():
        xs = [r["t_send"] for r in recs if r["outcome"] == outcome]
        ys = [r["latency_ms"] for r in recs if r["outcome"] == outcome]
        if xs:
            ax1.scatter(xs, ys, s=6, c=c, label=f"{outcome} ({len(xs)})", alpha=0.6)
    timeout_ms = report["config"]["timeout"] * 1000.0
    ax1.axhline(timeout_ms, color="grey", ls="--", lw=1, label=f"timeout {timeout_ms / 1000:.0f} s")
    lat = report["latency_ms"]
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.set_title(f"soak: {report['config']['validators']} validators × burst {report['config']['burst']}, "
                  f"{report['requests']} requests, unanswered {report['unanswered']}; "
                  f"p50 {lat['p50']} ms, p99 {lat['p99']} ms", fontsize=9)
    ax1.legend(fontsize=8, loc="upper right")
    series = report["rss_mb"]["series"]
    if series:
        ax2.plot([t for t, _ in series], [y for _, y in series], color="tab:green", marker=".", ms=3)
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f} MB/min"

    ax2.set_title(f"miner RSS (pid {report['rss_mb']['pid']}), slope {fmt(report['rss_mb']['slope_mb_per_min'])}, "
                  f"after warm-up {fmt(report['rss_mb']['slope_mb_per_min_after_warmup'])}", fontsize=9)
    ax2.set_ylabel("RSS (MB)")
    ax2.set_xlabel("seconds since start")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)



MINER_STAT_KEYS = ("requests", "answered", "fallbacks", "degraded", "busy_refused", "rate_limited", "decode_errors",
                   "admission")


def fetch_miner_stats(port: int, timeout: float = 5.0) -> dict[str, Any] | None:
    """The child miner's own counters from its ``/stats`` endpoint (loopback): how many answers were
    degraded or fallbacks, which the client cannot tell from a valid prediction. None on failure."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=timeout) as resp:  # noqa: S310
            st = json.loads(resp.read())
    except Exception as e:  # noqa: BLE001 - the soak's report must not fail on this
        logger.warning(f"could not read the miner's /stats: {type(e).__name__}: {e}")
        return None
    out = {k: st.get(k) for k in MINER_STAT_KEYS if k in st}
    eng = st.get("engine") or {}
    out["engine_exit_reasons"] = eng.get("exit_reasons")
    out["engine_deduplicated"] = eng.get("deduplicated")
    return out


def summary_text(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    rss = report["rss_mb"]
    return (f"requests {report['requests']}: answered {report['answered']}, late {report['late']}, errors "
            f"{report['errors']} (unanswered {report['unanswered']}); latency ms p50 {lat['p50']} p95 {lat['p95']} "
            f"p99 {lat['p99']} max {lat['max']}; RSS MB start {rss['start']} end {rss['end']} max {rss['max']} "
            f"slope {rss['slope_mb_per_min']} MB/min ({rss['slope_mb_per_min_after_warmup']} after warm-up); {report['throughput_rps']} req/s over {report['wall_s']} s"
            + _miner_stats_text(report.get("miner", {}).get("stats")))


def _miner_stats_text(st: dict[str, Any] | None) -> str:
    if not st:
        return ""
    return (f"; miner: requests {st.get('requests')}, degraded {st.get('degraded')}, fallbacks {st.get('fallbacks')}, "
            f"refused busy {st.get('busy_refused')}")


