import pytest

from _helpers import make_wallet
from natix_miner.neuron import wiring
from natix_miner.neuron.chain import ChainSnapshot, snapshot_from_metagraph
from natix_miner.neuron.config import parse_config
from natix_miner.neuron.miner import Miner


class OtherChain:
    network = "test"
    netuid = 323

    def snapshot(self):
        return ChainSnapshot(("5Someone",), (True,), (1.0,), 100)

    def serve_axon(self, axon):
        raise AssertionError("must not serve when unregistered")


def test_unregistered_hotkey_stops_with_the_btcli_command(tmp_path):
    w = make_wallet(tmp_path, "mywallet", "miner1")
    cfg = parse_config(["--netuid", "323", "--subtensor.network", "test", "--wallet.path", str(tmp_path),
                        "--wallet.name", "mywallet", "--wallet.hotkey", "miner1", "--wandb.off"])
    m = Miner(cfg, chain=OtherChain(), wallet=w, engine=object())
    with pytest.raises(SystemExit) as ei:
        m.check_registered()
    msg = str(ei.value)
    assert w.hotkey.ss58_address in msg and "not registered on netuid 323" in msg
    assert "btcli subnets register --netuid 323 --wallet-name mywallet --hotkey miner1 --network test" in msg


def test_missing_wallet_on_a_real_chain_says_how_to_create_it(tmp_path):
    cfg = parse_config(["--wallet.path", str(tmp_path), "--wallet.name", "nope", "--wandb.off"])
    with pytest.raises(SystemExit, match="btcli wallet new_coldkey"):
        wiring.make_wallet(cfg)


def test_snapshot_from_a_numpy_metagraph():
    import numpy as np

    class MG:
        hotkeys = ["a", "b"]
        validator_permit = np.array([False, True])
        S = np.array([0.0, 1234.5], dtype=np.float32)
        block = np.array([4321])

    s = snapshot_from_metagraph(MG())
    assert s.uid_of("b") == 1 and s.validator_permit == (False, True) and s.stake[1] == pytest.approx(1234.5)
    assert s.block == 4321
