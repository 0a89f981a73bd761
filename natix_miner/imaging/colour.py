"""Colour conversion of :mod:`natix_miner.imaging`: any Pillow mode → 8-bit RGB (:func:`to_rgb`).

Alpha is composited on white, 16-bit is scaled with ``round(v / 257)``, 32-bit ``I`` and float ``F`` by
range; ICC profiles are ignored, as the validator's pipeline and the training data ignore them.
"""

from __future__ import annotations

from natix_miner.imaging.guards import ImageDecodeError

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_rgb(im, notes: list[str] | None = None):
    """Any Pillow mode → 8-bit RGB. Appends what it did to ``notes``.

    * Alpha (RGBA, LA, PA, RGBa, La, or a ``transparency`` entry on P/L/RGB/1/I*) is composited on white; a
      fully opaque alpha is just dropped.
    * ``I;16*`` (16-bit): ``round(v / 257)``, so 0 → 0 and 65535 → 255.
    * ``I`` (32-bit int): kept if all values lie in 0–255, scaled like 16-bit if they lie in 0–65535, else
      stretched linearly from [min, max] to [0, 255].
    * ``F`` (float): ×255 if all values lie in [0, 1], kept if in [0, 255], else stretched; NaN → 0.
    * Everything else goes through ``Image.convert("RGB")``; a mode Pillow cannot convert is
      ``unsupported_mode``.
    """
    from PIL import Image

    notes = notes if notes is not None else []
    mode = im.mode
    if mode == "RGB":
        return im
    transparency = im.info.get("transparency") if hasattr(im, "info") else None
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        im, alpha = _high_depth_to_l(im, transparency, notes)
        if alpha is not None:
            return _composite_on_white(Image.merge("LA", (im, alpha)), notes)
        return im.convert("RGB")
    if mode in _ALPHA_MODES or transparency is not None:
        try:
            rgba = im.convert("RGBA")
        except Exception as e:
            raise ImageDecodeError("unsupported_mode", f"cannot convert {mode} to RGBA: {e}") from None
        return _composite_on_white(rgba, notes)
    try:
        out = im.convert("RGB")
    except Exception as e:
        raise ImageDecodeError("unsupported_mode", f"cannot convert {mode} to RGB: {e}") from None
    if mode not in ("L", "1", "P"):
        notes.append(f"converted {mode} to RGB")
    return out


def _composite_on_white(im, notes: list[str]):
    from PIL import Image

    alpha = im.getchannel("A")
    lo, hi = alpha.getextrema()
    if lo == 255:
        return im.convert("RGB")
    base = Image.new("RGB", im.size, (255, 255, 255))
    base.paste(im.convert("RGB"), mask=alpha)
    notes.append("alpha composited on white")
    return base


def _high_depth_to_l(im, transparency, notes: list[str]):
    """16/32-bit integer or float single-channel image → (8-bit L image, alpha or None)."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(im)
    alpha = None
    if isinstance(transparency, int) and im.mode != "F":
        mask = arr != transparency
        if not mask.all():
            alpha = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")
    if im.mode in _SIXTEEN_BIT_MODES:
        out = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append(f"16-bit {im.mode} scaled to 8-bit")
    else:
        a = arr.astype(np.float64)
        if im.mode == "F":
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo = float(a.min()) if a.size else 0.0
        hi = float(a.max()) if a.size else 0.0
        if im.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = np.round(a * 255.0)
            how = "×255"
        elif lo >= 0.0 and hi <= 255.0:
            out = np.round(a)
            how = "kept"
        elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
            out = np.round(a / 257.0)
            how = "/257"
        else:
            out = np.round((a - lo) * (255.0 / (hi - lo))) if hi > lo else np.zeros_like(a)
            how = f"stretched from [{lo:g}, {hi:g}]"
        out = np.clip(out, 0, 255).astype(np.uint8)
        notes.append(f"{im.mode} values {how} to 8-bit")
    return Image.fromarray(np.ascontiguousarray(out), "L"), alpha
