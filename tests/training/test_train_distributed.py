"""Two processes under torchrun (gloo on CPU) train one model: disjoint data, identical weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import make_folder, train_args

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_torchrun_two_ranks_disjoint_data_identical_weights(tmp_path):
    data = make_folder(tmp_path / "synth", n_per_class=12)
    out = tmp_path / "run"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "scripts" / "train.py"),
           *train_args(data, out, "test_convnext", "--epochs", "1", "--no-class-balance", "--device", "cpu",
                       "--debug-keys", "--val-frac", "0.2", "--test-frac", "0.2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "debug" / "rank0.json").read_text())
    r1 = json.loads((out / "debug" / "rank1.json").read_text())
    assert r0["keys"] and r1["keys"]
    assert not set(r0["keys"]) & set(r1["keys"])  # the ranks saw disjoint samples
    assert r0["state_hash"] == r1["state_hash"]  # and ended with the same weights
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["n"] > 0
    assert (out / "model" / "model.safetensors").is_file()
