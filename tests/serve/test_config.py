"""The profile's serve: section and the Ray resources derived from the placement plan (no Ray)."""

import pytest
from serve_helpers import color_profile

from natix_miner.devices import PlacementError
from natix_miner.profile import ProfileError, parse_profile
from natix_miner.serve.config import parse_serve_spec, plan_resources, served_models


def _gpu_profile(**serve):
    data = {"name": "gpu", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "det", "type": "fake", "licence": "MIT", "memory_mb": 20000, "device": "cuda", "batch_size": 8},
        {"name": "small", "type": "fake", "licence": "MIT", "memory_mb": 300, "device": "cpu"},
        {"name": "nc", "type": "fake", "licence": "CC-BY-NC", "noncommercial": True, "memory_mb": 30000}]}]}
    if serve:
        data["serve"] = serve
    return parse_profile(data)


GPUS = {"cuda:0": 80000.0, "cuda:1": 80000.0, "cpu": 64000.0}


def test_defaults_without_a_serve_section():
    spec = parse_serve_spec(color_profile())
    assert spec.ingress.num_cpus == 0.5 and spec.for_model("color").num_replicas == 1


def test_gpu_fraction_and_memory_come_from_the_placement_plan():
    prof = _gpu_profile(models={"det": {"num_replicas": 2}})
    res, plan = plan_resources(prof, parse_serve_spec(prof), GPUS)
    assert set(res) == {"det", "small"}  # the non-commercial model needs the opt-in, as in process
    det, small = res["det"], res["small"]
    # 20000 MB of a 72000 MB usable GPU (10 % headroom) -> 0.28 of a GPU, rounded up
    assert det.num_gpus == pytest.approx(0.28) and det.replicas == 2 and "memory" not in det.actor_options()
    assert small.num_gpus == 0.0 and small.device == "cpu" and small.actor_options()["memory"] == 300 * 2**20
    # "spread" puts the two replicas on different GPUs
    assert {plan.device_of("det#0"), plan.device_of("det#1")} == {"cuda:0", "cuda:1"}
    res, _ = plan_resources(prof, parse_serve_spec(prof), GPUS, allow_restricted=True)
    assert res["nc"].num_gpus == pytest.approx(0.42)


def test_replicas_that_do_not_fit_fail_before_deploying():
    prof = _gpu_profile(models={"det": {"num_replicas": 8}})
    with pytest.raises(PlacementError, match="det#"):
        plan_resources(prof, parse_serve_spec(prof), GPUS)


def test_explicit_overrides_and_autoscaling():
    prof = _gpu_profile(defaults={"num_cpus": 2}, models={
        "det": {"num_gpus": 1, "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}})
    spec = parse_serve_spec(prof)
    res, _ = plan_resources(prof, spec, GPUS)
    assert res["det"].num_gpus == 1 and res["det"].num_cpus == 2 and res["det"].replicas == 1
    assert spec.for_model("det").autoscaling.max_replicas == 4
    assert res["small"].num_cpus == 2


@pytest.mark.parametrize("serve,match", [
    ({"ingres": {}}, "ingres"),
    ({"models": {"nope": {}}}, "nope"),
    ({"models": {"det": {"num_replicas": 0}}}, "num_replicas"),
    ({"models": {"det": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}}, "max_replicas"),
    ({"strategy": "random"}, "strategy"),
    ({"defaults": {"num_gpus": -1}}, "num_gpus"),
])
def test_bad_serve_sections_name_the_key(serve, match):
    with pytest.raises(ProfileError, match=match):
        parse_serve_spec(_gpu_profile(**serve))


def test_profile_refuses_a_non_mapping_serve_section():
    with pytest.raises(ProfileError, match="serve"):
        parse_profile({"name": "x", "serve": [1], "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
            {"name": "m", "type": "fake", "licence": "MIT"}]}]})


def test_served_models_skip_disabled_and_restricted():
    prof = _gpu_profile()
    assert [m.name for m in served_models(prof, False)] == ["det", "small"]
    assert [m.name for m in served_models(prof, True)] == ["det", "small", "nc"]


def test_cli_dry_run_prints_the_plan(tmp_path, capsys):
    import json

    from serve_helpers import COLOR_PROFILE

    from natix_miner.serve.app import main

    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({**COLOR_PROFILE, "serve": {"models": {"color": {"num_replicas": 2, "num_cpus": 0.5}}}}))
    assert main(["--profile", str(p), "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out[:out.index("\n}\n") + 2])
    assert plan["color"]["replicas"] == 2 and plan["color"]["num_cpus"] == 0.5 and "color#1" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**COLOR_PROFILE, "serve": {"models": {"nope": {}}}}))
    assert main(["--profile", str(bad), "--dry-run"]) == 2


def test_cli_dry_run_plans_for_gpus_this_machine_does_not_have(tmp_path, capsys):
    import json

    from natix_miner.serve.app import main

    p = tmp_path / "g.yaml"
    p.write_text(json.dumps({"name": "g", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "det", "type": "fake", "licence": "MIT", "memory_mb": 36000, "device": "cuda"}]}]}))
    assert main(["--profile", str(p), "--dry-run", "--gpus", "2", "--gpu-memory-mb", "80000"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[:out.index("\n}\n") + 2])["det"]["num_gpus"] == 0.5
    assert main(["--profile", str(p), "--dry-run", "--gpus", "0"]) == 2  # a GPU model and no GPU: refused
