"""scripts/bench_gpu.py keeps working (tiny configs on the CPU) and configs/remote-vlm.yaml is valid."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from natix_miner.profile import REPO_ROOT, load_profile


def _bench_module():
    name = "natix_scripts_bench_gpu"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_bench_gpu_runs_every_model_tiny_on_cpu(tmp_path):
    bench = _bench_module()
    out = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--tiny", "--iters", "1", "--warmup", "0", "--sizes", "224",
                     "--no-decode", "--strict", "--out", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["errors"] == {}
    from natix_miner.ops.bench_gpu import MODELS

    assert set(rep["models"]) == set(MODELS)
    assert rep["tiny"] is True and rep["device"].startswith("cpu")
    for name, m in rep["models"].items():
        assert m["params_m"] > 0, name
        assert set(m["results"]) == {"224"}, name
        r = m["results"]["224"]
        assert r["n"] == 1 and r["p50_ms"] > 0 and r["size"][0] <= 224 and r["size"][1] <= 224


def test_bench_gpu_vlm_full_frame_and_decode_speed(tmp_path):
    bench = _bench_module()
    out = tmp_path / "bench.json"
    rc = bench.main(["--device", "cpu", "--tiny", "--iters", "2", "--warmup", "1", "--only", "qwen2_5_vl_3b",
                     "--sizes", "224,full", "--full-res", "160x96", "--strict", "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())["models"]["qwen2_5_vl_3b"]
    assert m["results"]["full"]["size"] == [84, 140]  # rounded down to the 28 px stride
    assert m["results"]["full"]["n"] == 2
    assert m["decode_ms_per_token"] >= 0 and m["decode_tokens"] == 4


def test_bench_gpu_rejects_unknown_models():
    bench = _bench_module()
    assert bench.main(["--device", "cpu", "--tiny", "--only", "nope"]) == 2


def test_remote_vlm_profile_is_valid_and_builds():
    from natix_miner.models.registry import build_adapter

    prof = load_profile(REPO_ROOT / "configs" / "remote-vlm.yaml")
    models = {m.name: m for _, m in prof.models()}
    vlm = models["qwen3-vl-8b-remote"]
    assert vlm.type == "vlm" and vlm.options["engine"] == "openai" and vlm.options["base_url"].endswith("/v1")
    assert models["efficientnet-lite0"].type == "efficientnet_lite"
    a = build_adapter(vlm, prof)  # no load: that needs the server
    assert a.family == "qwen3_vl" and a.engine_name == "openai" and not a.thinking


@pytest.mark.parametrize("profile", ["h100x1.yaml", "h100x2-full.yaml"])
def test_gpu_profiles_use_only_option_keys_the_vlm_adapter_knows(profile):
    from natix_miner.models.vlm import COMMON_KEYS, ENGINE_KEYS

    path = REPO_ROOT / "configs" / profile
    if not Path(path).exists():
        pytest.skip(f"{profile} not written yet")
    prof = load_profile(path, check_types=False)
    for _, m in prof.models(enabled_only=False):
        if m.type != "vlm":
            continue
        eng = m.options.get("engine", "transformers")
        unknown = set(m.options) - COMMON_KEYS - ENGINE_KEYS[eng]
        assert not unknown, f"{profile}: {m.name}: unknown vlm options {sorted(unknown)}"
