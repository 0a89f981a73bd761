"""The training export format, read at serving time (:mod:`natix_miner.models.timm_classifier`).

An export folder (``OUT/model/`` of ``scripts/train.py``) holds ``model.safetensors`` (the weights of
:class:`natix_miner.models.binary_net.BinaryClassifier`), ``config.json`` (format, backbone spec, input size,
resize mode, mean/std, temperature, threshold) and ``model_card.json``. Writing it is
:mod:`natix_miner.training.export`; this module is what both sides share, so a served model sees exactly the
preprocessing it was evaluated with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT = "natix-miner-binary-classifier/1"
RESIZE_MODES = ("squash", "letterbox")


class ExportError(ValueError):
    """A folder that is not a loadable export."""


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        raise ExportError(f"{folder}: not a training export (needs config.json and model.safetensors; "
                          "make one with scripts/train.py)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ExportError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    return config


def load_export(folder: str | Path, device: str = "cpu"):
    """``(model, config)``: the exported network in eval mode on ``device``; never downloads."""
    from safetensors.torch import load_file

    from natix_miner.models.binary_net import build_from_spec

    config = read_config(folder)
    model = build_from_spec(config)
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
    return model.eval().to(device), config


def letterbox(image: Image.Image, side: int) -> Image.Image:
    """Fit inside ``side``×``side`` keeping the aspect ratio, pad black, centred."""
    im = image.convert("RGB") if image.mode != "RGB" else image
    scale = side / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(im.resize((w, h), Image.BILINEAR), ((side - w) // 2, (side - h) // 2))
    return canvas


def model_input(image: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """The ``size``×``size`` RGB image the network sees."""
    if mode == "letterbox":
        return letterbox(image, size)
    if mode != "squash":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    im = image.convert("RGB") if image.mode != "RGB" else image
    return im if im.size == (size, size) else im.resize((size, size), Image.BILINEAR)


def normalise(image: Image.Image, mean, std) -> torch.Tensor:
    """RGB PIL -> (3, H, W) float tensor, ``(x/255 - mean) / std``."""
    import torch

    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (arr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
