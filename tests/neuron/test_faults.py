"""Fault injection through the miner's forward path: every case answers before the deadline."""

import asyncio
import base64
import io
import time

import pytest
from PIL import Image

from _helpers import free_port, make_wallet
from natix_miner.neuron.chain import LocalMockChain
from natix_miner.neuron.config import parse_config
from natix_miner.neuron.miner import HARD_CUT_GRACE_S, Miner
from natix_miner.protocol import ImageSynapse

PROFILE = """\
name: faults
deadline_s: {deadline}
tiers:
  - name: t1
    exit_threshold: 0.99
    models:
      - {{name: steady, type: fake, licence: MIT, options: {{p: 0.8}}}}
  - name: t2
    exit_threshold: 0.99
    models:
      - {{name: bad, type: fake, licence: MIT, timeout_s: {timeout}, options: {opts}}}
"""


# What the README promises: an accepted request is answered within the deadline plus the hard cut's grace
# (HARD_CUT_GRACE_S, 0.25 s) of receipt. SCHEDULING_SLACK_S is what these tests add for thread and event-loop
# scheduling on a loaded 2-core machine; all of it is far inside the validators' 9 s.
SCHEDULING_SLACK_S = 0.75


def bound(deadline: float) -> float:
    return deadline + HARD_CUT_GRACE_S + SCHEDULING_SLACK_S


def _jpeg(color=(200, 30, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def _miner(tmp_path, opts: str, deadline=1.5, timeout=1.0, chain=None):
    prof = tmp_path / "p.yaml"
    prof.write_text(PROFILE.format(deadline=deadline, timeout=timeout, opts=opts))
    make_wallet(tmp_path, "miner")
    cfg = parse_config(["--mock", "--wallet.path", str(tmp_path), "--wallet.name", "miner", "--profile", str(prof),
                        "--wandb.off", "--axon.port", str(free_port()), "--neuron.sync_interval", "1"])
    m = Miner(cfg, chain=chain)
    m.setup()
    return m


def _forward(m, image=None, n=1):
    async def go():
        return await asyncio.gather(*[m.forward(ImageSynapse(image=image or _jpeg(c))) for c in
                                      [(200, 30, 30 + i) for i in range(n)]])

    t0 = time.monotonic()
    res = asyncio.run(go())
    return res, time.monotonic() - t0


@pytest.mark.parametrize("opts", ["{fail: raise}", "{fail: oom}", "{fail: nan}", "{fail: hang, hang_s: 5}",
                                  "{latency_ms: 3000}"])
def test_faulty_second_tier_still_answers_in_time(tmp_path, opts):
    m = _miner(tmp_path, opts)
    try:
        for _ in range(3):  # repeated failures trip the breaker; answers keep coming
            res, took = _forward(m, n=2)
            assert took < bound(1.5), f"took {took:.2f} s"
            for s in res:
                assert 0.0 <= s.prediction <= 1.0 and s.prediction != 0.5
                assert s.prediction > 0.5  # the steady model's vote survives
    finally:
        m.stop()


def test_later_requests_recover_after_a_hang(tmp_path):
    m = _miner(tmp_path, "{fail: hang, hang_s: 1.0, fail_every: 2}", deadline=1.2, timeout=0.5)
    try:
        for _ in range(4):
            res, took = _forward(m)
            assert took < bound(1.2) and 0.5 < res[0].prediction <= 1.0
    finally:
        m.stop()


def test_metagraph_sync_failure_keeps_serving(tmp_path):
    class FlakyChain(LocalMockChain):
        calls = 0

        def snapshot(self):
            FlakyChain.calls += 1
            if FlakyChain.calls > 1:
                raise ConnectionError("chain unreachable")
            return super().snapshot()

    w = make_wallet(tmp_path, "miner")
    chain = FlakyChain(72, w.hotkey.ss58_address, validators=["5Validator"])
    m = _miner(tmp_path, "{p: 0.9}", chain=chain)
    try:
        m.start()
        time.sleep(2.5)  # a couple of failing syncs
        assert FlakyChain.calls >= 2
        assert m.snapshot is not None and m.snapshot.uid_of("5Validator") is not None
        res, _ = _forward(m)
        assert res[0].prediction > 0.5
    finally:
        m.stop()


def test_engine_that_raises_gives_fallback(tmp_path):
    m = _miner(tmp_path, "{p: 0.9}")

    async def broken(*a, **k):
        raise RuntimeError("engine exploded")

    m.engine.infer = broken
    try:
        res, _ = _forward(m)
        assert res[0].prediction == pytest.approx(0.4999) and m.stats.fallbacks == 1
    finally:
        m.stop()


def test_engine_that_hangs_is_cut_at_the_deadline(tmp_path):
    m = _miner(tmp_path, "{p: 0.9}", deadline=1.0)

    async def slow(*a, **k):
        await asyncio.sleep(30)

    m.engine.infer = slow
    try:
        res, took = _forward(m)
        assert took < bound(1.0) and res[0].prediction == pytest.approx(0.4999)
    finally:
        m.stop()


def test_inflight_reservations_expire_when_forward_never_runs(monkeypatch):
    """A request that passes the blacklist but fails verification must not hold its slot forever."""
    cfg = parse_config(["--mock", "--wandb.off", "--blacklist.max_concurrent", "2"])
    m = Miner(cfg)
    now = [100.0]
    monkeypatch.setattr(m.admission, "clock", lambda: now[0])
    adm = m.admission
    assert adm.reserve("a", 1, validator=False) is None and adm.reserve("b", 2, validator=False) is None
    assert "busy" in adm.reserve("c", 3, validator=False)  # the global cap (callers without a permit)
    adm.claim("a", 1)  # forward of request 1 starts: the reservation becomes the running slot
    adm.release("a")
    assert adm.reserve("c", 3, validator=False) is None  # a free slot again
    now[0] += adm.reservation_ttl_s + 1  # request 2 never reached forward (e.g. a 401), request 3 neither
    assert adm.reserve("d", 4, validator=False) is None and adm.inflight == 1
