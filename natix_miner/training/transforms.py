"""Train and eval transforms that mirror what validators send (docs/protocol.md §10).

A training image first goes through a *condition* drawn from the mix (``--conditions``), applied to the
original image as a validator would, then is JPEG-encoded (Pillow default q75 as validators do, or a quality
drawn from ``jpeg_quality`` with probability ``jpeg_p``), then resized to the model's input and normalised:

* ``fullres``: the image as it comes (validators since 2026-05-03);
* ``letterbox-2026-04``: fit inside a 224×224 square keeping the aspect ratio, pad black, centred
  (2026-04-06 → 2026-05-03; its rotation/distortion levels are not modelled here);
* ``aug-2026-01``: the 2026-01 augmentation levels 0-3, through the replica's port
  :func:`natix_miner.validator.augment.augment` (224×224 crops, rotation, DeeperForensics distortions).

The model input (``resize``): ``squash`` resizes the whole image to ``size``×``size`` (aspect not kept, nothing
cropped); ``letterbox`` fits it inside the square and pads black. The eval transform is the same without the
random parts: condition ``fullres``, no re-encoding, no flip. The adapter applies :func:`model_input` with the
export's resize mode, size, mean and std, so serving sees exactly the eval preprocessing.

Randomness comes from a ``numpy.random.Generator`` the caller seeds per (seed, epoch, sample) so runs and
resumed runs draw the same augmentations.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from natix_miner.models.export_format import RESIZE_MODES, letterbox, model_input, normalise  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import torch

CONDITIONS = ("fullres", "letterbox-2026-04", "aug-2026-01")
DEFAULT_MIX = "fullres=0.5,aug-2026-01=0.35,letterbox-2026-04=0.15"


def parse_mix(text: str) -> dict[str, float]:
    """``"fullres=0.5,aug-2026-01=0.5"`` -> normalised weights; a bare name means weight 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, w = part.partition("=")
        name = name.strip()
        if name not in CONDITIONS:
            raise ValueError(f"unknown condition {name!r} in {text!r}; known: {', '.join(CONDITIONS)}")
        try:
            mix[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"condition weight must be a number: {part!r}") from None
        if mix[name] < 0:
            raise ValueError(f"condition weight must be >= 0: {part!r}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"condition mix {text!r} has no positive weight")
    return {k: v / total for k, v in mix.items()}


def apply_condition(image: Image.Image, condition: str, rng: np.random.Generator) -> Image.Image:
    """What a validator of that period makes of ``image`` (before its JPEG encoding)."""
    if condition == "fullres":
        return image.convert("RGB") if image.mode != "RGB" else image
    if condition == "letterbox-2026-04":
        return letterbox(image, 224)
    if condition == "aug-2026-01":
        from natix_miner.validator.augment import augment

        return augment(image.convert("RGB"), rng).image
    raise ValueError(f"unknown condition {condition!r}")


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    """Re-encode as JPEG (Pillow default subsampling) and decode again."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@dataclass
class TransformSpec:
    """Everything the train/eval transforms need; ``mean``/``std``/``size`` come from the model."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squash"
    mix: dict[str, float] = field(default_factory=lambda: parse_mix(DEFAULT_MIX))
    jpeg_p: float = 0.5  # probability of a random quality instead of the validators' 75
    jpeg_quality: tuple[int, int] = (40, 95)
    hflip: float = 0.5

    def train(self, image: Image.Image, rng: np.random.Generator) -> tuple[torch.Tensor, str]:
        """(tensor, condition) for one training image."""
        names = list(self.mix)
        cond = names[int(rng.choice(len(names), p=np.array([self.mix[n] for n in names])))]
        im = apply_condition(image, cond, rng)
        q = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)) if rng.random() < self.jpeg_p else 75
        im = jpeg(im, q)
        if rng.random() < self.hflip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return normalise(model_input(im, self.size, self.resize), self.mean, self.std), cond

    def eval(self, image: Image.Image) -> torch.Tensor:
        return normalise(model_input(image, self.size, self.resize), self.mean, self.std)
