"""The decode-limit guards of :mod:`natix_miner.imaging`: what one request's image may cost, checked before
(and right after) Pillow decodes any pixel. See that module's docstring for the order of the steps and the
measurements behind the limits.

- :class:`DecodeLimits`, :class:`ImageDecodeError` (every refusal, with a short machine ``reason``);
- :func:`check_jpeg_scans`: progressive-JPEG scan count (libjpeg's cost is ``scans × pixels``);
- :func:`check_size`: side and pixel bounds from the header;
- :func:`check_tiles`: the decoder tiles' total area (a TIFF listing a million strips over the same rows);
- :func:`looks_truncated`, :func:`is_flat`: how a failed or partial load is classified.
"""

from __future__ import annotations

from dataclasses import dataclass

_JPEG_SOS = b"\xff\xda"


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what one request may cost. Defaults fit full-resolution camera frames."""

    max_b64_chars: int = 40_000_000  # ~30 MB of file; base64 characters, whitespace not counted
    max_pixels: int = 60_000_000  # W × H, checked from the header before any pixel is decoded
    max_side: int = 20_000
    min_side: int = 1
    max_jpeg_scans: int = 100  # SOS markers in a JPEG file (progressive JPEGs have ~10; thumbnails add a few)
    max_tile_overdraw: int = 8  # sum of decoder tile areas ≤ this × W × H (planar TIFF: one layer per band)


class ImageDecodeError(ValueError):
    """The request's image cannot be used. ``reason`` is a short machine code:

    ``bad_type``, ``empty``, ``too_large_b64``, ``bad_base64``, ``not_an_image``, ``too_many_pixels``,
    ``side_too_large``, ``side_too_small``, ``too_much_work``, ``truncated``, ``unsupported_mode``,
    ``out_of_memory``, ``decode_failed``.
    """

    def __init__(self, reason: str, message: str = ""):
        self.reason = reason
        self.message = message or reason
        super().__init__(f"{reason}: {self.message}")


def check_jpeg_scans(raw: bytes, limits: DecodeLimits) -> None:
    """``too_much_work`` for a JPEG with more start-of-scan markers than ``limits.max_jpeg_scans``."""
    scans = raw.count(_JPEG_SOS)  # an upper bound: FF DA cannot occur inside entropy-coded data
    if scans > limits.max_jpeg_scans:
        raise ImageDecodeError("too_much_work", f"JPEG with {scans} scans > {limits.max_jpeg_scans}")


def check_size(size: tuple[int, int], limits: DecodeLimits) -> None:
    w, h = int(size[0]), int(size[1])
    if w < limits.min_side or h < limits.min_side:
        raise ImageDecodeError("side_too_small", f"{w}×{h} has a side < {limits.min_side}")
    if w > limits.max_side or h > limits.max_side:
        raise ImageDecodeError("side_too_large", f"{w}×{h} has a side > {limits.max_side}")
    if w * h > limits.max_pixels:
        raise ImageDecodeError("too_many_pixels", f"{w}×{h} = {w * h} pixels > {limits.max_pixels}")


def check_tiles(im, limits: DecodeLimits) -> None:
    tiles = getattr(im, "tile", None) or []
    budget = limits.max_tile_overdraw * max(1, im.size[0] * im.size[1])
    area = 0
    for tile in tiles:
        try:
            x0, y0, x1, y1 = tile[1]
            area += max(0, x1 - x0) * max(0, y1 - y0)
        except Exception:
            continue
        if area > budget:
            raise ImageDecodeError(
                "too_much_work", f"{len(tiles)} decoder tiles cover more than {limits.max_tile_overdraw}× the image"
            )


def looks_truncated(e: BaseException) -> bool:
    msg = str(e).lower()
    return any(k in msg for k in ("truncat", "incomplete", "premature", "not enough data", "buffer is not large"))


def is_flat(im) -> bool:
    """True when every band holds a single value (what a partial load with no surviving pixel data gives)."""
    try:
        ext = im.getextrema()
    except Exception:
        return False
    bands = ext if isinstance(ext[0], tuple) else (ext,)
    return all(lo == hi for lo, hi in bands)
