"""Wire compatibility with the validators' bittensor 9.12.2 (docs/protocol.md §11).

A separate virtual environment (.venv-wire, built by scripts/wire/make_venv.sh with
bittensor==9.12.2, async-substrate-interface<2, no torch) runs scripts/wire/client.py, which
defines ImageSynapse like the upstream subnet and queries `neurons/miner.py --mock` on loopback.
"""

import json
import os
import signal
import subprocess

import pytest

from _helpers import free_port, make_wallet
from natix_miner.neuron.launcher import MinerProcess
from natix_miner.profile import REPO_ROOT

pytestmark = pytest.mark.wire

WIRE_VENV = REPO_ROOT / ".venv-wire"


@pytest.fixture(scope="module")
def wire_python():
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts/wire/make_venv.sh")], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "WIRE_VENV": str(WIRE_VENV)})
    assert r.returncode == 0, f"could not build the 9.12.2 venv:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return str(WIRE_VENV / "bin" / "python")


@pytest.fixture(scope="module")
def miner_proc(tmp_path_factory, fake_profile_path_module):
    tmp = tmp_path_factory.mktemp("wire")
    miner_w = make_wallet(tmp, "miner")
    val_w = make_wallet(tmp, "validator")
    make_wallet(tmp, "stranger")
    port = free_port()
    mp = MinerProcess(["--mock", "--mock.validators", val_w.hotkey.ss58_address, "--wallet.path", str(tmp),
                       "--wallet.name", "miner", "--wallet.hotkey", "default", "--profile",
                       str(fake_profile_path_module), "--wandb.off"], port, tmp / "miner.log")
    mp.wait_ready(timeout=120)
    yield {"mp": mp, "tmp": tmp, "port": port, "miner_hotkey": miner_w.hotkey.ss58_address}
    took = mp.stop(signal.SIGTERM)
    assert mp.proc.returncode == 0, mp.log_tail()
    assert took < 10, f"SIGTERM shutdown took {took:.1f} s"


@pytest.fixture(scope="module")
def fake_profile_path_module(tmp_path_factory):
    from _helpers import FAKE_COLOR_PROFILE

    p = tmp_path_factory.mktemp("prof") / "fake.yaml"
    p.write_text(FAKE_COLOR_PROFILE)
    return p


def _client(wire_python, m, wallet_name, n=10, color="220,30,30"):
    r = subprocess.run([wire_python, str(REPO_ROOT / "scripts/wire/client.py"), "--axon", f"127.0.0.1:{m['port']}",
                        "--miner-hotkey", m["miner_hotkey"], "--wallet.path", str(m["tmp"]), "--wallet.name",
                        wallet_name, "--n", str(n), "--color", color, "--offline"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


def test_validator_on_9_12_2_gets_valid_answers(wire_python, miner_proc):
    out = _client(wire_python, miner_proc, "validator", n=10)
    assert out["bittensor"] == "9.12.2"
    codes = [r["status_code"] for r in out["responses"]]
    preds = [r["prediction"] for r in out["responses"]]
    assert codes == [200] * 10, out
    assert all(0.5 < p <= 1.0 for p in preds), preds  # a red image is "roadwork" for the fake model
    blue = _client(wire_python, miner_proc, "validator", n=1, color="20,20,230")
    assert 0.0 <= blue["responses"][0]["prediction"] < 0.5


def test_unregistered_9_12_2_caller_gets_403(wire_python, miner_proc):
    out = _client(wire_python, miner_proc, "stranger", n=1)
    assert out["responses"][0]["status_code"] == 403
    assert out["responses"][0]["prediction"] == -1.0
