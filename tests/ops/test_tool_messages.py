"""Operator tool messages: export_tensorrt hints to download first; download_models says "no network" once."""

import importlib.util
import sys

from natix_miner.profile import REPO_ROOT, load_profile


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_export_tensorrt_hints_to_download_first(tmp_path, capsys):
    import yaml

    ex = _script("export_tensorrt")
    prof = {"name": "export-missing", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "det", "type": "ultralytics", "licence": "AGPL-3.0", "model": str(tmp_path / "nope.pt")}]}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    assert ex.main(["--profile", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"scripts/download_models.py --profile {path} --only det" in out and "download them first" in out


def _hub_profile(tmp_path, n: int):
    """A profile of ``n`` hub models that do not exist."""
    import yaml

    models = [{"name": f"m{i}", "type": "zero_shot", "licence": "MIT", "model": f"natix-test/not-real-{i}"}
              for i in range(n)]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "net", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": models}]}))
    return load_profile(path)


def test_download_models_says_no_network_once(tmp_path, capsys):
    """Several hub models and no network: one 'no network' line, no attempt per model, all marked missing."""
    from natix_miner.ops import download_models as dm

    profile = _hub_profile(tmp_path, 7)
    probes = []
    rows = dm.download(profile, dm.select(profile, None, False), False,
                       reachable=lambda host: probes.append(host) or False)
    out = capsys.readouterr().out
    assert probes == ["huggingface.co"] and out.count("no network") == 1
    assert all(r.status == "missing" and "no network" in r.reason for r in rows) and len(rows) == 7
    assert "ConnectError" not in out and "[m0]" not in out


def test_download_models_stops_after_a_network_error(tmp_path, capsys, monkeypatch):
    from natix_miner.ops import download_models as dm

    profile = _hub_profile(tmp_path, 3)
    calls = []

    def fail(art):
        calls.append(art.ref)
        raise OSError("hub down") from ConnectionError("Connection refused")

    monkeypatch.setattr(dm, "download_one", fail)
    rows = dm.download(profile, dm.select(profile, None, False), False, reachable=lambda host: True)
    out = capsys.readouterr().out
    assert len(calls) == 1 and out.count("no network") == 1
    assert [r.status for r in rows] == ["missing"] * 3
