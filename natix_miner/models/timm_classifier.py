"""A model fine-tuned by ``scripts/train.py`` (``type: timm_classifier``): timm, transformers or Lite backbones.

``model:`` is the export folder ``OUT/model/`` (``model.safetensors`` + ``config.json``; see
:mod:`natix_miner.training.export`). Nothing is downloaded: the network is rebuilt from ``config.json``.

How ``p`` is formed
    Each image is converted to RGB, brought to the export's input (``resize: squash`` = the whole image resized
    to ``image_size``², ``letterbox`` = fitted inside the square and padded black), normalised with the export's
    ``mean``/``std`` (exactly the evaluation preprocessing of training), and the network's single logit ``z``
    gives ``p = sigmoid(z / temperature)`` with the temperature fitted on the validation split. The export's
    ``threshold`` (MCC-optimal at the validators' 50/50 balance on that split) is not applied here: put it in
    the profile's ``calibration.threshold`` (scripts/train.py prints the snippet). ``evidence = {"logit": z}``.

Options (``options:`` in the profile)
    ``dtype``: ``auto`` (bf16 on CUDA, fp32 on CPU) | ``fp32`` | ``fp16`` | ``bf16``,
    ``temperature``: override the export's temperature (> 0).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from pydantic import Field

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import Adapter, AdapterError, FamilyOptions
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


class TimmClassifierOptions(FamilyOptions):
    """``options:`` of ``type: timm_classifier`` (see the module docstring), parsed once at build."""

    dtype: str | None = None  # auto | fp32 | fp16 | bf16 (checked by resolve_dtype at load)
    temperature: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: the export's


@register("timm_classifier")
class TimmClassifierAdapter(Adapter):
    requires = ("timm", "safetensors")
    options_model = TimmClassifierOptions
    opts: TimmClassifierOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: Any = None
        self.config: dict[str, Any] = {}
        self.dtype = torch.float32
        self.temperature = 1.0

    def load(self, device: str) -> None:
        from natix_miner.models.export_format import ExportError, load_export

        device = tu.resolve_device(self.name, device)
        self.dtype = tu.resolve_dtype(self.name, self.opts.dtype, device, default_cuda="bf16")
        source, is_local = tu.model_source(self)
        if not is_local or not Path(source).is_dir():
            raise AdapterError(f"{self.name}: model must be a training export folder (OUT/model/ of "
                               f"scripts/train.py), got {self.spec.model!r}")
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        try:
            model, config = load_export(source, "cpu")
        except ExportError as e:
            raise AdapterError(f"{self.name}: {e}") from e
        except Exception as e:
            raise AdapterError(f"{self.name}: could not load the export {source}: {type(e).__name__}: {e}") from e
        t = self.opts.temperature
        self.temperature = float(t if t is not None else config.get("temperature", 1.0))
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise AdapterError(f"{self.name}: temperature must be > 0, got {self.temperature}")
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.config = config
        self.device = device
        self.loaded = True
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model)
        logger.info("{}: {} ({} {}, {}px {}, T={:.3f}) on {} in {:.2f}s", self.name, source, config["kind"],
                    config["arch"], config["image_size"], config.get("resize", "squash"), self.temperature,
                    device, time.perf_counter() - t0)

    @torch.inference_mode()
    def logits(self, images: list[Image.Image]) -> list[float]:
        from natix_miner.models.export_format import model_input, normalise

        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        size, mode = int(self.config["image_size"]), str(self.config.get("resize", "squash"))
        mean, std = self.config["mean"], self.config["std"]
        out: list[float] = []
        for idx in tu.chunks(len(images), self.spec.batch_size):
            x = torch.stack([normalise(model_input(tu.to_rgb(images[i]), size, mode), mean, std) for i in idx])
            out += self.model(x.to(self.device, self.dtype)).float().cpu().tolist()
        return out

    def predict(self, images: list[Image.Image]) -> list[Vote]:
        if not images:
            return []
        votes = []
        for z in self.logits(images):
            if not math.isfinite(z):
                raise AdapterError(f"{self.name}: non-finite logit {z}")
            t = max(-60.0, min(60.0, z / self.temperature))
            votes.append(Vote(1.0 / (1.0 + math.exp(-t)), {"logit": round(z, 4)}))
        return votes

    def unload(self) -> None:
        self.model = None
        self.loaded = False
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
