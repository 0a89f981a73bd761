"""Query a miner through a real ``bt.Dendrite`` and score it like a NATIX validator (docs/protocol.md §2.5, §3, §7).

:func:`query` sends one ``ImageSynapse`` with ``deserialize=False`` and a 9 s timeout; ``n_copies``
sends the same request to the same axon that many times concurrently, which is what a lone miner
gets from the validator's UIDDeck (``next_k(10)`` returns its UID ten times, docs/protocol.md §2.2). Any
status other than 200 reads as a prediction of -1 (no answer).

:func:`run_mock_validator` is the whole loop: sample a challenge (:mod:`.challenges`), send it
``burst`` times, score *every* response with the validator's tracker and reward (:mod:`.scoring`,
UID ``uid`` with the miner's hotkey — with ``burst=10`` each challenge therefore adds ten entries to
the tracker, so the 10-answer accuracy window covers one challenge and the 100-answer MCC window
ten, exactly as on the real subnet for a miner that is alone in the deck), update the EMA score
once per challenge, and build a :class:`Report`.

With ``organic_share`` > 0 that share of the steps is an organic query instead (docs/protocol.md §10,
:mod:`.organic`): one full-resolution copy, scored against ``round(mean)`` of our answer and simulated
peers' answers, in the same tracker. Challenges whose source has no image (no ``api`` folder, no
synthetic folders) are skipped like a validator does and redrawn; ``skipped`` counts them per source.

Each condition runs as its own validator (fresh tracker and score vector), one after the other,
so ``per_condition[c]["reward"]`` and ``["ema_score"]`` are what a validator in that regime would
compute. The top-level ``reward`` is the mean over all queries; ``ema_score`` is the mean of the
per-condition final EMA scores (the same number when there is one condition).

Offline use: bittensor's ``Dendrite()`` looks up this machine's public IP on the internet; with
``offline=True`` (the default when the miner is on a loopback address)
:func:`natix_miner.neuron.offline.disable_external_ip_lookup` pins it to 127.0.0.1 first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from loguru import logger

from natix_miner.validator.challenges import (
    CONDITION_AUG,
    CONDITION_FULLRES,
    CONDITIONS,
    Challenge,
    ImageSource,
    iter_challenges,
)
from natix_miner.validator.organic import ORGANIC_CONDITION, PeerModel, consensus_label, summarize_organic
from natix_miner.validator.scoring import MinerPerformanceTracker, ScoreVector, get_rewards, reward

DEFAULT_TIMEOUT_S = 9.0
DEFAULT_BURST = 10


@dataclass
class Response:
    """One answer as the validator sees it. ``prediction`` is -1.0 for every non-200 status."""

    prediction: float
    status_code: int
    status_message: str | None
    latency_ms: float
    confidence: float | None = None
    exit_tier: str | None = None
    model_version: str | None = None

    @property
    def answered(self) -> bool:
        return self.prediction != -1


# --------------------------------------------------------------------------------------------
# bittensor plumbing
# --------------------------------------------------------------------------------------------

def _is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h in ("localhost", "ip6-localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_host_port(addr: str) -> tuple[str, int]:
    """``"1.2.3.4:8091"``, ``"[::1]:8091"`` or ``"host:8091"`` -> (host, port)."""
    host, _, port = addr.rpartition(":")
    if not host:
        raise ValueError(f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def make_axon_info(host: str, port: int, hotkey: str, coldkey: str | None = None):
    """An ``AxonInfo`` for a miner at ``host:port`` whose hotkey is ``hotkey``.

    The axon rejects requests not addressed to its own hotkey, so ``hotkey`` must be the miner's.
    Hostnames are resolved to IPv4; IPv6 addresses are bracketed for the URL (as upstream's
    ``fix_ip_format``).
    """
    import bittensor as bt

    h = host.strip("[]")
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        ip = ipaddress.ip_address(socket.gethostbyname(h))
    ip_str = f"[{ip}]" if ip.version == 6 else str(ip)
    return bt.AxonInfo(version=0, ip=ip_str, port=int(port), ip_type=ip.version, hotkey=hotkey,
                       coldkey=coldkey or hotkey)


def resolve_axon(axon=None, host: str | None = None, port: int | None = None, miner_hotkey: str | None = None):
    """Accept an ``AxonInfo``/``Axon``, a ``"HOST:PORT"`` string, or ``host``/``port`` keywords."""
    if axon is not None and not isinstance(axon, str):
        return axon.info() if hasattr(axon, "info") and callable(axon.info) else axon
    if isinstance(axon, str):
        host, port = split_host_port(axon)
    if host is None or port is None:
        raise ValueError("give the miner's axon as AxonInfo, 'HOST:PORT', or host= and port=")
    if not miner_hotkey:
        raise ValueError("the miner's hotkey (ss58) is needed to address its axon")
    return make_axon_info(host, int(port), miner_hotkey)


def throwaway_wallet(path: str | Path | None = None, name: str = "mock-validator", hotkey: str = "default"):
    """A password-less wallet under ``path`` (a new temp dir when ``None``), created if missing."""
    import bittensor as bt

    path = Path(path) if path is not None else Path(tempfile.mkdtemp(prefix="natix-mock-validator-"))
    w = bt.Wallet(path=str(path), name=name, hotkey=hotkey)
    w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return w


def make_dendrite(wallet, offline: bool = False):
    """``bt.Dendrite(wallet)``; with ``offline`` the public-IP lookup is disabled first."""
    import bittensor as bt

    if offline:
        from natix_miner.neuron.offline import disable_external_ip_lookup

        disable_external_ip_lookup("127.0.0.1")
    return bt.Dendrite(wallet=wallet)


def _status(syn) -> tuple[int, str | None]:
    code, msg = None, None
    for term in (getattr(syn, "dendrite", None), getattr(syn, "axon", None)):
        if term is not None and term.status_code is not None:
            code, msg = term.status_code, term.status_message
            break
    try:
        return int(code), msg
    except (TypeError, ValueError):
        return 0, msg


def _to_response(syn, wall_ms: float) -> Response:
    code, msg = _status(syn)
    latency = wall_ms
    try:
        pt = syn.dendrite.process_time
        if pt is not None and code == 200:
            latency = float(pt) * 1000.0
    except (AttributeError, TypeError, ValueError):
        pass
    pred = float(syn.prediction) if code == 200 else -1.0
    return Response(prediction=pred, status_code=code, status_message=msg, latency_ms=latency,
                    confidence=getattr(syn, "confidence", None), exit_tier=getattr(syn, "exit_tier", None),
                    model_version=getattr(syn, "model_version", None))


async def query(dendrite, axon_info, b64: str, timeout: float = DEFAULT_TIMEOUT_S, n_copies: int = 1) -> list[Response]:
    """Send ``ImageSynapse(image=b64)`` to ``axon_info`` ``n_copies`` times concurrently, as
    ``dendrite(axons, synapse, deserialize=False, timeout)``; one :class:`Response` per copy.

    ``latency_ms`` is the dendrite's own round-trip time for answered copies, else the wall time
    of the whole call (about ``timeout`` for a timeout).
    """
    from natix_miner.protocol import ImageSynapse

    syn = ImageSynapse(image=b64)
    t0 = time.perf_counter()
    out = await dendrite(axons=[axon_info] * n_copies, synapse=syn, deserialize=False, timeout=timeout)
    wall_ms = (time.perf_counter() - t0) * 1000.0
    return [_to_response(s, wall_ms) for s in out]


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

class Report(dict):
    """The mock validator's report: a plain dict (JSON-ready) that also allows attribute access.

    Keys: ``n`` (queries = challenges × burst), ``n_challenges``, ``n_answered``, ``no_answer``
    (prediction -1: timeouts, refusals, errors), ``out_of_range``, ``status_counts``, ``mcc`` (raw
    sklearn MCC over answered queries with ``np.round``, not clipped), ``accuracy``, ``auc``,
    ``reward`` (mean per-query validator reward), ``ema_score``, ``latency_p50_ms``,
    ``latency_p99_ms``, ``latency_max_ms`` (answered queries), ``per_condition``, ``per_level``
    (keys "0".."3", "-1", "fullres"), ``per_source``, ``skipped`` (challenges skipped per source for want
    of an image), ``organic`` (the organic scenario's summary, or None), ``config`` and ``records`` (one
    per query).
    """

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """Metrics over query records (dicts with label, prediction, reward, latency_ms)."""
    from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score

    n = len(records)
    ans = [r for r in records if r["prediction"] != -1]
    out: dict[str, Any] = {
        "n": n,
        "n_answered": len(ans),
        "no_answer": n - len(ans),
        "out_of_range": sum(1 for r in ans if not (0.0 <= r["prediction"] <= 1.0)),
        "mcc": None, "accuracy": None, "auc": None,
        "reward": float(np.mean([r["reward"] for r in records])) if n else None,
        "latency_p50_ms": _pct([r["latency_ms"] for r in ans], 50),
        "latency_p99_ms": _pct([r["latency_ms"] for r in ans], 99),
        "latency_max_ms": max((r["latency_ms"] for r in ans), default=None),
    }
    if ans:
        import warnings

        y = np.array([r["label"] for r in ans])
        p = np.array([r["prediction"] for r in ans], dtype=float)
        finite = np.isfinite(p)
        yp = np.round(np.where(finite, p, 2.0))  # NaN/inf count as wrong
        out["accuracy"] = float(accuracy_score(y, yp))
        with warnings.catch_warnings():  # one class only: sklearn warns and returns 0, which is right
            warnings.simplefilter("ignore")
            out["mcc"] = float(matthews_corrcoef(y, yp))
        if len(set(y.tolist())) > 1 and finite.all():
            out["auc"] = float(roc_auc_score(y, p))
    return out


def _group(records: Iterable[dict], key) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def _level_key(r: dict) -> str:
    return "fullres" if r["level"] is None else str(r["level"])


def build_report(records: list[dict], ema_by_condition: dict[str, float], n_challenges: int, config: dict,
                 skipped: dict[str, int] | None = None) -> Report:
    rep = Report(summarize(records))
    rep["n_challenges"] = n_challenges
    rep["skipped"] = dict(skipped or {})
    rep["organic"] = summarize_organic(records)
    rep["ema_score"] = float(np.mean(list(ema_by_condition.values()))) if ema_by_condition else None
    codes = _group(records, lambda r: str(r["status_code"]))
    rep["status_counts"] = {k: len(v) for k, v in sorted(codes.items())}
    rep["per_condition"] = {}
    for cond, rs in _group(records, lambda r: r["condition"]).items():
        d = summarize(rs)
        d["ema_score"] = ema_by_condition.get(cond)
        d["n_challenges"] = len({r["challenge"] for r in rs})
        rep["per_condition"][cond] = d
    rep["per_level"] = {k: summarize(v) for k, v in sorted(_group(records, _level_key).items())}
    rep["per_source"] = {k: summarize(v) for k, v in sorted(_group(records, lambda r: r["source"]).items())}
    rep["config"] = config
    rep["records"] = records
    return rep


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------

def _normalise_conditions(conditions: str | Sequence[str]) -> list[str]:
    if isinstance(conditions, str):
        named = {"both": [CONDITION_AUG, CONDITION_FULLRES], "all": list(CONDITIONS)}
        conditions = named.get(conditions, [conditions])
    conds = list(conditions)
    for c in conds:
        if c not in CONDITIONS:
            raise ValueError(f"unknown condition {c!r}; choose from {CONDITIONS}, 'both' or 'all'")
    return conds


async def run_mock_validator_async(
    axon=None,
    source: ImageSource | str | Path | None = None,
    n_challenges: int = 20,
    conditions: str | Sequence[str] = "aug-2026-01",
    wallet=None,
    *,
    host: str | None = None,
    port: int | None = None,
    miner_hotkey: str | None = None,
    burst: int = DEFAULT_BURST,
    seed: int | None = None,
    progress: bool = True,
    sleep_s: float = 0.0,
    timeout: float = DEFAULT_TIMEOUT_S,
    offline: bool | None = None,
    uid: int = 0,
    organic_share: float = 0.0,
    peers: PeerModel | None = None,
) -> Report:
    """Challenge a miner like a NATIX validator and report how it would be scored.

    ``axon``: the miner's ``AxonInfo``/``Axon`` or ``"HOST:PORT"`` (or ``host=``/``port=``) plus
    ``miner_hotkey`` (its ss58 hotkey; taken from the AxonInfo when one is given). ``source``: an
    :class:`ImageSource` or a folder with ``roadwork/`` and ``no_roadwork/``. ``n_challenges``:
    challenges *per condition*; ``conditions``: one of :data:`.challenges.CONDITIONS`, ``"both"`` (aug + fullres), ``"all"`` or a
    list. ``wallet``: the validator's wallet (a throwaway one in a temp dir when ``None``; the miner
    must accept its hotkey, e.g. ``--mock.validators <ss58>``). ``burst``: concurrent identical
    copies per challenge (10 = a miner alone in the UIDDeck). ``timeout``: 9 s like the validator.
    ``offline``: pin the dendrite's public-IP lookup to loopback (default: when the miner is on a
    loopback address). ``sleep_s``: pause between challenges (the validator sleeps 60 s).
    ``organic_share``: share of the steps that are organic queries scored by peer consensus, with
    ``peers`` (default :class:`PeerModel`: 9 peers of accuracy 0.8).

    This coroutine is for callers already inside an event loop; :func:`run_mock_validator` runs it in
    its own loop.
    """
    if source is None:
        raise ValueError("source (ImageSource or folder) is required")
    if not isinstance(source, ImageSource):
        source = ImageSource(source)
    conds = _normalise_conditions(conditions)
    if not (0.0 <= organic_share < 1.0):
        raise ValueError(f"organic_share must be in [0, 1), got {organic_share}")
    peers = peers if peers is not None else PeerModel()
    axon_info = resolve_axon(axon, host, port, miner_hotkey)
    hotkey = axon_info.hotkey
    if offline is None:
        offline = _is_loopback(str(axon_info.ip))
    if wallet is None:
        wallet = throwaway_wallet()
        logger.info(f"throwaway validator wallet: hotkey {wallet.hotkey.ss58_address}")
    rng = np.random.default_rng(seed)
    dendrite = make_dendrite(wallet, offline=offline)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_challenges * len(conds), desc="mock validator", unit="challenge")
    records: list[dict] = []
    ema_by_condition: dict[str, float] = {}
    t_start = time.monotonic()
    ci = 0
    try:
        for cond in conds:
            tracker = MinerPerformanceTracker()
            scores = ScoreVector(n=uid + 1)
            for _ in range(n_challenges):
                organic = organic_share > 0 and rng.random() < organic_share
                ch: Challenge = next(iter_challenges(source, 1, CONDITION_FULLRES if organic else cond, rng))
                if organic:  # one copy to us; the other nine miners are simulated
                    resps = await query(dendrite, axon_info, ch.image_b64, timeout=timeout, n_copies=1)
                    scored = consensus_label(peers.answers(ch.label, rng) + [resps[0].prediction])
                    rewards = [reward(resps[0].prediction, scored, uid, hotkey, tracker) if scored is not None
                               else 0.0]
                else:
                    resps = await query(dendrite, axon_info, ch.image_b64, timeout=timeout, n_copies=burst)
                    scored = ch.label
                    rewards = get_rewards(ch.label, [r.prediction for r in resps], [uid] * len(resps),
                                          [hotkey] * len(resps), tracker).tolist()
                scores.update([uid] * len(rewards), rewards)
                for k, (r, rw) in enumerate(zip(resps, rewards)):
                    rec = {"challenge": ci, "copy": k, "condition": ORGANIC_CONDITION if organic else cond,
                           "level": ch.level, "source": ch.source, "path": str(ch.path), "label": ch.label,
                           "organic": organic, "scored_label": scored, "image_size": list(ch.size), "reward": rw}
                    rec.update(asdict(r))
                    records.append(rec)
                ci += 1
                if bar is not None:
                    answered = [r for r in records if r["prediction"] != -1]
                    acc = np.mean([np.round(r["prediction"]) == r["label"] for r in answered]) if answered else 0.0
                    bar.set_postfix(cond=cond, acc=f"{acc:.3f}", no_answer=len(records) - len(answered),
                                    score=f"{scores[uid]:.3f}")
                    bar.update(1)
                if sleep_s > 0:
                    await asyncio.sleep(sleep_s)
            ema_by_condition[cond] = scores[uid]
    finally:
        if bar is not None:
            bar.close()
        try:
            await dendrite.aclose_session()
        except Exception as e:  # noqa: BLE001
            logger.debug(f"dendrite close: {e}")
    config = {"axon": f"{axon_info.ip}:{axon_info.port}", "miner_hotkey": hotkey,
              "validator_hotkey": wallet.hotkey.ss58_address, "conditions": conds, "burst": burst,
              "timeout_s": timeout, "seed": seed, "uid": uid, "offline": offline, "sleep_s": sleep_s,
              "images": str(source.real_dir), "synthetic": list(source.synthetic_kinds),
              "api": str(source.api_dir) if source.api_dir is not None else None,
              "organic_share": organic_share, "peers": asdict(peers) if organic_share > 0 else None,
              "wall_s": round(time.monotonic() - t_start, 3)}
    return build_report(records, ema_by_condition, ci, config, skipped=source.skipped)


def run_mock_validator(*args, **kwargs) -> Report:
    """:func:`run_mock_validator_async` in its own event loop (same arguments)."""
    return asyncio.run(run_mock_validator_async(*args, **kwargs))
