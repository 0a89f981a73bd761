"""The miner's remote engine (``--engine.remote``) against a loopback stub of the service: wire
format, same answers as in process, and degraded mode (down, slow, failing, garbled → fallback in
time, ``degraded`` reported, reconnection by itself). No Ray here: tests/serve/test_serve_ray.py
runs the real service."""

import asyncio
import json
import math
import time
import urllib.request

import pytest
from _helpers import free_port
from PIL import Image
from serve_helpers import StubService, color_profile, images, wait_until

from natix_miner.engine.cascade import CascadeEngine
from natix_miner.engine.consensus import finalize
from natix_miner.engine.deadline import Deadline
from natix_miner.engine.remote import (
    RemoteEngine,
    RemoteOptions,
    WireError,
    decode_image,
    encode_image,
    result_from_dict,
)

FAST = RemoteOptions(cooldown_s=0.2, failure_threshold=2)


def _run(coro):
    return asyncio.run(coro)


async def _infer_all(eng, ims, deadline_s=2.0, keys=None):
    return await asyncio.gather(*[eng.infer(im, key=None if keys is None else keys[i],
                                            deadline=Deadline.after(deadline_s)) for i, im in enumerate(ims)])


@pytest.fixture
def stub():
    s = StubService(color_profile()).start()
    yield s
    s.close()


# ------------------------------------------------------------------------------------------ wire
@pytest.mark.parametrize("fmt", ["raw", "png"])
def test_image_round_trip_is_lossless(fmt):
    im = Image.effect_noise((37, 21), 60).convert("RGB")
    body, headers = encode_image(im, fmt)
    assert headers["X-Image-Format"] == fmt
    assert decode_image(body, headers).tobytes() == im.tobytes()


def test_non_rgb_images_are_sent_as_rgb():
    im = Image.new("L", (8, 8), 90)
    body, headers = encode_image(im)
    assert decode_image(body, headers).getpixel((0, 0)) == (90, 90, 90)


@pytest.mark.parametrize("body,headers", [
    (b"\0" * 10, {"X-Image-Format": "raw", "X-Image-Width": "2", "X-Image-Height": "2"}),  # wrong length
    (b"\0" * 12, {"X-Image-Format": "raw", "X-Image-Width": "x", "X-Image-Height": "2"}),
    (b"\0" * 12, {"X-Image-Format": "raw"}),
    (b"\0" * 12, {"X-Image-Format": "raw", "X-Image-Width": "0", "X-Image-Height": "4"}),
    (b"\0" * 12, {"X-Image-Format": "raw", "X-Image-Width": "100000", "X-Image-Height": "100000"}),
    (b"not a png", {"X-Image-Format": "png"}),
    (b"", {"X-Image-Format": "jpeg"}),
])
def test_malformed_requests_are_refused(body, headers):
    with pytest.raises(WireError):
        decode_image(body, headers)


@pytest.mark.parametrize("d", [
    {"prediction": float("nan"), "exit_reason": "threshold"},
    {"prediction": 1.5, "exit_reason": "threshold"},
    {"prediction": 0.7},
    {"prediction": "high", "exit_reason": "threshold"},
    {"prediction": 0.7, "exit_reason": "threshold", "votes": [{"model": "m"}]},
    [1, 2],
])
def test_malformed_answers_are_refused(d):
    with pytest.raises(WireError):
        result_from_dict(d)


def test_answer_round_trip(stub):
    res = stub.engine.infer_batch_sync(images(1))[0]
    back = result_from_dict(json.loads(json.dumps(res.to_dict())))
    assert back == res


