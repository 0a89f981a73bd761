"""Every environment variable the miner, the pm2 config and doctor read is in .env.example and in README's table."""

import re

from natix_miner.profile import REPO_ROOT

SOURCES = ["natix_miner/neuron/config.py", "natix_miner/neuron/main.py", "natix_miner/neuron/startup.py",
           "natix_miner/ops/doctor.py", "natix_miner/ops/probes.py", "natix_miner/telemetry.py",
           "natix_miner/devices.py", "ecosystem.config.js"]
PATTERNS = [
    r"""(?:environ\.get|getenv|_env|_env_bool|_env_num|\benv)\(\s*["']([A-Z][A-Z0-9_]+)["']""",
    r"""environ\[["']([A-Z][A-Z0-9_]+)["']\]""",
    r"""\benv\.([A-Z][A-Z0-9_]{2,})""",
    r"""process\.env\.([A-Z][A-Z0-9_]+)""",
]
# variables the code sets for itself or for libraries, not operator settings
NOT_SETTINGS = {"PYTHONUNBUFFERED", "YOLO_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}


def read_vars() -> set[str]:
    found = set()
    for rel in SOURCES:
        path = REPO_ROOT / rel
        if not path.exists():
            continue
        text = path.read_text()
        for pat in PATTERNS:
            found |= set(re.findall(pat, text))
    for prof in (REPO_ROOT / "configs").glob("*.yaml"):  # variables a shipped profile names (base_url_env, ...)
        found |= set(re.findall(r"_env:\s*([A-Z][A-Z0-9_]+)", prof.read_text()))
    return found - NOT_SETTINGS


def test_the_scan_finds_the_known_variables():
    v = read_vars()
    assert {"NETUID", "WALLET_HOTKEY", "MINER_EXTRA_ARGS", "PM2_LOG_DIR", "WANDB_API_KEY", "MODEL_URL",
            "NATIX_VLM_URL"} <= v


def test_every_variable_is_in_env_example():
    example = (REPO_ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", example, re.M))
    assert sorted(read_vars() - listed) == []


def test_every_variable_is_in_the_readme_table():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme[readme.index("### Environment variables"):]
    table = table[:table.index("\n## ")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert sorted(read_vars() - documented) == []


def test_env_example_itself_parses_into_a_valid_config(monkeypatch):
    from natix_miner.neuron.config import load_env_file, parse_config

    env: dict = {}
    load_env_file(REPO_ROOT / ".env.example", env)
    assert env == {"NETUID": "323", "SUBTENSOR_NETWORK": "test", "MINER_AXON_PORT": "8091",
                   "MINER_PROFILE": "configs/lite-cpu.yaml"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = parse_config([])
    assert (cfg.netuid, cfg.subtensor_network, cfg.axon_port, cfg.profile) == (323, "test", 8091,
                                                                               "configs/lite-cpu.yaml")
