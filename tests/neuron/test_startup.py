"""neurons/miner.py start-up: checks in order (flags → profile → wallet → chain), one line each, distinct exit codes,
the start-up line, .env reaching the miner, wandb off unless configured."""

import os
import subprocess
import sys

import pytest

from natix_miner.neuron import main as M
from natix_miner.neuron import startup
from natix_miner.neuron.config import CHAIN_EXIT_CODE, CONFIG_EXIT_CODE, parse_config
from natix_miner.profile import REPO_ROOT
from tests._helpers import free_port, make_wallet

ENV_KEYS = ("NETUID", "SUBTENSOR_NETWORK", "SUBTENSOR_CHAIN_ENDPOINT", "WALLET_NAME", "WALLET_HOTKEY", "WALLET_PATH",
            "MINER_PROFILE", "MINER_AXON_PORT", "ENGINE_DEVICES", "MINER_EXTRA_ARGS", "WANDB_API_KEY", "WANDB_OFF")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for k in ENV_KEYS:
        monkeypatch.setenv(k, "")  # restored at teardown even if main() loads a .env that sets it
        monkeypatch.delenv(k)
    monkeypatch.setenv("MINER_ENV_FILE", str(tmp_path / "no.env"))


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "ERROR" in ln or ln.startswith("natix-miner:")]


def test_config_error_is_one_line_with_the_config_exit_code(capsys):
    rc = M.main(["--subtensor.netwrok", "test"])
    err = capsys.readouterr().err
    assert rc == CONFIG_EXIT_CODE
    assert err.strip().splitlines() == [
        "natix-miner: configuration error: unknown flag --subtensor.netwrok in the --subtensor.* group; "
        "did you mean --subtensor.network?"]


@pytest.mark.parametrize("content, needle", [
    (None, "profile file not found"),
    ("name: x\ntiers: []\n", "tiers: must be a non-empty list"),
    ("name: x\ndeadline_s: 6\ntiers:\n  - name: a\n    exit_threshold: 0.5\n    models:\n      - name: m\n"
     "        type: fake\n        licence: MIT\n        model: ./heads/missing-head.pt\n", "missing-head.pt"),
])
def test_profile_errors_are_one_line_without_traceback(tmp_path, capsys, content, needle):
    prof = tmp_path / "p.yaml"
    if content is not None:
        prof.write_text(content)
    rc = M.main(["--mock", "--profile", str(prof)])
    err = capsys.readouterr().err
    assert rc == CONFIG_EXIT_CODE
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and needle in lines[0], err
    if content and "missing-head" in content:
        assert "scripts/download_models.py" in lines[0]


def test_missing_wallet_is_one_line_with_btcli_commands(tmp_path, capsys):
    rc = M.main(["--wallet.path", str(tmp_path / "w"), "--wallet.name", "nobody", "--subtensor.network", "test"])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert rc == CONFIG_EXIT_CODE and len(lines) == 1 and "Traceback" not in err
    assert "hotkey file" in lines[0] and "btcli wallet new_coldkey" in lines[0]


@pytest.fixture
def wallet(tmp_path):
    make_wallet(tmp_path / "wallets", "w", "h")
    return ["--wallet.path", str(tmp_path / "wallets"), "--wallet.name", "w", "--wallet.hotkey", "h"]


def test_unreachable_chain_names_network_and_endpoint(wallet, capsys):
    endpoint = f"ws://127.0.0.1:{free_port()}"
    rc = M.main([*wallet, "--subtensor.network", "test", "--subtensor.chain_endpoint", endpoint])
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert rc == CHAIN_EXIT_CODE and CHAIN_EXIT_CODE != CONFIG_EXIT_CODE
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "network test" in lines[0] and endpoint in lines[0]
    assert "DNS" in lines[0] and "firewall" in lines[0] and "--subtensor.chain_endpoint" in lines[0]


def test_chain_message_without_explicit_endpoint_names_the_networks_endpoint():
    cfg = parse_config(["--subtensor.network", "test"])
    msg = startup.chain_error_message(cfg, ConnectionError("Name or service not known"))
    assert "network test" in msg and "wss://test.finney.opentensor.ai:443" in msg and "Name or service" in msg


class _ChainWithoutUs:
    network, netuid = "test", 323

    def snapshot(self):
        from natix_miner.neuron.chain import ChainSnapshot

        return ChainSnapshot(("5Other",), (True,), (1.0,), 1)


def test_unregistered_hotkey_is_a_config_error(wallet, capsys, monkeypatch):
    from natix_miner.neuron import wiring

    monkeypatch.setattr(wiring, "make_chain", lambda cfg, hotkey: _ChainWithoutUs())
    rc = M.main([*wallet, "--netuid", "323", "--subtensor.network", "test"])
    lines = error_lines(capsys.readouterr().err)
    assert rc == CONFIG_EXIT_CODE and len(lines) == 1
    assert "not registered on netuid 323" in lines[0] and "btcli subnets register" in lines[0]


def _stop_after_start_line(monkeypatch, seen):
    def stop(miner):
        seen["cfg"] = miner.config
        raise startup.StartupError("stopped by the test", 3)

    monkeypatch.setattr(startup, "connect_chain", stop)