# ------------------------------------------------------------------------------------------ client
def test_remote_answers_equal_in_process(stub):
    ims = images(6)
    local = CascadeEngine(color_profile())
    local.start()
    try:
        want = local.infer_batch_sync(ims, deadline_s=2.0)
    finally:
        local.close()
    eng = RemoteEngine(stub.url, color_profile(), options=FAST)
    eng.start()
    try:
        got = _run(_infer_all(eng, ims))
        assert not eng.degraded
    finally:
        eng.close()
    assert [g.prediction for g in got] == [w.prediction for w in want]
    assert [g.exit_reason for g in got] == [w.exit_reason for w in want]
    assert [g.tiers_used for g in got] == [w.tiers_used for w in want]
    assert {w.exit_reason for w in want} == {"threshold", "exhausted"}  # both paths of the cascade


def test_complete_answers_are_cached_by_key(stub):
    eng = RemoteEngine(stub.url, color_profile(), options=FAST)
    eng.start()
    try:
        im = images(1)[0]
        a = _run(eng.infer(im, key="k1"))
        n = stub.requests
        b = _run(eng.infer(im, key="k1"))
        assert stub.requests == n and b.cached and b.exit_reason == "cache" and b.prediction == a.prediction
    finally:
        eng.close()


def test_the_service_gets_the_time_left_minus_reserve_and_return_trip(stub):
    eng = RemoteEngine(stub.url, color_profile(), options=RemoteOptions(reserve_s=0.5))
    eng.start()
    try:
        _run(eng.infer(images(1)[0], deadline=Deadline.after(3.0)))
    finally:
        eng.close()
    # 3.0 s - 0.5 s reserve - a 0.125 s margin for the answer's trip back
    assert 2000 < stub.deadlines_ms[0] <= 2375


def test_identical_requests_in_flight_share_one_call(stub):
    """A validator's burst of ten copies costs one call to the service, like one micro-batch in process."""
    eng = RemoteEngine(stub.url, color_profile(), options=FAST)
    eng.start()
    try:
        im = images(1)[0]
        res = _run(_infer_all(eng, [im] * 10, keys=["same"] * 10))
        assert stub.requests == 1 and eng.coalesced == 9
        assert len({r.prediction for r in res}) == 1 and res[0].exit_reason == "threshold"
        other = _run(_infer_all(eng, images(3), keys=["a", "b", "c"]))  # different keys: one call each
        assert stub.requests == 4 and len({r.prediction for r in other}) == 3
    finally:
        eng.close()


def test_service_down_answers_fallback_in_time_then_reconnects():
    port = free_port()
    eng = RemoteEngine(f"http://127.0.0.1:{port}", color_profile(), options=FAST)
    eng.start()  # does not wait for the service
    stub = None
    try:
        assert eng.ready and eng.degraded
        t0 = time.monotonic()
        res = _run(eng.infer(images(1)[0], deadline=Deadline.after(1.0)))
        assert time.monotonic() - t0 < 1.0
        assert res.exit_reason == "fallback" and res.prediction == finalize(None, 1e-3)
        assert eng.stats()["degraded"] and eng.stats()["fallback_answers"] == 1
        stub = StubService(color_profile(), port=port).start()
        assert wait_until(lambda: not eng.degraded, timeout=20), eng.stats()
        res = _run(eng.infer(images(1)[0], deadline=Deadline.after(2.0)))
        assert res.exit_reason != "fallback" and res.prediction > 0.5
        assert eng.stats()["reconnects"] >= 1
    finally:
        eng.close()
        if stub is not None:
            stub.close()


def test_slow_service_falls_back_to_the_local_profile_in_time(stub):
    stub.mode = "slow"
    local = CascadeEngine(color_profile())
    eng = RemoteEngine(stub.url, color_profile(), fallback=local,
                       options=RemoteOptions(reserve_s=0.4, failure_threshold=2, cooldown_s=60))
    eng.start()
    try:
        ims = images(3)
        want = [r.prediction for r in local.infer_batch_sync(ims, deadline_s=2.0)]
        got = []
        for im in ims:
            t0 = time.monotonic()
            got.append(_run(eng.infer(im, deadline=Deadline.after(1.2))))
            assert time.monotonic() - t0 < 1.2
        assert [g.prediction for g in got] == want  # the local profile answered
        # two timeouts open the breaker: the third request did not even try the service
        assert stub.requests == 2 and eng.degraded
        assert eng.stats()["local_answers"] == 3 and eng.stats()["breaker"]["state"] == "open"
    finally:
        eng.close()


