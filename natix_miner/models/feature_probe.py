"""Frozen self-supervised backbone (DINOv2 / DINOv3) + a small trained roadwork head.

Backbones
    Any transformers ``AutoModel`` ViT whose output is ``[CLS, registers..., patches...]``:
    ``facebook/dinov2-large`` (Apache-2.0, the open default), ``facebook/dinov2-base`` / ``-small``,
    and ``facebook/dinov3-vith16plus-pretrain-lvd1689m`` (DINOv3 licence, **gated** on the hub: accept
    the licence there, log in, and mark the profile entry ``gated: true``). ``spec.model`` is the
    backbone (hub id or local folder); ``options.head`` is the head file.

How ``p`` = P(roadwork) is formed
    1. Every image is resized (bilinear, aspect *not* kept) to ``image_size``×``image_size``
       (default 448, rounded to a multiple of the patch size: 32×32 patches for DINOv2/14,
       28×28 for DINOv3/16) and normalised with the checkpoint's ``image_mean``/``image_std``
       (ImageNet values when the folder has no image-processor config). A 224 centre crop would drop
       the sides of a 1360×800 frame and shrink small cones to a pixel or two.
    2. Features = the final (layer-normed) tokens pooled by ``pooling``: ``cls`` (the CLS token),
       ``mean`` (mean of the patch tokens; CLS and register tokens excluded) or ``cls+mean`` (both,
       concatenated: the default, as in the DINOv2 linear-probe recipe).
    3. The head (:mod:`natix_miner.models.heads`, ``natix-head/1`` format: standardisation + linear
       or MLP) maps the vector to a logit; ``p = σ(logit)``.

    The head's ``meta`` records how its features were made and overrides the options: ``backbone``
    must be ``"feature_probe"``, ``backbone_model`` (the id it was trained on; a mismatch is
    logged), ``pooling``, ``image_size``, ``feature_dim``. :meth:`FeatureProbeAdapter.feature_meta`
    returns exactly that dict, so a trainer writes ``meta = {**adapter.feature_meta(), ...}``.

Training a head
    ``options.head`` is optional at load: without it the adapter loads the backbone only, and
    :meth:`FeatureProbeAdapter.features` (``list[PIL.Image] -> np.ndarray (n, dim)``) works while
    ``predict`` raises. ``scripts/train_head.py`` builds the adapter with
    ``build_adapter(ModelSpec(name=..., type="feature_probe", licence=..., model=<backbone>,
    options={"image_size": ..., "pooling": ...}))``, calls ``load(device)`` and ``features(images)``,
    fits a head, and saves it with ``heads.save_head(path, head, kind, meta=adapter.feature_meta() | {...})``.

Other options: ``dtype`` (``auto`` = fp16 on CUDA, ``bf16``, ``fp32``; fp32 on CPU), ``revision``,
``cache_dir``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError
from natix_miner.models.registry import register
from natix_miner.models.zero_shot import chunked
from natix_miner.scoring import sigmoid
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch
    from PIL import Image

DEFAULT_BACKBONE = "facebook/dinov2-large"
DEFAULT_IMAGE_SIZE = 448
POOLINGS = ("cls", "mean", "cls+mean")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pool_tokens(hidden: "torch.Tensor", pooling: str, n_prefix: int) -> "torch.Tensor":
    """(B, 1 + R + N, D) final tokens -> (B, k*D): CLS at index 0, R register tokens, N patches."""
    import torch

    parts = []
    for name in pooling.split("+"):
        if name == "cls":
            parts.append(hidden[:, 0])
        elif name == "mean":
            parts.append(hidden[:, n_prefix:].mean(1))
        else:
            raise ValueError(f"unknown pooling {name!r}; known: {', '.join(POOLINGS)}")
    return torch.cat(parts, 1)


class FeatureProbeOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: feature_probe`` (see the module docstring), parsed once at build.
    None = not given (the head's ``meta`` or the module default applies)."""

    head: str | None = None
    pooling: str | None = None  # cls | mean | cls+mean, checked at load (the head's meta wins)
    image_size: int | None = None
    features_only: bool = False  # load no head even if one is given (scripts/train_head.py sets it)