def test_env_file_values_reach_the_miner_config(wallet, tmp_path, monkeypatch, capsys):
    envf = tmp_path / "miner.env"
    envf.write_text(f"NETUID=323\nSUBTENSOR_NETWORK=test\nWALLET_PATH={wallet[1]}\nWALLET_NAME=w\nWALLET_HOTKEY=h\n"
                    "MINER_AXON_PORT=9555\nENGINE_DEVICES=cpu\nMINER_EXTRA_ARGS=--neuron.sync_interval 17\n")
    monkeypatch.setenv("MINER_ENV_FILE", str(envf))
    seen = {}
    _stop_after_start_line(monkeypatch, seen)
    assert M.main([]) == 3
    cfg = seen["cfg"]
    assert (cfg.netuid, cfg.subtensor_network, cfg.wallet_name, cfg.axon_port) == (323, "test", "w", 9555)
    assert cfg.sync_interval == 17.0  # MINER_EXTRA_ARGS from .env too
    err = capsys.readouterr().err
    start = [ln for ln in err.splitlines() if "starting:" in ln]
    assert len(start) == 1
    line = start[0]
    for part in ("network test (wss://test.finney.opentensor.ai:443)", "netuid 323", "wallet w/h = 5",
                 "profile lite-cpu", "devices cpu", "axon [::]:9555"):
        assert part in line, (part, line)


def test_env_file_reaches_the_miner_process(tmp_path):
    """End to end through neurons/miner.py: MINER_PROFILE from the .env file is the profile it loads."""
    envf = tmp_path / "miner.env"
    envf.write_text("MINER_PROFILE=/nonexistent/from-dotenv.yaml\n")
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env["MINER_ENV_FILE"] = str(envf)
    out = subprocess.run([sys.executable, "neurons/miner.py", "--mock"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == CONFIG_EXIT_CODE and "/nonexistent/from-dotenv.yaml" in out.stderr, out.stderr[-800:]


def test_mock_without_validators_explains_why_nothing_queries_it(monkeypatch, capsys):
    seen = {}
    _stop_after_start_line(monkeypatch, seen)
    M.main(["--mock"])
    err = capsys.readouterr().err
    assert "--mock without --mock.validators" in err and "refused" in err
    assert startup.mock_hint(parse_config(["--mock", "--mock.validators", "5X"])) is None
    assert startup.mock_hint(parse_config([])) is None


def test_wandb_off_unless_configured_and_never_before_the_start_line(monkeypatch, capsys):
    import natix_miner.telemetry as T
    from natix_miner.neuron.miner import Miner

    made = []
    monkeypatch.setattr(T, "Telemetry", lambda *a, **k: made.append(k) or None)
    monkeypatch.setattr(Miner, "run", lambda self: None)
    monkeypatch.setattr(startup, "connect_chain", lambda miner: None)
    assert M.main(["--mock", "--mock.validators", "5X"]) == 0
    assert made == []
    err = capsys.readouterr().err
    assert "wandb" not in err.lower()
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert M.main(["--mock", "--mock.validators", "5X"]) == 0 and len(made) == 1
    assert M.main(["--mock", "--mock.validators", "5X", "--wandb.off"]) == 0 and len(made) == 1


def test_engine_failure_is_one_line(monkeypatch, capsys):
    from natix_miner.neuron.miner import Miner

    def boom(self):
        raise RuntimeError("cuda:3 not found\nmore detail")

    monkeypatch.setattr(Miner, "run", boom)
    monkeypatch.setattr(startup, "connect_chain", lambda miner: None)
    assert M.main(["--mock", "--mock.validators", "5X"]) == 1
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert lines and lines[-1].endswith("engine failed to start: RuntimeError: cuda:3 not found")
    assert "Traceback" not in err


def test_pm2_config_stops_on_config_errors_and_reads_env(tmp_path):
    import json
    import shutil

    if shutil.which("node") is None:
        pytest.skip("node not installed")
    envf = tmp_path / "pm2.env"
    envf.write_text("NETUID=323\nexport WALLET_NAME=\"w x\"  # c\nPM2_LOG_DIR=/tmp/natix-logs\nEMPTY=\n")
    out = subprocess.run(["node", "-e", "console.log(JSON.stringify(require('./ecosystem.config.js')))"],
                         cwd=REPO_ROOT, env={**os.environ, "MINER_ENV_FILE": str(envf)},
                         capture_output=True, text=True, timeout=60, check=True)
    app = json.loads(out.stdout)["apps"][0]
    assert app["stop_exit_codes"] == [CONFIG_EXIT_CODE]
    assert app["time"] is False  # loguru timestamps every line
    assert app["out_file"].startswith("/tmp/natix-logs/") and app["error_file"].startswith("/tmp/natix-logs/")
    assert app["env"]["NETUID"] == "323" and app["env"]["WALLET_NAME"] == "w x" and "EMPTY" not in app["env"]
    assert app["env"]["MINER_ENV_FILE"] == str(envf)


def test_child_miners_ignore_the_operators_env_file(monkeypatch, tmp_path):
    """MinerProcess (dry runs, tests) does not read the checkout's .env: its arguments alone configure it."""
    import natix_miner.neuron.launcher as L

    seen = {}

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen["env"] = kw["env"]

    monkeypatch.delenv("MINER_ENV_FILE")
    monkeypatch.setattr(L.subprocess, "Popen", FakePopen)
    L.MinerProcess(["--mock"], 1, tmp_path / "log")
    assert seen["env"]["MINER_ENV_FILE"] == os.devnull
    from natix_miner.neuron.config import load_env_file

    assert load_env_file(os.devnull) == {}
