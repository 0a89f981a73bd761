"""Safe, bounded decoding of a validator's ``ImageSynapse.image`` into an RGB PIL image.

Validators send base64 (standard alphabet, padded) of a JPEG file (docs/protocol.md §1). Since 2026-05 the images
arrive at full resolution, in any size, aspect ratio and colour mode (docs/protocol.md §10), so the decoder accepts
anything Pillow opens and turns it into an 8-bit RGB image, while refusing input that would cost unbounded
memory or time. Every failure is an :class:`ImageDecodeError` with a short machine ``reason``; no other
exception escapes :func:`decode_b64_image` (except ``BaseException``s such as ``KeyboardInterrupt``).

How a request is decoded, in order, each step bounded:

1. **Text → bytes** (:func:`decode_b64_bytes`). Input longer than ``2 × max_b64_chars`` is refused before
   it is even scanned; leading/trailing whitespace is stripped; an optional ``data:<type>;base64,`` prefix is
   dropped; inner ASCII whitespace is removed and the urlsafe alphabet (``-``/``_``) is mapped to the standard
   one in a single ``bytes.translate`` pass; more than ``max_b64_chars`` characters is refused
   (``too_large_b64``); missing ``=`` padding is restored; anything else that is not base64 is refused
   (``bad_base64``). Non-ASCII text is ``bad_base64``.
2. **Cheap pre-checks on the file bytes**: a JPEG with more than ``max_jpeg_scans`` start-of-scan markers is
   refused (``too_much_work``) — libjpeg re-processes the whole coefficient buffer for every progressive
   scan, and measured on a 2-core CPU a 2000×2000 progressive JPEG with 1000 duplicated 14-byte scans took
   2.1 s to load (``scans × pixels`` is the cost, the file size is not).
3. **Lazy open** with ``PIL.Image.open`` (header only) restricted to the formats Pillow registered minus
   :data:`DENIED_FORMATS` (EPS would run Ghostscript). Size checks happen here, **before** any pixel is
   decoded: ``W × H ≤ max_pixels`` (``too_many_pixels``), each side in ``[min_side, max_side]``
   (``side_too_large`` / ``side_too_small``), and the sum of the decoder tiles' areas must not exceed
   ``max_tile_overdraw × W × H`` (``too_much_work``: a TIFF can list a million strips that all decode onto
   the same rows).
4. **Load**. A file that fails to load (truncated or damaged) is retried once, see *Truncated files* below;
   if nothing decodes — including a partial load that comes out as one flat colour, which is what a file cut
   before its pixel data gives — the error is ``truncated`` (or ``decode_failed`` when the failure was not
   about missing data).
5. **EXIF orientation** (tags 2–8) is applied with ``ImageOps.exif_transpose(in_place=True)``; unreadable
   EXIF is ignored with a note.
6. **Colour → RGB** (see :func:`to_rgb`): alpha (RGBA, LA, PA, RGBa, La, ``P``/``L``/``RGB`` with a
   ``transparency`` entry) is composited on white; 16-bit (``I;16*``) is scaled with ``round(v / 257)``;
   32-bit ``I`` and float ``F`` are scaled by range (documented in :func:`to_rgb`); ``1``, ``L``, ``P``,
   ``CMYK``, ``YCbCr``, ``RGBX``, ``HSV``, ``LAB`` use Pillow's converter. ICC profiles are ignored, as the
   validator's own pipeline and the training data ignore them.

Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``, a process-wide setting, 89.5 MP by default)
is **not modified**. It runs inside ``Image.open`` before our checks: above ``2 × MAX_IMAGE_PIXELS`` it raises
``DecompressionBombError``, which becomes ``too_many_pixels``; between 1× and 2× it emits a
``DecompressionBombWarning`` (once per process under the default warning filters; also turned into
``too_many_pixels`` if the warnings are configured as errors) and our own ``max_pixels`` check then refuses
the image. Consequence: ``max_pixels`` above ``2 × Image.MAX_IMAGE_PIXELS`` has no effect unless the
application raises Pillow's limit itself. Scoping the warning with ``warnings.catch_warnings`` was rejected
because that context manager swaps process-wide state and is not thread-safe before Python 3.14.

Truncated files. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide flag. For JPEG (the wire
format) the retry needs no flag: an EOI marker (``FF D9``) is appended to the bytes — what Pillow itself does
when the flag is set — so libjpeg finishes the scan with what it has (the missing part comes out grey). For
every other format (and for a JPEG the EOI retry cannot save) the flag is set for that one retry while holding
a module lock, and restored to its previous value afterwards. While it is set, another thread's Pillow load
elsewhere in the process would also tolerate truncation; our own concurrent decodes are unaffected except that
such a load would not carry the "loaded partially" note. Decoding runs off the event loop
(``asyncio.to_thread``), so the lock never blocks the axon.

Residual cost: Pillow's header parsers are linear in the file size (e.g. a PNG made of millions of tiny
chunks), which ``max_b64_chars`` bounds. Measured on a 2-core CPU (``/tmp/bench_decode.py``-style loop over
``decode_b64_image(encode_jpeg_b64(...))``): 224×224 0.2 ms, 1920×1080 14–18 ms, 4032×3024 57–86 ms,
7744×7744 (60 MP, the limit) 352–406 ms. The first decode in a process also imports Pillow's plugins
(~19 ms): call :func:`warmup` at start-up.

Modules: this one (base64, open, load, the truncated-file retry, EXIF, encode), :mod:`.guards` (the limits,
the error class and the cost checks of steps 2–3), :mod:`.colour` (step 6, :func:`to_rgb`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from natix_miner.imaging.colour import to_rgb
from natix_miner.imaging.guards import (
    DecodeLimits,
    ImageDecodeError,
    check_jpeg_scans,
    check_size,
    check_tiles,
    is_flat,
    looks_truncated,
)

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as _PILImage

__all__ = [
    "DENIED_FORMATS",
    "DecodeLimits",
    "DecodedImage",
    "ImageDecodeError",
    "decode_b64_bytes",
    "decode_b64_image",
    "decode_image_bytes",
    "encode_jpeg_b64",
    "to_rgb",
    "warmup",
]

# Formats never opened: EPS loads by running Ghostscript in a subprocess.
DENIED_FORMATS: frozenset[str] = frozenset({"EPS"})

_WHITESPACE = b" \t\r\n\v\f"
_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_TRUNCATED_FLAG_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    """A decoded request image.

    ``image`` is 8-bit RGB with the EXIF orientation applied; ``sha256`` is the hex digest of the file bytes
    (after base64 decoding), the key of the result cache; ``format`` is Pillow's format name (``"JPEG"``…);
    ``original_mode``/``original_size`` describe the file before conversion and transposition; ``notes`` says
    what was done to get there (e.g. ``"alpha composited on white"``, ``"exif transposed (orientation 6)"``,
    ``"truncated file loaded partially"``).
    """

    image: _PILImage.Image
    sha256: str
    format: str | None
    original_mode: str
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- base64
def decode_b64_bytes(data: str | bytes, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """Base64 text → file bytes, leniently (whitespace, ``data:`` prefix, urlsafe, missing padding) but
    bounded: the length is checked before anything is decoded. Raises :class:`ImageDecodeError`."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, (str, bytes)):
        raise ImageDecodeError("bad_type", f"expected str or bytes, got {type(data).__name__}")
    if len(data) > 2 * limits.max_b64_chars:
        raise ImageDecodeError("too_large_b64", f"{len(data)} characters > 2 × {limits.max_b64_chars}")
    if isinstance(data, str):
        data = data.strip()
        try:
            s = data.encode("ascii")
        except UnicodeEncodeError as e:
            raise ImageDecodeError("bad_base64", f"non-ASCII character at position {e.start}") from None
    else:
        s = data.strip()
    if s[:5].lower() == b"data:":
        comma = s.find(b",", 0, 512)
        if comma < 0:
            raise ImageDecodeError("bad_base64", "data: URL without a comma")
        header = s[5:comma].strip().lower()
        if not header.endswith(b";base64"):
            raise ImageDecodeError("bad_base64", "data: URL that is not base64")
        s = s[comma + 1 :]
    s = s.translate(_URLSAFE_TO_STD, _WHITESPACE)
    if not s:
        raise ImageDecodeError("empty", "no image data")
    if len(s) > limits.max_b64_chars:
        raise ImageDecodeError("too_large_b64", f"{len(s)} base64 characters > {limits.max_b64_chars}")
    s = s.rstrip(b"=")
    rem = len(s) % 4
    if rem == 1:
        raise ImageDecodeError("bad_base64", f"impossible base64 length {len(s)}")
    if not s:
        raise ImageDecodeError("empty", "only padding")
    s += b"=" * ((4 - rem) % 4)
    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError("bad_base64", str(e) or "invalid base64") from None
    if not raw:
        raise ImageDecodeError("empty", "no image data")
    return raw


