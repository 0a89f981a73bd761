"""neuron/wiring.py builds the miner's parts; the handler's deadline and epsilon come from the profile."""

import asyncio

import pytest

from natix_miner.engine.consensus import finalize
from natix_miner.neuron import wiring
from natix_miner.neuron.chain import LocalMockChain
from natix_miner.neuron.config import parse_config
from natix_miner.neuron.miner import Miner
from natix_miner.profile import DEFAULT_DEADLINE_S, DEFAULT_EPSILON, Profile, TierSpec, load_profile
from natix_miner.protocol import ImageSynapse


def test_profile_defaults_live_in_one_place():
    """A profile that names neither gets DEFAULT_DEADLINE_S / DEFAULT_EPSILON, and so does a miner before it
    has loaded a profile."""
    p = Profile(name="p", tiers=[TierSpec(name="t", exit_threshold=0.9, models=[])])
    assert p.deadline_s == DEFAULT_DEADLINE_S and p.calibration.epsilon == DEFAULT_EPSILON
    m = Miner(parse_config(["--wandb.off"]))
    assert m.profile is None and m.deadline_s == DEFAULT_DEADLINE_S and m.epsilon == DEFAULT_EPSILON


def test_overrides_make_a_copy_and_reach_the_handler(fake_profile_path):
    cfg = parse_config(["--profile", str(fake_profile_path), "--engine.deadline_s", "2.5", "--engine.no_cache",
                        "--wandb.off"])
    loaded = load_profile(fake_profile_path)
    prof = wiring.miner_profile(cfg)
    assert prof.deadline_s == 2.5 and prof.cache.enabled is False
    assert loaded.deadline_s != 2.5 and load_profile(fake_profile_path).cache.enabled is True  # never mutated
    m = Miner(cfg)
    m.profile = prof.replace(calibration={"epsilon": 0.02})
    assert m.deadline_s == 2.5 and m.epsilon == 0.02


def test_forward_clamps_with_the_profiles_epsilon(fake_profile_path):
    """An engine answer of exactly 0 goes out clamped with the profile's epsilon (not a literal)."""
    from PIL import Image

    from natix_miner.imaging import DecodeLimits, encode_jpeg_b64
    from natix_miner.types import CascadeResult

    class ZeroEngine:
        cache = None

        async def infer(self, image, *, key=None, deadline=None):
            return CascadeResult(prediction=0.0, confidence=1.0, tiers_used=["t"], votes=[], latency_ms=1.0,
                                 exit_reason="threshold")

    m = Miner(parse_config(["--profile", str(fake_profile_path), "--wandb.off"]), engine=ZeroEngine())
    m.decode_limits = DecodeLimits()
    image = encode_jpeg_b64(Image.new("RGB", (32, 32), (10, 200, 10)))
    out = asyncio.run(m.forward(ImageSynapse(image=image)))
    assert out.prediction == pytest.approx(DEFAULT_EPSILON)  # no profile loaded: the profile module's default
    m.profile = load_profile(fake_profile_path).replace(calibration={"epsilon": 0.05})
    out = asyncio.run(m.forward(ImageSynapse(image=image)))
    assert out.prediction == pytest.approx(0.05) and finalize(0.0, 0.05) == pytest.approx(0.05)
    assert m.stats.answered == 2 and m.stats.fallbacks == 0


def test_mock_chain_registers_our_hotkey_first():
    cfg = parse_config(["--mock", "--mock.validators", "5Val", "--wandb.off"])
    chain = wiring.make_chain(cfg, "5Me")
    assert isinstance(chain, LocalMockChain)
    snap = chain.snapshot()
    assert snap.uid_of("5Me") == 0 and snap.uid_of("5Val") == 1 and snap.validator_permit[1]
