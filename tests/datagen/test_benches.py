"""The data benchmarks run and report JSON (their numbers go in docs/data-recipe.md, not in assertions)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_bench_record_reports_on_and_off(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "scripts/bench_record.py", "--bursts", "2", "--burst", "3", "--size", "320x240",
                        "--model-ms", "0", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["off"]["n"] == rep["on"]["n"] == 6
    assert rep["recorder"]["recorded"] == 9 and rep["recorder"]["images_written"] == 9  # + the warm-up burst
    assert rep["recorder"]["dropped"] == 0 and rep["ratio_p50"] > 0


@pytest.mark.slow
def test_bench_synth_smoke_on_cpu(tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "scripts/bench_synth.py", "--random-init", "tiny", "--device", "cpu",
                        "--sizes", "32,48", "--batch-size", "2", "--steps", "2", "--batches", "1", "--warmup", "0",
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert set(rep["results"]) == {"32", "48"} and rep["results"]["32"]["images"] == 2
    assert rep["weights"].startswith("random-init") and "smoke test" in rep["note"]


def test_full_architecture_matches_sdxl_base_size():
    """The random-init 'full' UNet has SDXL base's parameter count (2.567 B), so its images/s is SDXL's."""
    from diffusers import UNet2DConditionModel

    from natix_miner.datagen.sdxl_arch import ARCHS

    cfg = dict(in_channels=4, out_channels=4, use_linear_projection=True, addition_embed_type="text_time",
               **ARCHS["full"]["unet"])
    import torch

    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg)
    n = sum(p.numel() for p in unet.parameters())
    assert abs(n - 2_567_463_684) / 2_567_463_684 < 0.001, n
