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


def test_labels_uniform_and_only_real_queried_without_synthetic_or_api(tmp_path):
    src = ImageSource(_folder(tmp_path / "real"), seed=0)
    draws = [src.sample() for _ in range(3000)]
    samples = [s for s in draws if s is not None]
    assert all(s.source == "real" for s in samples)
    # the synthetic and api thirds are skipped (nothing sent), like a validator whose server has no task
    assert abs(len(samples) / 3000 - 1 / 3) < 0.03
    assert set(src.skipped) == {"synthetic", "api"} and sum(src.skipped.values()) == 3000 - len(samples)
    share = np.mean([s.label for s in samples])
    assert abs(share - 0.5) < 0.05
    for s in samples[:50]:
        assert s.path.parent.name == ("roadwork" if s.label == 1 else "no_roadwork")


def test_source_mix_is_a_third_real_sixth_i2i_sixth_t2i_third_api(tmp_path):
    src = ImageSource(_folder(tmp_path / "real"),
                      synthetic=[_folder(tmp_path / "i2i", tag="a"), _folder(tmp_path / "t2i", tag="b")],
                      api=_folder(tmp_path / "api", tag="c"), seed=1)
    n = 6000
    draws = [src.sample() for _ in range(n)]
    assert all(d is not None for d in draws) and not src.skipped
    c = Counter(d.source for d in draws)
    assert abs(c["real"] / n - 1 / 3) < 0.025 and abs(c["api"] / n - 1 / 3) < 0.025
    assert abs(c["i2i"] / n - 1 / 6) < 0.02 and abs(c["t2i"] / n - 1 / 6) < 0.02
    for d in draws[:100]:
        assert d.path.parts[-3] == d.source  # the file comes from the drawn source's folder
    # the label is drawn first: 50/50 within every source
    for kind in ("real", "i2i", "t2i", "api"):
        labels = [d.label for d in draws if d.source == kind]
        assert abs(np.mean(labels) - 0.5) < 0.06, kind


def test_api_folder_missing_a_label_skips_those_draws(tmp_path):
    api = tmp_path / "api"
    _folder(api, n_pos=2, n_neg=0, tag="c")
    src = ImageSource(_folder(tmp_path / "real"), api=api, seed=4)
    draws = [src.sample() for _ in range(600)]
    api_draws = [d for d in draws if d is not None and d.source == "api"]
    assert api_draws and all(d.label == 1 for d in api_draws)
    assert src.skipped.get("api", 0) > 0


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
    s = next(d for d in iter(src.sample, 0) if d is not None)  # the first draw that is not skipped
    aug = make_challenge(s, "aug-2026-01", rng)
    assert aug.level in (0, 1, 2, 3) and aug.size == (224, 224)
    img = _decode(aug.image_b64)
    assert img.format == "JPEG" and img.size == (224, 224)
    full = make_challenge(s, "fullres", rng)
    assert full.level is None and full.size == (320, 200)
    assert _decode(full.image_b64).size == (320, 200)
    with pytest.raises(ValueError):
        make_challenge(s, "nope", rng)


def test_letterbox_condition_fits_pads_and_never_crops(tmp_path):
    """letterbox-2026-04 (docs/protocol.md §10): fit inside 224×224 keeping the aspect ratio, pad black, centred."""
    from natix_miner.validator.augment import augment_letterbox, letterbox_base
    from natix_miner.validator.challenges import Sample

    img = Image.new("RGB", (448, 224), (40, 60, 200))
    for x in range(0, 8):  # a red stripe on the very left edge: a crop would cut it
        for y in range(224):
            img.putpixel((x, y), (250, 0, 0))
    t = letterbox_base(img)
    assert tuple(t.shape) == (3, 224, 224)
    arr = (t.numpy() * 255).round()
    assert arr[:, :50, :].max() == 0 and arr[:, -50:, :].max() == 0  # 224×112 content: black bars top and bottom
    assert arr[0, 112, 0] > 200 and arr[2, 112, 0] < 50  # the left-edge stripe survived
    assert arr[2, 112, 112] > 150  # the blue content, centred
    rng = np.random.default_rng(0)
    for level in (0, 1, 2, 3):
        res = augment_letterbox(img, rng, level=level)
        assert res.level == level and res.image.size == (224, 224) and res.params["letterbox"]
        assert ("angle" in res.params) == (level > 0) and ("distortions" in res.params) == (level >= 2)
    real = _folder(tmp_path / "real")
    s = Sample(label=1, path=sorted((real / "roadwork").glob("*.jpg"))[0], source="real")
    ch = make_challenge(s, "letterbox-2026-04", rng)
    assert ch.condition == "letterbox-2026-04" and ch.size == (224, 224) and ch.level in (0, 1, 2, 3)
    assert _decode(ch.image_b64).size == (224, 224)