@register("feature_probe")
class FeatureProbeAdapter(tu.TorchAdapter):
    """DINOv2/DINOv3 features + trained head (see the module docstring for how ``p`` is formed)."""
    released_attrs = ("model", "head")
    options_model = FeatureProbeOptions
    opts: FeatureProbeOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model = None
        self.head = None  # natix_miner.models.heads.LoadedHead
        self.dtype = None
        self.pooling = "cls+mean"
        self.image_size = DEFAULT_IMAGE_SIZE
        self.patch_size = 14
        self.n_prefix = 1
        self.hidden_size = 0
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    def _opt(self, key: str, default: Any = None) -> Any:
        """The parsed option ``key``, or ``default`` when the profile does not give it."""
        value = getattr(self.opts, key)
        return default if value is None else value

    @property
    def feature_dim(self) -> int:
        return self.hidden_size * len(self.pooling.split("+"))

    def feature_meta(self) -> dict[str, Any]:
        """What a head trained on :meth:`features` must record in its ``meta``."""
        return {"backbone": "feature_probe", "backbone_model": self.spec.model or DEFAULT_BACKBONE,
                "pooling": self.pooling, "image_size": self.image_size, "feature_dim": self.feature_dim}

    def _head_path(self) -> str | None:
        value = self._opt("head")
        if not value or self.opts.features_only:
            return None
        path = Path(self.resolve(str(value)))
        return str(path / "head.pt") if path.is_dir() else str(path)

    # -- contract --------------------------------------------------------------------------
    def load(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModel

        from natix_miner.models.heads import load_head

        device = tu.resolve_device(self.name, device)
        head_meta: dict[str, Any] = {}
        head_path = self._head_path()
        if head_path is not None:
            if not Path(head_path).is_file():
                raise AdapterError(f"{self.name}: head file not found: {head_path} (train one with "
                                   "scripts/train_head.py, or fix options.head)")
            try:
                head = load_head(head_path, device="cpu")
            except Exception as e:
                raise AdapterError(f"{self.name}: cannot read head {head_path}: {e}") from e
            head_meta = head.meta
            if head_meta.get("backbone", "feature_probe") != "feature_probe":
                raise AdapterError(f"{self.name}: head {head_path} was trained on backbone "
                                   f"{head_meta.get('backbone')!r}, not feature_probe")
        else:
            head = None
        pooling = str(head_meta.get("pooling", self._opt("pooling", "cls+mean")))
        if pooling not in POOLINGS:
            raise AdapterError(f"{self.name}: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        size = int(head_meta.get("image_size", self._opt("image_size", DEFAULT_IMAGE_SIZE)))
        for key, used in (("pooling", pooling), ("image_size", size)):
            given = self._opt(key)
            if key in head_meta and given is not None and given != used:
                logger.warning("{}: options.{}={!r} ignored: the head was trained with {!r}", self.name, key,
                               given, used)

        source, is_local = tu.model_source(self, self.spec.model or DEFAULT_BACKBONE)
        dtype = tu.resolve_dtype(self.name, self._opt("dtype"), device)
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        model = tu.hf_load(self, AutoModel, source, is_local, dtype=dtype)
        cfg = model.config
        if not hasattr(cfg, "patch_size") or not hasattr(cfg, "hidden_size"):
            raise AdapterError(f"{self.name}: {source} ({type(model).__name__}) is not a ViT backbone "
                               "with patch_size/hidden_size")
        try:
            proc = tu.hf_load(self, AutoImageProcessor, source, is_local, what="image processor")
            self.mean = tuple(float(v) for v in proc.image_mean)
            self.std = tuple(float(v) for v in proc.image_std)
        except AdapterError as e:
            logger.warning("{}: no image processor in {} ({}); using ImageNet mean/std", self.name, source, e)
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        ps = cfg.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (list, tuple)) else ps)
        self.image_size = max(self.patch_size, int(round(size / self.patch_size)) * self.patch_size)
        self.n_prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.hidden_size = int(cfg.hidden_size)
        self.pooling = pooling
        self.model = model.eval().to(device)
        self.dtype = dtype
        self.device = device
        if head is not None:
            if head.in_dim != self.feature_dim:
                raise AdapterError(f"{self.name}: head {head_path} expects {head.in_dim} features; "
                                   f"{source} with pooling {pooling!r} gives {self.feature_dim}")
            trained_on = head_meta.get("backbone_model")
            if trained_on and Path(str(trained_on)).name != Path(str(self.spec.model or DEFAULT_BACKBONE)).name:
                logger.warning("{}: head was trained on {} but the backbone is {}", self.name, trained_on,
                               self.spec.model or DEFAULT_BACKBONE)
            head.module.to(device)
            head.device = device
        self.head = head
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model, head.module if head else None)
        self.loaded = True
        logger.info("{}: {} on {} {} ({}×{}, pooling {}, head {}) in {:.2f}s", self.name, source, device,
                    str(dtype).replace("torch.", ""), self.image_size, self.image_size, pooling,
                    head_path or "none", time.perf_counter() - t0)

    def _tensor(self, image: "Image.Image") -> "torch.Tensor":
        import numpy as np
        import torch
        from PIL import Image

        im = image.convert("RGB") if image.mode != "RGB" else image
        if im.size != (self.image_size, self.image_size):
            im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1)

    def features(self, images: "list[Image.Image]") -> "np.ndarray":
        """Pooled backbone features, one float32 row per image (chunked by ``batch_size``)."""
        import numpy as np
        import torch

        if self.model is None:
            raise AdapterError(f"{self.name}: features before load")
        out = np.zeros((len(images), self.feature_dim), dtype=np.float32)
        row = 0
        for chunk in chunked(images, self.spec.batch_size):
            x = torch.stack([self._tensor(im) for im in chunk]).to(self.device, self.dtype)
            with torch.inference_mode():
                hidden = self.model(pixel_values=x).last_hidden_state
                feats = pool_tokens(hidden, self.pooling, self.n_prefix)
            out[row:row + len(chunk)] = feats.float().cpu().numpy()
            row += len(chunk)
        return out

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        if self.head is None:
            raise AdapterError(f"{self.name}: no head loaded (set options.head to a file written by "
                               "scripts/train_head.py)")
        logits = self.head.logits(self.features(images))
        votes = []
        for z in logits.tolist():
            p = sigmoid(z)
            votes.append(Vote(p, {"logit": round(z, 4)}))
        return votes

    def warmup(self) -> None:
        ims = self.warmup_images()
        if self.head is None:
            self.features(ims)
        else:
            self.predict(ims)
