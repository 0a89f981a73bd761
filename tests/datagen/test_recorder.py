"""Request recording (--record.dir): unit tests of the writer, then through a real bt.Axon + bt.Dendrite."""

import base64
import hashlib
import io
import json
import os

import numpy as np
import pytest
from _helpers import FAKE_COLOR_PROFILE, query_miner, start_mock_miner
from PIL import Image

from natix_miner.neuron.recorder import GB, Recorder, RecordItem, sniff_ext


def _png(seed: int, size=(48, 48)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _item(raw: bytes, **kw) -> RecordItem:
    return RecordItem(arrival=1.0, image_b64=base64.b64encode(raw).decode(), sha256=None, hotkey="5Val",
                      prediction=0.9, votes={"m": 0.8}, **kw)


def _lines(d):
    return [json.loads(line) for f in sorted(d.glob("requests-*.jsonl")) for line in f.read_text().splitlines()]


def _warnings():
    from loguru import logger

    seen = []
    hid = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING")
    return seen, hid


def test_sniff_ext():
    assert sniff_ext(_png(0)) == "png"
    assert sniff_ext(b"\xff\xd8\xff\xe0rest") == "jpg"
    assert sniff_ext(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_ext(b"hello") == "bin"


def test_duplicates_stored_once_and_one_line_per_request(tmp_path):
    rec = Recorder(tmp_path, max_gb=1.0).start()
    a, b = _png(1), _png(2)
    for raw in (a, a, b, a):
        assert rec.submit(_item(raw))
    rec.submit(RecordItem(arrival=2.0, image_b64="not base64!!", sha256=None, hotkey="5Val", prediction=0.1))
    rec.flush()
    rec.close()
    files = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert files == sorted(f"{hashlib.sha256(x).hexdigest()}.png" for x in (a, b))
    assert (tmp_path / "images" / files[0]).read_bytes() in (a, b)  # the bytes as received
    lines = _lines(tmp_path)
    assert len(lines) == 5
    assert [ln["sha256"] for ln in lines[:4]] == [hashlib.sha256(x).hexdigest() for x in (a, a, b, a)]
    assert lines[0]["hotkey"] == "5Val" and lines[0]["votes"] == {"m": 0.8} and lines[0]["prediction"] == 0.9
    assert lines[4]["sha256"] is None
    assert rec.stats.duplicates == 2 and rec.stats.images_written == 2 and rec.stats.undecodable == 1


def test_cap_evicts_oldest_first_and_survives_restart(tmp_path):
    raws = [_png(i) for i in range(8)]
    size = len(raws[0])
    cap = 4.5 * size / GB
    rec = Recorder(tmp_path, max_gb=cap).start()
    for raw in raws:
        rec.submit(_item(raw))
    rec.flush()
    rec.close()
    on_disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk <= cap * GB
    assert rec.stats.evicted >= 4
    names = {p.stem for p in (tmp_path / "images").iterdir()}
    assert hashlib.sha256(raws[-1]).hexdigest() in names
    assert hashlib.sha256(raws[0]).hexdigest() not in names
    # a restart indexes what is there: an image already stored is not written again; a torn write is removed
    (tmp_path / "images" / "abc.png.tmp").write_bytes(b"torn")
    rec2 = Recorder(tmp_path, max_gb=cap).start()
    assert not (tmp_path / "images" / "abc.png.tmp").exists()
    rec2.submit(_item(raws[-1]))
    rec2.flush()
    rec2.close()
    assert rec2.stats.duplicates == 1 and rec2.stats.images_written == 0


def test_full_queue_drops_and_counts(tmp_path):
    rec = Recorder(tmp_path, max_gb=1.0, queue_size=2)  # not started: nothing consumes the queue
    assert rec.submit(_item(_png(0))) and rec.submit(_item(_png(1)))
    assert not rec.submit(_item(_png(2)))
    assert rec.stats.dropped == 1


def test_failing_disk_turns_recording_off_with_one_warning(tmp_path):
    seen, hid = _warnings()
    try:
        rec = Recorder(tmp_path / "rec", max_gb=1.0).start()
        os.rmdir(tmp_path / "rec" / "images")
        (tmp_path / "rec" / "images").write_text("not a folder")  # every image write now fails
        for i in range(5):
            rec.submit(_item(_png(i)))
        rec.flush()
        assert not rec.enabled and rec.stats.disabled
        assert not rec.submit(_item(_png(9)))  # off: refused at once
        rec.close()
    finally:
        from loguru import logger

        logger.remove(hid)
    assert sum("recording turned OFF" in m for m in seen) == 1


def test_unwritable_folder_at_start_disables(tmp_path):
    (tmp_path / "afile").write_text("x")
    rec = Recorder(tmp_path / "afile" / "rec", max_gb=1.0).start()
    assert not rec.enabled and not rec.submit(_item(_png(0)))
    rec.close()


def test_config_flags_default_off():
    from natix_miner.neuron.config import ConfigError, parse_config

    assert parse_config([]).record_dir is None
    cfg = parse_config(["--record.dir", "/x", "--record.max_gb", "0.5"])
    assert cfg.record_dir == "/x" and cfg.record_max_gb == 0.5
    with pytest.raises(ConfigError, match="record.max_gb"):  # a configuration error (exit 78 in the miner)
        parse_config(["--record.max_gb", "0"])


# ---------------------------------------------------------------------------------------------- real axon
def _miner(tmp, record_dir, max_gb):
    return start_mock_miner(tmp, FAKE_COLOR_PROFILE, "--record.dir", str(record_dir), "--record.max_gb", repr(max_gb))


def test_recording_through_a_real_axon(tmp_path):
    raws = [_png(i, (64, 64)) for i in range(8)]
    cap_bytes = 5 * len(raws[0])
    rec_dir = tmp_path / "rec"
    m, val = _miner(tmp_path, rec_dir, cap_bytes / GB)
    try:
        red = base64.b64encode(raws[0]).decode()
        rs = query_miner(val, m, [red] * 3)  # a burst with the same image
        assert [r.dendrite.status_code for r in rs] == [200] * 3
        m.recorder.flush()
        sha0 = hashlib.sha256(raws[0]).hexdigest()
        assert [p.name for p in (rec_dir / "images").iterdir()] == [f"{sha0}.png"]
        lines = _lines(rec_dir)
        assert len(lines) == 3 and {ln["sha256"] for ln in lines} == {sha0}
        assert lines[0]["hotkey"] == val.hotkey.ss58_address
        assert abs(lines[0]["prediction"] - rs[0].prediction) < 1e-9 and "color" in lines[0]["votes"]
        for raw in raws[1:]:  # more distinct images than the cap holds
            assert query_miner(val, m, [base64.b64encode(raw).decode()])[0].dendrite.status_code == 200
        m.recorder.flush()
        on_disk = sum(p.stat().st_size for p in rec_dir.rglob("*") if p.is_file())
        assert on_disk <= cap_bytes and m.recorder.stats.evicted > 0
        assert not (rec_dir / "images" / f"{sha0}.png").exists()
        assert (rec_dir / "images" / f"{hashlib.sha256(raws[-1]).hexdigest()}.png").exists()
        assert m.status()["recording"]["enabled"] is True
    finally:
        m.stop()


def test_unwritable_record_dir_does_not_break_answering(tmp_path):
    """A folder that cannot be written (read-only for a normal user; for root, whose writes chmod does not stop,
    the images folder is replaced by a file mid-run): answers stay correct, recording turns off."""
    rec_dir = tmp_path / "rec"
    m, val = _miner(tmp_path, rec_dir, 1.0)
    try:
        if os.geteuid() != 0:
            os.chmod(rec_dir / "images", 0o500)
            os.chmod(rec_dir, 0o500)
        else:
            os.rmdir(rec_dir / "images")
            (rec_dir / "images").write_text("not a folder")
        red = Image.new("RGB", (64, 64), (230, 20, 20))
        buf = io.BytesIO()
        red.save(buf, format="JPEG")
        rs = query_miner(val, m, [base64.b64encode(buf.getvalue()).decode()] * 4 + [base64.b64encode(_png(3)).decode()])
        assert [r.dendrite.status_code for r in rs] == [200] * 5
        assert all(r.prediction > 0.5 for r in rs[:4])
        m.recorder.flush()
        assert m.recorder.enabled is False and m.status()["recording"]["disabled"]
        again = query_miner(val, m, [base64.b64encode(buf.getvalue()).decode()])[0]
        assert again.dendrite.status_code == 200 and again.prediction > 0.5
    finally:
        if os.geteuid() != 0:
            os.chmod(rec_dir, 0o700)
            os.chmod(rec_dir / "images", 0o700)
        m.stop()
