"""The adapter contract every model family implements (docs/architecture.md §2).

An adapter wraps one model. The engine calls, in this order: ``load(device)`` once,
``warmup()`` once, then ``predict(images, deadline=...)`` many times from worker threads (one call
at a time per adapter: the engine serialises calls to the same adapter), and ``unload()`` at
shutdown.

``predict`` takes a batch of RGB ``PIL.Image`` objects of any size and returns one
:class:`~natix_miner.types.Vote` per image, in order, each with ``p`` = P(roadwork) in [0, 1].
``deadline`` (a :class:`~natix_miner.types.Deadline`, or None) is when the call must be done;
families that budget their own work (the VLM thinking tier) read it, the others ignore it. A
family written against the older ``predict(images)`` signature still works: the class gets a thin
wrapper that drops the deadline (see :meth:`Adapter.__init_subclass__`). How a family turns its raw
output into ``p`` is documented in its module.

Class attributes the engine reads: ``preallocates_gpu`` (the adapter reserves its GPU share up
front, as a vLLM engine does; such adapters load first). Models never import the engine: result
types come from :mod:`natix_miner.types`.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from natix_miner.types import Deadline, Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.profile import ModelSpec, Profile


class AdapterError(RuntimeError):
    """An adapter cannot load or run (missing weights, bad options, missing optional backend)."""


class OptionsError(AdapterError):
    """A model's ``options:`` do not match its family's options model (an unknown key, a wrong type).

    ``key`` is the dotted option path (``options.latency_ms``), ``reason`` what is wrong; the engine's
    loader names the profile file and the model's position with them."""

    def __init__(self, model: str, key: str, reason: str):
        super().__init__(f"model {model!r}: {key}: {reason}")
        self.key = key
        self.reason = reason


class FamilyOptions(BaseModel):
    """Base of a family's typed ``options:``: frozen, unknown keys refused. ``cpu_ok`` is read by the
    placement planner (``devices.py``) for every family."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_ok: bool | None = None


class Adapter(ABC):
    #: the profile ``type:`` this class serves; set by :func:`natix_miner.models.registry.register`
    family: ClassVar[str] = ""
    #: the adapter reserves its share of the GPU up front (vLLM checks at start that it is still
    #: free), so the engine loads it before the in-process models
    preallocates_gpu: bool = False
    #: the family's typed options (a :class:`FamilyOptions` subclass), parsed once when the adapter is
    #: built into ``self.opts``; None (the default) keeps free-form ``spec.options`` (``self.opts`` is None)
    options_model: ClassVar[type[FamilyOptions] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("predict")
        if fn is None or getattr(fn, "__isabstractmethod__", False):
            return
        params = inspect.signature(fn).parameters
        if "deadline" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return

        @functools.wraps(fn)
        def predict(self: "Adapter", images: "list[Image.Image]", deadline: Deadline | None = None) -> list[Vote]:
            return fn(self, images)

        cls.predict = predict  # type: ignore[method-assign]

    def __init__(self, spec: "ModelSpec", profile: "Profile | None" = None):
        self.spec = spec
        self.profile = profile
        self.device: str = "cpu"
        self.loaded = False
        self.measured_memory_mb: float | None = None
        self.opts: Any = self.parse_options(spec)

    @classmethod
    def parse_options(cls, spec: "ModelSpec") -> Any:
        """``spec.options`` validated by the family's ``options_model`` (None without one); raises
        :class:`OptionsError` naming the first bad key."""
        if cls.options_model is None:
            return None
        try:
            return cls.options_model.model_validate(dict(spec.options or {}))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            raise OptionsError(spec.name, f"options.{loc}" if loc else "options", err.get("msg", str(e))) from None

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
    def predict(self, images: "list[Image.Image]", deadline: Deadline | None = None) -> list[Vote]:
        """One vote per image, in order. ``deadline``: when the call must be done (None: no limit)."""

    @staticmethod
    def warmup_images() -> "list[Image.Image]":
        """The two shapes validators send: a 224×224 augmented crop and a 1360×800 full frame (docs/protocol.md §2.4, §10)."""
        from PIL import Image

        return [Image.new("RGB", (224, 224), (127, 127, 127)), Image.new("RGB", (1360, 800), (90, 90, 90))]

    def warmup(self) -> None:
        """Run a realistic dummy batch so the first real request is not slow."""
        self.predict(self.warmup_images())

    def unload(self) -> None:
        self.loaded = False
