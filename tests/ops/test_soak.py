"""scripts/soak.py: a short real soak against `neurons/miner.py --mock` and the pieces it is built from."""

import json
import math
import os

import pytest

from _helpers import FAKE_COLOR_PROFILE
from natix_miner.ops import soak


def test_classify_counts_like_a_validator():
    assert soak.classify(200, 0.7, 0.05, 9.0) == "answered"
    assert soak.classify(200, 0.0, 0.05, 9.0) == "answered"
    assert soak.classify(200, -1.0, 0.05, 9.0) == "error"  # the "no answer" value
    assert soak.classify(200, 1.2, 0.05, 9.0) == "error"
    assert soak.classify(200, float("nan"), 0.05, 9.0) == "error"
    assert soak.classify(200, None, 0.05, 9.0) == "error"
    assert soak.classify(408, -1.0, 9.0, 9.0) == "late"
    assert soak.classify(200, 0.7, 9.5, 9.0) == "late"
    assert soak.classify(403, -1.0, 0.01, 9.0) == "error"
    assert soak.classify(None, None, 0.01, 9.0) == "error"


def test_linear_slope_per_min():
    samples = [(t, 100.0 + 2.0 * t / 60.0) for t in range(0, 600, 10)]  # +2 MB per minute
    assert soak.linear_slope_per_min(samples) == pytest.approx(2.0)
    assert soak.linear_slope_per_min([(0.0, 5.0)]) is None
    assert soak.linear_slope_per_min([(1.0, 5.0), (1.0, 6.0)]) is None


def test_rss_of_this_process_is_positive():
    v = soak.rss_mb(os.getpid())
    assert v is not None and 10.0 < v < 100_000.0


def test_schedule_is_bounded():
    cfg = soak.SoakConfig(validators=3, minutes=0.5, rate_per_validator=12)
    assert cfg.interval_s == pytest.approx(5.0)
    assert cfg.challenges_per_validator() == 6
    with pytest.raises(ValueError):
        soak.SoakConfig(axon="127.0.0.1:1").validate()  # --axon without --hotkey


def test_payloads_are_validator_jpegs(tmp_path):
    import base64
    import io

    from PIL import Image

    payloads, _ = soak.prepare_payloads(None, max_images=2)  # packaged samples, else generated pictures
    assert len(payloads) == 2
    im = Image.open(io.BytesIO(base64.b64decode(payloads[0])))
    assert im.format == "JPEG" and im.size == (224, 224)
    full, _ = soak.prepare_payloads(None, fullres=True, max_images=1)
    assert Image.open(io.BytesIO(base64.b64decode(full[0]))).size != (224, 224)
    # a folder is searched recursively; level 0 centre-crops any aspect to 224×224
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (640, 300), (200, 20, 20)).save(tmp_path / "a" / "b" / "x.png")
    got, src = soak.prepare_payloads(str(tmp_path))
    assert src == str(tmp_path) and len(got) == 1
    assert Image.open(io.BytesIO(base64.b64decode(got[0]))).size == (224, 224)
    with pytest.raises(ValueError):
        soak.prepare_payloads(str(tmp_path / "a" / "nothing-here"))


@pytest.mark.slow
def test_short_soak_answers_everything(tmp_path):
    prof = tmp_path / "fake.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    report_path, png_path = tmp_path / "soak.json", tmp_path / "soak.png"
    rc = soak.main(["--validators", "2", "--minutes", "0.15", "--rate-per-validator", "30", "--burst", "4",
                    "--profile", str(prof), "--rss-interval", "1", "--ready-timeout", "60",
                    "--wallet-dir", str(tmp_path / "wallets"),
                    "--report", str(report_path), "--png", str(png_path)])
    assert report_path.exists() and png_path.exists() and png_path.stat().st_size > 10_000
    r = json.loads(report_path.read_text())
    assert rc == 0, (r["status_codes"], r["error_samples"], r["miner"].get("log_tail"))
    # 2 validators × floor(0.15 min × 30/min) = 4 challenges × burst 4
    assert r["requests"] == 2 * 4 * 4
    assert r["unanswered"] == 0 and r["late"] == 0 and r["errors"] == 0
    assert r["answered"] == r["requests"]
    assert all(0.0 <= rec["prediction"] <= 1.0 for rec in r["records"])
    assert {rec["validator"] for rec in r["records"]} == {0, 1}
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 9000
    rss = r["rss_mb"]
    assert len(rss["series"]) >= 3 and rss["max"] >= rss["start"] > 50
    assert rss["pid"] == r["miner"]["pid"] and math.isfinite(rss["slope_mb_per_min"])
    assert r["miner"]["exit_code"] == 0
    st = r["miner"]["stats"]  # the miner's own counters, read from its /stats before it was stopped
    assert st["requests"] == r["requests"] and st["answered"] == r["requests"] and st["busy_refused"] == 0
    assert st["degraded"] >= 0 and st["admission"]["in_flight"] == 0
    assert "--mock" in r["miner"]["command"] and "--wandb.off" in r["miner"]["command"]
    assert all(hk in r["miner"]["command"] for hk in r["validator_hotkeys"])
    assert "--validators 2" in r["command"]
    assert r["machine"]["cpu_count"] >= 1
