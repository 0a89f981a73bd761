import subprocess
import sys

from natix_miner.neuron.config import parse_config
from natix_miner.profile import REPO_ROOT


def test_defaults_follow_the_official_miner():
    cfg = parse_config([])
    assert cfg.netuid == 72 and cfg.axon_port == 8091 and cfg.require_permit
    assert cfg.rate_limit == 600 and not cfg.mock


def test_allow_non_validators_turns_off_permit():
    assert not parse_config(["--blacklist.allow_non_validators"]).require_permit


def test_unknown_flags_are_kept_not_fatal():
    cfg = parse_config(["--model_url", "x/y", "--netuid", "323"])
    assert cfg.netuid == 323 and "--model_url" in cfg.unknown_args


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
    from natix_miner.neuron.miner import Miner

    cfg = parse_config(["--profile", str(fake_profile_path), "--engine.no_cache", "--engine.deadline_s", "2.5"])
    m = Miner(cfg)
    engine = m._make_engine()
    assert engine.profile.cache.enabled is False and engine.profile.deadline_s == 2.5
