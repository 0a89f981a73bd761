"""The interface every VLM engine implements.

An engine owns one model (local or remote) and answers two kinds of calls, both batched (one
result per image, in order, ``None`` for an image it could not answer — the adapter turns that
into "no vote"):

- :meth:`VLMEngine.yes_no_logprobs`: ONE generated token per image, returning the top-k
  ``{token text: logprob}`` of that token (see :mod:`natix_miner.models.vlm.yesno`);
- :meth:`VLMEngine.generate`: free generation with a hard ``max_tokens`` cap and stop strings,
  returning :class:`Generation` (text, why it stopped, how many tokens) — used only by the
  thinking tier for its reasoning step, never for the probability.

``timeout_s`` bounds a call's wall time (None: the engine's own limit). Engines never raise for a
per-request failure (timeout, HTTP error, malformed answer): they return ``None`` for that image
and count the failure in :attr:`VLMEngine.errors`. They raise :class:`AdapterError` from
:meth:`load` when the model cannot be served at all.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.models.vlm.prompts import PromptBuilder


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (stop string / end of turn) | "length" (hit max_tokens)
    n_tokens: int = 0


class VLMEngine(ABC):
    #: engine name as written in ``options.engine``
    kind: str = ""

    def __init__(self, *, model: str, family: str, device: str = "cpu", options: dict[str, Any] | None = None):
        self.model = model
        self.family = family
        self.device = device
        self.options = dict(options or {})
        self.errors: Counter[str] = Counter()
        self.measured_memory_mb: float | None = None
        self._err_lock = threading.Lock()

    def count_error(self, kind: str) -> None:
        with self._err_lock:
            self.errors[kind] += 1

    @abstractmethod
    def load(self) -> None:
        """Start / load / connect. Raise ``AdapterError`` with a clear message on failure."""

    @abstractmethod
    def yes_no_logprobs(self, images: "Sequence[Image.Image]", prompt_builder: "PromptBuilder", top_k: int = 20,
                        *, timeout_s: float | None = None) -> list[dict[str, float] | None]:
        """Top-k logprobs of the first generated token, one mapping (or None) per image."""

    @abstractmethod
    def generate(self, images: "Sequence[Image.Image]", prompt_builder: "PromptBuilder", max_tokens: int,
                 *, stop: Sequence[str] = (), timeout_s: float | None = None) -> list[Generation | None]:
        """Greedy generation of at most ``max_tokens`` tokens per image."""

    def close(self) -> None:
        """Release the model / process / connections. Safe to call twice."""


def warmup_images() -> list[Any]:
    """Realistic warmup inputs: a 1360×800 dash-cam-sized frame and a 224×224 crop, with structure."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    out = []
    for w, h in ((1360, 800), (224, 224)):
        arr = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        d = ImageDraw.Draw(im)
        d.rectangle([0, h // 2, w, h], fill=(90, 90, 95))  # road
        d.polygon([(w // 2, h // 2), (w // 2 - w // 30, h * 3 // 4), (w // 2 + w // 30, h * 3 // 4)],
                  fill=(255, 120, 0))  # a cone
        out.append(im)
    return out
