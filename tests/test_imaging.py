"""natix_miner.imaging: every input either decodes to an RGB image or raises ImageDecodeError, quickly."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from natix_miner.imaging import (
    DecodeLimits,
    ImageDecodeError,
    decode_b64_bytes,
    decode_b64_image,
    decode_image_bytes,
    encode_jpeg_b64,
    to_rgb,
)

RNG = np.random.default_rng(1234)

# Pillow warns about the corrupt EXIF/TIFF tags the fuzz tests feed it; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _b64(im: Image.Image, fmt: str, **kw) -> str:
    return base64.b64encode(_bytes(im, fmt, **kw)).decode()


def _noise(w: int = 40, h: int = 30) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w×h (8-bit RGB) with a tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _assert_rgb(decoded, size):
    assert decoded.image.mode == "RGB"
    assert decoded.image.size == size
    decoded.image.load()


# --------------------------------------------------------------------------------------------- formats
def test_plain_jpeg_like_the_validator_sends():
    yy, xx = np.mgrid[0:224, 0:224]
    arr = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it well
    im = Image.fromarray(arr, "RGB")
    d = decode_b64_image(encode_jpeg_b64(im))
    _assert_rgb(d, (224, 224))
    assert d.format == "JPEG" and d.original_mode == "RGB" and d.original_size == (224, 224)
    assert d.notes == []
    diff = np.abs(np.asarray(d.image, dtype=int) - np.asarray(im, dtype=int)).mean()
    assert diff < 3


def test_sha256_is_of_the_file_bytes():
    raw = _bytes(_noise(), "JPEG")
    d = decode_b64_image(base64.b64encode(raw).decode())
    assert d.sha256 == hashlib.sha256(raw).hexdigest()


def test_rgba_png_alpha_composited_on_white():
    arr = np.zeros((10, 20, 4), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0, 255)  # opaque red
    arr[:, 10:] = (0, 0, 255, 0)  # fully transparent blue
    d = decode_b64_image(_b64(Image.fromarray(arr, "RGBA"), "PNG"))
    _assert_rgb(d, (20, 10))
    out = np.asarray(d.image)
    assert tuple(out[5, 2]) == (255, 0, 0)
    assert tuple(out[5, 15]) == (255, 255, 255)
    assert d.original_mode == "RGBA"
    assert "alpha composited on white" in d.notes


def test_la_png_half_alpha_blends_with_white():
    arr = np.zeros((8, 8, 2), dtype=np.uint8)
    arr[..., 0] = 0
    arr[..., 1] = 128
    d = decode_b64_image(_b64(Image.fromarray(arr, "LA"), "PNG"))
    v = np.asarray(d.image)[4, 4]
    assert 120 <= int(v[0]) <= 135 and len(set(v.tolist())) == 1


def test_palette_with_transparency():
    im = Image.new("P", (12, 6), 0)
    im.putpalette([0, 255, 0] + [255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (6, 0, 12, 6))  # right half: index 1 (red); left half: index 0 (green, transparent)
    d = decode_b64_image(_b64(im, "PNG", transparency=0))
    _assert_rgb(d, (12, 6))
    out = np.asarray(d.image)
    assert tuple(out[3, 1]) == (255, 255, 255)
    assert tuple(out[3, 9]) == (255, 0, 0)
    assert d.original_mode == "P"


def test_sixteen_bit_png_scaled_not_clipped():
    arr = np.array([[0, 257 * 100, 65535, 32768]], dtype=np.uint16)
    d = decode_b64_image(_b64(Image.fromarray(arr), "PNG"))
    assert d.original_mode.startswith("I")
    out = np.asarray(d.image)[0, :, 0]
    assert out.tolist() == [0, 100, 255, 128]
    assert any("8-bit" in n for n in d.notes)


def test_int32_and_float_tiff():
    arr = np.array([[0, 1_000_000]], dtype=np.int32)
    d = decode_b64_image(_b64(Image.fromarray(arr), "TIFF"))
    assert np.asarray(d.image)[0, :, 0].tolist() == [0, 255]
    f = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    d = decode_b64_image(_b64(Image.fromarray(f), "TIFF"))
    assert d.original_mode == "F"
    assert np.asarray(d.image)[0, :, 0].tolist() == [0, 128, 255]


def test_grayscale_and_one_bit():
    gray = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1)), "L")
    d = decode_b64_image(_b64(gray, "PNG"))
    out = np.asarray(d.image)
    assert out.shape == (5, 25, 3)
    assert (out[..., 0] == np.asarray(gray)).all() and (out[..., 0] == out[..., 2]).all()
    bw = Image.new("1", (9, 4), 0)
    bw.paste(1, (0, 0, 4, 4))
    d = decode_b64_image(_b64(bw, "PNG"))
    assert d.original_mode == "1"
    out = np.asarray(d.image)
    assert tuple(out[2, 1]) == (255, 255, 255) and tuple(out[2, 7]) == (0, 0, 0)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red in CMYK
    d = decode_b64_image(encode_jpeg_b64(cmyk))
    assert d.original_mode == "CMYK"
    _assert_rgb(d, (32, 16))
    r, g, b = (int(v) for v in np.asarray(d.image)[8, 16])
    assert r > 200 and g < 60 and b < 60


def test_webp_lossless_exact():
    im = _noise(17, 11)
    d = decode_b64_image(_b64(im, "WEBP", lossless=True))
    assert d.format == "WEBP"
    assert (np.asarray(d.image) == np.asarray(im)).all()


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_lossless_formats_exact(fmt):
    im = _noise(13, 7)
    d = decode_b64_image(_b64(im, fmt))
    assert d.format == fmt
    assert (np.asarray(d.image) == np.asarray(im)).all()


def test_gif_first_frame():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    buf = io.BytesIO()
    red.save(buf, format="GIF", save_all=True, append_images=[blue], duration=100)
    d = decode_b64_image(base64.b64encode(buf.getvalue()))
    assert d.format == "GIF"
    assert tuple(np.asarray(d.image)[4, 4]) == (255, 0, 0)


def test_exif_orientation_6_transposes():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    d = decode_b64_image(_b64(Image.fromarray(arr), "JPEG", exif=exif.tobytes(), quality=95))
    assert d.original_size == (40, 20)
    assert d.image.size == (20, 40)
    out = np.asarray(d.image).astype(int)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # left became top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60
    assert any("exif transposed (orientation 6)" in n for n in d.notes)


def test_broken_exif_does_not_fail():
    raw = _bytes(_noise(16, 16), "JPEG")
    junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(range(256)) * 2
    app1 = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    d = decode_b64_image(base64.b64encode(raw[:2] + app1 + raw[2:]))
    _assert_rgb(d, (16, 16))


# --------------------------------------------------------------------------------------------- damaged
def test_truncated_jpeg_loads_partially_and_restores_global_flag():
    raw = _bytes(_noise(320, 240), "JPEG")
    d = decode_b64_image(base64.b64encode(raw[: len(raw) // 2]))
    _assert_rgb(d, (320, 240))
    assert any("truncated" in n for n in d.notes)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_loads_partially_and_restores_global_flag():
    raw = _bytes(_noise(64, 64), "PNG")
    d = decode_b64_image(base64.b64encode(raw[: len(raw) * 2 // 3]))
    _assert_rgb(d, (64, 64))
    assert any("truncated" in n for n in d.notes)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_file_cut_before_pixel_data_is_truncated(fmt):
    raw = _bytes(_noise(64, 64), fmt)
    cut = {"JPEG": 300, "PNG": 50}[fmt]  # JPEG: inside the tables; PNG: IHDR + start of IDAT
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(base64.b64encode(raw[:cut]))
    assert e.value.reason == "truncated"


def test_concurrent_decodes_keep_the_flag_off():
    good = base64.b64encode(_bytes(_noise(64, 48), "JPEG"))
    png = _bytes(_noise(64, 48), "PNG")
    bad = base64.b64encode(png[: len(png) // 2])
    errors: list[BaseException] = []

    def work(data):
        try:
            for _ in range(10):
                assert decode_b64_image(data).image.mode == "RGB"
        except BaseException as e:  # noqa: BLE001 - collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(d,)) for d in (good, bad, good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------------------------- limits
def test_decompression_bomb_refused_before_load_and_fast():
    raw = _png_header_only(100_000, 100_000)
    assert len(raw) < 200
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(base64.b64encode(raw))
    assert time.perf_counter() - t0 < 1.0
    assert e.value.reason in ("too_many_pixels", "side_too_large")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("w,h,reason", [
    (10_000, 10_000, "too_many_pixels"),  # between Pillow's warning and error thresholds
    (8_000, 8_000, "too_many_pixels"),  # under Pillow's thresholds, over ours
    (25_000, 10, "side_too_large"),
])
def test_size_limits_checked_from_the_header(w, h, reason):
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(base64.b64encode(_png_header_only(w, h)))
    assert e.value.reason == reason
    assert time.perf_counter() - t0 < 1.0


def test_custom_pixel_limit():
    data = _b64(_noise(100, 100), "PNG")
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(data, DecodeLimits(max_pixels=9_999))
    assert e.value.reason == "too_many_pixels"
    assert decode_b64_image(data, DecodeLimits(max_pixels=10_000)).image.size == (100, 100)


def test_progressive_jpeg_with_too_many_scans_refused_fast():
    raw = _bytes(Image.new("RGB", (256, 256), (10, 200, 30)), "JPEG", progressive=True)
    sos = raw.rfind(b"\xff\xda")
    last_scan = raw[sos:-2]
    bomb = raw[:-2] + last_scan * 500 + b"\xff\xd9"
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(base64.b64encode(bomb))
    assert e.value.reason == "too_much_work"
    assert time.perf_counter() - t0 < 1.0
    assert decode_b64_image(base64.b64encode(raw)).image.size == (256, 256)  # the honest file decodes


def _tiff_with_strips(n: int, w: int = 100, h: int = 100) -> bytes:
    """Uncompressed 8-bit grey TIFF whose n one-row strips all point at the same bytes."""
    pix = bytes(w)
    off_pos = 8 + len(pix)
    offs = struct.pack(f"<{n}I", *([8] * n))
    cnt_pos = off_pos + len(offs)
    cnts = struct.pack(f"<{n}I", *([w] * n))
    ifd_pos = cnt_pos + len(cnts)
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
            (273, 4, n, off_pos), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, n, cnt_pos)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", ifd_pos) + pix + offs + cnts + ifd


def test_tiff_strip_overdraw_refused():
    assert decode_image_bytes(_tiff_with_strips(100)).image.size == (100, 100)  # one strip per row: fine
    with pytest.raises(ImageDecodeError) as e:
        decode_image_bytes(_tiff_with_strips(20_000))
    assert e.value.reason == "too_much_work"


def test_eps_is_never_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # Pillow would take it (and run Ghostscript on load)
    with pytest.raises(ImageDecodeError) as e:
        decode_image_bytes(eps)
    assert e.value.reason == "not_an_image"


# --------------------------------------------------------------------------------------------- base64
def test_huge_base64_refused_before_decoding():
    limit = DecodeLimits().max_b64_chars
    t0 = time.perf_counter()
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image("A" * (limit + 4))
    assert e.value.reason == "too_large_b64"
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(b"A" * (2 * limit + 1))
    assert e.value.reason == "too_large_b64"
    assert time.perf_counter() - t0 < 2.0
    small = _b64(_noise(), "JPEG")
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(small, DecodeLimits(max_b64_chars=len(small) - 1))
    assert e.value.reason == "too_large_b64"
    assert decode_b64_image(small, DecodeLimits(max_b64_chars=len(small))).image.mode == "RGB"


@pytest.mark.parametrize("data,reason", [
    ("", "empty"),
    ("   \n\t ", "empty"),
    (b"", "empty"),
    ("====", "empty"),
    ("!!!!not base64!!!!", "bad_base64"),
    ("QUJD=RA==", "bad_base64"),  # padding in the middle
    ("A", "bad_base64"),
    ("caf\u00e9", "bad_base64"),
    ("data:text/plain,hello", "bad_base64"),
    (base64.b64encode(b"hello, not an image").decode(), "not_an_image"),
    (base64.b64encode(bytes(range(256)) * 4).decode(), "not_an_image"),
    (12345, "bad_type"),
    (None, "bad_type"),
])
def test_garbage_and_empty(data, reason):
    with pytest.raises(ImageDecodeError) as e:
        decode_b64_image(data)
    assert e.value.reason == reason
    assert isinstance(e.value, ValueError)


def test_lenient_base64_variants_give_the_same_file():
    raw = _bytes(_noise(23, 19), "PNG")
    std = base64.b64encode(raw).decode()
    variants = [
        std,
        std.encode(),
        bytearray(std.encode()),
        "data:image/png;base64," + std,
        "DATA:image/png;BASE64," + std,
        base64.urlsafe_b64encode(raw).decode(),
        std.rstrip("="),
        "\n".join(std[i:i + 76] for i in range(0, len(std), 76)) + "\n",  # MIME line breaks
        "  " + std + "\r\n",
    ]
    assert "-" in variants[5] or "_" in variants[5] or variants[5] == std
    for v in variants:
        assert decode_b64_bytes(v) == raw
        d = decode_b64_image(v)
        assert d.sha256 == hashlib.sha256(raw).hexdigest()
        assert d.image.size == (23, 19)


def test_urlsafe_alphabet_really_exercised():
    raw = bytes([0xFB, 0xFF, 0xBF]) * 10  # encodes to '-'/'_' in the urlsafe alphabet
    enc = base64.urlsafe_b64encode(raw).decode()
    assert "-" in enc and "_" in enc
    assert decode_b64_bytes(enc) == raw


def test_encode_jpeg_b64_handles_alpha_and_matches_pillow_default():
    im = _noise(32, 32)
    buf = io.BytesIO()
    im.save(buf, format="JPEG")  # what the validator does (no quality argument)
    assert encode_jpeg_b64(im) == base64.b64encode(buf.getvalue()).decode()
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    d = decode_b64_image(encode_jpeg_b64(rgba))
    assert np.asarray(d.image).min() > 240  # transparent → white, not black


def test_to_rgb_unconvertible_mode_is_unsupported_mode():
    class Weird:
        mode = "XYZ"
        info: dict = {}

        def convert(self, mode):
            raise ValueError("conversion not supported")

    with pytest.raises(ImageDecodeError) as e:
        to_rgb(Weird())
    assert e.value.reason == "unsupported_mode"


# --------------------------------------------------------------------------------------------- properties
_TIME_BOUND_S = 5.0  # per call; the inputs below are at most a few KB (2-core shared CPU)


def _decode_or_error(data):
    t0 = time.perf_counter()
    try:
        d = decode_b64_image(data)
    except ImageDecodeError as e:
        assert isinstance(e.reason, str) and e.reason
        d = None
    assert time.perf_counter() - t0 < _TIME_BOUND_S
    if d is not None:
        assert d.image.mode == "RGB"
        w, h = d.image.size
        assert w >= 1 and h >= 1
        assert len(d.sha256) == 64
    return d


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_as_input(data):
    _decode_or_error(data)


@_FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_file_bytes_base64_encoded(data):
    _decode_or_error(base64.b64encode(data))


@_FUZZ
@given(st.text(max_size=512))
def test_arbitrary_text_as_input(text):
    _decode_or_error(text)


def _seed_files() -> list[bytes]:
    small = _noise(24, 16)
    files = [
        _bytes(small, "JPEG"),
        _bytes(small, "JPEG", progressive=True),
        _bytes(small, "PNG"),
        _bytes(small.convert("P"), "PNG", transparency=3),
        _bytes(small.convert("RGBA"), "PNG"),
        _bytes(Image.fromarray(np.asarray(small.convert("L")).astype(np.uint16) * 257), "PNG"),
        _bytes(small.convert("LA"), "PNG"),
        _bytes(small, "WEBP"),
        _bytes(small, "GIF"),
        _bytes(small, "BMP"),
        _bytes(small, "TIFF"),
        _bytes(small, "TIFF", compression="tiff_deflate"),
        _bytes(small.convert("CMYK"), "JPEG"),
        _bytes(small, "ICO"),
    ]
    exif = Image.Exif()
    exif[0x0112] = 8
    files.append(_bytes(small, "JPEG", exif=exif.tobytes()))
    return files


_SEEDS = _seed_files()


@st.composite
def _mutated_file(draw):
    raw = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup"]))
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            raw[i] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "cut":
            del raw[i:]
        elif op == "insert":
            raw[i:i] = draw(st.binary(min_size=1, max_size=16))
        else:
            j = draw(st.integers(i, min(len(raw), i + 64)))
            raw[i:i] = raw[i:j]
    return bytes(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_file())
def test_mutated_real_files_decode_or_raise(raw):
    _decode_or_error(base64.b64encode(raw))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


_MODES_BY_FORMAT = {
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "TIFF": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["RGB", "L", "P", "1"],
    "GIF": ["P", "L"],
    "JPEG": ["RGB", "L", "CMYK"],
}


def _random_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32))
    return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").convert(mode)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(_MODES_BY_FORMAT)),
    data=st.data(),
    w=st.integers(1, 48),
    h=st.integers(1, 48),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_images_round_trip_to_rgb_of_the_same_size(fmt, data, w, h, seed):
    mode = data.draw(st.sampled_from(_MODES_BY_FORMAT[fmt]))
    im = _random_image(mode, w, h, seed)
    d = decode_b64_image(encode_jpeg_b64(im) if fmt == "JPEG" else _b64(im, fmt))
    assert d.image.mode == "RGB"
    assert d.image.size == (w, h)
    assert d.format == fmt


def test_warmup_runs():
    from natix_miner.imaging import warmup

    warmup()


def test_a_plugin_with_a_missing_backend_is_left_out():
    """Another library may register a PIL opener whose backend is missing (ultralytics' HEIF without pi_heif)."""
    from PIL import Image

    from natix_miner import imaging

    def broken_open(fp, filename=None):
        import pi_heif_missing_backend  # noqa: F401

    Image.register_open("BROKENTEST", broken_open, lambda prefix: True)
    try:
        with pytest.raises(ImageDecodeError) as e:
            decode_b64_image(base64.b64encode(b"hello, not an image").decode())
        assert e.value.reason == "not_an_image"
        assert "BROKENTEST" in imaging._BROKEN_FORMATS
        ok = decode_b64_image(encode_jpeg_b64(Image.new("RGB", (16, 16))))
        assert ok.image.size == (16, 16)
    finally:
        Image.OPEN.pop("BROKENTEST", None)
        if "BROKENTEST" in Image.ID:
            Image.ID.remove("BROKENTEST")
        imaging._BROKEN_FORMATS.discard("BROKENTEST")


def test_decoding_goes_around_a_monkeypatched_image_open(monkeypatch):
    """ultralytics wraps PIL.Image.open and may try to pip-install pi-heif on unknown input: never call it."""
    import sys
    import types

    from PIL import Image

    real = Image.open
    calls = []

    def wrapper(fp, *a, **k):
        calls.append(1)
        return real(fp, *a, **k)

    fake_mod = types.ModuleType("fake_patches")
    fake_mod._image_open = real
    wrapper.__module__ = "fake_patches"
    monkeypatch.setitem(sys.modules, "fake_patches", fake_mod)
    monkeypatch.setattr(Image, "open", wrapper)
    with pytest.raises(ImageDecodeError):
        decode_b64_image(base64.b64encode(b"hello, not an image").decode())
    assert decode_b64_image(encode_jpeg_b64(Image.new("RGB", (8, 8)))).image.size == (8, 8)
    assert calls == []
