"""Challenge sampling like a NATIX validator (docs/protocol.md §2.3, §12), over local labelled folders.

A folder holds ``roadwork/`` (label 1) and ``no_roadwork/`` (label 0) with .jpg/.jpeg/.png files.
Per challenge, as ``natix/validator/challenge/selector.py`` since 2026-04 (docs/protocol.md §10):

1. ``label`` uniform in {0, 1} (drawn first);
2. the source uniform in {synthetic, real, api}; synthetic splits uniformly over the synthetic
   folders (two folders ``i2i`` and ``t2i``). Per challenge: 1/3 real, 1/6 i2i, 1/6 t2i, 1/3 api;
3. a uniformly random file of that label in that source. When the source has no such file — no
   ``api`` folder given (a validator whose NATIX server has no task), no synthetic folders, or no
   image of that label — the challenge is **skipped**: nothing is sent that step, like a validator.
   :meth:`ImageSource.sample` returns ``None`` and counts the skip in ``ImageSource.skipped``;
4. the condition: ``aug-2026-01`` (the ported augmentation, 224×224), ``letterbox-2026-04``
   (fit inside 224×224, black padding, levels 1–3 rotate and distort) or ``fullres`` (no
   augmentation, full resolution, RGB; validators since 2026-05) — then a Pillow-default JPEG
   (q75) in base64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from loguru import logger

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
LABEL_DIRS = {1: "roadwork", 0: "no_roadwork"}
CONDITION_AUG = "aug-2026-01"
CONDITION_FULLRES = "fullres"
CONDITION_LETTERBOX = "letterbox-2026-04"
CONDITIONS = (CONDITION_AUG, CONDITION_LETTERBOX, CONDITION_FULLRES)
SOURCE_KINDS = ("synthetic", "real", "api")  # drawn uniformly after the label (docs/protocol.md §10)


def list_images(folder: str | Path) -> dict[int, list[Path]]:
    """``{1: [roadwork files], 0: [no_roadwork files]}`` (sorted; missing subfolders -> empty)."""
    folder = Path(folder)
    out: dict[int, list[Path]] = {}
    for label, sub in LABEL_DIRS.items():
        d = folder / sub
        out[label] = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS) if d.is_dir() else []
    return out


@dataclass
class Sample:
    label: int
    path: Path
    source: str  # "real", "api", "i2i", "t2i" or the synthetic folder's name


@dataclass
class Challenge:
    """One challenge as sent: ``image_b64`` is the base64 JPEG that goes into ``ImageSynapse.image``.

    ``level``: augmentation level 0–3, -1 when augmentation failed, ``None`` for ``fullres``.
    ``size``: (width, height) of the encoded image.
    """

    label: int
    path: Path
    source: str
    condition: str
    level: int | None
    image_b64: str
    params: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] = (0, 0)


class ImageSource:
    """Labelled images to challenge a miner with.

    ``real``: folder with ``roadwork/`` and ``no_roadwork/``. ``synthetic``: optional extra folders
    with the same layout — a mapping ``{kind: folder}`` or a sequence of folders (two folders are
    named ``i2i`` and ``t2i``; otherwise ``synthetic``, ``synthetic-2``, ...). ``api``: optional
    folder with the same layout standing in for NATIX's benchmark server (``--api-images``); without
    it the api third of the challenges is skipped. ``rng``: default generator for :meth:`sample`
    (seeded by ``seed`` when not given).
    """

    def __init__(self, real: str | Path, synthetic: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
                 rng: np.random.Generator | None = None, seed: int | None = None, api: str | Path | None = None):
        self.real_dir = Path(real)
        self.api_dir = Path(api) if api is not None else None
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.sources: dict[str, dict[int, list[Path]]] = {"real": list_images(self.real_dir)}
        if self.api_dir is not None:
            self.sources["api"] = list_images(self.api_dir)
        self.skipped: dict[str, int] = {}  # source -> challenges skipped for want of an image
        self.synthetic_kinds: list[str] = []
        if synthetic:
            if isinstance(synthetic, Mapping):
                items = [(str(k), Path(v)) for k, v in synthetic.items()]
            else:
                dirs = [Path(d) for d in synthetic]
                names = ["i2i", "t2i"] if len(dirs) == 2 else ["synthetic" if i == 0 else f"synthetic-{i + 1}" for i in range(len(dirs))]
                items = list(zip(names, dirs))
            for kind, d in items:
                self.sources[kind] = list_images(d)
                self.synthetic_kinds.append(kind)
        for kind, files in self.sources.items():
            logger.debug(f"image source {kind}: {len(files[1])} roadwork, {len(files[0])} no_roadwork")
        if not any(files[0] or files[1] for files in self.sources.values()):
            logger.warning(f"no images found under {self.real_dir} (expected roadwork/ and no_roadwork/)")

    def counts(self) -> dict[str, dict[int, int]]:
        return {k: {lbl: len(v) for lbl, v in files.items()} for k, files in self.sources.items()}

    def __len__(self) -> int:
        return sum(len(v) for files in self.sources.values() for v in files.values())

    def sample(self, rng: np.random.Generator | None = None) -> Sample | None:
        """Label first, then the source (synthetic / real / api uniformly; synthetic uniformly over its
        folders), then a file; ``None`` (a skipped challenge) when that source has no such image."""
        rng = rng if rng is not None else self.rng
        label = int(rng.choice([0, 1]))
        kind = SOURCE_KINDS[int(rng.integers(0, len(SOURCE_KINDS)))]
        if kind == "synthetic" and self.synthetic_kinds:
            kind = self.synthetic_kinds[int(rng.integers(0, len(self.synthetic_kinds)))]
        files = self.sources.get(kind, {}).get(label, [])
        if not files:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return None
        return Sample(label=label, path=files[int(rng.integers(0, len(files)))], source=kind)


def make_challenge(sample: Sample, condition: str, rng: np.random.Generator) -> Challenge:
    """Load ``sample`` and prepare it as a validator would for ``condition``."""
    from PIL import Image

    from natix_miner.validator.augment import augment, augment_letterbox, encode_like_validator, fullres

    with Image.open(sample.path) as im:
        im.load()
        if condition == CONDITION_AUG:
            res = augment(im, rng=rng)
            img, level, params = res.image, res.level, res.params
        elif condition == CONDITION_LETTERBOX:
            res = augment_letterbox(im, rng=rng)
            img, level, params = res.image, res.level, res.params
        elif condition == CONDITION_FULLRES:
            img, level, params = fullres(im), None, {}
        else:
            raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")
        b64 = encode_like_validator(img)
        size = img.size
    return Challenge(label=sample.label, path=sample.path, source=sample.source, condition=condition,
                     level=level, image_b64=b64, params=params, size=size)


def next_challenge(source: ImageSource, condition: str, rng: np.random.Generator | None = None) -> Challenge | None:
    """One challenge, or ``None`` when the sampled label/source has no image (a skipped step)."""
    rng = rng if rng is not None else source.rng
    s = source.sample(rng)
    if s is None:
        return None
    return make_challenge(s, condition, rng)


def iter_challenges(source: ImageSource, n: int, condition: str, rng: np.random.Generator | None = None,
                    max_skips: int = 1000) -> Iterator[Challenge]:
    """``n`` challenges for ``condition``; skipped steps are redrawn (at most ``max_skips`` in a row)."""
    rng = rng if rng is not None else source.rng
    made = skips = 0
    while made < n:
        c = next_challenge(source, condition, rng)
        if c is None:
            skips += 1
            if skips > max_skips:
                raise RuntimeError(f"no images to sample from in {source.real_dir}")
            continue
        skips = 0
        made += 1
        yield c
