"""The data recipe of docs/data-recipe.md end to end on CPU with tiny models, through the command lines:

real labelled folder → scripts/synthesize.py (tiny SDXL saved as a local diffusers folder) → scripts/pseudo_label.py
(a fake colour profile standing in for the VLM tiers) → the training reader sees real / i2i / t2i / pseudo with the
right targets and groups → scripts/evaluate.py reports per condition.
"""

import csv
import json
import subprocess
import sys

import pytest
from _helpers import FAKE_COLOR_PROFILE
from PIL import Image
from test_synth import make_real_folder


def _run(*args, timeout=600):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_recipe_end_to_end_on_cpu(tmp_path):
    from tiny_sdxl import save_tiny_sdxl

    from natix_miner.training.data import scan_sources

    real = make_real_folder(tmp_path / "real", n_per_class=3)
    model = save_tiny_sdxl(tmp_path / "tiny-sdxl")
    synth = tmp_path / "synth"
    synth_args = ["scripts/synthesize.py", "--from", str(real), "--out", str(synth), "--i2i", "2", "--t2i", "2",
                  "--model-id", model, "--generator-license", "test-only", "--steps", "2", "--size", "32",
                  "--max-side", "40", "--batch-size", "2", "--device", "cpu", "--no-progress",
                  "--report", str(tmp_path / "synth.json")]
    _run(*synth_args)
    rep = json.loads((tmp_path / "synth.json").read_text())
    assert rep["generated"] == 4 and rep["by_kind"] == {"i2i": 2, "t2i": 2}

    # unlabelled images (e.g. recorded by --record.dir) labelled by a profile
    unl = tmp_path / "recorded" / "images"
    unl.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (230, 20, 20 + i)).save(unl / f"{'a' * 8}{i}.jpg")
        Image.new("RGB", (40, 30), (20, 20 + i, 230)).save(unl / f"{'b' * 8}{i}.png")
    prof = tmp_path / "vlm-standin.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    pseudo = tmp_path / "pseudo"
    _run("scripts/pseudo_label.py", "--profile", str(prof), "--images", str(unl), "--out", str(pseudo),
         "--min-confidence", "0.6", "--no-progress", "--report", str(tmp_path / "pseudo.json"))
    prep = json.loads((tmp_path / "pseudo.json").read_text())
    assert prep["labelled"] == 6 and prep["roadwork"] == 3

    # what scripts/train.py reads: one mixture, weights per source, conditions, soft targets, i2i in parent groups
    samples, infos = scan_sources([str(real), f"{synth}=0.5", str(pseudo)])
    by_cond = {}
    for s in samples:
        by_cond.setdefault(s.condition, []).append(s)
    assert {c: len(v) for c, v in by_cond.items()} == {"real": 6, "i2i": 2, "t2i": 2, "pseudo": 6}
    assert all(s.weight == 0.5 for s in by_cond["i2i"] + by_cond["t2i"])
    groups = {s.key: s.group for s in by_cond["real"]}
    with open(synth / "SOURCES.tsv", newline="") as fh:
        rows = {f"synth/{r['file']}": r for r in csv.DictReader(fh, delimiter="\t")}
    for s in by_cond["i2i"]:
        assert s.group == groups[rows[s.key]["parent"]] and rows[s.key]["generator"] == model
        assert rows[s.key]["generator_license"] == "test-only"
    assert all(0 < s.target < 1 and s.label == (s.target >= 0.5) for s in by_cond["pseudo"])

    # evaluation per condition (SOURCES.tsv kind)
    report = tmp_path / "eval.json"
    _run("scripts/evaluate.py", "--images", str(synth), "--profile", str(prof), "--report", str(report))
    ev = json.loads(report.read_text())
    assert {k: v["n"] for k, v in ev["per_condition"].items()} == {"i2i": 2, "t2i": 2}
