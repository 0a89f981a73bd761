"""Our shared flags (--wallet.*, --subtensor.*, --axon.*, --logging.*) against bittensor 10.5's own parser.

bittensor declares them through ``add_args`` classmethods; we declare the same names with plain argparse so that
``--help`` stays fast. Every bittensor flag of these groups must be ours with the same default, or be named in
TOLERATED_FLAGS (accepted and ignored) — and none of ours may be missing from bittensor (no invented names).
"""

import argparse
import os

import pytest

from natix_miner.neuron import config as C

SHARED = ("--wallet.", "--subtensor.", "--axon.", "--logging.")
# defaults that differ on purpose, with the reason
DIFFERENT_DEFAULT = {
    # bittensor stores the finney endpoint; ours is derived from --subtensor.network when not given
    "--subtensor.chain_endpoint": None,
    # the miner's wallet defaults to name/hotkey "default" too, but through MinerConfig.wallet_args (None = unset,
    # so --mock can tell a given wallet from the default one)
    "--wallet.name": "default", "--wallet.hotkey": "default", "--wallet.path": "~/.bittensor/wallets/",
}


@pytest.fixture(scope="module")
def bt_actions():
    bt = pytest.importorskip("bittensor")
    p = argparse.ArgumentParser()
    for cls in (bt.Wallet, bt.Subtensor, bt.Axon, bt.logging):
        cls.add_args(p)
    return {o: a for a in p._actions for o in a.option_strings if o.startswith(SHARED)}


@pytest.fixture
def ours(monkeypatch):
    for k in list(os.environ):  # env defaults would hide drift
        if k in ("NETUID", "MINER_AXON_PORT", "AXON_IP", "AXON_EXTERNAL_IP", "AXON_EXTERNAL_PORT", "LOGGING_DIR",
                 "SUBTENSOR_NETWORK", "SUBTENSOR_CHAIN_ENDPOINT") or k.startswith("WALLET_"):
            monkeypatch.delenv(k)
    return {o: a for a in C.build_parser()._actions for o in a.option_strings if o.startswith(SHARED)}


def test_every_bittensor_flag_is_ours_or_tolerated(bt_actions, ours):
    missing = sorted(f for f in bt_actions if f not in ours and f not in C.TOLERATED_FLAGS)
    assert not missing, f"bittensor flags we would refuse: {missing}"


def test_we_invent_no_flag_in_the_shared_groups(bt_actions, ours):
    assert sorted(set(ours) - set(bt_actions)) == []


def test_defaults_match(bt_actions, ours):
    for flag, bt_action in bt_actions.items():
        if flag not in ours:
            continue
        mine = ours[flag]
        if flag in DIFFERENT_DEFAULT:
            cfg = C.parse_config([])
            if flag.startswith("--wallet."):
                key = flag.split(".", 1)[1]
                got, want = cfg.wallet_args()[key], os.path.expanduser(str(bt_action.default))
                assert got.rstrip("/") == want.rstrip("/"), (flag, got, want)
            else:
                assert cfg.chain_endpoint == bt_action.default  # finney's endpoint either way
            continue
        want, got = bt_action.default, mine.default
        if isinstance(want, str) and want.startswith(os.path.expanduser("~")):
            got = os.path.expanduser(got)
        assert got == want, (flag, got, want)
        assert type(bt_action).__name__ == type(mine).__name__, flag  # store_true stays store_true


def test_tolerated_flags_are_not_also_ours():
    known = set(C.known_flags())
    assert not (known & set(C.TOLERATED_FLAGS))


def test_endpoint_map_is_bittensors():
    from bittensor.core.settings import NETWORK_MAP

    for net, ep in NETWORK_MAP.items():
        assert C.resolve_endpoint(net) == ep
    assert C.resolve_endpoint("test", "ws://x:1") == "ws://x:1"
    assert not hasattr(C, "NETWORK_ENDPOINTS")  # one copy: bittensor's
