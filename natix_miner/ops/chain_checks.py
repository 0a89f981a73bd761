"""The doctor's result type and its chain checks (registration, axon, port, clock, validators, halt).

Each check is a plain function of its inputs (a metagraph-like object, a connect function, a clock) that
returns a :class:`CheckResult`; :mod:`natix_miner.ops.doctor` gathers the inputs and prints the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from natix_miner.ops.wallet_files import WalletFiles

PASS, WARN, FAIL, SKIP, INFO = "PASS", "WARN", "FAIL", "SKIP", "INFO"
VPERMIT_TAO_LIMIT = 40096.0  # validators skip permit holders above this stake (docs/protocol.md §2.2)
NONCE_DELTA_S = 4.0  # bittensor axon ALLOWED_DELTA
VALIDATOR_TIMEOUT_S = 9.0  # docs/protocol.md §2.5
CLOCK_WARN_S = 2.0
CLOCK_FAIL_S = NONCE_DELTA_S + VALIDATOR_TIMEOUT_S
BURN_ROW_SHARE = 0.9  # a validator "burns" when >= 90 % of its weight goes to the owner's UID
BURN_STAKE_SHARE = 0.5  # the subnet is "halted" when burners hold >= half the active validator stake


@dataclass
class CheckResult:
    name: str
    status: str  # PASS | WARN | FAIL | SKIP | INFO
    detail: str
    fix: str = ""


# ---------------------------------------------------------------------------------------------- helpers
def _arr(x: Any):
    import numpy as np

    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _block_of(mg: Any) -> int:
    b = _arr(getattr(mg, "block", 0))
    return int(b.reshape(-1)[0]) if b is not None and b.size else 0


def _stake_of(mg: Any):
    s = getattr(mg, "S", None)
    if s is None:
        s = getattr(mg, "stake", None)
    return _arr(s)


# ---------------------------------------------------------------------------------------------- network checks
def find_uid(mg: Any, hotkey: str) -> int | None:
    hotkeys = list(getattr(mg, "hotkeys", []) or [])
    try:
        return hotkeys.index(hotkey)
    except ValueError:
        return None


def check_registration(mg: Any, hotkey: str | None, netuid: int, network: str,
                       wallet: WalletFiles | None = None) -> CheckResult:
    name = "registration"
    if not hotkey:
        return CheckResult(name, SKIP, "no hotkey address (see the wallet check)")
    uid = find_uid(mg, hotkey)
    if uid is None:
        w = f" --wallet-name {wallet.name} --hotkey {wallet.hotkey}" if wallet else ""
        return CheckResult(name, FAIL, f"hotkey {hotkey} is not registered on netuid {netuid} ({network})",
                           f"btcli subnets register --netuid {netuid}{w} --network {network} (costs TAO; try "
                           "testnet 323 first, and check the subnet is not halted)")
    stake = _stake_of(mg)
    permits = _arr(getattr(mg, "validator_permit", None))
    s = float(stake[uid]) if stake is not None and len(stake) > uid else float("nan")
    permit = bool(permits[uid]) if permits is not None and len(permits) > uid else False
    detail = f"uid {uid} on netuid {netuid} ({network}), stake {s:.1f}" + (", holds a validator permit" if permit else "")
    if permit and s > VPERMIT_TAO_LIMIT:
        return CheckResult(name, FAIL, detail + f": validators never query permit holders with stake > {VPERMIT_TAO_LIMIT:.0f}",
                           "move stake off this hotkey (or mine from another hotkey)")
    return CheckResult(name, PASS, detail)


def check_axon_published(mg: Any, uid: int | None, public_ip: str | None, axon_port: int) -> CheckResult:
    name = "axon published"
    if uid is None:
        return CheckResult(name, SKIP, "not registered")
    axons = list(getattr(mg, "axons", []) or [])
    if uid >= len(axons):
        return CheckResult(name, FAIL, f"no axon entry for uid {uid}", "start the miner: it publishes its axon at start")
    ax = axons[uid]
    ip, port = str(getattr(ax, "ip", "") or ""), int(getattr(ax, "port", 0) or 0)
    if ip in ("", "0.0.0.0", "0") or port == 0:
        return CheckResult(name, FAIL, f"uid {uid} has no axon on chain ({ip or '-'}:{port}): validators skip it",
                           "start the miner on a real network; it calls serve_axon at start (check its log for "
                           "'axon published on chain')")
    problems, fixes = [], []
    if public_ip and ip.strip("[]") != public_ip.strip("[]"):
        problems.append(f"published IP {ip} differs from this machine's public IP {public_ip}")
        fixes.append("restart the miner here (it republishes), or set --axon.external_ip if the public IP lookup is wrong")
    if port != axon_port:
        problems.append(f"published port {port} differs from --axon.port {axon_port}")
        fixes.append("fine only if a NAT forwards it (--axon.external_port); otherwise restart with the right port")
    detail = f"uid {uid} serves at {ip}:{port}" + (f" (this machine: {public_ip})" if public_ip else
                                                    " (this machine's public IP unknown)")
    if problems:
        return CheckResult(name, WARN, detail + "; " + "; ".join(problems), "; ".join(fixes))
    return CheckResult(name, PASS, detail)


def check_port_reachable(ip: str | None, port: int | None, connect: Callable[[str, int, float], bool],
                         timeout: float = 3.0) -> CheckResult:
    name = "port reachable"
    if not ip or ip in ("0.0.0.0",) or not port:
        return CheckResult(name, SKIP, "no published axon")
    host = ip.strip("[]")
    try:
        ok = connect(host, int(port), timeout)
    except OSError as e:
        ok = False
        err = f" ({e})"
    else:
        err = ""
    if ok:
        return CheckResult(name, PASS, f"TCP connect to {ip}:{port} succeeded")
    return CheckResult(name, WARN, f"TCP connect to {ip}:{port} failed from this machine{err}; behind NAT without "
                       "hairpinning this is inconclusive",
                       f"test from another network: nc -vz {host} {port}; open the port in the firewall "
                       f"(ufw allow {port}/tcp) and the cloud security group / router port forward")


def check_clock(offset_fn: Callable[[], tuple[float, str]]) -> CheckResult:
    name = "clock"
    try:
        offset, source = offset_fn()
    except Exception as e:  # noqa: BLE001
        return CheckResult(name, WARN, f"could not measure the clock offset ({type(e).__name__}: {e})",
                           "make sure NTP runs: timedatectl status (System clock synchronized: yes)")
    if not math.isfinite(offset):
        return CheckResult(name, WARN, f"bad offset from {source}", "")
    detail = f"local clock is {abs(offset):.2f} s {'behind' if offset > 0 else 'ahead of'} {source}"
    fix = "enable NTP: sudo timedatectl set-ntp true (or install chrony)"
    if abs(offset) > CLOCK_FAIL_S:
        return CheckResult(name, FAIL, detail + f"; > {CLOCK_FAIL_S:.0f} s: the axon rejects validators' nonces "
                           f"older than {NONCE_DELTA_S:.0f} s + timeout", fix)
    if abs(offset) > CLOCK_WARN_S:
        return CheckResult(name, WARN, detail + f"; > {CLOCK_WARN_S:.0f} s eats into the nonce window "
                           f"({NONCE_DELTA_S:.0f} s + timeout)", fix)
    return CheckResult(name, PASS, detail)


def _active_permit_holders(mg: Any, max_age_blocks: int) -> tuple[list[int], list[int], int]:
    permits = _arr(getattr(mg, "validator_permit", None))
    last = _arr(getattr(mg, "last_update", None))
    block = _block_of(mg)
    if permits is None or last is None:
        return [], [], block
    holders = [i for i, p in enumerate(permits.tolist()) if bool(p)]
    active = [i for i in holders if i < len(last) and block - int(last[i]) <= max_age_blocks]
    return holders, active, block


def check_validators_active(mg: Any, max_age_blocks: int = 1000) -> CheckResult:
    name = "validators active"
    holders, active, block = _active_permit_holders(mg, max_age_blocks)
    if not holders:
        return CheckResult(name, WARN, "no UID holds a validator permit: nobody will query miners",
                           "check the subnet on taostats / NATIX announcements before paying for a registration")
    if not active:
        return CheckResult(name, WARN, f"none of {len(holders)} permit holders updated weights in the last "
                           f"{max_age_blocks} blocks (block {block}): validators look inactive",
                           "check the subnet's status before mining; test on testnet 323")
    return CheckResult(name, PASS, f"{len(active)} of {len(holders)} permit holders updated within "
                       f"{max_age_blocks} blocks (block {block})")


def check_burn(mg: Any, owner_uid: int | None, max_age_blocks: int = 1000) -> CheckResult:
    """WARN when the active validators' stake mostly sends its weight to the subnet owner's UID (the "burn")."""
    name = "subnet halt"
    import numpy as np

    if owner_uid is None:
        return CheckResult(name, SKIP, "the subnet owner's hotkey is unknown or not in the metagraph")
    o = int(owner_uid)

    W = _arr(getattr(mg, "W", None))
    if W is None or W.ndim != 2 or W.size == 0:
        return CheckResult(name, SKIP, "weights not loaded (lite metagraph)")
    _, active, _ = _active_permit_holders(mg, max_age_blocks)
    stake = _stake_of(mg)
    rows = [i for i in active if i < W.shape[0] and float(np.sum(W[i])) > 0]
    if not rows:
        return CheckResult(name, SKIP, "no active validator has set weights")
    burners = [i for i in rows if o < W.shape[1] and float(W[i, o]) / float(np.sum(W[i])) >= BURN_ROW_SHARE]
    st = {i: (float(stake[i]) if stake is not None and i < len(stake) else 1.0) for i in rows}
    total = sum(st.values())
    share = (sum(st[i] for i in burners) / total) if total > 0 else len(burners) / len(rows)
    detail = (f"{len(burners)} of {len(rows)} active validators ({share:.0%} of their stake) put >= "
              f"{BURN_ROW_SHARE:.0%} of their weight on the subnet owner's UID {o}")
    if share >= BURN_STAKE_SHARE:
        return CheckResult(name, WARN, f"subnet halted: validators burn to the owner's UID {o}; " + detail,
                           "validators skip the forward pass while halted (docs/protocol.md §10): no rewards for miners. "
                           "Watch NATIX announcements; test on testnet 323 before paying for mainnet")
    return CheckResult(name, PASS, detail)
