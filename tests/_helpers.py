"""Shared test helpers (import as `from _helpers import ...`)."""

import socket


def make_wallet(path, name: str, hotkey: str = "default"):
    """A throwaway bittensor wallet (no passwords) under ``path``."""
    import bittensor as bt

    w = bt.Wallet(path=str(path), name=name, hotkey=hotkey)
    w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return w


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


FAKE_COLOR_PROFILE = """\
name: test-fake-color
description: a fake model whose P(roadwork) is red minus blue, for end-to-end tests
deadline_s: 3.0
tiers:
  - name: fast
    exit_threshold: 0.95
    models:
      - name: color
        type: fake
        licence: MIT
        options: {p_by_color: true}
"""



def start_mock_miner(tmp, profile_text: str, *extra_args: str):
    """An in-process ``--mock`` Miner serving ``profile_text`` on a free loopback port, with its own wallet and a
    validator wallet it accepts; returns ``(miner, validator_wallet)``. The caller stops the miner."""
    from natix_miner.neuron.config import parse_config
    from natix_miner.neuron.miner import Miner

    prof = tmp / "profile.yaml"
    prof.write_text(profile_text)
    make_wallet(tmp, "miner")
    val = make_wallet(tmp, "validator")
    cfg = parse_config(["--mock", "--mock.validators", val.hotkey.ss58_address, "--axon.port", str(free_port()),
                        "--wallet.path", str(tmp), "--wallet.name", "miner", "--profile", str(prof), "--wandb.off",
                        *extra_args])
    miner = Miner(cfg)
    miner.setup()
    miner.start()
    return miner, val


def query_miner(wallet, miner, b64_images, timeout: float = 9.0) -> list:
    """One ``ImageSynapse`` per base64 image, sent concurrently through a real ``bt.Dendrite``; the responses."""
    import asyncio

    import bittensor as bt

    from natix_miner.protocol import ImageSynapse

    async def go():
        d = bt.Dendrite(wallet=wallet)
        try:
            return await asyncio.gather(*[d(axons=[miner.axon.info()], synapse=ImageSynapse(image=b),
                                            deserialize=False, timeout=timeout) for b in b64_images])
        finally:
            await d.aclose_session()

    return [r[0] for r in asyncio.run(go())]
