"""scripts/train_head.py (natix_miner.training.head) end to end on a tiny generated dataset (folder layout + a
parquet folder).

Images are small and the backbone runs at a 64-pixel short side, so the whole run takes seconds.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natix_miner.profile import REPO_ROOT


def _load_script():
    spec = importlib.util.spec_from_file_location("train_head", REPO_ROOT / "scripts" / "train_head.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_head"] = mod  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(mod)
    return mod


def _image(label: int, i: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(1000 * label + i)
    arr = (rng.random((size[1], size[0], 3)) * 80 + 40).astype(np.uint8)
    if label:  # an orange-and-white "barrier" stripe
        arr[size[1] // 2:size[1] // 2 + 10, 10:70] = (255, 120, 0)
        arr[size[1] // 2 + 3:size[1] // 2 + 6, 10:70:6] = (255, 255, 255)
    return Image.fromarray(arr)


def _folder_dataset(root: Path, n: int = 6) -> Path:
    for label, sub in ((1, "roadwork"), (0, "no_roadwork")):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            img = _image(label, i)
            if i == 0:  # other modes and sizes must be handled
                img = img.convert("L").resize((80, 120))
            img.save(root / sub / f"cam_{i:03d}.{'png' if i == 1 else 'jpg'}")
    (root / "SOURCES.tsv").write_text("file\tlabel\tlicense\nroadwork/cam_002.jpg\troadwork\tCC0\n")
    return root


def _parquet_dataset(root: Path, n: int = 6) -> Path | None:
    rows = []
    for label in (1, 0):
        for i in range(n):
            buf = io.BytesIO()
            _image(label, 100 + i).save(buf, format="JPEG")
            image = {"bytes": buf.getvalue(), "path": None} if i % 2 else buf.getvalue()
            rows.append((image, label, "cones" if label else ""))
    # one row whose description disagrees with its label: dropped like the validator's cache does
    rows.append((rows[0][0], 0, "cones on the road"))
    root.mkdir(parents=True)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # pyarrow cannot mix bytes and structs in one column: use the struct form for all rows
        img = [r[0] if isinstance(r[0], dict) else {"bytes": r[0], "path": None} for r in rows]
        pq.write_table(pa.table({"image": img, "label": [r[1] for r in rows],
                                 "scene_description": [r[2] for r in rows]}), root / "train-0.parquet")
        return root
    except ImportError:
        pass
    try:
        import polars as pl
    except ImportError:
        return None
    img = [r[0] if isinstance(r[0], dict) else {"bytes": r[0], "path": None} for r in rows]
    pl.DataFrame({"image": img, "label": [r[1] for r in rows],
                  "scene_description": [r[2] for r in rows]}).write_parquet(root / "train-0.parquet")
    return root


def test_parquet_reader_and_validator_filter(tmp_path):
    from natix_miner.training.data import load_image, scan_sources

    root = _parquet_dataset(tmp_path / "natix")
    if root is None:
        pytest.skip("no parquet library (pyarrow/polars/pandas) installed")
    items, infos = scan_sources([str(root)], group_block=1)
    assert len(items) == 12 and infos[0].dropped == {"label_description_mismatch": 1}
    assert sorted({it.label for it in items}) == [0, 1]
    img = load_image(items[3])
    assert img.mode == "RGB" and img.size == (96, 64)


def test_groups_keep_nearby_frames_together():
    from natix_miner.evaluation.dataset import source_of
    from natix_miner.training.data import stem_group

    assert stem_group("gtsdb_00459", 30) == stem_group("gtsdb_00461", 30)
    assert stem_group("gtsdb_00029", 30) != stem_group("gtsdb_00046", 30)
    assert source_of("tracon_test__img_1") == "tracon"


def test_train_head_end_to_end(tmp_path):
    th = _load_script()
    folder = _folder_dataset(tmp_path / "cams")
    data = ["--data", str(folder)]
    parquet = _parquet_dataset(tmp_path / "natix")
    if parquet is not None:
        data += ["--data", str(parquet)]
    out = tmp_path / "head"
    argv = data + ["--out", str(out), "--cache", str(tmp_path / "cache"), "--backbone", "efficientnet_lite",
                   "--backbone-option", "short_side=64", "--backbone-option", "max_long_side=64",
                   "--group-block", "1", "--test-frac", "0.34", "--val-folds", "2",
                   "--train-crops", "1", "--eval-crops", "1", "--head", "mlp", "--epochs", "1", "--hidden", "8",
            "--cv-repeats", "2"]
    report = th.main(argv)
    for f in ("head.pt", "provenance.json", "metrics.json"):
        assert (out / f).is_file(), f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(report))
    assert 0.0 < metrics["threshold"] < 1.0
    held = metrics["heldout"]
    assert "all" in held and "cams" in held and "cams/cam" in held
    for key in ("mcc", "accuracy", "auc", "n", "n_roadwork"):
        assert key in held["all"]["full"] and key in held["all"]["crop"]
    assert held["all"]["full"]["n"] >= 4 and held["all"]["crop"]["n"] == held["all"]["full"]["n"]
    # nested CV predicts every image (development and held out) once per repeat
    nested = metrics["nested_cv"]
    assert nested["repeats"] == 2 and 0.0 < nested["threshold_mean"] < 1.0
    n_images = held["all"]["full"]["n"] + metrics["cv"]["all"]["full"]["n"]
    assert nested["metrics"]["all"]["full"]["n"] == n_images
    for key in ("mcc", "mcc_sd", "auc", "accuracy"):
        assert key in nested["metrics"]["all"]["full"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["split"]["seed"] == 0 and len(prov["split"]["sha256_all"]) == 64
    assert prov["data"][0]["licences"].get("CC0") == 1
    assert prov["backbone"]["weights_sha256"] and prov["backbone"]["licence"] == "Apache-2.0"
    if parquet is not None:
        assert "natix" in held and prov["data"][1]["kind"] == "parquet"

    # the head loads and the adapter uses the features it was trained with
    from natix_miner.models.heads import load_head
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    head = load_head(out)
    assert head.meta["short_side"] == 64 and head.meta["backbone"] == "efficientnet_lite"
    adapter = build_adapter(ModelSpec(name="t", type="efficientnet_lite", licence="Apache-2.0",
                                      options={"head": str(out)}))
    adapter.load("cpu")
    votes = adapter.predict([_image(1, 50), _image(0, 50)])
    assert all(0.0 <= v.p <= 1.0 for v in votes)

    # second run: every view comes from the feature cache, and the result is the same
    report2 = th.main(argv)
    assert report2["threshold"] == report["threshold"]
    assert report2["heldout"] == report["heldout"]


def _two_rules_folder(root: Path) -> dict[str, float]:
    """40 frames, each its own group; fixed scores where MCC at 50/50 wants a threshold <= 0.25 (find the 'lo'
    roadwork, accept the 'fp' false alarms) and MCC at the data's 1:9 balance one above 0.28."""
    score = {}
    n = 0
    for sub, kind, count in (("roadwork", "hi", 2), ("roadwork", "lo", 2), ("no_roadwork", "fp", 8),
                             ("no_roadwork", "neg", 28)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for _ in range(count):
            n += 1
            name = f"{kind}_{n:03d}"
            _image(int(sub == "roadwork"), n, size=(48, 32)).save(root / sub / f"{name}.jpg")
            score[name] = {"hi": 0.6 + 0.01 * n, "lo": 0.25 + 0.001 * n, "fp": 0.28 + 0.001 * n,
                           "neg": 0.004 * n}[kind]
    return score


def test_head_path_uses_the_balanced_threshold_by_default(tmp_path, monkeypatch):
    """The 50/50 rule must be the default in the head path too (a mutation once slipped through): with the
    model's out-of-fold scores fixed, the stored threshold is best_threshold(..., 'balanced'), not 'raw'."""
    import natix_miner.training.head as head_mod
    from natix_miner.training.cv import ViewScores
    from natix_miner.training.metrics import best_threshold

    th = _load_script()
    score = _two_rules_folder(tmp_path / "frames")

    def fixed_scores(views_of, feats, args):
        def fit_predict(train, sets):
            return [ViewScores(list(range(len(x))), ["full"] * len(x),
                               [score[Path(s.path).stem] for s in x]) for x in sets]
        return fit_predict

    monkeypatch.setattr(head_mod, "head_fit_predict", fixed_scores)
    y = np.array([int(k.startswith(("hi", "lo"))) for k in score])
    p = np.array(list(score.values()))
    t_bal, t_raw = best_threshold(y, p), best_threshold(y, p, "raw")
    assert t_bal <= 0.26 and t_raw > 0.28
    base = ["--data", str(tmp_path / "frames"), "--cache", "", "--backbone-option", "short_side=32",
            "--backbone-option", "max_long_side=48", "--group-block", "1", "--test-frac", "0", "--val-folds", "4",
            "--train-crops", "0", "--head", "linear", "--cv-repeats", "1"]
    default = th.main(base + ["--out", str(tmp_path / "default")])
    raw = th.main(base + ["--out", str(tmp_path / "raw"), "--threshold-objective", "raw"])
    assert default["threshold"] == pytest.approx(t_bal, abs=1e-6)
    assert raw["threshold"] == pytest.approx(t_raw, abs=1e-6)
    assert default["nested_cv"]["threshold_mean"] < 0.27 < raw["nested_cv"]["threshold_mean"]
    prov = json.loads((tmp_path / "default" / "provenance.json").read_text())
    assert "at 50/50 label balance" in prov["threshold"]["objective"]


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    th = _load_script()
    folder = _folder_dataset(tmp_path / "cams", n=5)
    (folder / "no_roadwork" / "cam_099.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    report = th.main(["--data", str(folder), "--out", str(tmp_path / "h"), "--cache", "", "--backbone-option",
                      "short_side=32", "--backbone-option", "max_long_side=48", "--group-block", "1",
                      "--test-frac", "0", "--val-folds", "2", "--train-crops", "0", "--head", "linear"])
    assert report["unreadable"] == 1 and report["cv"]["all"]["full"]["n"] == 10
