"""natix_miner.training.data: folder, parquet and pseudo-label layouts, groups, weights and refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natix_miner.training import data as D
from natix_miner.training.data import DataError, ImageUnreadable


def _img(seed: int, size=(40, 30), fmt="JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path, pos=("gtsdb_00001", "gtsdb_00002", "gtsdb_00040"),
                neg=("gtsdb_00003", "gtsdb_00100", "cam_7"), tsv: str | None = None) -> Path:
    for sub, names in (("roadwork", pos), ("no_roadwork", neg)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(names):
            (root / sub / f"{n}.jpg").write_bytes(_img(hash((sub, n)) % 1000))
    if tsv is not None:
        (root / "SOURCES.tsv").write_text(tsv)
    return root


def make_parquet(root: Path, rows: list[dict], name="train-0.parquet", row_group_size=None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    cols = {k: [r.get(k) for r in rows] for k in rows[0]}
    pq.write_table(pa.table(cols), root / name, row_group_size=row_group_size)
    return root


def test_folder_layout_labels_sources_groups(tmp_path):
    root = make_folder(tmp_path / "dev", tsv="file\tlabel\tlicense\nroadwork/gtsdb_00001.jpg\troadwork\tCC0\n")
    samples, infos = D.scan_sources([str(root)])
    by = {s.key: s for s in samples}
    assert set(by) == {f"dev/roadwork/gtsdb_0000{i}.jpg" for i in (1, 2)} | {"dev/roadwork/gtsdb_00040.jpg",
                                                                           "dev/no_roadwork/gtsdb_00003.jpg",
                                                                           "dev/no_roadwork/gtsdb_00100.jpg",
                                                                           "dev/no_roadwork/cam_7.jpg"}
    s1 = by["dev/roadwork/gtsdb_00001.jpg"]
    assert (s1.label, s1.target, s1.source, s1.condition, s1.dataset, s1.licence) == (1, 1.0, "dev/gtsdb", "real",
                                                                                      "dev", "CC0")
    # frames 1, 2, 3 are one block of 30 (one drive); 40 and 100 are not
    assert by["dev/roadwork/gtsdb_00002.jpg"].group == s1.group == by["dev/no_roadwork/gtsdb_00003.jpg"].group
    assert by["dev/roadwork/gtsdb_00040.jpg"].group != s1.group
    assert by["dev/no_roadwork/cam_7.jpg"].source == "dev/cam"
    assert infos[0].kind == "image-folder" and (infos[0].roadwork, infos[0].no_roadwork) == (3, 3)
    assert D.scan_data([str(root)], group_block=1)[0].group != D.scan_data([str(root)], group_block=1)[1].group


def test_stem_group_rule():
    assert D.stem_group("gtsdb_00459", 30) == D.stem_group("gtsdb_00461", 30) == "gtsdb_#15"
    assert D.stem_group("gtsdb_00029", 30) != D.stem_group("gtsdb_00046", 30)
    assert D.stem_group("ucb_frame10", 30) == "ucb_frame#0" and D.stem_group("plain", 30) == "plain"


def test_sources_tsv_kind_and_i2i_parent_share_the_group(tmp_path):
    real = make_folder(tmp_path / "real", pos=("gtsdb_00001", "gtsdb_00200"), neg=("gtsdb_00500",))
    tsv = ("file\tlabel\tlicense\tkind\tparent\tgenerator\n"
           "roadwork/syn_a.png\troadwork\tx\ti2i\treal/roadwork/gtsdb_00200.jpg\tsdxl\n"  # by key
           "no_roadwork/syn_b.png\tno_roadwork\tx\ti2i\tgtsdb_00500.jpg\tsdxl\n"  # by file name
           "no_roadwork/syn_c.png\tno_roadwork\tx\tt2i\t\tsdxl\n")
    syn = tmp_path / "syn"
    for sub, n in (("roadwork", "syn_a"), ("no_roadwork", "syn_b"), ("no_roadwork", "syn_c")):
        (syn / sub).mkdir(parents=True, exist_ok=True)
        (syn / sub / f"{n}.png").write_bytes(_img(len(n), fmt="PNG"))
    (syn / "SOURCES.tsv").write_text(tsv)
    by = {s.key: s for s in D.scan_data([str(real), str(syn)])}
    assert by["syn/roadwork/syn_a.png"].condition == "i2i"
    assert by["syn/roadwork/syn_a.png"].group == by["real/roadwork/gtsdb_00200.jpg"].group
    assert by["syn/no_roadwork/syn_b.png"].group == by["real/no_roadwork/gtsdb_00500.jpg"].group
    assert by["syn/no_roadwork/syn_c.png"].condition == "t2i"
    assert by["syn/no_roadwork/syn_c.png"].group not in {s.group for k, s in by.items() if k.startswith("real/")}
    # the parent's group keeps both on one side of every split
    from natix_miner.training.splits import grouped_folds

    for train, test in grouped_folds(list(by.values()), 2, seed=3):
        keys = {s.key for s in test}
        assert ("syn/roadwork/syn_a.png" in keys) == ("real/roadwork/gtsdb_00200.jpg" in keys)


def test_bad_kind_in_sources_tsv_is_refused(tmp_path):
    root = make_folder(tmp_path / "d", tsv="file\tkind\nroadwork/gtsdb_00001.jpg\tcartoon\n")
    with pytest.raises(DataError, match="SOURCES.tsv.*cartoon"):
        D.scan_data([str(root)])


def _rows(n_pos=4, n_neg=4, vid=True):
    rows = []
    for i in range(n_pos + n_neg):
        label = int(i < n_pos)
        row = {"image": {"bytes": _img(100 + i), "path": None}, "label": label,
               "scene_description": "cones and a barrier" if label else ""}
        if vid:
            row["video_info"] = {"vid_id": f"v{i // 2}", "frame": i % 2}
        rows.append(row)
    return rows


def test_parquet_consistency_filter_groups_and_decode(tmp_path):
    rows = _rows()
    rows.append({**rows[0], "label": 0})  # description but label 0: the validator's cache skips it
    rows.append({**rows[5], "label": 1})  # label 1 without description: skipped too
    rows.append({**rows[0], "label": None})
    root = make_parquet(tmp_path / "natix", rows, row_group_size=3)
    samples, infos = D.scan_sources([str(root)])
    assert len(samples) == 8
    assert infos[0].dropped == {"label_description_mismatch": 2, "no_label": 1} and infos[0].kind == "parquet"
    assert [s.label for s in samples] == [1, 1, 1, 1, 0, 0, 0, 0]
    assert samples[0].group == samples[1].group == "natix/vid:v0" and samples[2].group == "natix/vid:v1"
    assert samples[0].source == "natix/train-0" and samples[3].parquet == (str(root / "train-0.parquet"), 3)
    # rows across row groups decode to the right image
    for s in (samples[0], samples[4], samples[7]):
        got = D.load_image(s)
        want = Image.open(io.BytesIO(rows[s.parquet[1]]["image"]["bytes"])).convert("RGB")
        assert got.mode == "RGB" and np.array_equal(np.asarray(got), np.asarray(want))


def test_parquet_flat_vid_column_and_no_video_info(tmp_path):
    rows = [{"image": _img(i), "label": int(i < 3), "video_info.vid_id": f"x{i % 2}"} for i in range(6)]
    s = D.scan_data([str(make_parquet(tmp_path / "flat", rows))])
    assert {x.group for x in s} == {"flat/vid:x0", "flat/vid:x1"}
    rows = [{"image": _img(i), "label": int(i < 3)} for i in range(6)]
    s = D.scan_data([str(make_parquet(tmp_path / "plain", rows))], group_block=2)
    assert [x.group for x in s] == ["plain/train-0.parquet#0"] * 2 + ["plain/train-0.parquet#1"] * 2 + \
        ["plain/train-0.parquet#2"] * 2


def test_parquet_video_frames_never_straddle_a_split(tmp_path):
    rows = []
    for v in range(12):
        for f in range(3):
            rows.append({"image": {"bytes": _img(v * 10 + f), "path": None}, "label": int(v < 4),
                         "scene_description": "cones" if v < 4 else None, "video_info": {"vid_id": f"vid{v}"}})
    samples = D.scan_data([str(make_parquet(tmp_path / "natix", rows))])
    assert len(samples) == 36
    for seed in range(3):
        train, test = D.grouped_split(samples, 0.25, seed)
        assert test and {s.group for s in train}.isdisjoint({s.group for s in test})
        for tr, te in D.grouped_folds(samples, 3, seed):
            assert {s.group for s in tr}.isdisjoint({s.group for s in te})


def test_parquet_missing_columns_refused(tmp_path):
    root = make_parquet(tmp_path / "p", [{"img": b"x", "label": 1}])
    with pytest.raises(DataError, match="train-0.parquet.*'image' and 'label'"):
        D.scan_data([str(root)])


def _pseudo(root: Path, lines: list[dict | str]) -> Path:
    (root / "imgs").mkdir(parents=True)
    out = []
    for i, rec in enumerate(lines):
        if isinstance(rec, dict):
            (root / rec["file"]).write_bytes(_img(500 + i))
            out.append(json.dumps(rec))
        else:
            out.append(rec)
    (root / "soft_labels.jsonl").write_text("\n".join(out) + "\n")
    return root


def test_pseudo_labels_soft_targets_and_min_confidence(tmp_path):
    root = _pseudo(tmp_path / "pl", [
        {"file": "imgs/web_1.jpg", "prob": 0.93, "confidence": 0.86, "votes": {"m": 0.9}},
        {"file": "imgs/web_2.jpg", "prob": 0.2, "confidence": 0.6},
        {"file": "imgs/web_3.jpg", "prob": 0.5, "confidence": 0.1},
    ])
    samples, infos = D.scan_sources([str(root)])
    by = {s.key: s for s in samples}
    assert by["pl/imgs/web_1.jpg"].target == 0.93 and by["pl/imgs/web_1.jpg"].label == 1
    assert by["pl/imgs/web_2.jpg"].label == 0 and by["pl/imgs/web_3.jpg"].label == 1  # 0.5 -> roadwork
    assert {s.condition for s in samples} == {"pseudo"} and infos[0].kind == "pseudo"
    kept = D.scan_data([str(root)], min_confidence=0.5)
    assert sorted(s.key for s in kept) == ["pl/imgs/web_1.jpg", "pl/imgs/web_2.jpg"]
    with pytest.raises(DataError, match="no usable images.*below_min_confidence"):
        D.scan_data([str(root)], min_confidence=0.9)


@pytest.mark.parametrize("line, match", [("not json", "soft_labels.jsonl:1"),
                                         ('{"file": "imgs/a.jpg"}', "soft_labels.jsonl:1"),
                                         ('{"file": "imgs/missing.jpg", "prob": 0.4}', "missing.jpg does not exist"),
                                         ('{"file": "imgs/a.jpg", "prob": 1.7}', "not a probability")])
def test_pseudo_bad_lines_refused_with_line_number(tmp_path, line, match):
    root = tmp_path / "pl"
    (root / "imgs").mkdir(parents=True)
    (root / "imgs" / "a.jpg").write_bytes(_img(1))
    (root / "soft_labels.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=match):
        D.scan_data([str(root)])


def test_refusals_name_the_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        D.scan_data([str(tmp_path / "nowhere")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="other: expected roadwork/ and no_roadwork/"):
        D.scan_data([str(tmp_path / "other")])
    # an empty class folder
    root = make_folder(tmp_path / "d1")
    for f in (root / "roadwork").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"d1/roadwork: the roadwork/ class folder holds no images"):
        D.scan_data([str(root)])
    # a class missing from every source
    only_neg = tmp_path / "neg"
    (only_neg / "no_roadwork").mkdir(parents=True)
    (only_neg / "no_roadwork" / "a_1.jpg").write_bytes(_img(3))
    with pytest.raises(DataError, match="no roadwork images at all"):
        D.scan_data([str(only_neg)])
    # ... but a negatives-only source mixed with a full one is fine
    assert {s.dataset for s in D.scan_data([str(make_folder(tmp_path / "d2")), str(only_neg)])} == {"d2", "neg"}
    # an empty source: every parquet row filtered out
    rows = [{"image": _img(1), "label": 0, "scene_description": "cones"}]
    with pytest.raises(DataError, match="p: no usable images.*label_description_mismatch"):
        D.scan_data([str(make_parquet(tmp_path / "p", rows))])
    with pytest.raises(DataError, match="share the name"):
        D.scan_data([str(make_folder(tmp_path / "a" / "x")), str(make_folder(tmp_path / "b" / "x"))])


def test_weights_from_spec_and_dict_and_sampling_weights(tmp_path):
    a = make_folder(tmp_path / "a", pos=("a_1",), neg=("a_2", "a_3", "a_4"))
    b = make_folder(tmp_path / "b", pos=("b_1", "c_1"), neg=("b_2", "c_2"))
    s = D.scan_data([f"{a}=2", str(b)], weights={"b": 0.5, "b/c": 3})
    w = {x.key: x.weight for x in s}
    assert w["a/roadwork/a_1.jpg"] == 2.0 and w["b/roadwork/b_1.jpg"] == 0.5 and w["b/roadwork/c_1.jpg"] == 1.5
    with pytest.raises(DataError, match="nope: no data folder or source"):
        D.scan_data([str(a)], weights={"nope": 2})
    with pytest.raises(DataError, match="positive"):
        D.scan_data([f"{a}=-1"])
    # class balance x source weight, mean 1
    s = D.scan_data([str(a)])
    sw = dict(zip([x.key for x in s], D.sampling_weights(s)))
    assert sw["a/roadwork/a_1.jpg"] == pytest.approx(3 * sw["a/no_roadwork/a_2.jpg"])
    assert np.mean(list(sw.values())) == pytest.approx(1.0)
    assert D.sampling_weights(s, class_balanced=False) == [1.0] * 4
    s = D.scan_data([f"{a}=2", str(b)])
    sw = dict(zip([x.key for x in s], D.sampling_weights(s)))
    # folder a: its positive carries half of a's mass, times 2; folder b: each image a quarter of b's, times 1
    assert sw["a/roadwork/a_1.jpg"] / sw["b/roadwork/b_1.jpg"] == pytest.approx((4 / 2 * 2) / (4 / 4))


def test_load_image_rgb_and_unreadable(tmp_path):
    root = make_folder(tmp_path / "d")
    gray = root / "roadwork" / "gtsdb_00001.jpg"
    Image.new("L", (20, 10), 128).save(gray)
    (root / "no_roadwork" / "cam_7.jpg").write_bytes(b"not an image at all")
    by = {s.key: s for s in D.scan_data([str(root)])}
    im = D.load_image(by["d/roadwork/gtsdb_00001.jpg"])
    assert im.mode == "RGB" and im.size == (20, 10)
    with pytest.raises(ImageUnreadable, match="cam_7.jpg"):
        D.load_image(by["d/no_roadwork/cam_7.jpg"])
    assert issubclass(ImageUnreadable, DataError)
    gray.unlink()
    with pytest.raises(ImageUnreadable, match="gtsdb_00001.jpg: cannot read"):
        D.load_image(by["d/roadwork/gtsdb_00001.jpg"])
