"""The miner through a real bt.Axon and a real bt.Dendrite on loopback (bittensor 10.5)."""

import asyncio
import base64
import io
import time

import pytest
from PIL import Image

from _helpers import free_port, make_wallet
from natix_miner.neuron.config import parse_config
from natix_miner.neuron.miner import Miner
from natix_miner.protocol import ExtendedImageSynapse, ImageSynapse


def _b64(img: Image.Image, fmt="JPEG") -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def running(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("miner")
    from _helpers import FAKE_COLOR_PROFILE

    prof = tmp / "fake.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    make_wallet(tmp, "miner")
    val_w = make_wallet(tmp, "validator")
    nonval_w = make_wallet(tmp, "nonvalidator")
    stranger_w = make_wallet(tmp, "stranger")
    port = free_port()
    hport = free_port()
    cfg = parse_config([
        "--health.port", str(hport),
        "--mock", "--mock.validators", val_w.hotkey.ss58_address, "--mock.miners", nonval_w.hotkey.ss58_address,
        "--axon.port", str(port), "--wallet.path", str(tmp), "--wallet.name", "miner", "--wallet.hotkey", "default",
        "--profile", str(prof), "--wandb.off", "--neuron.sync_interval", "1",
    ])
    miner = Miner(cfg)
    miner.setup()
    miner.start()
    yield {"miner": miner, "val": val_w, "nonval": nonval_w, "stranger": stranger_w, "tmp": tmp, "hport": hport}
    t0 = time.monotonic()
    miner.stop()
    assert time.monotonic() - t0 < 5.0, "shutdown took too long"


def _query(wallet, miner, synapse, n=1, timeout=9.0):
    import bittensor as bt

    async def go():
        d = bt.Dendrite(wallet=wallet)
        try:
            return await d(axons=[miner.axon.info()] * n, synapse=synapse, deserialize=False, timeout=timeout)
        finally:
            await d.aclose_session()

    return asyncio.run(go())


def test_hotkey_flags_are_honoured(running):
    assert running["miner"].wallet.hotkey.ss58_address == make_wallet(running["tmp"], "miner").hotkey.ss58_address
    assert running["miner"].uid == 0


def test_validator_gets_a_real_prediction(running):
    red = _query(running["val"], running["miner"], ImageSynapse(image=_b64(Image.new("RGB", (224, 224), (230, 20, 20)))))[0]
    blue = _query(running["val"], running["miner"], ImageSynapse(image=_b64(Image.new("RGB", (224, 224), (20, 20, 230)))))[0]
    assert red.dendrite.status_code == 200 and blue.dendrite.status_code == 200
    assert red.prediction > 0.5 > blue.prediction
    assert 0.0 <= blue.prediction <= 1.0
    assert red.confidence is not None and red.confidence >= 0.5
    assert red.model_version and "test-fake-color" in red.model_version


def test_unregistered_caller_gets_403(running):
    r = _query(running["stranger"], running["miner"], ImageSynapse(image=_b64(Image.new("RGB", (64, 64)))))[0]
    assert r.dendrite.status_code == 403
    assert r.prediction == -1.0


def test_non_permit_caller_gets_403(running):
    r = _query(running["nonval"], running["miner"], ImageSynapse(image=_b64(Image.new("RGB", (64, 64)))))[0]
    assert r.dendrite.status_code == 403


def test_ten_concurrent_requests_are_all_answered(running):
    img = Image.new("RGB", (224, 224), (200, 50, 50))
    rs = _query(running["val"], running["miner"], ImageSynapse(image=_b64(img)), n=10)
    assert [r.dendrite.status_code for r in rs] == [200] * 10
    assert all(0.5 < r.prediction <= 1.0 for r in rs)


@pytest.mark.parametrize("payload", ["", "not base64 at all!!", base64.b64encode(b"\x00" * 100).decode()])
def test_garbage_image_gets_a_safe_answer(running, payload):
    r = _query(running["val"], running["miner"], ImageSynapse(image=payload))[0]
    assert r.dendrite.status_code == 200
    assert 0.0 <= r.prediction <= 1.0 and r.prediction != 0.5


@pytest.mark.parametrize("mode,size,fmt", [("RGBA", (300, 120), "PNG"), ("L", (2000, 1100), "JPEG"),
                                           ("P", (50, 50), "PNG"), ("CMYK", (128, 96), "JPEG")])
def test_any_size_mode_and_format(running, mode, size, fmt):
    img = Image.new(mode, size)
    r = _query(running["val"], running["miner"], ImageSynapse(image=_b64(img, fmt)))[0]
    assert r.dendrite.status_code == 200 and 0.0 <= r.prediction <= 1.0 and r.prediction != 0.5


def test_laggard_extended_synapse_route(running):
    syn = ExtendedImageSynapse(image=_b64(Image.new("RGB", (224, 224), (230, 20, 20))), model_url="x/y")
    r = _query(running["val"], running["miner"], syn)[0]
    assert r.dendrite.status_code == 200 and r.prediction > 0.5


def test_health_endpoint_reports_ready_and_counts(running):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{running['hport']}/health", timeout=5) as r:
        assert r.status == 200
        body = json.loads(r.read())
    assert body["ready"] is True and body["uid"] == 0 and body["profile"] == "test-fake-color"
    assert body["answered"] >= 1 and "engine" in body


def test_per_hotkey_concurrency_cap_refuses_a_flood_but_serves_others(tmp_path):
    """A flood from a caller without a validator permit is cut at --blacklist.max_concurrent_per_hotkey; a
    validator is served (validators themselves are never refused for load: tests/neuron/test_admission.py)."""
    prof = tmp_path / "slow.yaml"
    prof.write_text("name: slow\ndeadline_s: 3.0\ntiers:\n  - name: t\n    exit_threshold: 0.9\n    models:\n"
                    "      - {name: slow, type: fake, licence: MIT, options: {p: 0.9, latency_ms: 600}}\n"
                    "batching: {max_batch: 1, max_wait_ms: 0}\ncache: {enabled: false}\n")
    make_wallet(tmp_path, "miner")
    flood = make_wallet(tmp_path, "flood")
    other = make_wallet(tmp_path, "other")
    cfg = parse_config(["--mock", "--mock.validators", other.hotkey.ss58_address, "--mock.miners",
                        flood.hotkey.ss58_address, "--blacklist.allow_non_validators",
                        "--wallet.path", str(tmp_path), "--wallet.name", "miner", "--profile", str(prof),
                        "--wandb.off", "--axon.port", str(free_port()), "--blacklist.max_concurrent_per_hotkey", "3"])
    m = Miner(cfg)
    m.setup()
    m.start()
    try:
        import bittensor as bt

        imgs = [_b64(Image.new("RGB", (32, 32), (200, i, 0))) for i in range(8)]

        async def go():
            d1, d2 = bt.Dendrite(wallet=flood), bt.Dendrite(wallet=other)
            try:
                flood_task = asyncio.gather(*[d1(axons=[m.axon.info()], synapse=ImageSynapse(image=b), deserialize=False,
                                                 timeout=9.0) for b in imgs])
                await asyncio.sleep(0.2)
                mine = await d2(axons=[m.axon.info()], synapse=ImageSynapse(image=imgs[0]), deserialize=False,
                                timeout=9.0)
                return await flood_task, mine
            finally:
                await d1.aclose_session()
                await d2.aclose_session()

        flood_res, mine = asyncio.run(go())
        codes = [r[0].dendrite.status_code for r in flood_res]
        assert codes.count(200) >= 3 and codes.count(403) >= 1, codes
        assert mine[0].dendrite.status_code == 200 and mine[0].prediction > 0.5
        assert m.stats.busy_refused >= 1 and m.admission.inflight == 0
    finally:
        m.stop()
