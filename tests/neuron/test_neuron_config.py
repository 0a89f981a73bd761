import re
import subprocess
import sys

import pytest

from natix_miner.neuron.config import ConfigError, parse_config
from natix_miner.profile import REPO_ROOT


def test_defaults_follow_the_official_miner():
    cfg = parse_config([])
    assert cfg.netuid == 72 and cfg.axon_port == 8091 and cfg.require_permit
    assert cfg.rate_limit == 600 and not cfg.mock


def test_allow_non_validators_turns_off_permit():
    assert not parse_config(["--blacklist.allow_non_validators"]).require_permit


def test_launcher_flags_are_tolerated_and_named():
    """The official start_miner.sh flags pass (listed in TOLERATED_FLAGS), with their values."""
    cfg = parse_config(["--model_url", "x/y", "--neuron.image_detector", "ViT", "--netuid", "323",
                        "--blacklist.force_validator_permit", "True", "--blacklist.allow_non_registered"])
    assert cfg.netuid == 323 and cfg.unknown_args[:4] == ["--model_url", "x/y", "--neuron.image_detector", "ViT"]
    assert cfg.require_permit


@pytest.mark.parametrize("argv, suggestion", [
    (["--subtensor.netwrok", "test"], "--subtensor.network"),
    (["--wallet.hotkye", "x"], "--wallet.hotkey"),
    (["--axon.prot", "1"], "--axon.port"),
    (["--blacklist.min_stak", "1"], "--blacklist.min_stake"),
    (["--engine.device", "cpu"], "--engine.devices"),
    (["--neuron.sync_intervall", "5"], "--neuron.sync_interval"),
    (["--mock.validator", "x"], "--mock.validators"),
    (["--logging.debugg"], "--logging.debug"),
    (["--wallet.hot", "x"], "--wallet.hotkey"),  # no silent abbreviation
])
def test_misspelt_flag_is_refused_with_the_closest_match(argv, suggestion):
    with pytest.raises(ConfigError, match=f"did you mean {re.escape(suggestion)}\\?"):
        parse_config(argv)


def test_unknown_flag_without_a_close_match_and_stray_values_are_refused():
    with pytest.raises(ConfigError, match="unknown flag --totally-unrelated"):
        parse_config(["--totally-unrelated"])
    with pytest.raises(ConfigError, match="unexpected value 'True'"):
        parse_config(["--logging.debug", "True"])
    with pytest.raises(ConfigError, match="--netuid: invalid int value"):
        parse_config(["--netuid", "abc"])


def test_force_validator_permit_can_be_turned_off(monkeypatch):
    assert parse_config(["--blacklist.force_validator_permit"]).require_permit
    assert not parse_config(["--blacklist.force_validator_permit", "false"]).require_permit
    monkeypatch.setenv("BLACKLIST_FORCE_VALIDATOR_PERMIT", "0")
    assert not parse_config([]).require_permit
    monkeypatch.setenv("BLACKLIST_FORCE_VALIDATOR_PERMIT", "maybe")
    with pytest.raises(ConfigError, match="BLACKLIST_FORCE_VALIDATOR_PERMIT"):
        parse_config([])


def test_bad_number_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("MINER_AXON_PORT", "80x")
    with pytest.raises(ConfigError, match="MINER_AXON_PORT='80x'"):
        parse_config([])


def test_every_flag_is_used_somewhere():
    """No parsed-but-unused flag: each MinerConfig field is read outside config.py."""
    import dataclasses

    from natix_miner.neuron.config import MinerConfig

    src = "".join(p.read_text() for p in (REPO_ROOT / "natix_miner").rglob("*.py")
                  if p.name != "config.py" or p.parent.name != "neuron")
    text_cfg = (REPO_ROOT / "natix_miner/neuron/config.py").read_text()
    unused = []
    for f in dataclasses.fields(MinerConfig):
        if f.name == "unknown_args":
            continue
        props = re.findall(rf"def (\w+)\(self[^)]*\)[^:]*:\n(?:[^\n]*\n){{0,6}}?[^\n]*self\.{f.name}\b", text_cfg)
        if not re.search(rf"(\.{f.name}\b|['\"]{f.name}['\"])", src) and not any(re.search(rf"\.{p}\b", src) for p in props):
            unused.append(f.name)
    assert unused == []


def test_extra_args_env_and_command_line_precedence(monkeypatch):
    monkeypatch.setenv("MINER_EXTRA_ARGS", "--netuid 323 --logging.debug --wallet.name 'my wallet'")
    monkeypatch.setattr(sys, "argv", ["miner.py", "--netuid", "72"])
    cfg = parse_config()
    assert cfg.logging_debug and cfg.wallet_name == "my wallet" and cfg.netuid == 72  # command line wins
    monkeypatch.setenv("MINER_EXTRA_ARGS", "--netwrok test")
    with pytest.raises(ConfigError, match="unknown flag --netwrok"):
        parse_config()


def test_load_env_file_rules(tmp_path):
    from natix_miner.neuron.config import load_env_file

    f = tmp_path / ".env"
    f.write_text("# comment\nNETUID=323   # testnet\nexport WALLET_NAME=\"my w\"\nWALLET_HOTKEY=\n"
                 "SUBTENSOR_NETWORK='test'\nALREADY=file\nnot a line\n")
    env = {"ALREADY": "shell"}
    added = load_env_file(f, env)
    assert env == {"ALREADY": "shell", "NETUID": "323", "WALLET_NAME": "my w", "SUBTENSOR_NETWORK": "test"}
    assert set(added) == {"NETUID", "WALLET_NAME", "SUBTENSOR_NETWORK"}
    assert load_env_file(tmp_path / "absent", env) == {}


def test_wandb_is_off_unless_configured(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_OFF", raising=False)
    assert not parse_config([]).wandb_enabled
    assert parse_config(["--wandb.on"]).wandb_enabled and parse_config(["--wandb.offline"]).wandb_enabled
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert parse_config([]).wandb_enabled and not parse_config(["--wandb.off"]).wandb_enabled


def test_mock_validators_list_and_unlimited_rate():
    cfg = parse_config(["--mock", "--mock.validators", "a, b,,c"])
    assert cfg.mock_validators == ["a", "b", "c"] and cfg.rate_limit == 0
    assert not cfg.wallet_given


def test_help_is_fast_and_imports_no_heavy_library():
    code = ("import sys, runpy; sys.argv=['miner.py','--help']\n"
            "try:\n runpy.run_path('neurons/miner.py', run_name='__main__')\n"
            "except SystemExit: pass\n"
            "heavy=[m for m in ('torch','bittensor','transformers','ultralytics','wandb') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert "--mock.validators" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_engine_flags_reach_the_profile(fake_profile_path):
    from natix_miner.neuron import wiring

    cfg = parse_config(["--profile", str(fake_profile_path), "--engine.no_cache", "--engine.deadline_s", "2.5"])
    engine = wiring.make_engine(cfg, wiring.miner_profile(cfg))
    assert engine.profile.cache.enabled is False and engine.profile.deadline_s == 2.5
