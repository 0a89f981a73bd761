"""scripts/dry_run.py itself, end to end with a small n: a --mock miner child process, the replica over a real
dendrite, the report's keys, zero unanswered queries and a clean shutdown (the child exits, nothing is left)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from _helpers import FAKE_COLOR_PROFILE

ROOT = Path(__file__).resolve().parents[2]


def _folder(root, tag):
    for sub, colour in (("roadwork", (230, 40, 20)), ("no_roadwork", (30, 40, 220))):
        d = root / sub
        d.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (320, 200 + 10 * i), colour).save(d / f"{tag}{i}.jpg")
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive either
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except OSError:
        return False


@pytest.mark.slow
def test_dry_run_script_letterbox_with_api_images(tmp_path):
    prof = tmp_path / "fake.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    report = tmp_path / "dry.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "dry_run.py"), "--challenges", "4", "--burst", "3",
           "--condition", "letterbox-2026-04", "--images", str(_folder(tmp_path / "real", "r")),
           "--api-images", str(_folder(tmp_path / "api", "a")), "--profile", str(prof), "--report", str(report),
           "--seed", "5", "--no-progress", "--ready-timeout", "240"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rep = json.loads(report.read_text())
    for key in ("n", "n_challenges", "no_answer", "mcc", "accuracy", "reward", "ema_score", "per_condition",
                "per_source", "per_level", "skipped", "status_counts", "config", "records", "dry_run"):
        assert key in rep, key
    assert rep["n"] == 12 and rep["no_answer"] == 0 and rep["status_counts"] == {"200": 12}
    assert list(rep["per_condition"]) == ["letterbox-2026-04"]
    assert set(rep["per_source"]) <= {"real", "api"} and sum(m["n"] for m in rep["per_source"].values()) == 12
    assert all(r["image_size"] == [224, 224] for r in rep["records"])
    assert rep["accuracy"] == 1.0  # the fake model reads red vs blue, which survives the letterbox
    d = rep["dry_run"]
    assert d["miner_exit_code"] == 0 and d["workdir_removed"] and not Path(d["workdir"]).exists()
    assert not _pid_alive(d["miner_pid"])
    assert "source real" in out.stdout and "letterbox-2026-04" in out.stdout  # the printed summary
