"""scripts/pseudo_label.py: a profile over unlabelled images → soft_labels.jsonl the training reader accepts."""

import json

import pytest
from _helpers import FAKE_COLOR_PROFILE
from PIL import Image

from natix_miner.datagen.pseudo import PseudoConfig, pseudo_label


@pytest.fixture
def unlabelled(tmp_path):
    d = tmp_path / "unlabelled"
    (d / "cam2").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (220, 10 * i, 10)).save(d / f"red_{i}.jpg")
        Image.new("RGB", (40, 30), (10, 10 * i, 220)).save(d / "cam2" / f"blue_{i}.png")
    Image.new("RGB", (40, 30), (128, 0, 120)).save(d / "unsure.png")  # P close to 0.5
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (d / "notes.txt").write_text("not an image")
    prof = tmp_path / "fake.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    return d, prof


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_pseudo_label_writes_soft_targets_filters_and_resumes(tmp_path, unlabelled):
    from natix_miner.training.data import scan_data

    src, prof = unlabelled
    out = tmp_path / "pseudo"
    cfg = PseudoConfig(images=str(src), out=str(out), profile=str(prof), min_confidence=0.6, batch_size=3)
    rep = pseudo_label(cfg, progress=False)
    assert (rep.found, rep.labelled, rep.below_min_confidence, rep.unreadable) == (8, 6, 1, 1)
    assert rep.roadwork == 3 and rep.per_model_votes == {"color": 6}
    lines = _lines(out / "soft_labels.jsonl")
    by_file = {x["file"]: x for x in lines}
    assert set(by_file) == {f"images/red_{i}.jpg" for i in range(3)} | {f"images/cam2/blue_{i}.png" for i in range(3)}
    red, blue = by_file["images/red_0.jpg"], by_file["images/cam2/blue_0.png"]
    assert red["prob"] > 0.5 > blue["prob"] and red["confidence"] >= 0.6 and set(red["votes"]) == {"color"}
    assert (out / "images/red_0.jpg").read_bytes() == (src / "red_0.jpg").read_bytes()
    rejected = {x["file"]: x["reason"] for x in _lines(out / "rejected.jsonl")}
    assert rejected.keys() == {"images/unsure.png", "images/broken.jpg"}
    assert rejected["images/broken.jpg"].startswith("unreadable")

    samples = {s.key: s for s in scan_data([str(out)])}
    s = samples["pseudo/images/red_0.jpg"]
    assert s.condition == "pseudo" and s.target == pytest.approx(red["prob"]) and s.label == 1
    assert samples["pseudo/images/cam2/blue_0.png"].label == 0

    # resume: nothing is redone; a new image is the only one labelled
    rep2 = pseudo_label(cfg, progress=False)
    assert rep2.skipped_done == 8 and rep2.labelled == 0 and rep2.unreadable == 0
    Image.new("RGB", (40, 30), (240, 0, 0)).save(src / "red_new.jpg")
    rep3 = pseudo_label(cfg, progress=False)
    assert rep3.skipped_done == 8 and rep3.labelled == 1
    assert len(_lines(out / "soft_labels.jsonl")) == 7


def test_images_no_model_answers_are_retried(tmp_path, unlabelled):
    src, _ = unlabelled
    prof = tmp_path / "down.yaml"
    prof.write_text("name: down\ndeadline_s: 2.0\ntiers:\n  - name: t\n    exit_threshold: 0.9\n    models:\n"
                    "      - {name: vlm, type: fake, licence: MIT, options: {fail: raise}}\n")
    out = tmp_path / "pseudo"
    rep = pseudo_label(PseudoConfig(images=str(src), out=str(out), profile=str(prof)), progress=False)
    assert rep.no_answer == 7 and rep.labelled == 0 and rep.unreadable == 1
    assert not (out / "soft_labels.jsonl").exists() or not _lines(out / "soft_labels.jsonl")
    up = tmp_path / "up.yaml"
    up.write_text(FAKE_COLOR_PROFILE)
    rep2 = pseudo_label(PseudoConfig(images=str(src), out=str(out), profile=str(up)), progress=False)
    assert rep2.labelled == 7 and rep2.skipped_done == 1


def test_cli_refuses_bad_arguments(tmp_path, unlabelled):
    import subprocess
    import sys

    src, prof = unlabelled
    r = subprocess.run([sys.executable, "scripts/pseudo_label.py", "--profile", str(prof), "--images",
                        str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode != 0 and "no such folder" in r.stderr
    r = subprocess.run([sys.executable, "scripts/pseudo_label.py", "--profile", str(prof), "--images", str(src),
                        "--out", str(tmp_path / "o"), "--min-confidence", "1.5"], capture_output=True, text=True)
    assert r.returncode != 0 and "min-confidence" in r.stderr


def test_tier_selection_and_all_tiers(tmp_path, unlabelled):
    """--tiers runs only the named tiers; --all-tiers makes every tier vote (no early exit)."""
    src, _ = unlabelled
    prof = tmp_path / "two.yaml"
    prof.write_text("name: two\ndeadline_s: 3.0\ntiers:\n"
                    "  - name: fast\n    exit_threshold: 0.55\n    models:\n"
                    "      - {name: color, type: fake, licence: MIT, options: {p_by_color: true}}\n"
                    "  - name: vlm\n    exit_threshold: 0.9\n    models:\n"
                    "      - {name: vlm, type: fake, licence: MIT, options: {p: 0.8}}\n")

    def votes(out):
        return [set(x["votes"]) for x in _lines(out / "soft_labels.jsonl")]

    pseudo_label(PseudoConfig(images=str(src), out=str(tmp_path / "a"), profile=str(prof)), progress=False)
    assert {"vlm"} not in votes(tmp_path / "a") and any(v == {"color"} for v in votes(tmp_path / "a"))
    pseudo_label(PseudoConfig(images=str(src), out=str(tmp_path / "b"), profile=str(prof), all_tiers=True),
                 progress=False)
    assert all(v == {"color", "vlm"} for v in votes(tmp_path / "b"))
    pseudo_label(PseudoConfig(images=str(src), out=str(tmp_path / "c"), profile=str(prof), tiers=["vlm"]),
                 progress=False)
    assert all(v == {"vlm"} for v in votes(tmp_path / "c"))
    with pytest.raises(ValueError, match="not in profile"):
        pseudo_label(PseudoConfig(images=str(src), out=str(tmp_path / "d"), profile=str(prof), tiers=["nope"]),
                     progress=False)
