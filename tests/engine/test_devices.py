"""Placement planner: CPU only, one and two 80 GB GPUs, pins, overflow errors."""

from __future__ import annotations

import pytest

from natix_miner.devices import PlacementError, detect_devices, plan_placement
from natix_miner.profile import ModelSpec

GB = 1024.0
CPU = {"cpu": 64 * GB}
ONE = {"cuda:0": 80 * GB, "cpu": 64 * GB}
TWO = {"cuda:0": 80 * GB, "cuda:1": 80 * GB, "cpu": 64 * GB}


def m(name: str, mb: float, device: str = "auto", **options) -> tuple[ModelSpec, float]:
    return ModelSpec(name=name, type="fake", licence="MIT", device=device, memory_mb=mb, options=options), mb


def test_cpu_only_small_models_go_to_cpu():
    plan = plan_placement([m("a", 500), m("b", 1500)], CPU)
    assert plan.as_dict() == {"a": "cpu", "b": "cpu"}
    assert plan.used_mb("cpu") == 2000
    table = plan.table()
    assert "a" in table and "cpu" in table and "usable MB" in table


def test_cpu_only_refuses_a_big_auto_model_unless_cpu_ok():
    with pytest.raises(PlacementError) as ei:
        plan_placement([m("small", 300), m("vlm", 16000)], CPU)
    msg = str(ei.value)
    assert "vlm" in msg and "cpu_ok" in msg and "nothing was loaded" in msg
    assert [u["model"] for u in ei.value.unplaced] == ["vlm"]
    plan = plan_placement([m("small", 300), m("vlm", 16000, cpu_ok=True)], CPU)
    assert plan.device_of("vlm") == "cpu"
    # and a small model can be refused too
    with pytest.raises(PlacementError):
        plan_placement([m("small", 300, cpu_ok=False)], CPU)


def test_one_gpu_packs_with_headroom_and_falls_back_to_cpu():
    # usable on cuda:0 = 72 GB; 40 + 30 fit, the 10 GB one does not -> cpu_ok false by size -> error
    models = [m("a", 40 * GB), m("b", 30 * GB), m("c", 500)]
    plan = plan_placement(models, ONE)
    assert plan.as_dict() == {"a": "cuda:0", "b": "cuda:0", "c": "cuda:0"}
    plan = plan_placement([m("a", 40 * GB), m("b", 30 * GB), m("c", 1900)], ONE)
    assert plan.device_of("c") == "cuda:0"  # 72 - 70 GB = 2048 MB free, 1900 fits...
    plan = plan_placement([m("a", 40 * GB), m("b", 31 * GB), m("c", 1900)], ONE)
    assert plan.device_of("c") == "cpu"  # ...and here it does not: small enough for the CPU
    with pytest.raises(PlacementError) as ei:
        plan_placement([m("a", 40 * GB), m("b", 31 * GB), m("c", 8 * GB)], ONE)
    assert "c" in str(ei.value) and "no GPU has room" in str(ei.value)


def test_first_fit_decreasing_order():
    # decreasing order packs 50 + 20 on gpu0 and 45 on gpu1; profile order (20, 45, 50) would not
    plan = plan_placement([m("x20", 20 * GB), m("x45", 45 * GB), m("x50", 50 * GB)], TWO)
    assert plan.device_of("x50") == "cuda:0"
    assert plan.device_of("x20") == "cuda:0"
    assert plan.device_of("x45") == "cuda:1"
    assert [p.model for p in plan.placements] == ["x20", "x45", "x50"]  # table keeps profile order


def test_two_gpus_pins_are_honoured():
    models = [m("big", 60 * GB, "cuda:1"), m("any", 10 * GB, "cuda"), m("c", 100, "cpu"), m("auto", 5 * GB)]
    plan = plan_placement(models, TWO)
    assert plan.device_of("big") == "cuda:1"
    assert plan.device_of("any") == "cuda:0"
    assert plan.device_of("c") == "cpu"
    assert plan.device_of("auto") == "cuda:0"


