"""``scripts/doctor.py``: is this machine ready to mine? A table of PASS / WARN / FAIL with fixes.

Every check is a plain function (the chain checks live in ``natix_miner/ops/chain_checks.py``, the probes
of the outside world in ``natix_miner/ops/probes.py``) that takes its inputs (a metagraph-like object, a clock, a connect
function, a device table, ...) and returns a :class:`CheckResult`; :func:`run_doctor` gathers the
inputs through a :class:`DoctorEnv` whose members are the only code that touches the network, the
GPU or the Hugging Face cache, so tests swap them for fakes.

Local checks (``--skip-network`` runs only these):

* **wallet** — the hotkey file exists and is not readable by other users (it holds the private
  key), ``coldkeypub.txt`` exists, and whether a private coldkey sits on the mining box.
* **profile** — the engine profile loads.
* **placement** — the profile's enabled models fit the GPUs (``torch.cuda``) or, CPU-only, the RAM
  (:func:`natix_miner.devices.plan_placement`, 10 % headroom), and the memory free right now.
* **weights** — every model's weights are a local file or in the Hugging Face cache (nothing is
  downloaded at run time).
* **miner port** — something accepts TCP connections on ``127.0.0.1:<axon.port>``.
* **model card** — optional: validators check no model card (2025-11-30) and NATIX requires no
  registration (``register.sh`` deleted 2026-05-03). With ``--model-dir``, ``model_card.json`` is checked against the historical rules for those
  who publish a model anyway; otherwise SKIP.

Network checks:

* **registration** — the hotkey is registered on the netuid (metagraph), and does not hold a
  validator permit with more than 40096 stake (such UIDs are never queried, docs/protocol.md §2.2).
* **axon published** — the axon IP/port on chain is set (not 0.0.0.0) and matches this machine's
  public IP (``bittensor.utils.networking.get_external_ip``).
* **port reachable** — a TCP connect to the published ip:port from here. Behind NAT without
  hairpinning this can fail although the port is open from outside: a failure is a WARN.
* **clock** — offset to NTP (SNTP query to pool.ntp.org, UDP 123), else to the HTTP ``Date`` of the
  chain endpoint. Validators' requests carry a nanosecond nonce that the axon rejects when older
  than 4 s + timeout (9 s): skew > 2 s is a WARN, > 13 s a FAIL.
* **validators active** — permit holders whose ``last_update`` is within ``--active-blocks`` blocks.
* **subnet halt** — upstream halts the subnet by burning: validators put all their weight on the subnet
  **owner's UID** (the UID of ``get_subnet_owner_hotkey(netuid)``) and skip the forward pass (docs/protocol.md §10).
  When most active validator stake puts its weight there: WARN "subnet halted".
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from natix_miner.ops import probes
from natix_miner.ops.chain_checks import (  # noqa: F401 - re-exported: the doctor's public API
    BURN_ROW_SHARE,
    BURN_STAKE_SHARE,
    CLOCK_FAIL_S,
    CLOCK_WARN_S,
    FAIL,
    INFO,
    NONCE_DELTA_S,
    PASS,
    SKIP,
    VALIDATOR_TIMEOUT_S,
    VPERMIT_TAO_LIMIT,
    WARN,
    CheckResult,
    check_axon_published,
    check_burn,
    check_clock,
    check_port_reachable,
    check_registration,
    check_validators_active,
    find_uid,
)
from natix_miner.ops.probes import NTP_EPOCH_OFFSET, http_date_offset, sntp_offset, tcp_connect  # noqa: F401
from natix_miner.ops.wallet_files import WalletFiles, read_hotkey_ss58


# ---------------------------------------------------------------------------------------------- local checks
def check_wallet(wf: WalletFiles) -> CheckResult:
    name = "wallet"
    create = (f"btcli wallet new_coldkey --wallet-name {wf.name} --wallet-path {wf.path} && "
              f"btcli wallet new_hotkey --wallet-name {wf.name} --hotkey {wf.hotkey} --wallet-path {wf.path}")
    if not wf.hotkey_file.exists():
        return CheckResult(name, FAIL, f"hotkey file {wf.hotkey_file} not found",
                           f"create the wallet ({create}) or pass --wallet.name/--wallet.hotkey/--wallet.path")
    problems: list[str] = []
    fixes: list[str] = []
    status = PASS
    for p in (wf.hotkey_file, wf.coldkey_file):
        if p.exists() and p.stat().st_mode & stat.S_IROTH:
            status = WARN
            problems.append(f"{p} is readable by every user")
            fixes.append(f"chmod 600 {p}")
    ss58 = read_hotkey_ss58(wf)
    if ss58 is None:
        status = WARN
        problems.append("could not read the hotkey's address (encrypted hotkey without a pub file?)")
        fixes.append("regenerate the hotkey unencrypted: the miner must load it without a password")
    if not wf.coldkeypub_file.exists():
        status = WARN
        problems.append(f"{wf.coldkeypub_file} missing")
        fixes.append(f"btcli wallet regen_coldkeypub --wallet-name {wf.name} --wallet-path {wf.path}")
    notes = []
    if wf.coldkey_file.exists():
        notes.append("a private coldkey is stored here; a mining box only needs coldkeypub.txt and the hotkey")
    detail = f"hotkey {wf.name}/{wf.hotkey}" + (f" = {ss58}" if ss58 else "")
    if problems:
        detail += "; " + "; ".join(problems)
    if notes:
        detail += " (" + "; ".join(notes) + ")"
    return CheckResult(name, status, detail, "; ".join(fixes))


def check_profile(path: str | None) -> tuple[CheckResult, Any]:
    from natix_miner.profile import DEFAULT_PROFILE, ProfileError, load_profile

    try:
        prof = load_profile(path)
    except ProfileError as e:
        return CheckResult("profile", FAIL, str(e), "fix the profile file or pass --profile configs/<name>.yaml"), None
    except Exception as e:  # noqa: BLE001 - a broken install should be reported, not crash the doctor
        return CheckResult("profile", FAIL, f"{type(e).__name__}: {e}", "check the installation (pip install -e .)"), None
    n = len(prof.models())
    src = path or str(DEFAULT_PROFILE)
    return CheckResult("profile", PASS, f"{prof.name} ({src}): {n} enabled model(s), deadline {prof.deadline_s:g} s"), prof


def check_placement(profile: Any, devices: dict[str, float], free_mb: dict[str, float] | None = None,
                    headroom: float = 0.10) -> CheckResult:
    """Plan the profile's enabled models on ``devices`` (total MB) and compare with the memory free now."""
    from natix_miner.devices import PlacementError, plan_placement

    name = "placement"
    models = [(m, float(m.memory_mb)) for _, m in profile.models()]
    if not models:
        return CheckResult(name, FAIL, "the profile enables no model", "enable at least one model in the profile")
    gpus = sorted(d for d in devices if d != "cpu")
    try:
        plan = plan_placement(models, devices, headroom)
    except PlacementError as e:
        return CheckResult(name, FAIL, f"GPUs: {', '.join(gpus) or 'none'}\n{e}",
                           "run a smaller profile, disable models or add GPU memory")
    parts = []
    for d in sorted(devices, key=lambda x: (x == "cpu", x)):
        names = [p.model for p in plan.placements if p.device == d]
        if names:
            parts.append(f"{d} ({plan.used_mb(d, measured=False):.0f} of {devices[d]:.0f} MB): {', '.join(names)}")
    status, fix = PASS, ""
    warns = []
    for d, free in (free_mb or {}).items():
        used = plan.used_mb(d, measured=False) if d in devices else 0.0
        if used > 0 and used > free:
            warns.append(f"{d}: planned {used:.0f} MB but only {free:.0f} MB free now")
    if warns:
        status = WARN
        fix = "stop other processes using that memory (nvidia-smi / top) or run a smaller profile"
    where = "GPU" if gpus else "CPU-only, RAM"
    detail = f"{where}: " + "; ".join(parts) + ("; " + "; ".join(warns) if warns else "")
    return CheckResult(name, status, detail, fix)


