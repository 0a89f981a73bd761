"""The adapter contract every model family implements (DESIGN §2).

An adapter wraps one model. The engine calls, in this order: ``load(device)`` once,
``warmup()`` once, then ``predict(images)`` many times from worker threads (one call at a time
per adapter: the engine serialises calls to the same adapter), and ``unload()`` at shutdown.

``predict`` takes a batch of RGB ``PIL.Image`` objects of any size and returns one
:class:`~natix_miner.engine.types.Vote` per image, in order, each with ``p`` = P(roadwork) in
[0, 1]. How a family turns its raw output into ``p`` is documented in its module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from natix_miner.engine.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.profile import ModelSpec, Profile


class AdapterError(RuntimeError):
    """An adapter cannot load or run (missing weights, bad options, missing optional backend)."""


class Adapter(ABC):
    #: the profile ``type:`` this class serves; set by :func:`natix_miner.models.registry.register`
    family: ClassVar[str] = ""
    #: optional pip packages this family needs beyond the base install (for clear errors)
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: "ModelSpec", profile: "Profile | None" = None):
        self.spec = spec
        self.profile = profile
        self.device: str = "cpu"
        self.loaded = False
        self.measured_memory_mb: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def memory_mb(self) -> float:
        """Measured memory after load when known, else the profile's estimate."""
        return self.measured_memory_mb if self.measured_memory_mb is not None else self.spec.memory_mb

    def resolve(self, value: str) -> str:
        """A model path relative to the profile file or the repo root; hub ids unchanged."""
        return self.profile.resolve_path(value) if self.profile is not None else value

    @abstractmethod
    def load(self, device: str) -> None:
        """Load weights onto ``device`` ("cpu", "cuda:0", ...). Raise AdapterError on failure."""

    @abstractmethod
    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        """One vote per image, in order."""

    @staticmethod
    def warmup_images() -> "list[Image.Image]":
        """The two shapes validators send: a 224×224 augmented crop and a 1360×800 full frame (PROTOCOL §2.4, §10)."""
        from PIL import Image

        return [Image.new("RGB", (224, 224), (127, 127, 127)), Image.new("RGB", (1360, 800), (90, 90, 90))]

    def warmup(self) -> None:
        """Run a realistic dummy batch so the first real request is not slow."""
        self.predict(self.warmup_images())

    def unload(self) -> None:
        self.loaded = False