@pytest.mark.parametrize("mode", ["error", "garbage"])
def test_failing_service_gives_safe_answers(stub, mode):
    stub.mode = mode
    eng = RemoteEngine(stub.url, color_profile(), options=FAST)
    eng.start()
    try:
        res = _run(_infer_all(eng, images(3)))
        for r in res:
            assert math.isfinite(r.prediction) and 0 <= r.prediction <= 1 and r.exit_reason == "fallback"
        assert eng.remote_failed >= 2 and eng.degraded
        stub.mode = "ok"
        assert wait_until(lambda: not eng.degraded, timeout=20)
    finally:
        eng.close()


def test_options_and_url_are_checked():
    with pytest.raises(ValueError):
        RemoteEngine("127.0.0.1:8000", color_profile())
    with pytest.raises(ValueError):
        RemoteOptions(encoding="jpeg")
    with pytest.raises(ValueError):
        RemoteOptions(failure_threshold=0)


# ------------------------------------------------------------------------------------------ miner
def test_miner_health_says_degraded_and_recovers(tmp_path):
    """--engine.remote on a dead port: the miner starts, answers the fallback in time, /health is
    200 with degraded true; once the service is up it reconnects and answers from it."""
    import base64
    import io

    from _helpers import make_wallet

    from natix_miner.neuron.config import parse_config
    from natix_miner.neuron.miner import Miner
    from natix_miner.protocol import ImageSynapse

    make_wallet(tmp_path, "miner")
    prof = tmp_path / "p.yaml"
    prof.write_text(json.dumps(COLOR_JSON))
    sport, hport = free_port(), free_port()
    cfg = parse_config(["--mock", "--wallet.path", str(tmp_path), "--wallet.name", "miner", "--profile", str(prof),
                        "--wandb.off", "--axon.port", str(free_port()), "--health.port", str(hport),
                        "--engine.remote", f"http://127.0.0.1:{sport}"])
    m = Miner(cfg)
    m.setup()
    m.start()
    stub = None
    try:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (250, 20, 20)).save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode()

        def health():
            with urllib.request.urlopen(f"http://127.0.0.1:{hport}/health", timeout=5) as r:
                return r.status, json.loads(r.read())

        t0 = time.monotonic()
        syn = _run(m.forward(ImageSynapse(image=b64)))
        assert time.monotonic() - t0 < 3.0 and syn.prediction == finalize(None, 1e-3)
        code, body = health()
        assert code == 200 and body["degraded"] is True and body["engine"]["remote"].endswith(str(sport))
        stub = StubService(color_profile(), port=sport).start()
        assert wait_until(lambda: health()[1]["degraded"] is False, timeout=30)
        syn = _run(m.forward(ImageSynapse(image=b64)))
        assert syn.prediction > 0.5
    finally:
        m.stop()
        if stub is not None:
            stub.close()


COLOR_JSON = json.loads(json.dumps(__import__("serve_helpers").COLOR_PROFILE))


def test_make_remote_engine_builds_the_local_fallback_with_the_miners_deadline(tmp_path):
    from natix_miner.engine.remote import make_remote_engine

    fb = tmp_path / "fb.yaml"
    fb.write_text(json.dumps({**COLOR_JSON, "name": "fallback", "deadline_s": 5.0}))
    prof = color_profile()
    eng = make_remote_engine("http://127.0.0.1:1", prof, str(fb))
    assert isinstance(eng.fallback, CascadeEngine) and eng.fallback.profile.name == "fallback"
    assert eng.fallback.profile.deadline_s == prof.deadline_s and eng.reserve_s == 1.0
    assert make_remote_engine("http://127.0.0.1:1", prof).fallback is None