def check_weights(profile: Any, cached_repos: set[str] | None) -> CheckResult:
    from natix_miner.neuron.startup import looks_local, weight_refs

    """Every enabled model's ``model`` (and weight-like options) is a local path or a cached hub repo."""
    name = "weights"
    missing: list[str] = []
    found: list[str] = []
    repos_to_fetch: list[str] = []
    for _, spec in profile.models():
        for key, ref in weight_refs(spec):
            local = Path(profile.resolve_path(ref)).expanduser()
            if local.exists():
                found.append(f"{spec.name}: {local}")
                continue
            if looks_local(ref):
                missing.append(f"{spec.name}.{key}: file {ref} not found")
            elif cached_repos is None:
                missing.append(f"{spec.name}.{key}: {ref} (Hugging Face cache could not be read)")
            elif ref in cached_repos:
                found.append(f"{spec.name}: {ref} (HF cache)")
            else:
                missing.append(f"{spec.name}.{key}: hub repo {ref} not in the Hugging Face cache")
                repos_to_fetch.append(ref)
    if missing:
        src = getattr(profile, "source", None) or "configs/<profile>.yaml"
        fix = (f"download once with internet access: .venv/bin/python scripts/download_models.py --profile {src}"
               " (the miner never downloads at run time)")
        if repos_to_fetch:
            fix += "; or per repo: " + "; ".join(f"huggingface-cli download {r}" for r in repos_to_fetch)
        return CheckResult(name, FAIL, "; ".join(missing), fix)
    if not found:
        return CheckResult(name, PASS, "no model of the profile needs weight files (packaged or built-in)")
    return CheckResult(name, PASS, "; ".join(found))


