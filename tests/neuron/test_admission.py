"""Degrade under load, never refuse a validator (natix_miner/neuron/admission.py, issue 12)."""

import asyncio
import base64
import io

import pytest
from PIL import Image

from _helpers import free_port, make_wallet
from natix_miner.neuron.admission import CHEAP, FULL, Admission, SingleFlight
from natix_miner.neuron.config import parse_config
from natix_miner.neuron.miner import Miner
from natix_miner.protocol import ImageSynapse


def _b64(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------------------------ unit
def test_validators_are_never_refused_for_load_others_are():
    adm = Admission(max_concurrent=4, max_concurrent_per_hotkey=2)
    for i in range(20):  # far past both caps
        assert adm.reserve("val", i, validator=True) is None
    assert adm.inflight == 20
    assert "busy" in adm.reserve("nonval", 0, validator=False)  # 20 in flight >= cap 4
    adm2 = Admission(max_concurrent=0, max_concurrent_per_hotkey=2)
    assert adm2.reserve("x", 1, validator=False) is None and adm2.reserve("x", 2, validator=False) is None
    assert "too many requests in flight from x" in adm2.reserve("x", 3, validator=False)
    assert adm2.reserve("y", 1, validator=False) is None  # another caller is not held by x's cap
    assert adm.stats.refused == 1 and adm2.stats.refused == 1


def test_plan_is_full_while_the_expected_completion_fits_the_deadline():
    adm = Admission(prior_s=1.0, clock=lambda: 0.0)
    assert adm.plan(deadline_at=1.0) == FULL  # (0 + 1) x 1 s fits in 1 s
    adm.begin()
    adm.begin()
    assert adm.expected_s() == pytest.approx(3.0)
    assert adm.plan(deadline_at=2.9) == CHEAP
    assert adm.plan(deadline_at=3.0) == FULL
    assert adm.stats.cheap == 1 and adm.stats.full == 2


def test_service_time_follows_measurements():
    adm = Admission(prior_s=1.0, alpha=0.5)
    adm.begin()
    adm.end(0.2, ahead=0)
    assert adm.service_s == pytest.approx(0.6) and adm.computing == 0
    adm.begin()
    adm.end(None)  # a failed call: no measurement
    assert adm.service_s == pytest.approx(0.6)
    adm.begin()
    adm.end(0.9, ahead=2)  # it waited for two others: 0.3 s each
    assert adm.service_s == pytest.approx(0.45)


def test_single_flight_computes_once_and_shares_the_result():
    sf = SingleFlight()
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(0.05)
        return 0.9

    async def request():
        fut = sf.running("k")
        if fut is not None:
            return await sf.join(fut, timeout=5.0)
        return await sf.lead("k", compute)

    async def go():
        return await asyncio.gather(*[request() for _ in range(10)])

    assert asyncio.run(go()) == [0.9] * 10
    assert len(calls) == 1 and len(sf) == 0


def test_single_flight_followers_get_none_when_the_leader_fails():
    sf = SingleFlight()

    async def boom():
        await asyncio.sleep(0.02)
        raise RuntimeError("engine exploded")

    async def go():
        lead = asyncio.create_task(sf.lead("k", boom))
        await asyncio.sleep(0)
        follower = await sf.join(sf.running("k"), timeout=5.0)
        with pytest.raises(RuntimeError):
            await lead
        return follower

    assert asyncio.run(go()) is None


# ------------------------------------------------------------------------------------ in the miner
PROFILE = """\
name: slow
deadline_s: 3.0
tiers:
  - name: t
    exit_threshold: 0.9
    models:
      - {name: slow, type: fake, licence: MIT, options: {p_by_color: true, latency_ms: 150}}
batching: {max_batch: 4, max_wait_ms: 2}
"""


def _miner(tmp_path, extra=(), validators=()):
    prof = tmp_path / "slow.yaml"
    prof.write_text(PROFILE)
    make_wallet(tmp_path, "miner")
    args = ["--mock", "--wallet.path", str(tmp_path), "--wallet.name", "miner", "--profile", str(prof),
            "--wandb.off", "--axon.port", str(free_port()), *extra]
    if validators:
        args += ["--mock.validators", ",".join(validators)]
    m = Miner(parse_config(args))
    m.setup()
    return m


def test_too_slow_engine_answers_from_cache_or_fallback_instead_of_queueing(tmp_path):
    m = _miner(tmp_path)
    try:
        red, blue = _b64((230, 20, 20)), _b64((20, 20, 230))

        async def ask(b64):
            return await m.forward(ImageSynapse(image=b64))

        first = asyncio.run(ask(red))  # computed and cached
        assert first.prediction > 0.5 and m.stats.degraded == 0
        engine_requests = m.engine.requests
        m.admission.service_s = 100.0  # the engine is now expected to need 100 s per image
        again = asyncio.run(ask(red))
        assert again.prediction == pytest.approx(first.prediction)  # from the cache
        unseen = asyncio.run(ask(blue))
        assert unseen.prediction == pytest.approx(0.4999)  # the safe fallback, a valid answer, not a 403
        assert m.stats.degraded == 2 and m.engine.requests == engine_requests  # nothing queued in the engine
    finally:
        m.stop()


def test_burst_copies_run_the_engine_once(tmp_path):
    m = _miner(tmp_path, extra=["--engine.no_cache"])
    try:
        img = _b64((230, 20, 20))

        async def go():
            return await asyncio.gather(*[m.forward(ImageSynapse(image=img)) for _ in range(10)])

        res = asyncio.run(go())
        assert all(r.prediction > 0.5 for r in res)
        adapter = m.engine._runners["slow"].adapter
        assert adapter.calls == 1 and m.admission.stats.joined == 9
    finally:
        m.stop()


@pytest.mark.slow
def test_burst_larger_than_the_old_cap_from_validators_is_all_answered(tmp_path):
    """Three validators x burst 10 against --blacklist.max_concurrent 8: every request gets a 200 and a valid
    prediction (the old global cap answered 403 "miner busy" past 8), while an unregistered caller and a
    registered non-validator are still refused."""
    import bittensor as bt

    vals = [make_wallet(tmp_path, f"val{i}") for i in range(3)]
    stranger = make_wallet(tmp_path, "stranger")
    m = _miner(tmp_path, extra=["--blacklist.max_concurrent", "8", "--blacklist.max_concurrent_per_hotkey", "3"],
               validators=[w.hotkey.ss58_address for w in vals])
    m.start()
    try:
        colors = [(230, 20, 20), (20, 20, 230), (200, 40, 60)]

        async def burst(wallet, b64, n=10):
            d = bt.Dendrite(wallet=wallet)
            try:
                return await d(axons=[m.axon.info()] * n, synapse=ImageSynapse(image=b64), deserialize=False,
                               timeout=9.0)
            finally:
                await d.aclose_session()

        async def go():
            return await asyncio.gather(*[burst(w, _b64(c)) for w, c in zip(vals, colors)],
                                        burst(stranger, _b64(colors[0]), n=2))

        *val_res, stranger_res = asyncio.run(go())
        for rs in val_res:
            codes = [r.dendrite.status_code for r in rs]
            assert codes == [200] * 10, codes
            for r in rs:
                assert 0.0 <= r.prediction <= 1.0 and r.prediction != 0.5
        assert all(r.dendrite.status_code == 403 for r in stranger_res)
        assert m.stats.busy_refused == 0  # the strangers were refused as unregistered, validators not at all
        assert m.admission.inflight == 0
    finally:
        m.stop()


def test_axon_keeps_idle_connections_longer_than_the_validators_client(tmp_path):
    """uvicorn's default keep-alive (5 s) is shorter than aiohttp's client keep-alive (15 s): a validator
    reusing a connection the axon is closing gets "Server disconnected" (a -1). The axon must outlast it."""
    import aiohttp

    m = _miner(tmp_path)
    try:
        async def client_keepalive():
            conn = aiohttp.TCPConnector()
            try:
                return conn._keepalive_timeout
            finally:
                await conn.close()

        assert m.axon.fast_config.timeout_keep_alive > asyncio.run(client_keepalive())
    finally:
        m.stop()


def test_deadline_counts_from_the_blacklist_step_not_from_forward(tmp_path, monkeypatch):
    """On a saturated machine the axon's steps between the blacklist and forward can take seconds: the
    budget must start when the request was admitted, else the answer leaves after the validator's 9 s."""
    import time

    m = _miner(tmp_path)
    try:
        seen = []

        async def capture(image, *, key=None, deadline=None):
            seen.append(deadline.at)
            return None  # -> the fallback answer

        monkeypatch.setattr(m.engine, "infer", capture)
        admitted_at = time.monotonic() - 2.0  # admitted two seconds before forward runs
        monkeypatch.setattr(m.admission, "clock", lambda: admitted_at)
        assert m.admission.reserve("5Val", 42, validator=True) is None
        monkeypatch.setattr(m.admission, "clock", time.monotonic)
        syn = ImageSynapse(image=_b64((230, 20, 20)))
        syn.dendrite.hotkey, syn.dendrite.nonce = "5Val", 42
        out = asyncio.run(m.forward(syn))
        budget = min(m.profile.deadline_s, syn.timeout - 1.5)
        assert seen == [pytest.approx(admitted_at + budget, abs=1e-6)]
        assert out.prediction == pytest.approx(0.4999) and m.admission.inflight == 0
    finally:
        m.stop()


def test_service_time_learns_only_from_answers_a_model_computed(tmp_path, monkeypatch):
    """A tier skipped for lack of time comes back at once with no votes: counting it as a fast service time
    would make admission believe the engine is idle and admit everything (seen in a soak at load 13)."""
    from natix_miner.engine.types import CascadeResult

    m = _miner(tmp_path)
    try:
        results = iter([
            CascadeResult(prediction=0.4999, confidence=0.5001, tiers_used=[], votes=[], latency_ms=0.1,
                          exit_reason="no_votes"),
            CascadeResult(prediction=0.9, confidence=0.9, tiers_used=["t"], votes=[], latency_ms=300.0,
                          exit_reason="threshold"),
        ])

        async def infer(image, *, key=None, deadline=None):
            res = next(results)
            if res.tiers_used:
                await asyncio.sleep(0.3)
            return res

        monkeypatch.setattr(m.engine, "infer", infer)
        before = m.admission.service_s
        asyncio.run(m.forward(ImageSynapse(image=_b64((230, 20, 20)))))
        assert m.admission.service_s == before  # the skipped tier taught nothing
        asyncio.run(m.forward(ImageSynapse(image=_b64((20, 20, 230)))))
        assert m.admission.service_s != before and m.admission.service_s >= 0.8 * before + 0.2 * 0.3
    finally:
        m.stop()
