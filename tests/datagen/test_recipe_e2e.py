"""The data recipe of docs/data-recipe.md end to end on CPU with tiny models, through the command lines:

real labelled folder → scripts/synthesize.py (tiny SDXL saved as a local diffusers folder) → scripts/pseudo_label.py
(a fake colour profile standing in for the VLM tiers) → the training reader sees real / i2i / t2i / pseudo with the
right targets and groups → scripts/train.py on the mixture (tiny random-init timm model) → its export in a profile →
scripts/evaluate.py reports per condition.
"""

import contextlib
import csv
import importlib.util
import io
import json
from pathlib import Path

import pytest
from _helpers import FAKE_COLOR_PROFILE
from PIL import Image
from test_synth import make_real_folder


def _run(script, *args):
    """A script's main(argv) in this process (its command line, without paying the torch import again)."""
    spec = importlib.util.spec_from_file_location(f"_script_{Path(script).stem}", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = mod.main(list(args))
    assert rc == 0, f"{script} returned {rc}:\n{buf.getvalue()[-3000:]}"
    return buf.getvalue()


@pytest.mark.slow
def test_recipe_end_to_end_on_cpu(tmp_path):
    from tiny_sdxl import save_tiny_sdxl

    from natix_miner.training.data import scan_sources

    # ≥ 5 per class after the test split: train.py holds out 1 fold of 5 for test, then for validation
    real = make_real_folder(tmp_path / "real", n_per_class=8)
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
    for i, c in enumerate("abcdefgh"):  # recorder-style names: no running number
        Image.new("RGB", (40, 30), (230, 20, 20 + i)).save(unl / f"red{c}.jpg")
        Image.new("RGB", (40, 30), (20, 20 + i, 230)).save(unl / f"blue{c}.png")
    prof = tmp_path / "vlm-standin.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    pseudo = tmp_path / "pseudo"
    _run("scripts/pseudo_label.py", "--profile", str(prof), "--images", str(unl), "--out", str(pseudo),
         "--min-confidence", "0.6", "--no-progress", "--report", str(tmp_path / "pseudo.json"))
    prep = json.loads((tmp_path / "pseudo.json").read_text())
    assert prep["labelled"] == 16 and prep["roadwork"] == 8

    # what scripts/train.py reads: one mixture, weights per source, conditions, soft targets, i2i in parent groups
    samples, infos = scan_sources([str(real), f"{synth}=0.5", str(pseudo)])
    by_cond = {}
    for s in samples:
        by_cond.setdefault(s.condition, []).append(s)
    assert {c: len(v) for c, v in by_cond.items()} == {"real": 16, "i2i": 2, "t2i": 2, "pseudo": 16}
    assert all(s.weight == 0.5 for s in by_cond["i2i"] + by_cond["t2i"])
    groups = {s.key: s.group for s in by_cond["real"]}
    with open(synth / "SOURCES.tsv", newline="") as fh:
        rows = {f"synth/{r['file']}": r for r in csv.DictReader(fh, delimiter="\t")}
    for s in by_cond["i2i"]:
        assert s.group == groups[rows[s.key]["parent"]] and rows[s.key]["generator"] == model
        assert rows[s.key]["generator_license"] == "test-only"
    assert all(0 < s.target < 1 and s.label == (s.target >= 0.5) for s in by_cond["pseudo"])

    # train on the mixture (soft targets from pseudo), export
    run = tmp_path / "run"
    _run("scripts/train.py", "--data", str(real), "--data", f"{synth}=0.5", "--data", f"{pseudo}=0.5",
         "--min-confidence", "0.6", "--model", "test_convnext", "--no-pretrained", "--image-size", "32",
         "--batch-size", "8", "--workers", "0", "--conditions", "fullres", "--epochs", "1", "--ema", "0",
         "--distill-temperature", "2", "--out", str(run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert "per_condition" in metrics and (run / "model" / "model.safetensors").is_file()
    card = json.loads((run / "model" / "model_card.json").read_text())
    assert card["training"]["distill_temperature"] == 2.0
    export = json.loads((run / "model" / "config.json").read_text())

    # profile with the export → evaluation per condition (SOURCES.tsv kind)
    trained = tmp_path / "trained.yaml"
    trained.write_text(f"name: trained-mix\ndeadline_s: 5.0\ncalibration: {{threshold: {export['threshold']}}}\n"
                       f"tiers:\n  - name: fast\n    exit_threshold: 0.5\n    models:\n"
                       f"      - {{name: mix, type: timm_classifier, model: '{run / 'model'}', licence: MIT}}\n")
    report = tmp_path / "eval.json"
    _run("scripts/evaluate.py", "--images", str(synth), "--profile", str(trained), "--report", str(report))
    ev = json.loads(report.read_text())
    assert {k: v["n"] for k, v in ev["per_condition"].items()} == {"i2i": 2, "t2i": 2}
    assert set(ev["per_model"]) == {"mix"}
    # the pseudo-labelled folder evaluates too, its labels reported as pseudo labels (prob >= 0.5)
    _run("scripts/evaluate.py", "--images", str(pseudo), "--profile", str(trained), "--report", str(report))
    ev = json.loads(report.read_text())
    assert ev["labels"] == "pseudo" and ev["n"] == 16 and ev["per_condition"]["pseudo"]["n"] == 16
