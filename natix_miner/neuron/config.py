"""Command-line flags of ``neurons/miner.py``.

The standard bittensor flags (``--netuid``, ``--wallet.*``, ``--subtensor.*``, ``--axon.*``,
``--logging.*``) keep bittensor's names and defaults (docs/protocol.md §4.6), but are declared here
with plain argparse so that ``--help`` does not import bittensor or torch. Like bittensor's
own parser, unknown flags are ignored with a warning (launch scripts pass e.g. ``--model_url``).
Environment variables (see ``.env.example``) provide defaults; flags win.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WALLET_PATH = "~/.bittensor/wallets/"
NETWORK_ENDPOINTS = {
    "finney": "wss://entrypoint-finney.opentensor.ai:443",
    "test": "wss://test.finney.opentensor.ai:443",
    "local": "ws://127.0.0.1:9944",
}


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _env_bool(name: str) -> bool:
    return str(os.environ.get(name, "")).strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neurons/miner.py",
        description="natix-miner: cascade miner for NATIX StreetVision (SN72 mainnet, 323 testnet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--netuid", type=int, default=int(_env("NETUID", 72)), help="subnet uid (72 mainnet, 323 testnet)")
    p.add_argument("--profile", default=_env("MINER_PROFILE"),
                   help="engine profile YAML (default: configs/lite-cpu.yaml, the embedded CPU profile)")

    g = p.add_argument_group("wallet")
    g.add_argument("--wallet.name", dest="wallet_name", default=_env("WALLET_NAME"), help="coldkey name (default: default)")
    g.add_argument("--wallet.hotkey", dest="wallet_hotkey", default=_env("WALLET_HOTKEY"), help="hotkey name (default: default)")
    g.add_argument("--wallet.path", dest="wallet_path", default=_env("WALLET_PATH"), help=f"wallets folder (default: {DEFAULT_WALLET_PATH})")

    g = p.add_argument_group("subtensor")
    g.add_argument("--subtensor.network", dest="subtensor_network", default=_env("SUBTENSOR_NETWORK", "finney"),
                   help="finney | test | local | a ws(s):// endpoint")
    g.add_argument("--subtensor.chain_endpoint", dest="subtensor_chain_endpoint", default=_env("SUBTENSOR_CHAIN_ENDPOINT"),
                   help="explicit websocket endpoint (overrides --subtensor.network)")

    g = p.add_argument_group("axon")
    g.add_argument("--axon.port", dest="axon_port", type=int, default=int(_env("MINER_AXON_PORT", 8091)))
    g.add_argument("--axon.ip", dest="axon_ip", default=_env("AXON_IP", "[::]"), help="bind address")
    g.add_argument("--axon.external_ip", dest="axon_external_ip", default=_env("AXON_EXTERNAL_IP"),
                   help="public IP published on chain (default: looked up; never looked up in --mock)")
    g.add_argument("--axon.external_port", dest="axon_external_port", type=int, default=None)
    g.add_argument("--axon.max_workers", dest="axon_max_workers", type=int, default=10)

    g = p.add_argument_group("logging")
    g.add_argument("--logging.debug", dest="logging_debug", action="store_true")
    g.add_argument("--logging.trace", dest="logging_trace", action="store_true")
    g.add_argument("--logging.info", dest="logging_info", action="store_true")
    g.add_argument("--logging.record_log", dest="logging_record_log", action="store_true",
                   help="also write rotating log files under --logging.logging_dir")
    g.add_argument("--logging.logging_dir", dest="logging_dir", default=_env("LOGGING_DIR", "~/.bittensor/miners"))

    g = p.add_argument_group("blacklist")
    g.add_argument("--blacklist.force_validator_permit", dest="force_validator_permit", action="store_true", default=True,
                   help="only callers holding a validator permit are served (the default)")
    g.add_argument("--blacklist.allow_non_validators", dest="allow_non_validators", action="store_true",
                   default=_env_bool("BLACKLIST_ALLOW_NON_VALIDATORS"),
                   help="serve registered callers without a validator permit too")
    g.add_argument("--blacklist.min_stake", dest="min_stake", type=float, default=float(_env("BLACKLIST_MIN_STAKE", 0.0)),
                   help="minimum caller stake (TAO); 0 = no floor")
    g.add_argument("--blacklist.rate_limit", dest="rate_limit", type=int, default=None,
                   help="max requests per caller hotkey per minute (default 600 on a real chain, unlimited in --mock; 0 = unlimited)")
    g.add_argument("--blacklist.max_concurrent", dest="max_concurrent", type=int,
                   default=int(_env("BLACKLIST_MAX_CONCURRENT", 64)),
                   help="requests in flight at once, all callers together; past it callers without a validator permit "
                        "are refused (403 busy), validators get a degraded answer instead; 0 = no cap")
    g.add_argument("--blacklist.max_concurrent_per_hotkey", dest="max_concurrent_per_hotkey", type=int,
                   default=int(_env("BLACKLIST_MAX_CONCURRENT_PER_HOTKEY", 32)),
                   help="requests in flight from one caller without a validator permit; 0 = no cap")
    g.add_argument("--blacklist.allow_non_registered", dest="allow_non_registered", action="store_true",
                   help="accepted for compatibility with the official launcher; unregistered callers are always refused")

    g = p.add_argument_group("engine")
    g.add_argument("--engine.devices", dest="engine_devices", default=_env("ENGINE_DEVICES"),
                   help="comma list like cpu or cuda:0,cuda:1 (default: all visible GPUs, else cpu)")
    g.add_argument("--engine.allow_restricted", dest="allow_restricted", action="store_true",
                   default=_env_bool("ALLOW_RESTRICTED_LICENCES"),
                   help="load models whose licence is non-commercial or gated (you accept their terms)")
    g.add_argument("--engine.no_cache", dest="no_cache", action="store_true",
                   help="disable the result cache (load tests: every request is computed)")
    g.add_argument("--engine.deadline_s", dest="deadline_s", type=float, default=None,
                   help="answer within this many seconds of receipt (default: the profile's deadline_s)")
    g.add_argument("--engine.remote", dest="engine_remote", default=_env("ENGINE_REMOTE"),
                   help="URL of a shared cascade service (python -m natix_miner.serve, docs/serving.md); "
                        "--profile then only sets the deadline, cache and epsilon")
    g.add_argument("--engine.remote_fallback", dest="engine_remote_fallback", default=_env("ENGINE_REMOTE_FALLBACK"),
                   help="profile run locally while the --engine.remote service is down or slow "
                        "(default: none, answer the fallback value)")

    g = p.add_argument_group("neuron")
    g.add_argument("--neuron.sync_interval", dest="sync_interval", type=float, default=60.0,
                   help="seconds between metagraph resyncs")
    g.add_argument("--neuron.name", dest="neuron_name", default="miner")

    g.add_argument("--health.port", dest="health_port", type=int, default=int(_env("HEALTH_PORT", 0)),
                   help="serve GET /health (200 when ready, else 503) and /stats on this port; 0 = off")
    g.add_argument("--health.host", dest="health_host", default=_env("HEALTH_HOST", "127.0.0.1"))

    g = p.add_argument_group("record (store received images for pseudo-labelling; docs/data-recipe.md)")
    g.add_argument("--record.dir", dest="record_dir", default=_env("RECORD_DIR"),
                   help="store each distinct received image once as <sha256>.<ext> and one JSON line per request "
                        "here (off by default)")
    g.add_argument("--record.max_gb", dest="record_max_gb", type=float, default=float(_env("RECORD_MAX_GB", 10.0)),
                   help="size cap of --record.dir; the oldest files are deleted first")

    g = p.add_argument_group("wandb")
    g.add_argument("--wandb.off", dest="wandb_off", action="store_true", default=_env_bool("WANDB_OFF"))
    g.add_argument("--wandb.offline", dest="wandb_offline", action="store_true")
    g.add_argument("--wandb.project_name", dest="wandb_project", default=_env("WANDB_PROJECT", "natix-miner"))
    g.add_argument("--wandb.entity", dest="wandb_entity", default=_env("WANDB_ENTITY"))

    g = p.add_argument_group("mock (local chain, no wallet/network/GPU needed)")
    g.add_argument("--mock", action="store_true", help="run against a local mock chain on loopback")
    g.add_argument("--mock.validators", dest="mock_validators", default="",
                   help="comma-separated SS58 hotkeys registered as staked, permit-holding validators")
    g.add_argument("--mock.miners", dest="mock_miners", default="",
                   help="comma-separated SS58 hotkeys registered without a validator permit")
    g.add_argument("--mock.validator_stake", dest="mock_validator_stake", type=float, default=10_000.0)
    return p


@dataclass
class MinerConfig:
    netuid: int = 72
    profile: str | None = None
    wallet_name: str | None = None
    wallet_hotkey: str | None = None
    wallet_path: str | None = None
    subtensor_network: str = "finney"
    subtensor_chain_endpoint: str | None = None
    axon_port: int = 8091
    axon_ip: str = "[::]"
    axon_external_ip: str | None = None
    axon_external_port: int | None = None
    axon_max_workers: int = 10
    logging_debug: bool = False
    logging_trace: bool = False
    logging_info: bool = False
    logging_record_log: bool = False
    logging_dir: str = "~/.bittensor/miners"
    force_validator_permit: bool = True
    allow_non_validators: bool = False
    min_stake: float = 0.0
    allow_non_registered: bool = False
    rate_limit: int | None = None
    max_concurrent: int = 64
    max_concurrent_per_hotkey: int = 32
    engine_devices: str | None = None
    allow_restricted: bool = False
    deadline_s: float | None = None
    no_cache: bool = False
    engine_remote: str | None = None
    engine_remote_fallback: str | None = None
    sync_interval: float = 60.0
    neuron_name: str = "miner"
    health_port: int = 0
    health_host: str = "127.0.0.1"
    record_dir: str | None = None
    record_max_gb: float = 10.0
    wandb_off: bool = False
    wandb_offline: bool = False
    wandb_project: str = "natix-miner"
    wandb_entity: str | None = None
    mock: bool = False
    mock_validators: list[str] = field(default_factory=list)
    mock_miners: list[str] = field(default_factory=list)
    mock_validator_stake: float = 10_000.0
    unknown_args: list[str] = field(default_factory=list)

    @property
    def wallet_given(self) -> bool:
        return any(v is not None for v in (self.wallet_name, self.wallet_hotkey, self.wallet_path))

    @property
    def require_permit(self) -> bool:
        return self.force_validator_permit and not self.allow_non_validators

    @property
    def chain_endpoint(self) -> str:
        if self.subtensor_chain_endpoint:
            return self.subtensor_chain_endpoint
        return NETWORK_ENDPOINTS.get(self.subtensor_network, self.subtensor_network)

    def devices(self) -> list[str] | None:
        if not self.engine_devices:
            return None
        return [d.strip() for d in self.engine_devices.split(",") if d.strip()]

    def wallet_args(self) -> dict[str, str]:
        return {
            "name": self.wallet_name or "default",
            "hotkey": self.wallet_hotkey or "default",
            "path": str(Path(self.wallet_path or DEFAULT_WALLET_PATH).expanduser()),
        }


def _split(s: str) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def parse_config(argv: list[str] | None = None) -> MinerConfig:
    parser = build_parser()
    ns, unknown = parser.parse_known_args(argv)
    d = vars(ns)
    d["mock_validators"] = _split(d.get("mock_validators", ""))
    d["mock_miners"] = _split(d.get("mock_miners", ""))
    cfg = MinerConfig(**d)
    cfg.unknown_args = list(unknown)
    if cfg.rate_limit is None:
        cfg.rate_limit = 0 if cfg.mock else 600
    if cfg.deadline_s is not None and not (0 < cfg.deadline_s <= 8.5):
        parser.error("--engine.deadline_s must be in (0, 8.5]: validators wait 9 s in total")
    if cfg.record_max_gb <= 0:
        parser.error("--record.max_gb must be > 0")
    if cfg.mock_validator_stake < 0 or cfg.min_stake < 0:
        parser.error("stakes must be >= 0")
    return cfg
