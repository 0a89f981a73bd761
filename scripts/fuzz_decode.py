#!/usr/bin/env python
"""Coverage-guided fuzzing of ``natix_miner.imaging`` with atheris (libFuzzer for Python). Not part of pytest.

    pip install atheris                       # optional dev tool, not a project dependency
    python scripts/fuzz_decode.py --seed-corpus fuzz-corpus      # writes small seed images, then fuzzes
    python scripts/fuzz_decode.py fuzz-corpus -max_total_time=300 -rss_limit_mb=4096

Everything after the script's own flags goes to libFuzzer (``-max_total_time``, ``-runs``, ``-jobs``…).
Each input is tried twice: as file bytes (``decode_image_bytes``, reaches Pillow's parsers directly) and as
base64 text (``decode_b64_image``). A crash is any exception other than ``ImageDecodeError``, a result that
is not RGB, or one call slower than ``--max-seconds`` (default 5 s), which catches unbounded work.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time


def write_seed_corpus(path: str) -> None:
    import numpy as np
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {
        "a.jpg": (small, "JPEG", {}),
        "prog.jpg": (small, "JPEG", {"progressive": True}),
        "exif.jpg": (small, "JPEG", {"exif": exif.tobytes()}),
        "cmyk.jpg": (small.convert("CMYK"), "JPEG", {}),
        "a.png": (small, "PNG", {}),
        "rgba.png": (small.convert("RGBA"), "PNG", {}),
        "p.png": (small.convert("P"), "PNG", {"transparency": 0}),
        "i16.png": (Image.fromarray(np.asarray(small.convert("L")).astype(np.uint16) * 257), "PNG", {}),
        "a.webp": (small, "WEBP", {}),
        "a.gif": (small, "GIF", {}),
        "a.bmp": (small, "BMP", {}),
        "a.tif": (small, "TIFF", {"compression": "tiff_deflate"}),
        "a.ico": (small, "ICO", {}),
    }
    for name, (im, fmt, kw) in seeds.items():
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        with open(os.path.join(path, name), "wb") as f:
            f.write(buf.getvalue())
    print(f"wrote {len(seeds)} seeds to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(add_help=True)
    ap.add_argument("--seed-corpus", metavar="DIR", help="write small seed images to DIR and fuzz with it")
    ap.add_argument("--max-seconds", type=float, default=5.0, help="one call slower than this is a crash")
    args, rest = ap.parse_known_args()

    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris")

    with atheris.instrument_imports():
        import PIL.Image  # instrument Pillow's Python parsers too
        import PIL.ImageFile  # noqa: F401
        import PIL.ImageOps  # noqa: F401

        PIL.Image.init()  # imports every format plugin now, inside the instrumented block
        from natix_miner import imaging

    if args.seed_corpus:
        write_seed_corpus(args.seed_corpus)
        rest = [args.seed_corpus, *rest]
    limit = args.max_seconds

    def check(fn, data):
        t0 = time.perf_counter()
        try:
            out = fn(data)
        except imaging.ImageDecodeError:
            out = None
        dt = time.perf_counter() - t0
        if dt > limit:
            raise RuntimeError(f"{fn.__name__} took {dt:.2f} s > {limit} s on {len(data)} bytes")
        if out is not None and out.image.mode != "RGB":
            raise RuntimeError(f"{fn.__name__} returned mode {out.image.mode}")

    def test_one_input(data: bytes) -> None:
        check(imaging.decode_image_bytes, data)
        check(imaging.decode_b64_image, data)

    import warnings

    warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF block it is fed
    atheris.Setup([sys.argv[0], *rest], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
