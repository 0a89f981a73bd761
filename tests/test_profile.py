import pytest

from natix_miner.profile import ProfileError, load_profile, parse_profile

BASE = {
    "name": "t",
    "tiers": [{"name": "a", "exit_threshold": 0.9,
               "models": [{"name": "m", "type": "fake", "licence": "MIT"}]}],
}


def _with(path, value):
    import copy

    d = copy.deepcopy(BASE)
    cur = d
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return d


def test_minimal_profile_defaults():
    p = parse_profile(BASE, "x.yaml")
    assert p.deadline_s == 6.0 and p.consensus.method == "geometric"
    assert [m.name for _, m in p.models()] == ["m"]


@pytest.mark.parametrize("path,value,needle", [
    (("tiers", 0, "models", 0, "weight"), "high", "tiers[0].models[0].weight: must be a number"),
    (("tiers", 0, "exit_threshold"), 0.3, "tiers[0].exit_threshold: must be >= 0.5"),
    (("tiers", 0, "models", 0, "type"), "nonexistent", "unknown model type 'nonexistent'"),
    (("tiers", 0, "models", 0, "device"), "gpu7", "must be auto, cpu, cuda or cuda:N"),
    (("tiers", 0, "models", 0, "enabled"), False, "disabled_reason"),
    (("deadline_s",), 9.5, "deadline_s: must be <= 8.5"),
    (("tiers", 0, "models", 0, "wieght"), 1.0, "tiers[0].models[0].wieght: unknown key"),
    (("calibration",), {"threshold": 1.0}, "calibration.threshold: must be < 1.0"),
])
def test_errors_name_file_key_and_fix(path, value, needle):
    from natix_miner.models.registry import known_types

    with pytest.raises(ProfileError) as ei:
        parse_profile(_with(path, value), "configs/x.yaml", known_types=known_types())
    msg = str(ei.value)
    assert msg.startswith("configs/x.yaml: ")
    assert needle in msg


def test_missing_licence_is_an_error():
    d = _with(("tiers", 0, "models", 0), {"name": "m", "type": "fake"})
    with pytest.raises(ProfileError, match="licence: missing required key"):
        parse_profile(d, "p.yaml")


def test_duplicate_model_names():
    d = _with(("tiers", 0, "models"), [{"name": "m", "type": "fake", "licence": "MIT"}] * 2)
    with pytest.raises(ProfileError, match="duplicate model name"):
        parse_profile(d, "p.yaml")


def test_load_profile_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "nope.yaml")


def test_load_profile_bad_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(f)


def test_shipped_profiles_load():
    from pathlib import Path

    from natix_miner.profile import REPO_ROOT

    files = sorted(Path(REPO_ROOT / "configs").glob("*.yaml"))
    assert files, "no profiles shipped"
    from natix_miner.models.registry import known_types

    for f in files:
        load_profile(f, check_types=True, known_types=known_types())
