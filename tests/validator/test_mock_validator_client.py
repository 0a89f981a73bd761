"""End to end: the mock validator's real bt.Dendrite against a real bt.Axon on loopback (bittensor 10.5)."""


import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from _helpers import free_port, make_wallet
from natix_miner.validator.challenges import ImageSource
from natix_miner.validator.client import Report, query, run_mock_validator, split_host_port


def _folder(root):
    for sub, colour in (("roadwork", (230, 40, 20)), ("no_roadwork", (30, 40, 220))):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (300 + 20 * i, 180), colour).save(d / f"{i}.jpg")
    return root


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    import socket
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"axon not listening on {port}")


@pytest.fixture(scope="module")
def toy_axon(tmp_path_factory):
    """A bare axon whose forward answers 'red beats blue' from the decoded image (no blacklist)."""
    import bittensor as bt

    from natix_miner.protocol import ImageSynapse

    tmp = tmp_path_factory.mktemp("toy-axon")
    miner_w = make_wallet(tmp, "toy-miner")
    seen = []

    def forward(synapse: ImageSynapse) -> ImageSynapse:
        img = Image.open(io.BytesIO(base64.b64decode(synapse.image))).convert("RGB")
        arr = np.asarray(img, dtype=float)
        seen.append((img.size, synapse.timeout))
        synapse.prediction = 0.9 if arr[..., 0].mean() > arr[..., 2].mean() else 0.1
        synapse.confidence = 0.9
        return synapse

    port = free_port()
    axon = bt.Axon(wallet=miner_w, port=port, ip="127.0.0.1", external_ip="127.0.0.1", external_port=port)
    axon.fast_config.host = "127.0.0.1"
    axon.attach(forward_fn=forward)
    axon.start()
    _wait_listening(port)
    yield {"axon": axon, "port": port, "hotkey": miner_w.hotkey.ss58_address, "tmp": tmp, "seen": seen}
    axon.stop()


def test_run_mock_validator_end_to_end(toy_axon, tmp_path):
    val_w = make_wallet(tmp_path, "validator")
    src = ImageSource(_folder(tmp_path / "imgs"), seed=0)
    rep = run_mock_validator(f"127.0.0.1:{toy_axon['port']}", src, n_challenges=3, conditions="both",
                             wallet=val_w, miner_hotkey=toy_axon["hotkey"], burst=10, seed=0, progress=False)
    assert isinstance(rep, Report) and dict(rep)["n"] == 60
    assert rep.n_challenges == 6 and rep.no_answer == 0 and rep.status_counts == {"200": 60}
    assert rep.accuracy == 1.0 and rep.mcc == pytest.approx(1.0)
    assert rep.latency_p50_ms is not None and 0 < rep.latency_p50_ms <= rep.latency_p99_ms < 9000
    assert set(rep.per_condition) == {"aug-2026-01", "fullres"}
    assert rep.per_condition["aug-2026-01"]["n"] == 30 and rep.per_condition["fullres"]["n"] == 30
    assert "fullres" in rep.per_level and sum(v["n"] for v in rep.per_level.values()) == 60
    # the validator's reward on this sequence: the first challenge has one label (MCC 0) -> 0.125
    first = [r["reward"] for r in rep.records if r["challenge"] == 0]
    assert first == pytest.approx([0.125] * 10)
    assert 0.1 < rep.reward <= 1.0 and 0 < rep.ema_score < 1
    assert all(r["confidence"] == 0.9 for r in rep.records)
    json.dumps(dict(rep))  # JSON-ready
    sizes = {s for s, _ in toy_axon["seen"]}
    assert (224, 224) in sizes and any(s[0] >= 300 for s in sizes)  # aug and fullres both arrived
    assert all(t == pytest.approx(9.0) for _, t in toy_axon["seen"])


def test_all_conditions_with_api_images_break_down_per_source_and_condition(toy_axon, tmp_path):
    val_w = make_wallet(tmp_path, "validator-all")
    src = ImageSource(_folder(tmp_path / "imgs"), api=_folder(tmp_path / "api"), seed=2)
    rep = run_mock_validator(f"127.0.0.1:{toy_axon['port']}", src, n_challenges=6, conditions="all",
                             wallet=val_w, miner_hotkey=toy_axon["hotkey"], burst=2, seed=2, progress=False)
    assert set(rep.per_condition) == {"aug-2026-01", "letterbox-2026-04", "fullres"}
    assert all(m["n"] == 12 and m["no_answer"] == 0 for m in rep.per_condition.values())
    assert set(rep.per_source) <= {"real", "api"} and sum(m["n"] for m in rep.per_source.values()) == 36
    assert "api" in rep.per_source and "real" in rep.per_source
    assert rep.skipped.get("synthetic", 0) > 0 and "api" not in rep.skipped  # no synthetic folders given
    assert rep.config["api"] == str(tmp_path / "api") and rep.organic is None
    assert rep.accuracy == 1.0