# ---------------------------------------------------------------------------------------------- decode
def decode_b64_image(data: str | bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode a request's base64 image into :class:`DecodedImage` (RGB). See the module docstring for the
    steps and bounds. Raises :class:`ImageDecodeError` and nothing else (``BaseException``s aside)."""
    try:
        raw = decode_b64_bytes(data, limits)
        return decode_image_bytes(raw, limits)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("out_of_memory", "not enough memory to decode the image") from None
    except Exception as e:  # last resort: never let a library error escape
        raise ImageDecodeError("decode_failed", f"{type(e).__name__}: {e}") from None


def decode_image_bytes(raw: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode image file bytes (already base64-decoded) into :class:`DecodedImage`. Same guarantees as
    :func:`decode_b64_image`; useful for tools that read files from disk."""
    try:
        return _decode_image_bytes(bytes(raw), limits)
    except ImageDecodeError:
        raise
    except MemoryError:
        raise ImageDecodeError("out_of_memory", "not enough memory to decode the image") from None
    except Exception as e:
        raise ImageDecodeError("decode_failed", f"{type(e).__name__}: {e}") from None


# Formats whose plugin cannot import its backend. Other libraries register PIL openers lazily (ultralytics
# adds a HEIF opener that needs pi_heif, which may be missing): such a plugin raises ImportError for every
# input and would turn each decode into an error, so it is found once and left out afterwards.
_BROKEN_FORMATS: set[str] = set()


def _allowed_formats() -> list[str]:
    from PIL import Image

    Image.init()  # registers every plugin; cheap after the first call
    return [f for f in Image.OPEN if f not in DENIED_FORMATS and f not in _BROKEN_FORMATS]


def _capture_open():
    mod = sys.modules.get("PIL.Image")  # only if PIL is already imported: importing it here is not free
    op = getattr(mod, "open", None)
    return op if getattr(op, "__module__", None) == "PIL.Image" else None


_ORIGINAL_OPEN = _capture_open()


def _genuine_pil_open():
    """PIL's own ``Image.open``, even when another library has monkey-patched it.

    ultralytics replaces ``PIL.Image.open`` with a wrapper that, on an unidentified image, runs its
    requirement checker (which may try to ``pip install pi-heif``) before retrying. A miner must never do
    that in its request path, so decoding goes around such wrappers.
    """
    from PIL import Image

    op = Image.open
    if getattr(op, "__module__", None) == "PIL.Image":
        return op
    mod = sys.modules.get(getattr(op, "__module__", "") or "")
    orig = getattr(mod, "_image_open", None)
    if orig is not None and getattr(orig, "__module__", None) == "PIL.Image":
        return orig
    return _ORIGINAL_OPEN or op


def _find_broken_plugins(raw: bytes, formats: list[str]) -> bool:
    found = False
    for f in formats:
        try:
            _genuine_pil_open()(io.BytesIO(raw), formats=[f])
        except ImportError:
            _BROKEN_FORMATS.add(f)
            found = True
        except Exception:
            pass
    return found


def _decode_image_bytes(raw: bytes, limits: DecodeLimits) -> DecodedImage:
    if not raw:
        raise ImageDecodeError("empty", "no image data")
    sha = hashlib.sha256(raw).hexdigest()
    is_jpeg = raw[:2] == _JPEG_SOI
    if is_jpeg:
        check_jpeg_scans(raw, limits)
    notes: list[str] = []
    formats = _allowed_formats()
    im = _open_checked(raw, formats, limits)
    fmt = im.format
    original_mode, original_size = im.mode, im.size
    try:
        im.load()
    except ImageDecodeError:
        raise
    except MemoryError:
        raise
    except Exception as first:
        im = _load_damaged(raw, formats, limits, first, is_jpeg, notes)
    check_size(im.size, limits)  # a few plugins (ICO, draft modes) settle the size only on load
    im = _apply_exif_orientation(im, notes)
    im = to_rgb(im, notes)
    return DecodedImage(image=im, sha256=sha, format=fmt, original_mode=original_mode,
                        original_size=original_size, notes=notes)


def _open_checked(raw: bytes, formats: list[str], limits: DecodeLimits):
    """``Image.open`` (header only) + size and work checks; nothing is decoded yet."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = _genuine_pil_open()(io.BytesIO(raw), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageDecodeError("too_many_pixels", str(e)) from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not_an_image", "no image format recognised") from None
    except MemoryError:
        raise
    except ImportError:
        if _find_broken_plugins(raw, formats):
            return _open_checked(raw, _allowed_formats(), limits)
        raise ImageDecodeError("decode_failed", "an image plugin could not import its backend") from None
    except Exception as e:  # a plugin recognised the header but choked on it
        reason = "truncated" if looks_truncated(e) else "decode_failed"
        raise ImageDecodeError(reason, f"cannot open: {type(e).__name__}: {e}") from None
    check_size(im.size, limits)
    check_tiles(im, limits)
    return im


def _load_damaged(raw: bytes, formats: list[str], limits: DecodeLimits, first: Exception, is_jpeg: bool,
                  notes: list[str]):
    """Second (and last) attempt for a file whose ``load()`` failed. See "Truncated files" in the module doc."""
    truncated = looks_truncated(first) or (is_jpeg and not raw.rstrip(b"\x00").endswith(_JPEG_EOI))
    what = "truncated" if truncated else f"damaged ({type(first).__name__}: {first})"
    if is_jpeg:
        try:
            im = _open_checked(raw + _JPEG_EOI, formats, limits)
            im.load()
            if not is_flat(im):
                notes.append(f"{what} file loaded partially (EOI appended)")
                return im
        except ImageDecodeError as e:
            if e.reason not in ("truncated", "decode_failed"):
                raise
        except MemoryError:
            raise
        except Exception:
            pass
    from PIL import ImageFile

    with _TRUNCATED_FLAG_LOCK:
        previous = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            im = _open_checked(raw, formats, limits)
            im.load()
        except ImageDecodeError as e:
            if e.reason not in ("truncated", "decode_failed"):
                raise
            im = None
        except MemoryError:
            raise
        except Exception:
            im = None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if im is not None and is_flat(im):
        im = None  # nothing but the background colour came out: no pixel data survived
    if im is None:
        reason = "truncated" if truncated else "decode_failed"
        raise ImageDecodeError(reason, f"cannot decode: {type(first).__name__}: {first}")
    notes.append(f"{what} file loaded partially")
    return im


def _apply_exif_orientation(im, notes: list[str]):
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112)
    except Exception as e:  # broken EXIF must not cost the request
        notes.append(f"exif unreadable ({type(e).__name__}), orientation ignored")
        return im
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return im
    try:
        ImageOps.exif_transpose(im, in_place=True)
        notes.append(f"exif transposed (orientation {orientation})")
    except Exception as e:
        notes.append(f"exif transpose failed ({type(e).__name__}), orientation ignored")
    return im


def warmup() -> None:
    """Import Pillow's format plugins and run one tiny decode, so the first request does not pay for it
    (measured: ~19 ms for the first 224×224 decode in a fresh process vs ~0.2 ms after, 2-core CPU)."""
    from PIL import Image

    decode_b64_image(encode_jpeg_b64(Image.new("RGB", (8, 8), (128, 128, 128))))


# ---------------------------------------------------------------------------------------------- encode
def encode_jpeg_b64(image, quality: int = 75) -> str:
    """PIL image → base64 (standard alphabet, padded) of a JPEG, as the validator builds ``ImageSynapse.image``
    (Pillow's default quality is 75 with 4:2:0 subsampling). L and CMYK are written as such; other modes go
    through :func:`to_rgb` first (alpha composited on white)."""
    im = image if image.mode in ("RGB", "L", "CMYK") else to_rgb(image)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    return base64.b64encode(buf.getvalue()).decode("ascii")