def check_local_listener(port: int, connect: Callable[[str, int, float], bool]) -> CheckResult:
    for host in ("127.0.0.1", "::1"):
        try:
            if connect(host, port, 1.0):
                return CheckResult("miner port", PASS, f"something accepts connections on {host}:{port}")
        except OSError:
            continue
    return CheckResult("miner port", WARN, f"nothing listens on port {port} on this machine",
                       "start the miner (pm2 start ecosystem.config.js, or .venv/bin/python neurons/miner.py with the same "
                       "flags) or pass the right --axon.port")


def check_model_card(model_dir: str | None, hotkey: str | None, model_repo: str | None = None,
                     now: float | None = None) -> CheckResult:
    from natix_miner.ops.model_card import CARD_FILENAME, sanitize_repo_id, validate_card

    name = "model card"
    how = ("optional: .venv/bin/python scripts/model_card.py --model-dir DIR --name NAME --version 1.0.0 "
           "--wallet.name W --wallet.hotkey H --push user/repo")
    repo_note = ""
    if model_repo:
        try:
            repo_note = f"; repo {sanitize_repo_id(model_repo)}"
        except ValueError as e:
            return CheckResult(name, FAIL, str(e), "use the form user/repo")
    if not model_dir:
        return CheckResult(name, SKIP, "optional: validators check no model card (since 2025-11-30) and NATIX requires no "
                           "registration (register.sh deleted 2026-05-03); pass --model-dir to check one you publish" + repo_note)
    path = Path(model_dir) / CARD_FILENAME
    if not path.exists():
        return CheckResult(name, FAIL, f"{path} not found", how)
    import json

    try:
        card = json.loads(path.read_text())
    except ValueError as e:
        return CheckResult(name, FAIL, f"{path} is not valid JSON: {e}", how)
    errors = validate_card(card, hotkey, now=now)
    if errors:
        return CheckResult(name, FAIL, f"{path}: " + "; ".join(errors), how)
    return CheckResult(name, PASS, f"{path}: {card['model_name']} {card['version']} by {card['submitted_by']}"
                       + repo_note + " (optional; validators do not check it)")


@dataclass
class DoctorEnv:
    """Everything that touches the outside world; tests replace members with fakes."""

    load_metagraph: Callable[[int, str], Any] = probes.load_metagraph
    public_ip: Callable[[], str | None] = probes.public_ip
    connect: Callable[[str, int, float], bool] = tcp_connect
    clock_offset: Callable[[str], tuple[float, str]] | None = None  # (chain endpoint) -> (offset, source)
    devices: Callable[[], dict[str, float]] | None = None
    free_mb: Callable[[dict[str, float]], dict[str, float]] = probes.free_memory_mb
    cached_repos: Callable[[], set[str] | None] = probes.cached_repos
    owner_hotkey: Callable[[int, str], str | None] = probes.owner_hotkey  # (netuid, endpoint)

    def get_devices(self) -> dict[str, float]:
        if self.devices is not None:
            return self.devices()
        from natix_miner.devices import detect_devices

        return detect_devices()

    def measure_clock(self, endpoint: str) -> tuple[float, str]:
        if self.clock_offset is not None:
            return self.clock_offset(endpoint)
        errors = []
        try:
            return sntp_offset(), "NTP (pool.ntp.org)"
        except Exception as e:  # noqa: BLE001
            errors.append(f"NTP: {e}")
        url = probes.https_of(endpoint)
        try:
            return http_date_offset(url), f"the HTTP Date of {url} (±1 s)"
        except Exception as e:  # noqa: BLE001
            errors.append(f"HTTP Date: {e}")
        raise RuntimeError("; ".join(errors))


