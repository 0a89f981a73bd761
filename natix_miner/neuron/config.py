"""Command-line flags of ``neurons/miner.py``.

The standard bittensor flags (``--netuid``, ``--wallet.*``, ``--subtensor.*``, ``--axon.*``,
``--logging.*``) keep bittensor's names and defaults (``tests/neuron/test_flags_match_bittensor.py``
compares them with bittensor 10.5's own parser), but are declared here with plain argparse so that
``--help`` does not import bittensor or torch.

Unlike bittensor's non-strict parser, an unknown flag is refused with the closest known flag
suggested (``--subtensor.netwrok test`` would otherwise run on mainnet). The few foreign flags
that launch files pass on purpose are listed in :data:`TOLERATED_FLAGS` and ignored.

Defaults come from environment variables (``.env.example`` lists them all; ``load_env_file``
reads a ``.env`` file without overriding the environment); flags win. To add a flag to a group,
add one ``g.add_argument`` line in :func:`build_parser` and a field to :class:`MinerConfig`; a new
group also goes into :data:`KNOWN_GROUPS`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WALLET_PATH = "~/.bittensor/wallets/"

# Exit codes of neurons/miner.py (ecosystem.config.js lists CONFIG_EXIT_CODE in stop_exit_codes: pm2 does not
# restart a miner that can only fail the same way again).
CONFIG_EXIT_CODE = 78  # sysexits EX_CONFIG: a flag, the profile, the wallet or the registration is wrong
CHAIN_EXIT_CODE = 69  # sysexits EX_UNAVAILABLE: the chain could not be reached (pm2 retries with back-off)

# Flag groups we own or share with bittensor; an unknown flag is refused (with the closest match).
KNOWN_GROUPS = ("wallet", "subtensor", "axon", "logging", "neuron", "blacklist", "engine", "health", "wandb",
                "mock", "record")

# Foreign flags passed on purpose by launch files, accepted and ignored: flag -> (takes a value, why).
TOLERATED_FLAGS: dict[str, tuple[bool, str]] = {
    "--model_url": (True, "the official start_miner.sh passes it; removed upstream 2025-11-30"),
    "--neuron.image_detector": (True, "official start_miner.sh (its detector; ours is the profile)"),
    "--neuron.image_detector_config": (True, "official start_miner.sh"),
    "--neuron.image_detector_device": (True, "official start_miner.sh (ours: --engine.devices)"),
    "--neuron.epoch_length": (True, "official miner config; this miner resyncs every --neuron.sync_interval s"),
    "--neuron.dont_save_events": (False, "official miner config; this miner saves no events"),
    "--blacklist.allow_non_registered": (False, "official launcher; unregistered callers are always refused"),
    "--subtensor._mock": (True, "bittensor's own mock switch; use --mock"),
    "--logging.enable_third_party_loggers": (False, "bittensor flag; third-party loggers keep their defaults"),
    "--wandb.notes": (True, "official miner config"),
}


class ConfigError(ValueError):
    """A configuration error: neurons/miner.py prints it as one line and exits with CONFIG_EXIT_CODE."""


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _env_bool(name: str, default: bool = False) -> bool:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return default
    try:
        return _bool(v)
    except argparse.ArgumentTypeError as e:
        raise ConfigError(f"environment variable {name}: {e}") from None


def _env_num(name: str, default, kind=int):
    v = _env(name)
    if v is None:
        return default
    try:
        return kind(v)
    except ValueError:
        raise ConfigError(f"environment variable {name}={v!r} is not {'an integer' if kind is int else 'a number'}") from None


def _bool(v: str) -> bool:
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` instead of printing usage and exiting with 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="neurons/miner.py",
        allow_abbrev=False,  # --wallet.hot must not silently mean --wallet.hotkey
        epilog=f"Settings also come from environment variables and ./.env (README 'Environment variables'); "
               f"MINER_EXTRA_ARGS adds flags. Exit codes: {CONFIG_EXIT_CODE} configuration error (not restarted "
               f"by pm2), {CHAIN_EXIT_CODE} chain unreachable, 1 engine failure.",
        description="natix-miner: cascade miner for NATIX StreetVision (SN72 mainnet, 323 testnet).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--netuid", type=int, default=_env_num("NETUID", 72), help="subnet uid (72 mainnet, 323 testnet)")
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
    g.add_argument("--axon.port", dest="axon_port", type=int, default=_env_num("MINER_AXON_PORT", 8091))
    g.add_argument("--axon.ip", dest="axon_ip", default=_env("AXON_IP", "[::]"), help="bind address")
    g.add_argument("--axon.external_ip", dest="axon_external_ip", default=_env("AXON_EXTERNAL_IP"),
                   help="public IP published on chain (default: looked up; never looked up in --mock)")
    g.add_argument("--axon.external_port", dest="axon_external_port", type=int,
                   default=_env_num("AXON_EXTERNAL_PORT", None),
                   help="public port published on chain when it differs from --axon.port (port forwarding)")
    g.add_argument("--axon.max_workers", dest="axon_max_workers", type=int, default=10)

    g = p.add_argument_group("logging")
    g.add_argument("--logging.debug", dest="logging_debug", action="store_true")
    g.add_argument("--logging.trace", dest="logging_trace", action="store_true")
    g.add_argument("--logging.info", dest="logging_info", action="store_true",
                   help="bittensor's own logger at INFO (default: WARNING; the miner's log is INFO anyway)")
    g.add_argument("--logging.record_log", dest="logging_record_log", action="store_true",
                   help="also write rotating log files under --logging.logging_dir")
    g.add_argument("--logging.logging_dir", dest="logging_dir", default=_env("LOGGING_DIR", "~/.bittensor/miners"))

    g = p.add_argument_group("blacklist")
    g.add_argument("--blacklist.force_validator_permit", dest="force_validator_permit", nargs="?", const=True,
                   type=_bool, default=_env_bool("BLACKLIST_FORCE_VALIDATOR_PERMIT", True), metavar="BOOL",
                   help="only callers holding a validator permit are served; 'false' turns it off "
                        "(a bare flag, as the official launcher passes it, means true)")
    g.add_argument("--blacklist.allow_non_validators", dest="allow_non_validators", action="store_true",
                   default=_env_bool("BLACKLIST_ALLOW_NON_VALIDATORS"),
                   help="serve registered callers without a validator permit too")
    g.add_argument("--blacklist.min_stake", dest="min_stake", type=float, default=_env_num("BLACKLIST_MIN_STAKE", 0.0, float),
                   help="minimum caller stake (TAO); 0 = no floor")
    g.add_argument("--blacklist.rate_limit", dest="rate_limit", type=int, default=None,
                   help="max requests per caller hotkey per minute (default 600 on a real chain, unlimited in --mock; 0 = unlimited)")
    g.add_argument("--blacklist.max_concurrent", dest="max_concurrent", type=int,
                   default=_env_num("BLACKLIST_MAX_CONCURRENT", 64),
                   help="requests in flight at once, all callers together; past it callers without a validator permit "
                        "are refused (403 busy), validators get a degraded answer instead; 0 = no cap")
    g.add_argument("--blacklist.max_concurrent_per_hotkey", dest="max_concurrent_per_hotkey", type=int,
                   default=_env_num("BLACKLIST_MAX_CONCURRENT_PER_HOTKEY", 32),
                   help="requests in flight from one caller without a validator permit; 0 = no cap")

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

    g = p.add_argument_group("health")
    g.add_argument("--health.port", dest="health_port", type=int, default=_env_num("HEALTH_PORT", 0),
                   help="serve GET /health (200 when ready, else 503) and /stats on this port; 0 = off")
    g.add_argument("--health.host", dest="health_host", default=_env("HEALTH_HOST", "127.0.0.1"))

    g = p.add_argument_group("record (store received images for pseudo-labelling; docs/data-recipe.md)")
    g.add_argument("--record.dir", dest="record_dir", default=_env("RECORD_DIR"),
                   help="store each distinct received image once as <sha256>.<ext> and one JSON line per request "
                        "here (off by default)")
    g.add_argument("--record.max_gb", dest="record_max_gb", type=float, default=_env_num("RECORD_MAX_GB", 10.0, float),
                   help="size cap of --record.dir; the oldest files are deleted first")

    g = p.add_argument_group("wandb")
    g.add_argument("--wandb.on", dest="wandb_on", action="store_true",
                   help="send telemetry to wandb (default: only when WANDB_API_KEY is set)")
    g.add_argument("--wandb.off", dest="wandb_off", action="store_true", default=_env_bool("WANDB_OFF"),
                   help="never use wandb, even with WANDB_API_KEY set")
    g.add_argument("--wandb.offline", dest="wandb_offline", action="store_true",
                   help="write wandb runs to disk only (wandb sync uploads them later); implies --wandb.on")
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
    wandb_on: bool = False
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
        return resolve_endpoint(self.subtensor_network, self.subtensor_chain_endpoint)

    @property
    def wandb_enabled(self) -> bool:
        """wandb only when asked for: WANDB_API_KEY in the environment, --wandb.on or --wandb.offline."""
        if self.wandb_off:
            return False
        return self.wandb_on or self.wandb_offline or bool(_env("WANDB_API_KEY"))

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


def resolve_endpoint(network: str, chain_endpoint: str | None = None) -> str:
    """The websocket endpoint for ``--subtensor.network`` (bittensor's own network map; imported lazily)."""
    if chain_endpoint:
        return chain_endpoint
    from bittensor.core.settings import NETWORK_MAP

    return NETWORK_MAP.get(network, network)


def _split(s: str) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def known_flags(parser: argparse.ArgumentParser | None = None) -> list[str]:
    parser = parser or build_parser()
    return [o for a in parser._actions for o in a.option_strings if o.startswith("--")]


def check_unknown(unknown: list[str], flags: list[str]) -> list[str]:
    """Raise :class:`ConfigError` for an unknown flag (closest match suggested); return the tolerated ones."""
    tolerated: list[str] = []
    i = 0
    while i < len(unknown):
        arg = unknown[i]
        name = arg.split("=", 1)[0]
        if not arg.startswith("-"):
            raise ConfigError(f"unexpected value {arg!r} (a flag's value given twice, or a missing '--'?)")
        if name in TOLERATED_FLAGS:
            takes_value = TOLERATED_FLAGS[name][0]
            tolerated.append(arg)
            if takes_value and "=" not in arg and i + 1 < len(unknown) and not unknown[i + 1].startswith("--"):
                i += 1
                tolerated.append(unknown[i])
            i += 1
            continue
        close = difflib.get_close_matches(name, flags + list(TOLERATED_FLAGS), n=1, cutoff=0.6)
        group = name[2:].split(".", 1)[0] if name.startswith("--") and "." in name else None
        where = f" in the --{group}.* group" if group in KNOWN_GROUPS else ""
        hint = f"; did you mean {close[0]}?" if close else "; see neurons/miner.py --help"
        raise ConfigError(f"unknown flag {name}{where}{hint}")
    return tolerated


def load_env_file(path: str | Path, environ: dict | None = None) -> dict[str, str]:
    """Read ``KEY=value`` lines of a ``.env`` file into ``environ`` (default ``os.environ``) without
    overriding variables already set (the shell and pm2 win). Returns what was set.

    The same rules as ecosystem.config.js: ``#`` comments, optional ``export``, quotes stripped,
    empty values skipped."""
    environ = os.environ if environ is None else environ
    p = Path(path)
    if not p.is_file():
        return {}
    added: dict[str, str] = {}
    for raw in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip()
        if key.startswith("export "):
            key = key[len("export "):].strip()
        if not key.replace("_", "").isalnum() or key[0].isdigit():
            continue
        value = value.strip()
        if value[:1] in ("'", '"') and value.count(value[0]) >= 2:
            value = value[1:value.index(value[0], 1)]
        else:
            value = value.split(" #", 1)[0].split("\t#", 1)[0].strip()
        if value == "" or key in environ:
            continue
        environ[key] = value
        added[key] = value
    return added


def default_env_file() -> Path:
    """``$MINER_ENV_FILE``, else ``.env`` at the repository root."""
    from natix_miner.profile import REPO_ROOT

    return Path(os.environ.get("MINER_ENV_FILE") or REPO_ROOT / ".env")


def extra_args() -> list[str]:
    """``MINER_EXTRA_ARGS`` split like a shell would: flags added without editing a tracked file."""
    v = _env("MINER_EXTRA_ARGS")
    try:
        return shlex.split(v) if v else []
    except ValueError as e:
        raise ConfigError(f"MINER_EXTRA_ARGS: {e}") from e


def parse_config(argv: list[str] | None = None) -> MinerConfig:
    """Parse flags (``argv`` or ``MINER_EXTRA_ARGS`` + ``sys.argv[1:]``). Raises :class:`ConfigError`."""
    import sys

    if argv is None:
        argv = extra_args() + sys.argv[1:]  # command-line flags come last and win
    parser = build_parser()
    ns, unknown = parser.parse_known_args(argv)
    tolerated = check_unknown(unknown, known_flags(parser))
    d = vars(ns)
    d["mock_validators"] = _split(d.get("mock_validators", ""))
    d["mock_miners"] = _split(d.get("mock_miners", ""))
    cfg = MinerConfig(**d)
    cfg.unknown_args = tolerated
    if cfg.rate_limit is None:
        cfg.rate_limit = 0 if cfg.mock else 600
    if cfg.deadline_s is not None and not (0 < cfg.deadline_s <= 8.5):
        raise ConfigError("--engine.deadline_s must be in (0, 8.5]: validators wait 9 s in total")
    if cfg.record_max_gb <= 0:
        raise ConfigError("--record.max_gb must be > 0")
    if cfg.mock_validator_stake < 0 or cfg.min_stake < 0:
        raise ConfigError("stakes must be >= 0")
    if not 0 < cfg.axon_port < 65536:
        raise ConfigError(f"--axon.port must be in 1..65535, got {cfg.axon_port}")
    return cfg
