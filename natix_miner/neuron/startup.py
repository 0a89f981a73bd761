"""Start-up checks of ``neurons/miner.py``, in order, each stopping with one line.

flags (:func:`natix_miner.neuron.config.parse_config`) → profile (file, keys, values, weight/head files:
:func:`check_profile`) → wallet → chain (:func:`chain_error_message` when it cannot be reached) → registration.
Each failure is a :class:`StartupError` carrying the exit code: configuration errors exit with
``CONFIG_EXIT_CODE`` (pm2's ``stop_exit_codes``: no restart loop for a typo), an unreachable chain with
``CHAIN_EXIT_CODE`` (pm2 retries with back-off).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from natix_miner.neuron.config import CHAIN_EXIT_CODE, CONFIG_EXIT_CODE, MinerConfig


class StartupError(RuntimeError):
    def __init__(self, message: str, code: int = CONFIG_EXIT_CODE):
        super().__init__(message)
        self.code = code


_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FILE_EXT_RE = re.compile(r"\.(pt|pth|onnx|engine|plan|safetensors|bin|npz|npy|json|ya?ml|pkl|joblib|ckpt|gguf)$",
                          re.I)
WEIGHT_OPTION_KEYS = ("weights", "head", "checkpoint", "path", "model_path")


def weight_refs(spec: Any) -> list[tuple[str, str]]:
    """(key, reference) of a model spec's weights: ``model`` and weight-like options."""
    refs: list[tuple[str, str]] = []
    if isinstance(spec.model, str) and spec.model:
        refs.append(("model", spec.model))
    for k in WEIGHT_OPTION_KEYS:
        v = (spec.options or {}).get(k)
        if isinstance(v, str) and v:
            refs.append((f"options.{k}", v))
    return refs


def looks_local(ref: str) -> bool:
    """A file path rather than a Hugging Face repo id (``user/repo``)."""
    return ref.startswith((".", "/", "~")) or bool(_FILE_EXT_RE.search(ref)) or not _HUB_ID_RE.match(ref)


def missing_local_files(profile: Any) -> list[str]:
    """``model.key: path`` for each enabled model's local weight/head file that does not exist."""
    missing = []
    for _, spec in profile.models():
        for key, ref in weight_refs(spec):
            if Path(profile.resolve_path(ref)).expanduser().exists():
                continue
            if looks_local(ref):
                missing.append(f"{spec.name}.{key}: {ref}")
    return missing


def check_profile(cfg: MinerConfig) -> Any:
    """Load and validate the profile and its local files; :class:`StartupError` with the one-line reason."""
    from natix_miner.profile import ProfileError, load_profile

    try:
        profile = load_profile(cfg.profile)
    except ProfileError as e:
        raise StartupError(f"profile: {e}") from None
    missing = missing_local_files(profile)
    if missing:
        raise StartupError(f"profile {profile.source}: file not found: {'; '.join(missing)} "
                           "(download weights with .venv/bin/python scripts/download_models.py --profile "
                           f"{cfg.profile or 'configs/lite-cpu.yaml'}, or fix the path)")
    return profile


def chain_error_message(cfg: MinerConfig, error: BaseException) -> str:
    endpoint = cfg.subtensor_chain_endpoint or cfg.chain_endpoint
    why = str(error).splitlines()[0][:200] if str(error) else ""
    return (f"cannot reach the chain: network {cfg.subtensor_network}, endpoint {endpoint} "
            f"({type(error).__name__}{': ' + why if why else ''}). Check DNS and the firewall (outbound "
            "websocket to that host), or pass another endpoint with --subtensor.chain_endpoint ws(s)://HOST:PORT")


def connect_chain(miner: Any) -> None:
    """Build ``miner.chain`` and check our registration; one-line :class:`StartupError` on failure."""
    from natix_miner.neuron import wiring

    cfg = miner.config
    try:
        miner.chain = wiring.make_chain(cfg, miner.wallet.hotkey.ss58_address)
        miner.check_registered()
    except SystemExit as e:  # not registered: Miner.check_registered's message with the btcli command
        raise StartupError(str(e.code).replace("\n", " ")) from None
    except Exception as e:  # noqa: BLE001 - websocket/DNS/SSL errors of every kind
        raise StartupError(chain_error_message(cfg, e), CHAIN_EXIT_CODE) from None


def make_wallet(miner: Any) -> None:
    from natix_miner.neuron import wiring

    try:
        miner.wallet, miner._tmpdir = wiring.make_wallet(miner.config)
    except SystemExit as e:
        raise StartupError(str(e.code).replace("\n", " ").replace("  ", " ")) from None
    except Exception as e:  # noqa: BLE001 - a corrupt or encrypted key file
        raise StartupError(f"wallet: {type(e).__name__}: {e}") from None


def describe(cfg: MinerConfig, profile: Any, hotkey_ss58: str | None) -> str:
    """The start-up line: what will run, where, as whom."""
    if cfg.mock:
        net = "mock (local, no chain)"
    elif cfg.subtensor_chain_endpoint:
        net = f"endpoint {cfg.subtensor_chain_endpoint} (--subtensor.chain_endpoint)"
    else:
        net = f"{cfg.subtensor_network} ({cfg.chain_endpoint})"
    w = cfg.wallet_args()
    wallet = "throwaway mock wallet" if cfg.mock and not cfg.wallet_given else f"{w['name']}/{w['hotkey']}"
    devices = cfg.engine_devices or "auto (all visible GPUs, else cpu)"
    bind = "127.0.0.1" if cfg.mock else cfg.axon_ip
    ext = cfg.axon_external_ip or ("127.0.0.1" if cfg.mock else "<public IP, looked up>")
    ext_port = cfg.axon_external_port or cfg.axon_port
    return (f"starting: {'' if net.startswith('endpoint') else 'network '}{net}, netuid {cfg.netuid}, wallet {wallet}"
            f"{' = ' + hotkey_ss58 if hotkey_ss58 else ''}, profile {profile.name} ({profile.source}), "
            f"devices {devices}, axon {bind}:{cfg.axon_port} (published as {ext}:{ext_port})")


def mock_hint(cfg: MinerConfig) -> str | None:
    if cfg.mock and not cfg.mock_validators and cfg.require_permit:
        return ("--mock without --mock.validators: no caller holds a validator permit on the mock chain, so every "
                "request will be refused. Pass --mock.validators <the validator's hotkey ss58> (scripts/"
                "mock_validator.py prints its own), or --blacklist.allow_non_validators with --mock.miners")
    return None