@dataclass
class DoctorOptions:
    netuid: int = 72
    network: str = "finney"
    chain_endpoint: str | None = None
    wallet_name: str | None = None
    wallet_hotkey: str | None = None
    wallet_path: str | None = None
    axon_port: int = 8091
    profile: str | None = None
    skip_network: bool = False
    model_dir: str | None = None
    model_repo: str | None = None
    active_blocks: int = 1000

    @property
    def endpoint(self) -> str:
        from natix_miner.neuron.config import resolve_endpoint

        return resolve_endpoint(self.network, self.chain_endpoint)


def _guard(name: str, fn: Callable[[], CheckResult], status_on_error: str = FAIL) -> CheckResult:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - one broken probe must not stop the others
        return CheckResult(name, status_on_error, f"check crashed: {type(e).__name__}: {e}")


def run_doctor(opts: DoctorOptions, env: DoctorEnv | None = None) -> list[CheckResult]:
    env = env or DoctorEnv()
    results: list[CheckResult] = []
    wf = WalletFiles.from_args(opts.wallet_name, opts.wallet_hotkey, opts.wallet_path)
    results.append(_guard("wallet", lambda: check_wallet(wf)))
    hotkey = read_hotkey_ss58(wf) if wf.hotkey_file.exists() or wf.hotkeypub_file.exists() else None

    prof_res, profile = check_profile(opts.profile)
    results.append(prof_res)
    if profile is not None:
        def placement() -> CheckResult:
            devs = env.get_devices()
            return check_placement(profile, devs, env.free_mb(devs))

        results.append(_guard("placement", placement))
        results.append(_guard("weights", lambda: check_weights(profile, env.cached_repos())))
    else:
        results.append(CheckResult("placement", SKIP, "no profile"))
        results.append(CheckResult("weights", SKIP, "no profile"))
    results.append(_guard("miner port", lambda: check_local_listener(opts.axon_port, env.connect), WARN))
    results.append(_guard("model card", lambda: check_model_card(opts.model_dir, hotkey, opts.model_repo)))

    network_checks = ("registration", "axon published", "port reachable", "clock", "validators active", "subnet halt")
    if opts.skip_network:
        results.extend(CheckResult(n, SKIP, "--skip-network") for n in network_checks)
        return results

    try:
        mg = env.load_metagraph(opts.netuid, opts.endpoint)
    except Exception as e:  # noqa: BLE001
        results.append(CheckResult("chain", FAIL, f"could not load the metagraph of netuid {opts.netuid} from "
                                   f"network {opts.network}, endpoint {opts.endpoint}: {type(e).__name__}: {e}",
                                   "check DNS and the firewall (outbound websocket), or pass another endpoint "
                                   "with --subtensor.chain_endpoint"))
        for n in network_checks:
            if n == "clock":
                results.append(_guard("clock", lambda: check_clock(lambda: env.measure_clock(opts.endpoint)), WARN))
            else:
                results.append(CheckResult(n, SKIP, "no metagraph"))
        return results
    network = opts.network if not opts.chain_endpoint else opts.chain_endpoint
    results.append(_guard("registration", lambda: check_registration(mg, hotkey, opts.netuid, network, wf)))
    uid = find_uid(mg, hotkey) if hotkey else None
    try:
        public_ip = env.public_ip()
    except Exception:  # noqa: BLE001
        public_ip = None
    results.append(_guard("axon published", lambda: check_axon_published(mg, uid, public_ip, opts.axon_port)))
    ip = port = None
    if uid is not None and uid < len(getattr(mg, "axons", []) or []):
        ax = mg.axons[uid]
        ip, port = getattr(ax, "ip", None), getattr(ax, "port", None)
    results.append(_guard("port reachable", lambda: check_port_reachable(ip, port, env.connect), WARN))
    results.append(_guard("clock", lambda: check_clock(lambda: env.measure_clock(opts.endpoint)), WARN))
    results.append(_guard("validators active", lambda: check_validators_active(mg, opts.active_blocks), WARN))
    try:
        owner = env.owner_hotkey(opts.netuid, opts.endpoint)
    except Exception:  # noqa: BLE001 - reported as SKIP by check_burn
        owner = None
    owner_uid = find_uid(mg, owner) if owner else None
    results.append(_guard("subnet halt", lambda: check_burn(mg, owner_uid, opts.active_blocks), WARN))
    return results


