"""Zero-shot image/text models (CLIP ViT-L/14, SigLIP / SigLIP 2): roadwork vs. ordinary-road prompts.

Models
    Any transformers checkpoint whose ``AutoModel`` has ``get_image_features`` and
    ``get_text_features`` and whose ``AutoProcessor`` holds an image processor and a tokenizer:
    ``openai/clip-vit-large-patch14`` (MIT), ``openai/clip-vit-large-patch14-336``,
    ``google/siglip2-so400m-patch14-384`` / ``google/siglip2-*`` (Apache-2.0; the fixed-resolution
    SigLIP 2 checkpoints load as ``siglip``, the NaFlex ones as ``siglip2``: both work).

How ``p`` = P(roadwork) is formed
    Two prompt ensembles, ``options.positive_prompts`` (roadwork) and ``options.negative_prompts``
    (ordinary roads), are embedded once at load. For an image view the model's own similarity logits
    are ``z_k = s * cos(image, prompt_k) + b`` (``s`` = the checkpoint's learned ``logit_scale.exp()``,
    ``b`` = its ``logit_bias`` for SigLIP, 0 for CLIP). Then, by ``options.scoring``:

    - ``softmax`` (default for CLIP, the contrastive softmax CLIP was trained with): a softmax over
      *all* prompts, ``p = Σ_{k positive} softmax(z / T)_k``;
    - ``mean_logit`` (default for SigLIP / SigLIP 2): SigLIP is trained with an independent sigmoid
      per (image, text) pair, whose absolute values are small and prompt-dependent, so instead of
      summing sigmoids we compare the ensembles: ``p = σ((mean_pos z − mean_neg z) / T)``. The bias
      ``b`` cancels; with one prompt per side this is the two-way softmax of the two logits.

    ``T`` is ``options.temperature`` (default 1).

Tiles (``options.tiles``)
    Roadwork cues are small in a full 1360×800 dashcam frame, and CLIP sees 224×224. With
    ``tiles: N`` (N ≥ 2) the image is also cut into an N×N grid of overlapping crops
    (``tile_overlap``, default 0.2 of a tile) and every view is scored; ``p`` is the ``tile_reduce``
    (``max``, default, or ``mean``) over the whole-image view and the tiles. ``tiles: 0`` (default)
    scores the whole image only. ``max`` raises recall on small cues and also raises false positives:
    fit the profile's calibration on labelled data when using it.

Aspect (``options.square``)
    ``pad`` (default): letterbox each view to a square with the processor's mean colour, so the
    processor's centre crop keeps the whole view; ``squash``: resize to a square; ``crop``: leave it
    to the processor (CLIP centre-crops the short side, losing the frame's left and right edges).

Other options: ``dtype`` (``auto`` = fp16 on CUDA, ``bf16``, ``fp32``; always fp32 on CPU),
``revision`` / ``cache_dir`` (hub).

Loading goes through :mod:`natix_miner.models._torch_utils` (offline-aware ``from_pretrained`` with a
"run scripts/download_models.py" error, device/dtype resolution, memory measurement).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence, TypeVar

from loguru import logger
from pydantic import Field, StrictInt

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError
from natix_miner.models.registry import register
from natix_miner.scoring import sigmoid
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

T = TypeVar("T")

DEFAULT_MODEL = "openai/clip-vit-large-patch14"

DEFAULT_POSITIVE_PROMPTS: tuple[str, ...] = (
    "a dashcam photo of road construction with traffic cones",
    "a dashcam photo of a road work zone with construction barriers",
    "a photo of a street with roadworks and a road work sign",
    "a photo of a lane closed with traffic cones and barrels",
    "a photo of construction workers in safety vests working on a road",
    "a photo of an excavator doing construction work on a street",
)
DEFAULT_NEGATIVE_PROMPTS: tuple[str, ...] = (
    "a dashcam photo of an ordinary street with no construction",
    "a dashcam photo of a normal road with traffic",
    "a photo of an empty highway",
    "a photo of a city street with parked cars and pedestrians",
    "a photo of a country road with trees",
    "a photo of a street at night with no roadworks",
)

SCORINGS = ("softmax", "mean_logit")
SIGLIP_TYPES = ("siglip", "siglip2")


# =============================================================================================
# Small helpers (loading helpers live in natix_miner.models._torch_utils)


def chunked(seq: Sequence[T], n: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most ``n`` items."""
    n = max(1, int(n))
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def pooled(output: Any) -> "torch.Tensor":
    """``get_*_features`` returns a tensor in transformers 4.x and a ModelOutput (pooler_output) in 5.x."""
    if hasattr(output, "pooler_output"):
        return output.pooler_output
    return output


# =============================================================================================
# Views and scoring (plain functions, unit-tested without a model)


