"""A profile with VLM tiers, end to end inside the miner: a fake tier 1, a tiny random Qwen2-VL through
the transformers engine, and a remote VLM through the openai engine against a fake endpoint on loopback."""

import base64
import importlib.util
import io
from pathlib import Path

import pytest
import yaml
from PIL import Image

from _helpers import query_miner, start_mock_miner

_spec = importlib.util.spec_from_file_location(
    "vlm_fake_server", Path(__file__).resolve().parent.parent / "models" / "vlm" / "test_vlm_openai.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
FakeServer, SERVED = _mod.FakeServer, _mod.MODEL


@pytest.fixture(scope="module")
def vlm_miner(tmp_path_factory):
    from natix_miner.models.vlm.tiny import save_tiny_vlm

    tmp = tmp_path_factory.mktemp("vlm")
    tiny = save_tiny_vlm(tmp / "tiny-qwen2-vl", "qwen2_vl")
    server = FakeServer()
    profile = {
        "name": "vlm-e2e", "deadline_s": 6.0,
        "tiers": [
            {"name": "fast", "exit_threshold": 0.95, "models": [
                {"name": "unsure", "type": "fake", "licence": "MIT", "weight": 0.1, "options": {"p": 0.55}}]},
            {"name": "small-vlm", "exit_threshold": 0.99, "models": [
                {"name": "tiny-qwen2-vl", "type": "vlm", "model": str(tiny), "licence": "Apache-2.0", "weight": 0.1,
                 "device": "cpu", "timeout_s": 5.0, "options": {"engine": "transformers", "family": "qwen2_vl"}}]},
            {"name": "remote-vlm", "exit_threshold": 0.5, "models": [
                {"name": "remote", "type": "vlm", "model": SERVED, "licence": "Apache-2.0", "weight": 3.0,
                 "device": "cpu", "timeout_s": 3.0,
                 "options": {"engine": "openai", "base_url": server.url, "family": "qwen2_5_vl",
                             "request_timeout_s": 2.0, "health_interval_s": 0}}]},
        ],
    }
    m, val = start_mock_miner(tmp, yaml.safe_dump(profile))
    yield m, val, server
    m.stop()
    server.close()


def _ask(miner, wallet, colour):
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), colour).save(buf, format="JPEG")
    return query_miner(wallet, miner, [base64.b64encode(buf.getvalue()).decode()])[0]


def test_all_vlm_tiers_run_and_the_remote_vote_decides(vlm_miner):
    miner, val, server = vlm_miner
    red = _ask(miner, val, (230, 20, 20))
    blue = _ask(miner, val, (20, 20, 230))
    assert red.dendrite.status_code == 200 and blue.dendrite.status_code == 200
    assert red.prediction > 0.5 > blue.prediction
    assert red.exit_tier == "remote-vlm"
    assert len(server.requests) >= 2  # the endpoint was really asked
    models = miner.engine.stats()["models"]
    assert models["tiny-qwen2-vl"]["calls"] >= 1 and models["remote"]["calls"] >= 1
    assert models["remote"]["failures"] == 0