# ---------------------------------------------------------------------------------------------- output
_COLORS = {PASS: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m", SKIP: "\033[90m", INFO: "\033[36m"}


def format_table(results: list[CheckResult], color: bool = False) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'status':<6}  {'check':<{width}}  detail", f"{'-' * 6}  {'-' * width}  {'-' * 40}"]
    for r in results:
        st = f"{_COLORS[r.status]}{r.status:<6}\033[0m" if color and r.status in _COLORS else f"{r.status:<6}"
        detail_lines = r.detail.splitlines() or [""]
        lines.append(f"{st}  {r.name:<{width}}  {detail_lines[0]}")
        pad = " " * (6 + 2 + width + 2)
        lines.extend(pad + d for d in detail_lines[1:])
        if r.fix and r.status in (WARN, FAIL, INFO):
            lines.append(f"{pad}fix: {r.fix}")
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL, SKIP, INFO)}
    lines.append("")
    lines.append("  ".join(f"{k} {v}" for k, v in counts.items() if v))
    return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.status == FAIL for r in results) else 0


def build_parser():
    import argparse

    env = os.environ.get  # read when the parser is built: main() loads .env first
    p = argparse.ArgumentParser(
        prog="scripts/doctor.py",
        description="Check a mining setup and print PASS/WARN/FAIL with what to fix. Exit code 1 if anything FAILs. "
                    "Takes the miner's own flags (and the same environment variables).",
    )
    p.add_argument("--netuid", type=int, default=int(env("NETUID") or 72))
    p.add_argument("--subtensor.network", dest="network", default=env("SUBTENSOR_NETWORK") or "finney")
    p.add_argument("--subtensor.chain_endpoint", dest="chain_endpoint", default=env("SUBTENSOR_CHAIN_ENDPOINT") or None)
    p.add_argument("--wallet.name", dest="wallet_name", default=env("WALLET_NAME") or None)
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default=env("WALLET_HOTKEY") or None)
    p.add_argument("--wallet.path", dest="wallet_path", default=env("WALLET_PATH") or None)
    p.add_argument("--axon.port", dest="axon_port", type=int, default=int(env("MINER_AXON_PORT") or 8091))
    p.add_argument("--profile", default=env("MINER_PROFILE") or None)
    p.add_argument("--model-dir", default=None, help="folder holding model_card.json to validate")
    p.add_argument("--model-repo", default=env("MODEL_URL") or None, help="the HF repo you registered (user/repo)")
    p.add_argument("--active-blocks", type=int, default=1000,
                   help="a validator counts as active when it set weights within this many blocks (12 s each)")
    p.add_argument("--skip-network", action="store_true", help="only the local checks")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str] | None = None, env: DoctorEnv | None = None) -> int:
    import json
    import sys

    from natix_miner.neuron.config import default_env_file, load_env_file

    load_env_file(default_env_file())  # the miner's .env: same settings as the miner (never overrides the shell)
    a = build_parser().parse_args(argv)
    opts = DoctorOptions(netuid=a.netuid, network=a.network, chain_endpoint=a.chain_endpoint,
                         wallet_name=a.wallet_name, wallet_hotkey=a.wallet_hotkey, wallet_path=a.wallet_path,
                         axon_port=a.axon_port, profile=a.profile, skip_network=a.skip_network,
                         model_dir=a.model_dir, model_repo=a.model_repo, active_blocks=a.active_blocks)
    results = run_doctor(opts, env)
    print(format_table(results, color=sys.stdout.isatty()))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"options": asdict(opts), "results": [asdict(r) for r in results]},
                                           indent=2))
    return exit_code(results)


__all__ = [
    "CheckResult", "DoctorEnv", "DoctorOptions", "run_doctor", "format_table", "exit_code", "main",
    "check_wallet", "check_profile", "check_placement", "check_weights", "check_local_listener", "check_model_card",
    "check_registration", "check_axon_published", "check_port_reachable", "check_clock", "check_validators_active",
    "check_burn", "sntp_offset", "http_date_offset", "tcp_connect",
]