def test_spread_strategy_balances():
    plan = plan_placement([m("a", 10 * GB), m("b", 10 * GB)], TWO, strategy="spread")
    assert {plan.device_of("a"), plan.device_of("b")} == {"cuda:0", "cuda:1"}
    plan = plan_placement([m("a", 10 * GB), m("b", 10 * GB)], TWO)
    assert plan.device_of("a") == plan.device_of("b") == "cuda:0"


def test_pin_errors_name_the_device():
    with pytest.raises(PlacementError) as ei:
        plan_placement([m("x", 1000, "cuda:1")], ONE)
    assert "cuda:1" in str(ei.value) and "not available" in str(ei.value)
    with pytest.raises(PlacementError) as ei:
        plan_placement([m("x", 1000, "cuda")], CPU)
    assert "needs a GPU" in str(ei.value)
    with pytest.raises(PlacementError) as ei:
        plan_placement([m("a", 50 * GB, "cuda:0"), m("b", 30 * GB, "cuda:0")], TWO)
    msg = str(ei.value)
    assert "b" in msg and "pinned to cuda:0" in msg and "needs 30720 MB" in msg


def test_overflow_error_lists_every_model_and_device_table():
    models = [m(f"vlm{i}", 70 * GB, "cuda") for i in range(3)] + [m("huge", 100 * GB)]
    with pytest.raises(PlacementError) as ei:
        plan_placement(models, TWO)
    msg = str(ei.value)
    names = {u["model"] for u in ei.value.unplaced}
    assert names == {"vlm2", "huge"}
    for line in ("vlm2", "huge", "cuda:0", "cuda:1", "free MB", "headroom"):
        assert line in msg


def test_headroom_is_respected():
    # 73 GB > 72 GB usable (10% of 80 kept free)
    with pytest.raises(PlacementError):
        plan_placement([m("a", 73 * GB, "cuda:0")], ONE)
    plan = plan_placement([m("a", 73 * GB, "cuda:0")], ONE, headroom=0.05)
    assert plan.device_of("a") == "cuda:0"


def test_record_measured_warns_when_over_budget():
    plan = plan_placement([m("a", 1000, "cuda:0")], ONE)
    assert plan.record_measured("a", 2000) is None
    warn = plan.record_measured("a", 75 * GB)
    assert warn is not None and "cuda:0" in warn
    assert "76800" in plan.table()


def test_detect_devices_without_cuda_has_cpu_ram():
    d = detect_devices(cuda=False)
    assert set(d) == {"cpu"} and d["cpu"] > 100


def test_resolve_capacities_filters_overrides_and_refuses_missing_devices():
    from natix_miner.devices import DeviceError, resolve_capacities

    mem = {"cuda:0": 80_000.0, "cuda:1": 80_000.0, "cpu": 64_000.0}
    assert resolve_capacities(None, mem) == mem
    assert resolve_capacities(["cuda:1"], mem) == {"cuda:1": 80_000.0, "cpu": 64_000.0}
    assert resolve_capacities(["cuda"], mem) == mem
    only_gpu = resolve_capacities(["cpu"], {"cuda:0": 80_000.0})
    assert set(only_gpu) == {"cpu"} and only_gpu["cpu"] > 0  # the CPU is always there, from the RAM
    assert set(resolve_capacities(["cpu"])) == {"cpu"}
    with pytest.raises(DeviceError, match="cuda:99"):
        resolve_capacities(["cuda:99"])


def test_the_engine_reports_a_missing_device_as_an_engine_error():
    from engine_helpers import fake, make_profile, tier

    from natix_miner.engine.cascade import CascadeEngine, EngineError

    with pytest.raises(EngineError, match="cuda:99"):
        CascadeEngine(make_profile(tier("t", 0.9, fake("m"))), devices=["cuda:99"]).start()