@pytest.mark.parametrize("peer_accuracy, outvoted", [(0.0, True), (1.0, False)])
def test_organic_queries_are_scored_by_peer_consensus(toy_axon, tmp_path, peer_accuracy, outvoted):
    from natix_miner.validator.organic import PeerModel

    val_w = make_wallet(tmp_path, f"validator-org{peer_accuracy}")
    src = ImageSource(_folder(tmp_path / "imgs"), seed=3)
    rep = run_mock_validator(f"127.0.0.1:{toy_axon['port']}", src, n_challenges=12, conditions="fullres",
                             wallet=val_w, miner_hotkey=toy_axon["hotkey"], burst=3, seed=3, progress=False,
                             organic_share=0.5, peers=PeerModel(n_peers=9, accuracy=peer_accuracy))
    org = [r for r in rep.records if r["organic"]]
    assert org and rep.organic["n"] == len(org) and "organic" in rep.per_condition
    assert all(r["copy"] == 0 and r["condition"] == "organic" for r in org)  # one copy, not a burst
    assert sum(1 for r in rep.records if not r["organic"]) == 3 * (12 - len(org))
    assert rep.organic["miner_accuracy_truth"] == 1.0  # the toy miner is always right
    if outvoted:  # nine always-wrong peers outvote it: scored against the wrong label every time
        assert all(r["scored_label"] == 1 - r["label"] for r in org)
        assert rep.organic["agreement"] == 0.0 and rep.organic["right_but_outvoted"] == len(org)
        assert rep.reward < 0.5
    else:
        assert all(r["scored_label"] == r["label"] for r in org)
        assert rep.organic["agreement"] == 1.0 and rep.organic["right_but_outvoted"] == 0


def test_wrong_hotkey_is_no_answer(toy_axon, tmp_path):
    """The axon refuses a request addressed to another hotkey; the validator reads -1."""
    import asyncio

    from natix_miner.validator.client import make_axon_info, make_dendrite

    val_w = make_wallet(tmp_path, "validator2")
    info = make_axon_info("127.0.0.1", toy_axon["port"], val_w.hotkey.ss58_address)

    async def go():
        d = make_dendrite(val_w, offline=True)
        try:
            return await query(d, info, base64.b64encode(b"x").decode(), timeout=9.0, n_copies=2)
        finally:
            await d.aclose_session()

    rs = asyncio.run(go())
    assert len(rs) == 2 and all(r.status_code == 401 and r.prediction == -1.0 for r in rs), rs


def test_split_host_port():
    assert split_host_port("1.2.3.4:8091") == ("1.2.3.4", 8091)
    assert split_host_port("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError):
        split_host_port("8091")


def test_script_writes_a_report(toy_axon, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "mock_validator.py"
    spec = importlib.util.spec_from_file_location("mock_validator_script", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    rc = mod.main(["--axon", f"127.0.0.1:{toy_axon['port']}", "--hotkey", toy_axon["hotkey"],
                   "--images", str(_folder(tmp_path / "imgs")), "--challenges", "2", "--condition", "letterbox-2026-04",
                   "--api-images", str(_folder(tmp_path / "api")), "--burst", "3", "--seed", "1", "--report", str(out),
                   "--no-progress", "--wallet.path", str(tmp_path / "w")])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["n"] == 6 and rep["no_answer"] == 0 and list(rep["per_condition"]) == ["letterbox-2026-04"]
    assert rep["config"]["api"] == str(tmp_path / "api") and set(rep["per_source"]) <= {"real", "api"}
    text = capsys.readouterr().out
    assert "validator hotkey: 5" in text and "MCC / accuracy / AUC" in text


def test_replica_metrics_go_to_wandb(monkeypatch):
    import argparse
    import importlib.util

    from natix_miner import telemetry
    from natix_miner.profile import REPO_ROOT

    logged = []

    class Recorder:
        def __init__(self, **kw):
            self.kw = kw

        def log_metrics(self, metrics, prefix=None):
            logged.append((prefix, dict(metrics)))

        def close(self):
            logged.append(("closed", {}))

    monkeypatch.setattr(telemetry, "Telemetry", Recorder)
    spec = importlib.util.spec_from_file_location("mv", REPO_ROOT / "scripts" / "mock_validator.py")
    mv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mv)
    report = {"n": 20, "no_answer": 0, "mcc": 0.5, "accuracy": 0.75, "reward": 0.3, "config": {},
              "per_condition": {"fullres": {"n": 10, "mcc": 0.4}}, "per_level": {"0": {"n": 5, "accuracy": 1.0}}}
    mv.log_to_wandb(report, argparse.Namespace(wandb_project="p", wandb_entity=None, wandb_mode="offline"))
    assert ("replica", {"n": 20, "no_answer": 0, "mcc": 0.5, "accuracy": 0.75, "reward": 0.3}) in logged
    assert ("replica/fullres", {"n": 10, "mcc": 0.4}) in logged and ("replica/0", {"n": 5, "accuracy": 1.0}) in logged
    assert logged[-1][0] == "closed"
