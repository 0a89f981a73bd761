"""Challenge sampling like a NATIX validator (docs/protocol.md §2.3), over local labelled folders.

A folder holds ``roadwork/`` (label 1) and ``no_roadwork/`` (label 0) with .jpg/.jpeg/.png files.
Per challenge:

1. ``label`` uniform in {0, 1} (``rng.choice([0, 1])``);
2. the source: with synthetic folders given, real with probability 0.5, else one synthetic folder
   uniformly (two folders ``i2i`` and ``t2i`` -> 50 % real / 25 % i2i / 25 % t2i as upstream);
   with none given, always real;
3. a uniformly random file of that label in that source; none -> the challenge is skipped (the
   validator sends nothing that step);
4. the condition: ``aug-2026-01`` (the ported augmentation, 224×224) or ``fullres`` (no
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
CONDITIONS = (CONDITION_AUG, CONDITION_FULLRES)
FAKE_PROB = 0.5


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
    source: str  # "real", "i2i", "t2i" or the synthetic folder's name


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
    named ``i2i`` and ``t2i``; otherwise ``synthetic``, ``synthetic-2``, ...). ``rng``: default
    generator for :meth:`sample` (seeded by ``seed`` when not given).
    """

    def __init__(self, real: str | Path, synthetic: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
                 rng: np.random.Generator | None = None, seed: int | None = None):
        self.real_dir = Path(real)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.sources: dict[str, dict[int, list[Path]]] = {"real": list_images(self.real_dir)}
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
        """Label first, then the source, then a file; ``None`` when that source has no such label."""
        rng = rng if rng is not None else self.rng
        label = int(rng.choice([0, 1]))
        kind = "real"
        if self.synthetic_kinds and rng.random() < FAKE_PROB:
            kind = self.synthetic_kinds[int(rng.integers(0, len(self.synthetic_kinds)))]
        files = self.sources[kind][label]
        if not files:
            return None
        return Sample(label=label, path=files[int(rng.integers(0, len(files)))], source=kind)


def make_challenge(sample: Sample, condition: str, rng: np.random.Generator) -> Challenge:
    """Load ``sample`` and prepare it as a validator would for ``condition``."""
    from PIL import Image

    from natix_miner.validator.augment import augment, encode_like_validator, fullres

    with Image.open(sample.path) as im:
        im.load()
        if condition == CONDITION_AUG:
            res = augment(im, rng=rng)
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
