"""Challenge sampling (docs/protocol.md §2.3) over local labelled folders."""

from __future__ import annotations

import base64
import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from natix_miner.validator.challenges import ImageSource, iter_challenges, list_images, make_challenge


def _folder(root, n_pos=3, n_neg=3, size=(320, 200), tag=""):
    for sub, n, colour in (("roadwork", n_pos, (230, 120, 20)), ("no_roadwork", n_neg, (40, 60, 200))):
        d = root / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = ".jpg" if i % 2 == 0 else ".png"
            Image.new("RGB", size, colour).save(d / f"{tag}{i}{ext}")
        (d / "notes.txt").write_text("not an image")
    return root


def test_list_images_ignores_other_files(tmp_path):
    files = list_images(_folder(tmp_path / "real", 2, 5))
    assert len(files[1]) == 2 and len(files[0]) == 5
    assert all(p.suffix in (".jpg", ".png") for v in files.values() for p in v)


def test_labels_uniform_and_all_real_without_synthetic(tmp_path):
    src = ImageSource(_folder(tmp_path / "real"), seed=0)
    samples = [src.sample() for _ in range(2000)]
    assert all(s is not None and s.source == "real" for s in samples)
    share = np.mean([s.label for s in samples])
    assert abs(share - 0.5) < 0.04
    for s in samples[:50]:
        assert s.path.parent.name == ("roadwork" if s.label == 1 else "no_roadwork")


def test_real_i2i_t2i_split(tmp_path):
    src = ImageSource(_folder(tmp_path / "real"),
                      synthetic=[_folder(tmp_path / "i2i", tag="a"), _folder(tmp_path / "t2i", tag="b")], seed=1)
    c = Counter(src.sample().source for _ in range(4000))
    assert abs(c["real"] / 4000 - 0.5) < 0.03
    assert abs(c["i2i"] / 4000 - 0.25) < 0.03 and abs(c["t2i"] / 4000 - 0.25) < 0.03


def test_missing_label_skips(tmp_path):
    src = ImageSource(_folder(tmp_path / "real", n_pos=0, n_neg=2), seed=2)
    out = [src.sample() for _ in range(200)]
    assert any(s is None for s in out) and any(s is not None for s in out)
    assert all(s.label == 0 for s in out if s is not None)
    # iter_challenges redraws skipped steps
    chs = list(iter_challenges(src, 3, "fullres", np.random.default_rng(0)))
    assert len(chs) == 3 and all(c.label == 0 for c in chs)


def test_empty_source_raises_instead_of_spinning(tmp_path):
    src = ImageSource(tmp_path / "nothing", seed=0)
    with pytest.raises(RuntimeError):
        list(iter_challenges(src, 1, "fullres", max_skips=50))


def _decode(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_conditions(tmp_path):
    src = ImageSource(_folder(tmp_path / "real"), seed=3)
    rng = np.random.default_rng(0)
    s = src.sample()
    aug = make_challenge(s, "aug-2026-01", rng)
    assert aug.level in (0, 1, 2, 3) and aug.size == (224, 224)
    img = _decode(aug.image_b64)
    assert img.format == "JPEG" and img.size == (224, 224)
    full = make_challenge(s, "fullres", rng)
    assert full.level is None and full.size == (320, 200)
    assert _decode(full.image_b64).size == (320, 200)
    with pytest.raises(ValueError):
        make_challenge(s, "nope", rng)
