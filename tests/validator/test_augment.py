"""The port of the validator's ``apply_augmentation_by_level`` (docs/protocol.md §2.4).

Mean-|Δ| table (docs/protocol.md §2.4, measured upstream "on the repo sample @224px"):

    code   sev1   sev2
    CS     16.6   19.3
    CC     16.6   30.1
    JPEG    2.2    3.2
    GNC    11.7   16.5
    GB      2.5    3.3

Only GNC is (nearly) independent of image content, so only GNC is compared in absolute terms
(25 % relative tolerance). The others scale with an image statistic, and GTSDB dashcam frames are
not like the upstream sample. Measured with this test's own fixture (12 seeded frames of
/work/shared/data/gtsdb-dev centre-cropped to 224 px; `.venv/bin/python` on a 2-core CPU machine):
CS 4.55/5.26, CC 21.3/38.6, JPEG 5.83/7.63, GNC 11.0/15.3, GB 6.24/7.60. The grey German roads are much
less saturated (CS ≈ ¼ of the table), brighter (CC +30 %) and sharper at 224 px (JPEG/GB ≈ 2×)
than the upstream sample, so a plain "within 25–35 % / ±1.5 of the table" check cannot hold here
and would only be a check of the images. What is checked instead, all derived from the table:

* scale-free ratios: Δ(sev 2) / Δ(sev 1) for every distortion (table: CS 1.16, CC 1.81, JPEG 1.45,
  GNC 1.41, GB 1.32) — within 5 % for CS, CC, GNC (content cancels to first order: measured
  1.157, 1.814, 1.395) and 15 % for JPEG and GB (the ratio still depends on the frequency spectrum:
  measured 1.309, 1.218);
* the GB/JPEG cross ratio at each severity (table 1.14 and 1.03; both measure high-frequency energy,
  which cancels: measured 1.07 and 1.00) — within 15 %;
* CS and CC follow the first-order models the table itself obeys: Δ_CC = (1-p)·mean(I) + ~0.5
  (uint8 truncation; the table implies mean(I) ≈ 107 from both severities) and
  Δ_CS = (1-p)·mean|I_c - Y| + small (the table implies a saturation statistic ≈ 27 from both
  severities) — per image on GTSDB within 0.2 (CC) and 0.6 (CS);
* GNC in absolute terms within 25 % (measured −6 % and −7 %: clipping at 0/255 of bright sky pixels
  removes some noise).

Separately, small synthetic images pin the exact semantics (channel order, truncation, NEAREST
rotation with black corners and no expand, no flips, square crops, level frequencies).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from natix_miner.validator import augment as A

TABLE = {
    "CS": (16.6, 19.3),
    "CC": (16.6, 30.1),
    "JPEG": (2.2, 3.2),
    "GNC": (11.7, 16.5),
    "GB": (2.5, 3.3),
}

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIRS = [ROOT / "natix_miner" / "assets" / "samples", Path("/work/shared/data/gtsdb-dev")]


def _gtsdb_files() -> list[Path]:
    for d in IMAGE_DIRS:
        files = sorted(p for p in d.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) >= 12:
            return files
    return []


@pytest.fixture(scope="module")
def gtsdb_224():
    files = _gtsdb_files()
    if not files:
        pytest.skip("no GTSDB sample images available")
    rng = np.random.default_rng(0)
    sel = [files[i] for i in rng.choice(len(files), 12, replace=False)]
    return [A.base_transform(Image.open(f)) for f in sel]


@pytest.fixture(scope="module")
def deltas(gtsdb_224):
    """mean |Δ| (0–255 units) per image for each distortion and severity, through the upstream wrapper."""
    rng = np.random.default_rng(1)
    out = {}
    for code in TABLE:
        for sev in (1, 2):
            out[code, sev] = np.array([
                float((A.distort_tensor(t, code, sev, rng) * 255 - t * 255).abs().mean()) for t in gtsdb_224
            ])
    return out


def test_parameter_table_matches_protocol():
    assert A.DISTORTION_PARAMS["CS"][:2] == (0.4, 0.3)
    assert A.DISTORTION_PARAMS["CC"][:2] == (0.85, 0.725)
    assert A.DISTORTION_PARAMS["JPEG"][:2] == (2, 3)
    assert A.DISTORTION_PARAMS["GNC"][:2] == (0.001, 0.002)
    assert A.DISTORTION_PARAMS["GB"][:2] == (7, 9)
    assert A.LEVEL_DISTORTIONS[2] == (("CS", "CC", "JPEG"), 1)
    assert A.LEVEL_DISTORTIONS[3] == (("CS", "CC", "JPEG", "GNC", "GB"), 2)


@pytest.mark.parametrize("code,tol", [("CS", 0.05), ("CC", 0.05), ("GNC", 0.05), ("JPEG", 0.15), ("GB", 0.15)])
def test_severity_ratio_matches_table(deltas, code, tol):
    table_ratio = TABLE[code][1] / TABLE[code][0]
    ours = deltas[code, 2].mean() / deltas[code, 1].mean()
    assert ours == pytest.approx(table_ratio, rel=tol), (code, ours, table_ratio)


@pytest.mark.parametrize("sev", [1, 2])
def test_blur_to_resize_cross_ratio_matches_table(deltas, sev):
    table_ratio = TABLE["GB"][sev - 1] / TABLE["JPEG"][sev - 1]
    ours = deltas["GB", sev].mean() / deltas["JPEG", sev].mean()
    assert ours == pytest.approx(table_ratio, rel=0.15)


@pytest.mark.parametrize("sev", [1, 2])
def test_gaussian_noise_absolute_matches_table(deltas, sev):
    assert deltas["GNC", sev].mean() == pytest.approx(TABLE["GNC"][sev - 1], rel=0.25)


def test_contrast_follows_the_tables_model(gtsdb_224, deltas):
    # the table is self-consistent under delta = (1-p) * mean + ~0.5: both severities give the same mean
    implied = [(TABLE["CC"][k] - 0.5) / (1 - A.DISTORTION_PARAMS["CC"][k]) for k in (0, 1)]
    assert abs(implied[0] - implied[1]) < 2.0
    means = np.array([float(t.mean() * 255) for t in gtsdb_224])
    for k, sev in ((0, 1), (1, 2)):
        resid = deltas["CC", sev] - (1 - A.DISTORTION_PARAMS["CC"][k]) * means
        assert np.all(np.abs(resid - 0.5) < 0.2), resid


def test_saturation_follows_the_tables_model(gtsdb_224, deltas):
    implied = [TABLE["CS"][k] / (1 - A.DISTORTION_PARAMS["CS"][k]) for k in (0, 1)]
    assert abs(implied[0] - implied[1]) / implied[0] < 0.02
    sat = []
    for t in gtsdb_224:
        x = t.numpy() * 255
        y = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        sat.append(float(np.abs(x - y[None]).mean()))
    sat = np.array(sat)
    for k, sev in ((0, 1), (1, 2)):
        resid = deltas["CS", sev] - (1 - A.DISTORTION_PARAMS["CS"][k]) * sat
        assert np.all(np.abs(resid) < 0.6), resid


# --- exact semantics on synthetic inputs ------------------------------------------------------

def _tensor(rgb_hwc: np.ndarray):
    import torch

    return torch.from_numpy(rgb_hwc.astype(np.float32) / 255.0).permute(2, 0, 1)


def test_saturation_uses_rgb_to_bgr_channel_order():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = A.distort_tensor(_tensor(red), "CS", 1).permute(1, 2, 0).numpy() * 255
    y = 0.299 * 255  # BT.601 luma of pure red; chroma scaled by 0.4 toward grey
    assert out[..., 0].mean() == pytest.approx(y + 0.4 * (255 - y), abs=2.0)
    assert out[..., 1].mean() == pytest.approx(0.6 * y, abs=2.0)
    assert out[..., 2].mean() == pytest.approx(0.6 * y, abs=2.0)


def test_grey_is_unchanged_by_saturation_and_constant_by_blur_and_resize():
    grey = np.full((32, 32, 3), 120, np.uint8)
    for code in ("CS", "JPEG", "GB"):
        out = A.distort_bgr(grey, code, 2)
        assert np.abs(out.astype(int) - 120).max() <= 1, code


def test_contrast_truncates():
    img = np.full((4, 4, 3), 201, np.uint8)  # 201 * 0.85 = 170.85 -> 170
    assert int(A.distort_bgr(img, "CC", 1)[0, 0, 0]) == 170


def test_resize_distortion_is_bilinear_down_and_up():
    import cv2

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    out = A.distort_bgr(img, "JPEG", 2)  # factor 3
    expect = cv2.resize(cv2.resize(img, (14, 10), interpolation=cv2.INTER_LINEAR), (44, 30), interpolation=cv2.INTER_LINEAR)
    assert out.shape == img.shape and np.array_equal(out, expect)


def test_severity_zero_is_identity():
    t = _tensor(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for code in TABLE:
        assert A.distort_tensor(t, code, 0) is t


class _FixedRng:
    """Duck-typed generator: uniform() returns a fixed fraction of its range, integers() its low end."""

    def __init__(self, frac: float):
        self.frac = frac

    def uniform(self, lo, hi):
        return lo + (hi - lo) * self.frac

    def integers(self, lo, hi=None, endpoint=False):
        return lo

    def random(self):
        return 0.0


def test_rotation_is_nearest_with_black_corners_and_no_expand():
    white = Image.new("RGB", (200, 200), (255, 255, 255))
    # frac 1.0: angle +20 deg and crop scale 1.0 -> the full (rotated) square
    t = A.geometric_transform(white, _FixedRng(1.0))
    x = t.numpy() * 255
    assert x.shape == (3, 224, 224)
    for r, c in ((0, 0), (0, 223), (223, 0), (223, 223)):
        assert x[:, r, c].max() < 10, (r, c)  # rotated-away corners are black (fill 0)
    for r, c in ((0, 112), (112, 0), (223, 112), (112, 223), (112, 112)):
        assert x[:, r, c].min() > 245, (r, c)  # edge midpoints stay inside: not expanded
    # NEAREST: the rotated image itself holds only 0 or 1 (before the antialiased resize)
    from torchvision.transforms import functional as F

    rot = F.rotate(F.to_tensor(white), 20.0)
    assert set(np.unique(rot.numpy()).tolist()) <= {0.0, 1.0}
    # angle 0 (frac 0.5), scale 0.6: no black at all
    t0 = A.geometric_transform(white, _FixedRng(0.5))
    assert float(t0.min()) > 0.99


def _gradient(w=320, h=240) -> Image.Image:
    xs = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    ys = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    arr = np.stack([xs, ys, np.full_like(xs, 128)], -1).astype(np.uint8)
    return Image.fromarray(arr)


def test_no_flips_at_any_level():
    img = _gradient()
    rng = np.random.default_rng(7)
    for k in range(24):
        res = A.augment(img, rng=rng, level=k % 4)
        x = np.asarray(res.image).astype(float)
        valid = x.sum(-1) > 30  # ignore black rotation corners
        r = np.where(valid, x[..., 0], np.nan)
        g = np.where(valid, x[..., 1], np.nan)
        # red grows left -> right, green top -> bottom (a flip would reverse one of them)
        assert np.nanmean(r[:, -40:]) > np.nanmean(r[:, :40]), (k, res.params)
        assert np.nanmean(g[-40:, :]) > np.nanmean(g[:40, :]), (k, res.params)


def test_level0_is_centre_square_crop():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))  # left third red: cropped away by the centre square
    img.paste((0, 255, 0), (100, 0, 200, 100))  # centre third green
    res = A.augment(img, rng=np.random.default_rng(0), level=0)
    arr = np.asarray(res.image)
    assert res.image.size == (224, 224) and res.level == 0
    assert arr[..., 1].mean() > 250 and arr[..., 0].mean() < 5


@pytest.mark.parametrize("mode,size", [("RGB", (1360, 800)), ("RGBA", (120, 300)), ("L", (50, 30)),
                                       ("P", (640, 640)), ("CMYK", (333, 222))])
def test_output_is_always_224_rgb(mode, size):
    img = Image.new(mode, size)
    rng = np.random.default_rng(11)
    for level in (0, 1, 2, 3):
        res = A.augment(img, rng=rng, level=level)
        assert res.level == level
        assert res.image.size == (224, 224) and res.image.mode == "RGB"
        raw = base64.b64decode(A.encode_like_validator(res.image))
        back = Image.open(io.BytesIO(raw))
        assert back.format == "JPEG" and back.size == (224, 224) and back.mode == "RGB"


def test_level_frequencies_are_uniform():
    rng = np.random.default_rng(123)
    levels = np.array([A.choose_level(rng) for _ in range(8000)])
    freqs = np.bincount(levels, minlength=4) / len(levels)
    assert np.all(np.abs(freqs - 0.25) < 0.02), freqs


def test_augment_draws_levels_from_the_given_generator():
    img = Image.new("RGB", (64, 48))
    seen = [A.augment(img, rng=np.random.default_rng(s)).level for s in range(40)]
    expect = [A.choose_level(np.random.default_rng(s)) for s in range(40)]
    assert seen == expect and len(set(seen)) == 4


def test_distortion_severities_are_uniform_per_level():
    img = Image.new("RGB", (40, 40), (90, 120, 150))
    rng = np.random.default_rng(2)
    sev3 = {c: [] for c in ("CS", "CC", "JPEG", "GNC", "GB")}
    for _ in range(150):
        r = A.augment(img, rng=rng, level=3)
        for c, s in r.params["distortions"].items():
            sev3[c].append(s)
    for c, s in sev3.items():
        counts = np.bincount(s, minlength=3) / len(s)
        assert np.all(np.abs(counts - 1 / 3) < 0.12), (c, counts)
    r2 = A.augment(img, rng=rng, level=2)
    assert set(r2.params["distortions"]) == {"CS", "CC", "JPEG"}


def test_crop_params_follow_torchvision_semantics():
    rng = np.random.default_rng(9)
    H, W = 240, 320
    for _ in range(500):
        i, j, h, w = A.rrc_params(H, W, rng)
        assert h == w and 0 <= i <= H - h and 0 <= j <= W - w
        assert 0.2 * H * W * 0.97 <= h * w <= H * W
    # nothing fits in ten tries -> centred square of side min(H, W)
    assert A.rrc_params(10, 1000, rng) == (0, 495, 10, 10)


def test_failure_sends_the_raw_image(monkeypatch):
    img = Image.new("RGB", (500, 300))

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(A, "augment_tensor", boom)
    res = A.augment(img, rng=np.random.default_rng(0))
    assert res.level == -1 and res.image is img and "boom" in res.params["error"]


def test_encoding_is_pillow_default_quality_75():
    img = _gradient(224, 224)
    ref = io.BytesIO()
    img.save(ref, format="JPEG", quality=75)
    assert base64.b64decode(A.encode_like_validator(img)) == ref.getvalue()
    # a float tensor is converted like ToPILImage: x*255 truncated
    import torch

    t = torch.full((3, 8, 8), 0.999)
    raw = base64.b64decode(A.encode_like_validator(t))
    assert Image.open(io.BytesIO(raw)).size == (8, 8)
    assert A.tensor_to_pil(t).getpixel((0, 0)) == (254, 254, 254)


def test_fullres_keeps_size_and_converts_to_rgb():
    for mode in ("RGBA", "L", "P", "RGB"):
        out = A.fullres(Image.new(mode, (1234, 567)))
        assert out.size == (1234, 567) and out.mode == "RGB"


def test_numpy_to_tensor_equals_torchvision():
    from torchvision.transforms import functional as F

    img = Image.fromarray(np.random.default_rng(4).integers(0, 256, (37, 53, 3), dtype=np.uint8))
    ours, ref = A.to_tensor(img), F.to_tensor(img)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert bool((ours == ref).all())
