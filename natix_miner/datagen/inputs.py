"""Real labelled images to start from (i2i parents, caption references).

Reads through :func:`natix_miner.training.data.scan_data` / ``load_image`` (the project's one data reader:
labelled folders, NATIX parquet) and keeps the real images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RealImage:
    key: str          # the training pipeline's sample key (an i2i image's `parent`)
    label: int
    load: Callable[[], Any]  # → RGB PIL image; raises natix_miner.training.data.ImageUnreadable
    license: str = "unknown"


def real_images(specs: list[str]) -> list[RealImage]:
    """The real (condition ``real``) labelled images of the given data specs, in a stable order."""
    from natix_miner.training.data import load_image, scan_data

    out = [RealImage(key=s.key, label=int(s.label), load=lambda s=s: load_image(s), license=s.licence)
           for s in scan_data(list(specs)) if s.condition == "real"]
    return sorted(out, key=lambda r: r.key)
