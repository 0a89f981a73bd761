import math

from hypothesis import given
from hypothesis import strategies as st

from natix_miner.neuron.blacklist import BlacklistPolicy, RateLimiter, caller_priority, check_caller
from natix_miner.neuron.chain import ChainSnapshot, LocalMockChain

SNAP = ChainSnapshot(("miner", "val", "nonval", "poorval"), (False, True, False, True), (0.0, 5000.0, 10.0, 1.0), 1)


def test_unregistered_caller_is_refused():
    bl, why = check_caller("stranger", SNAP, BlacklistPolicy())
    assert bl and "unregistered" in why


def test_permit_required_by_default():
    assert check_caller("nonval", SNAP, BlacklistPolicy())[0]
    assert not check_caller("val", SNAP, BlacklistPolicy())[0]


def test_allow_non_validators():
    assert not check_caller("nonval", SNAP, BlacklistPolicy(require_permit=False))[0]


def test_min_stake_floor():
    pol = BlacklistPolicy(min_stake=100.0)
    assert not check_caller("val", SNAP, pol)[0]
    bl, why = check_caller("poorval", SNAP, pol)
    assert bl and "min_stake" in why


def test_missing_hotkey_and_snapshot():
    assert check_caller(None, SNAP, BlacklistPolicy())[0]
    assert check_caller("val", None, BlacklistPolicy())[0]


def test_priority_is_stake():
    assert caller_priority("val", SNAP) == 5000.0
    assert caller_priority("stranger", SNAP) == 0.0
    assert caller_priority(None, None) == 0.0


@given(st.one_of(st.none(), st.text(max_size=64)))
def test_blacklist_never_raises(hotkey):
    bl, why = check_caller(hotkey, SNAP, BlacklistPolicy(min_stake=1.0))
    assert isinstance(bl, bool) and isinstance(why, str)
    p = caller_priority(hotkey, SNAP)
    assert math.isfinite(p)


def test_broken_snapshot_does_not_raise():
    class Broken:
        def uid_of(self, hk):
            raise RuntimeError("boom")

    bl, why = check_caller("val", Broken(), BlacklistPolicy())
    assert bl and "error" in why
    assert caller_priority("val", Broken()) == 0.0


def test_rate_limiter_window():
    rl = RateLimiter(3, window_s=10.0)
    assert all(rl.allow("a", now=t) for t in (0.0, 1.0, 2.0))
    assert not rl.allow("a", now=3.0)
    assert rl.allow("b", now=3.0)  # per caller
    assert rl.allow("a", now=10.5)  # the first hit left the window


def test_rate_limiter_zero_is_unlimited():
    rl = RateLimiter(0)
    assert all(rl.allow("a") for _ in range(1000))


def test_mock_chain_layout():
    chain = LocalMockChain(72, "me", validators=["v1", "v2"], miners=["m1"], validator_stake=123.0)
    snap = chain.snapshot()
    assert snap.uid_of("me") == 0
    assert snap.validator_permit[snap.uid_of("v2")] and snap.stake[snap.uid_of("v2")] == 123.0
    assert not snap.validator_permit[snap.uid_of("m1")]
    assert snap.uid_of("nobody") is None


# the subnet owner's validator often sits at uid 0: "if not uid" instead of "if uid is None" would refuse it
SNAP_UID0 = ChainSnapshot(("owner-val", "miner", "nonval"), (True, False, False), (9000.0, 0.0, 10.0), 1)


def test_validator_with_permit_at_uid0_is_served():
    bl, why = check_caller("owner-val", SNAP_UID0, BlacklistPolicy())
    assert not bl, why
    assert "uid 0" in why
    bl, why = check_caller("owner-val", SNAP_UID0, BlacklistPolicy(min_stake=100.0))
    assert not bl, why


def test_priority_of_validator_at_uid0_is_its_stake():
    assert caller_priority("owner-val", SNAP_UID0) == 9000.0