def tile_boxes(width: int, height: int, tiles: int, overlap: float = 0.2) -> list[tuple[int, int, int, int]]:
    """A ``tiles``×``tiles`` grid of crops covering the image, neighbours overlapping by ``overlap``
    of a tile. Returns ``(left, top, right, bottom)`` boxes, row by row."""
    if tiles < 2:
        return []
    boxes = []
    tw = width / (tiles - (tiles - 1) * overlap)
    th = height / (tiles - (tiles - 1) * overlap)
    for r in range(tiles):
        for c in range(tiles):
            x0 = c * tw * (1 - overlap)
            y0 = r * th * (1 - overlap)
            boxes.append((int(round(x0)), int(round(y0)), int(round(min(width, x0 + tw))),
                          int(round(min(height, y0 + th)))))
    return boxes


def make_square(image: "Image.Image", mode: str, fill: tuple[int, int, int]) -> "Image.Image":
    from PIL import Image

    w, h = image.size
    if mode == "crop" or w == h:
        return image
    side = max(w, h)
    if mode == "squash":
        return image.resize((side, side), Image.BILINEAR)
    if mode == "pad":
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas
    raise ValueError(f"unknown square mode {mode!r}; known: pad, squash, crop")


def make_views(image: "Image.Image", tiles: int, overlap: float, square: str,
               fill: tuple[int, int, int]) -> list["Image.Image"]:
    """The whole image followed by its tiles, each squared per ``square``."""
    im = image.convert("RGB") if image.mode != "RGB" else image
    views = [im] + [im.crop(b) for b in tile_boxes(im.width, im.height, tiles, overlap)]
    return [make_square(v, square, fill) for v in views]


def prompt_probability(logits: Sequence[float], n_positive: int, scoring: str, temperature: float = 1.0) -> float:
    """P(roadwork) for one view from its prompt logits (positives first); see the module doc."""
    z = [float(v) / temperature for v in logits]
    pos, neg = z[:n_positive], z[n_positive:]
    if not pos or not neg:
        raise ValueError("need at least one positive and one negative prompt")
    if scoring == "softmax":
        m = max(z)
        e = [math.exp(v - m) for v in z]
        return float(sum(e[:n_positive]) / sum(e))
    if scoring == "mean_logit":
        return sigmoid(sum(pos) / len(pos) - sum(neg) / len(neg))
    raise ValueError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")


# =============================================================================================
# Adapter


def _prompt_list(adapter_name: str, value: Any, default: Sequence[str], key: str) -> list[str]:
    if value is None:
        return list(default)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(v, str) and v.strip() for v in value):
        raise AdapterError(f"{adapter_name}: options.{key} must be a non-empty list of strings")
    return [str(v) for v in value]


class ZeroShotOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: zero_shot`` (see the module docstring), parsed once at build."""

    positive_prompts: Any = None  # a non-empty list of strings (checked at load); None = the defaults
    negative_prompts: Any = None
    scoring: Literal["softmax", "mean_logit"] | None = None  # None: mean_logit for SigLIP, else softmax
    tiles: StrictInt = Field(0, ge=0, le=6)  # 0 or 1 = whole image, 2..6 = grid size
    tile_overlap: float = Field(0.2, ge=0.0, lt=0.9)
    tile_reduce: Literal["max", "mean"] = "max"
    square: Literal["pad", "squash", "crop"] = "pad"
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)


@register("zero_shot")
class ZeroShotAdapter(tu.TorchAdapter):
    """CLIP / SigLIP prompt ensembles (see the module docstring for how ``p`` is formed)."""
    released_attrs = ("model", "text_embeds")
    options_model = ZeroShotOptions
    opts: ZeroShotOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model = None
        self.processor = None
        self.text_embeds: "torch.Tensor | None" = None  # (K, D), L2-normalised, fp32
        self.prompts: list[str] = []
        self.n_positive = 0
        self.scoring = "softmax"
        self.scale = 100.0
        self.bias = 0.0
        self.kind = ""
        self.dtype = None
        self._fill = (127, 127, 127)

    def _opt(self, key: str, default: Any = None) -> Any:
        """The parsed option ``key``, or ``default`` when the profile does not give it."""
        value = getattr(self.opts, key)
        return default if value is None else value

    # -- options (parsed and checked at build) ---------------------------------------------
    @property
    def tiles(self) -> int:
        return self.opts.tiles if self.opts.tiles >= 2 else 0

    @property
    def tile_overlap(self) -> float:
        return self.opts.tile_overlap

    @property
    def tile_reduce(self) -> str:
        return self.opts.tile_reduce

    @property
    def square(self) -> str:
        return self.opts.square

    @property
    def temperature(self) -> float:
        return self.opts.temperature

    # -- contract --------------------------------------------------------------------------
    def load(self, device: str) -> None:
        import torch
        from transformers import AutoModel, AutoProcessor

        device = tu.resolve_device(self.name, device)
        pos = _prompt_list(self.name, self._opt("positive_prompts"), DEFAULT_POSITIVE_PROMPTS, "positive_prompts")
        neg = _prompt_list(self.name, self._opt("negative_prompts"), DEFAULT_NEGATIVE_PROMPTS, "negative_prompts")
        source, is_local = tu.model_source(self, self.spec.model or DEFAULT_MODEL)
        dtype = tu.resolve_dtype(self.name, self._opt("dtype"), device)
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        model = tu.hf_load(self, AutoModel, source, is_local, dtype=dtype)
        processor = tu.hf_load(self, AutoProcessor, source, is_local, what="processor")
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise AdapterError(f"{self.name}: {source} ({type(model).__name__}) is not an image-text model "
                               "with get_image_features/get_text_features (use CLIP or SigLIP)")
        if not (hasattr(processor, "image_processor") and hasattr(processor, "tokenizer")):
            raise AdapterError(f"{self.name}: the processor of {source} lacks an image processor or a tokenizer")
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.kind = str(getattr(model.config, "model_type", ""))
        scoring = self._opt("scoring", "mean_logit" if self.kind in SIGLIP_TYPES else "softmax")
        self.scoring = scoring
        ls = getattr(model, "logit_scale", None)
        self.scale = float(ls.detach().float().exp().item()) if ls is not None else 100.0
        lb = getattr(model, "logit_bias", None)
        self.bias = float(lb.detach().float().item()) if lb is not None else 0.0
        mean = getattr(processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self._fill = tuple(int(round(255 * float(m))) for m in list(mean)[:3])  # type: ignore[assignment]
        self.prompts = pos + neg
        self.n_positive = len(pos)
        with torch.inference_mode():
            self.text_embeds = self._embed_text(self.prompts)
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model)
        self.loaded = True
        logger.info("{}: {} ({}) on {} {} in {:.2f}s: {} positive / {} negative prompts, scoring {}, tiles {}",
                    self.name, source, self.kind, device, str(dtype).replace("torch.", ""),
                    time.perf_counter() - t0, len(pos), len(neg), self.scoring, self.tiles)

    def _embed_text(self, prompts: list[str]) -> "torch.Tensor":
        import torch

        tcfg = getattr(self.model.config, "text_config", None)
        max_len = int(getattr(tcfg, "max_position_embeddings", 77) or 77)
        if self.kind in SIGLIP_TYPES:  # SigLIP was trained on max_length-padded text
            tok = self.processor.tokenizer(prompts, padding="max_length", max_length=max_len,
                                           truncation=True, return_tensors="pt")
        else:
            tok = self.processor.tokenizer(prompts, padding=True, max_length=max_len, truncation=True,
                                           return_tensors="pt")
        # pass what the checkpoint's tokenizer returns (SigLIP's gives input_ids only, SigLIP 2's and
        # CLIP's add attention_mask), as in each model's reference usage
        tok = {k: v.to(self.device) for k, v in tok.items() if k in ("input_ids", "attention_mask", "position_ids")}
        emb = pooled(self.model.get_text_features(**tok)).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    @staticmethod
    def _image_inputs(image_processor: Any, views: list["Image.Image"]) -> dict[str, Any]:
        return dict(image_processor(images=views, return_tensors="pt"))

    def view_logits(self, views: list["Image.Image"]) -> "np.ndarray":
        """Prompt logits ``z`` (n_views, n_prompts) for already-prepared views."""
        import torch

        if self.model is None or self.text_embeds is None:
            raise AdapterError(f"{self.name}: predict before load")
        inputs = tu.move_inputs(self._image_inputs(self.processor.image_processor, views), self.device, self.dtype)
        with torch.inference_mode():
            img = pooled(self.model.get_image_features(**inputs)).float()
            img = torch.nn.functional.normalize(img, dim=-1)
            z = self.scale * img @ self.text_embeds.T + self.bias
        return z.cpu().numpy()

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        tiles, ov, reduce, square, temp = self.tiles, self.tile_overlap, self.tile_reduce, self.square, self.temperature
        votes: list[Vote] = []
        for chunk in chunked(images, self.spec.batch_size):
            per_image = [make_views(im, tiles, ov, square, self._fill) for im in chunk]
            flat = [v for views in per_image for v in views]
            z = self.view_logits(flat)
            row = 0
            for views in per_image:
                zs = z[row:row + len(views)]
                row += len(views)
                ps = [prompt_probability(r.tolist(), self.n_positive, self.scoring, temp) for r in zs]
                p = max(ps) if reduce == "max" else sum(ps) / len(ps)
                best_view = max(range(len(ps)), key=lambda i: ps[i])
                top = int(zs[best_view].argmax())
                ev: dict[str, Any] = {"p_whole": round(ps[0], 4), "top_prompt": self.prompts[top]}
                if len(ps) > 1:
                    ev["p_tiles"] = [round(x, 4) for x in ps[1:]]
                votes.append(Vote(float(min(1.0, max(0.0, p))), ev))
        return votes


__all__ = [
    "ZeroShotAdapter", "DEFAULT_POSITIVE_PROMPTS", "DEFAULT_NEGATIVE_PROMPTS", "prompt_probability",
    "tile_boxes", "make_views", "chunked", "pooled", "sigmoid",
]
