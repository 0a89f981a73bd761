"""SAM 3 promptable concept segmentation with roadwork text prompts (``type: text_segmenter``).

Model
    ``facebook/sam3`` (SAM licence, **gated** on the hub: accept it there, log in, and mark the
    profile entry ``gated: true``), loaded with transformers' ``Sam3Model`` + ``Sam3Processor``
    (the image detector part of SAM 3; the video tracker weights in the checkpoint are ignored).
    The "SAM 3 Agent" of the seed design is an LLM loop around this model; a yes/no roadwork vote
    needs only the text-prompted detector.

How ``p`` = P(roadwork) is formed
    For every prompt ``k`` of ``options.prompts`` (``{text: weight}`` or a list, weight 1.0; default
    :data:`DEFAULT_PROMPTS`) SAM 3 returns up to ``num_queries`` instances, each with a match logit
    and one image-level *presence* logit for the concept. An instance's score is
    ``σ(match) · σ(presence)`` — exactly what ``Sam3Processor.post_process_instance_segmentation``
    thresholds. Instances whose box covers less than ``min_area`` or more than ``max_area`` of the
    image (fractions; defaults 0 and 1) are ignored, e.g. ``max_area: 0.6`` drops a "road barrier"
    that is the whole frame. The prompt score ``s_k`` is the highest remaining instance score, and

        p = 1 − (1 − prior) · Π_k (1 − w_k · s_k)     over prompts with s_k >= min_score

    (the shared noisy-OR of :mod:`natix_miner.models.detection`; ``prior`` default 0.02,
    ``min_score`` default 0.05). The evidence holds ``s_k`` per prompt and the best box.

Cost: the vision backbone runs once per image; the DETR encoder/decoder and the mask head run once
per prompt (text embeddings are computed once at load), so keep the prompt list short.

Options: ``prompts``, ``min_score``, ``prior``, ``min_area``, ``max_area``, ``dtype`` (``auto`` =
bf16 on CUDA, as SAM 3 is released; ``fp16``, ``fp32``; fp32 on CPU), ``revision`` / ``cache_dir``.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Mapping

from loguru import logger
from pydantic import Field, model_validator

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError, FamilyOptions
from natix_miner.models.detection import noisy_or
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

DEFAULT_MODEL = "facebook/sam3"
DEFAULT_PROMPTS: dict[str, float] = {
    "traffic cone": 1.0,
    "construction barrier": 1.0,
    "traffic barrel": 1.0,
    "road work sign": 0.9,
    "construction worker": 0.8,
    "excavator": 0.8,
}


def prompt_scores(pred_logits: "torch.Tensor", presence_logits: "torch.Tensor | None", pred_boxes: "torch.Tensor",
                  *, min_area: float = 0.0, max_area: float = 1.0) -> tuple["np.ndarray", "np.ndarray"]:
    """Best instance score per image for one prompt, and its box.

    ``pred_logits`` (B, Q), ``presence_logits`` (B, 1) or None, ``pred_boxes`` (B, Q, 4) normalised
    xyxy. Returns ``(scores (B,), boxes (B, 4))``; a row with no admissible instance scores 0.
    """
    import torch

    scores = pred_logits.float().sigmoid()
    if presence_logits is not None:
        scores = scores * presence_logits.float().sigmoid().reshape(-1, 1)
    boxes = pred_boxes.float().clamp(0.0, 1.0)
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    ok = (area >= min_area) & (area <= max_area)
    scores = torch.where(ok, scores, torch.zeros_like(scores))
    best, idx = scores.max(dim=1)
    best_boxes = boxes[torch.arange(boxes.shape[0]), idx]
    return best.cpu().numpy(), best_boxes.cpu().numpy()


def combine(scores: Mapping[str, float], weights: Mapping[str, float], *, min_score: float = 0.05,
            prior: float = 0.02) -> float:
    """Noisy-OR of ``w_k · s_k`` over prompts with ``s_k >= min_score``."""
    return noisy_or([weights[k] * s for k, s in scores.items() if s >= min_score], prior=prior)


class TextSegmenterOptions(FamilyOptions):
    """``options:`` of ``type: text_segmenter`` (see the module docstring), parsed once at build."""

    prompts: dict[str, float] | list[str] | None = None  # weights checked at load (tu.weight_map)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    prior: float = Field(0.02, ge=0.0, le=1.0)
    min_area: float = Field(0.0, ge=0.0, le=1.0)
    max_area: float = Field(1.0, ge=0.0, le=1.0)
    dtype: str | None = None
    revision: str | None = None
    cache_dir: str | None = None

    @model_validator(mode="after")
    def _areas(self) -> "TextSegmenterOptions":
        if self.min_area > self.max_area:
            raise ValueError(f"options.min_area ({self.min_area}) must be <= options.max_area ({self.max_area})")
        return self


@register("text_segmenter")
class TextSegmenterAdapter(tu.TorchAdapter):
    """SAM 3 text prompts -> roadwork probability (see the module docstring)."""
    released_attrs = ("model", "_text")
    options_model = TextSegmenterOptions
    opts: TextSegmenterOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model = None
        self.processor = None
        self.dtype = None
        self.prompts: dict[str, float] = {}
        self._text: Any = None  # (K, L, H) projected text features
        self._mask: Any = None  # (K, L) attention mask

    def _areas(self) -> tuple[float, float]:
        return self.opts.min_area, self.opts.max_area

    def load(self, device: str) -> None:
        import torch
        from transformers import Sam3Model, Sam3Processor

        device = tu.resolve_device(self.name, device)
        prompts = self.opts.prompts if self.opts.prompts is not None else DEFAULT_PROMPTS
        self.prompts = tu.weight_map(self, prompts, "prompts")
        source, is_local = tu.model_source(self, self.spec.model or DEFAULT_MODEL)
        dtype = tu.resolve_dtype(self.name, self.opts.dtype, device, default_cuda="bf16")
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        model = tu.hf_load(self, Sam3Model, source, is_local, dtype=dtype)
        self.processor = tu.hf_load(self, Sam3Processor, source, is_local, what="processor")
        self.model = model.eval().to(device)
        self.dtype = dtype
        self.device = device
        texts = list(self.prompts)
        tok = self.processor(text=texts, return_tensors="pt")
        ids = tok["input_ids"].to(device)
        mask = tok["attention_mask"].to(device)
        with torch.inference_mode():
            self._text = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
        self._mask = mask
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model)
        self.loaded = True
        logger.info("{}: {} on {} {} with {} prompts in {:.2f}s", self.name, source, device,
                    str(dtype).replace("torch.", ""), len(texts), time.perf_counter() - t0)

    def raw_scores(self, images: "list[Image.Image]") -> list[dict[str, tuple[float, list[float]]]]:
        """Per image: ``{prompt: (best score, best box [x1, y1, x2, y2] normalised)}``."""
        import torch

        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        lo, hi = self._areas()
        texts = list(self.prompts)
        out: list[dict[str, tuple[float, list[float]]]] = [{} for _ in images]
        rgb = [tu.to_rgb(im) for im in images]
        for idx in tu.chunks(len(rgb), self.spec.batch_size):
            inputs = self.processor(images=[rgb[i] for i in idx], return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, self.dtype)
            b = len(idx)
            with torch.inference_mode():
                vision = self.model.get_vision_features(pixel_values=pixels)
                for k, text in enumerate(texts):
                    te = SimpleNamespace(pooler_output=self._text[k:k + 1].expand(b, -1, -1))
                    res = self.model(vision_embeds=vision, text_embeds=te,
                                     attention_mask=self._mask[k:k + 1].expand(b, -1))
                    s, boxes = prompt_scores(res.pred_logits, res.presence_logits, res.pred_boxes,
                                             min_area=lo, max_area=hi)
                    for j, i in enumerate(idx):
                        out[i][text] = (float(s[j]), [round(float(v), 4) for v in boxes[j]])
        return out

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        min_score, prior = self.opts.min_score, self.opts.prior  # parsed once, at build
        votes = []
        for per_prompt in self.raw_scores(images):
            scores = {k: v[0] for k, v in per_prompt.items()}
            p = combine(scores, self.prompts, min_score=min_score, prior=prior)
            best = max(scores, key=lambda k: self.prompts[k] * scores[k])
            votes.append(Vote(p, {"prompt_scores": {k: round(v, 4) for k, v in scores.items()},
                                  "best_prompt": best, "best_box": per_prompt[best][1]}))
        return votes


__all__ = ["TextSegmenterAdapter", "DEFAULT_PROMPTS", "prompt_scores", "combine"]
