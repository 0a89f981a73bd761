"""What a NATIX validator does to an image before sending it (docs/protocol.md §2.4, §2.5, §10, §12).

Three conditions: ``aug-2026-01`` (below), ``letterbox-2026-04`` (:func:`augment_letterbox`: the same
levels, but the base transform fits the image inside 224×224 keeping its aspect ratio and pads it
black, centred, with no crop; levels 1–3 then rotate ±20° bilinearly and distort as before) and
``fullres`` (:func:`fullres`: no augmentation, validators since 2026-05-03).

A port of the subnet's ``apply_augmentation_by_level`` (validator code of 2026-01, condition
``aug-2026-01``), written from the protocol description:

* the level is drawn with one uniform number against the cumulative probabilities
  ``{0: .25, 1: .25, 2: .25, 3: .25}`` (``rand <= cumsum`` picks the first level that fits);
* **level 0** ("base"): convert to RGB, centre square crop of side ``min(W, H)`` (PIL), resize to
  224×224 (PIL bilinear, which antialiases), ``ToTensor``;
* **levels 1–3** ("geometric"): convert to RGB, ``ToTensor`` at full resolution, rotate by an angle
  uniform in [-20°, 20°] with torchvision's tensor ``rotate`` and its default NEAREST interpolation,
  no expand, fill 0 (black corners), then a square ``RandomResizedCrop`` (scale (0.2, 1), ratio
  (1, 1), torchvision's ten tries and its centre-crop fallback) resized to 224×224 (bilinear,
  antialias). **No flips**: upstream's flip transforms never flip (docs/protocol.md §2.4 item 4);
* **level 2** adds the DeeperForensics distortions CS, CC, JPEG, each 50 % none / 50 % severity 1;
* **level 3** adds CS, CC, JPEG, GNC, GB, each ⅓ none / ⅓ severity 1 / ⅓ severity 2.

Distortions run in the order CS → CC → JPEG → GNC → GB. Each converts the float RGB CHW tensor to a
BGR HWC array, ``(x * 255).astype(uint8)`` (truncation, not rounding), applies the OpenCV/numpy
function, then divides by 255 back into an RGB tensor. The functions reproduce the DeeperForensics
code the subnet vendors, including its oddities: "CS" scales chroma in an OpenCV float YCrCb space
re-mapped with BT.601 studio-range factors, "CC" multiplies every pixel (a darkening), "JPEG" is a
bilinear down/up resize (no codec), "GNC" adds Gaussian noise of the given *variance* in that
space, "GB" is ``cv2.GaussianBlur(k×k, sigma=k/6)``.

Randomness: upstream draws from the global ``np.random`` (level, GNC noise), ``random`` (severities)
and ``torch`` (angle, crop) generators; here every draw comes from one ``np.random.Generator`` so a
seeded run is reproducible. The distributions are the same; the exact streams are not.

The final tensor becomes an image the way ``ToPILImage`` does it (``x * 255`` truncated to uint8),
and :func:`encode_like_validator` saves it as a Pillow-default JPEG (quality 75, 4:2:0) in base64.
If augmentation raises, upstream sends the raw, un-resized image with level -1; :func:`augment`
does the same.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loguru import logger
from PIL import Image

TARGET_SIZE: tuple[int, int] = (224, 224)
LEVEL_PROBS: dict[int, float] = {0: 0.25, 1: 0.25, 2: 0.25, 3: 0.25}
ROTATION_DEGREES = 20.0
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (1.0, 1.0)

# severity 1..5 -> parameter (upstream ``get_distortion_parameter``); only 1-2 are reachable.
DISTORTION_PARAMS: dict[str, tuple] = {
    "CS": (0.4, 0.3, 0.2, 0.1, 0.0),
    "CC": (0.85, 0.725, 0.6, 0.475, 0.35),
    "BW": (16, 32, 48, 64, 80),
    "GNC": (0.001, 0.002, 0.005, 0.01, 0.05),
    "GB": (7, 9, 13, 17, 21),
    "JPEG": (2, 3, 4, 5, 6),
}
# level -> (distortions in application order, max severity; each drawn uniformly in 0..max inclusive)
LEVEL_DISTORTIONS: dict[int, tuple[tuple[str, ...], int]] = {
    2: (("CS", "CC", "JPEG"), 1),
    3: (("CS", "CC", "JPEG", "GNC", "GB"), 2),
}


@dataclass
class AugResult:
    """``image``: what gets JPEG-encoded (224×224 RGB, or the raw image when ``level == -1``).

    ``params``: ``angle`` (degrees) and ``crop`` ((top, left, height, width) in the rotated full-res
    image) for levels 1–3, ``distortions`` ({code: severity}, 0 = not applied) for levels 2–3,
    ``error`` when the augmentation failed.
    """

    image: Image.Image
    level: int
    params: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# DeeperForensics distortions on BGR uint8 HWC arrays
# --------------------------------------------------------------------------------------------

def _bgr2ycbcr(img_bgr: np.ndarray) -> np.ndarray:
    """uint8 BGR (0..255) -> OpenCV float YCrCb, channels reordered to Y, Cb, Cr, then mapped with
    the studio-range factors ``(v*219+16)/255`` (Y) and ``(v*224+16)/255`` (Cb, Cr).

    The factors were written for inputs in [0, 1] but the input is 0..255, so Y ends in about
    [0.06, 219] and chroma around [-110, 112] (OpenCV's float chroma offset is 0.5, not 128).
    """
    import cv2

    ycrcb = cv2.cvtColor(img_bgr.astype(np.float32), cv2.COLOR_BGR2YCR_CB)
    ycbcr = ycrcb[:, :, (0, 2, 1)].astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * (235 - 16) + 16) / 255.0
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * (240 - 16) + 16) / 255.0
    return ycbcr


def _ycbcr2bgr(img_ycbcr: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`_bgr2ycbcr` (float32 BGR out, not clipped)."""
    import cv2

    ycbcr = img_ycbcr.astype(np.float32)
    ycbcr[:, :, 0] = (ycbcr[:, :, 0] * 255.0 - 16) / (235 - 16)
    ycbcr[:, :, 1:] = (ycbcr[:, :, 1:] * 255.0 - 16) / (240 - 16)
    ycrcb = ycbcr[:, :, (0, 2, 1)].astype(np.float32)
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCR_CB2BGR)


def _to_uint8_unclipped(x: np.ndarray) -> np.ndarray:
    """``x.astype(uint8)`` as upstream does it (truncation; out-of-range values are not clipped)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return x.astype(np.uint8)


def color_saturation(img: np.ndarray, param: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """"CS": both chroma channels pulled toward 0.5 by ``param`` (0.4 at severity 1)."""
    ycbcr = _bgr2ycbcr(img)
    ycbcr[:, :, 1] = 0.5 + (ycbcr[:, :, 1] - 0.5) * param
    ycbcr[:, :, 2] = 0.5 + (ycbcr[:, :, 2] - 0.5) * param
    return _to_uint8_unclipped(_ycbcr2bgr(ycbcr))


def color_contrast(img: np.ndarray, param: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """"CC": every pixel × ``param`` then truncated (a darkening, not a contrast change)."""
    return _to_uint8_unclipped(img.astype(np.float32) * param)


def jpeg_compression(img: np.ndarray, param: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """"JPEG": not a codec — ``cv2.resize`` down to ``(w // param, h // param)`` and back (bilinear)."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(img, (w // param, h // param))
    return cv2.resize(small, (w, h))


def gaussian_noise_color(img: np.ndarray, param: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """"GNC": ``(ycbcr/255 + sqrt(param)·N(0,1)) · 255`` in the space of :func:`_bgr2ycbcr`, back to
    BGR, clipped to [0, 255], truncated."""
    rng = rng if rng is not None else np.random.default_rng()
    ycbcr = _bgr2ycbcr(img) / 255
    noisy = (ycbcr + math.sqrt(param) * rng.standard_normal(ycbcr.shape)) * 255
    return np.clip(_ycbcr2bgr(noisy), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, param: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """"GB": ``cv2.GaussianBlur`` with a ``param``×``param`` kernel and sigma ``param / 6``."""
    import cv2

    return cv2.GaussianBlur(img, (param, param), param * 1.0 / 6)


def block_wise(img: np.ndarray, param: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """"BW" (never used by validators): ``min(H, W) // 256 * param`` grey 8×8 blocks — none at 224 px."""
    rng = rng if rng is not None else np.random.default_rng()
    img = img.copy()
    width = 8
    count = min(img.shape[0], img.shape[1]) // 256 * param
    for _ in range(count):
        r_w = int(rng.integers(0, img.shape[1] - 1 - width, endpoint=True))
        r_h = int(rng.integers(0, img.shape[0] - 1 - width, endpoint=True))
        img[r_h:r_h + width, r_w:r_w + width, :] = 128
    return img


DISTORTION_FUNCS = {
    "CS": color_saturation,
    "CC": color_contrast,
    "BW": block_wise,
    "GNC": gaussian_noise_color,
    "GB": gaussian_blur,
    "JPEG": jpeg_compression,
}


def distort_bgr(img_bgr: np.ndarray, code: str, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply distortion ``code`` at ``severity`` (1..5) to a BGR uint8 HWC array; severity 0 = identity."""
    if severity <= 0:
        return img_bgr
    return DISTORTION_FUNCS[code](img_bgr, DISTORTION_PARAMS[code][severity - 1], rng)


def distort_tensor(t, code: str, severity: int, rng: np.random.Generator | None = None):
    """The upstream wrapper: float RGB CHW tensor -> BGR HWC ``(x*255).astype(uint8)`` -> distortion
    -> ``/255`` -> float RGB CHW tensor. Severity 0 returns ``t`` untouched (no truncation)."""
    import torch

    if severity <= 0:
        return t
    # numpy views instead of torch indexing: identical float32 arithmetic, and no intra-op thread
    # pool (which costs milliseconds per tiny op on a busy 2-core machine)
    bgr = t.detach().cpu().numpy()[::-1].transpose(1, 2, 0)
    bgr = _to_uint8_unclipped(bgr * np.float32(255))
    out = distort_bgr(np.ascontiguousarray(bgr), code, severity, rng)
    back = (out.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1)[::-1]
    return torch.from_numpy(np.ascontiguousarray(back))


# --------------------------------------------------------------------------------------------
# levels
# --------------------------------------------------------------------------------------------

def choose_level(rng: np.random.Generator, level_probs: dict[int, float] = LEVEL_PROBS) -> int:
    """One uniform draw against cumulative probabilities; ``rand <= cumsum`` picks the level."""
    if not math.isclose(sum(level_probs.values()), 1.0, rel_tol=1e-9):
        raise ValueError("Probabilities of levels must sum to 1.0")
    rand_val = rng.random()
    cumsum = 0.0
    last = None
    for lvl, p in sorted(level_probs.items()):
        cumsum += p
        last = lvl
        if rand_val <= cumsum:
            return lvl
    return last  # rounding: cumsum ended a hair below rand_val


def rrc_params(height: int, width: int, rng: np.random.Generator,
               scale: tuple[float, float] = CROP_SCALE, ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: ten tries of (area fraction uniform in ``scale``,
    log-uniform aspect in ``ratio``, side = round(sqrt(...)), uniform position); else centre crop
    clamped to ``ratio`` (a centred square of side min(H, W) for ratio (1, 1)). Returns (i, j, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1])) if log_ratio[0] != log_ratio[1] else math.exp(log_ratio[0])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def to_tensor(image: Image.Image):
    """``torchvision.transforms.functional.to_tensor`` for an RGB PIL image, done in numpy.

    Same float32 result (uint8 / 255, CHW) without torch's intra-op thread pool, which costs tens of
    milliseconds per call on a busy small machine.
    """
    import torch

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    chw = np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(chw)


def base_transform(image: Image.Image, size: tuple[int, int] = TARGET_SIZE):
    """Level 0: RGB, centre square crop (side min(W, H)), PIL bilinear resize, ``ToTensor``."""
    from torchvision.transforms import functional as F

    img = image.convert("RGB")
    img = F.center_crop(img, [min(img.size), min(img.size)])
    img = F.resize(img, list(size), interpolation=F.InterpolationMode.BILINEAR)
    return to_tensor(img)


def geometric_transform(image: Image.Image, rng: np.random.Generator, size: tuple[int, int] = TARGET_SIZE,
                        params: dict | None = None):
    """Levels 1–3 before distortions: full-res tensor, NEAREST rotation with black corners, square
    RandomResizedCrop to ``size`` (bilinear, antialias). No flips. Records ``angle`` and ``crop``."""
    from torchvision.transforms import functional as F

    t = to_tensor(image)
    angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    t = F.rotate(t, angle)  # default NEAREST, expand=False, fill=None -> zeros
    _, h_img, w_img = t.shape
    i, j, h, w = rrc_params(h_img, w_img, rng)
    t = F.resized_crop(t, i, j, h, w, list(size), interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    if params is not None:
        params["angle"] = angle
        params["crop"] = (i, j, h, w)
    return t


def augment_tensor(image: Image.Image, rng: np.random.Generator, level: int, size: tuple[int, int] = TARGET_SIZE):
    """The float CHW tensor in [0, 1] a validator would encode for ``level``, and the drawn params."""
    params: dict[str, Any] = {}
    if level == 0:
        return base_transform(image, size), params
    if level not in (1, 2, 3):
        raise ValueError(f"level must be 0..3, got {level}")
    t = geometric_transform(image, rng, size, params)
    if level in LEVEL_DISTORTIONS:
        codes, max_sev = LEVEL_DISTORTIONS[level]
        sevs: dict[str, int] = {}
        for code in codes:
            sev = int(rng.integers(0, max_sev, endpoint=True))  # random.randint(0, max) inclusive
            sevs[code] = sev
            t = distort_tensor(t, code, sev, rng)
        params["distortions"] = sevs
    return t, params


def tensor_to_pil(t) -> Image.Image:
    """``ToPILImage`` on a float tensor: ``x * 255`` truncated to uint8."""
    from torchvision.transforms import functional as F

    return F.to_pil_image(t)


def augment(image: Image.Image, rng: np.random.Generator | None = None, level: int | None = None) -> AugResult:
    """Condition ``aug-2026-01``: draw a level (or use ``level``) and return the 224×224 RGB image.

    On any exception the raw image is returned with ``level = -1`` (upstream sends it un-resized).
    """
    rng = rng if rng is not None else np.random.default_rng()
    if level is None:
        level = choose_level(rng)
    try:
        t, params = augment_tensor(image, rng, level)
        return AugResult(image=tensor_to_pil(t), level=level, params=params)
    except Exception as e:  # noqa: BLE001 - upstream catches everything here too
        logger.warning(f"augmentation failed ({type(e).__name__}: {e}); sending the raw image (level -1)")
        return AugResult(image=image, level=-1, params={"error": f"{type(e).__name__}: {e}"})


def letterbox_base(image: Image.Image, size: tuple[int, int] = TARGET_SIZE):
    """Condition ``letterbox-2026-04`` base transform (docs/protocol.md §10): RGB, resize to fit inside ``size``
    keeping the aspect ratio (PIL bilinear), pad with black to ``size``, centred; ``ToTensor``. No crop."""
    img = image.convert("RGB")
    w, h = img.size
    tw, th = size
    scale = min(tw / w, th / h)
    nw, nh = max(1, min(tw, int(round(w * scale)))), max(1, min(th, int(round(h * scale))))
    resized = img.resize((nw, nh), Image.BILINEAR)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resized, ((tw - nw) // 2, (th - nh) // 2))
    return to_tensor(canvas)


def letterbox_tensor(image: Image.Image, rng: np.random.Generator, level: int, size: tuple[int, int] = TARGET_SIZE):
    """The letterbox period's pipeline: :func:`letterbox_base` for every level; levels 1–3 then rotate by
    an angle uniform in ±20° (bilinear, black corners) and apply the level's distortions as before."""
    from torchvision.transforms import functional as F

    if level not in (0, 1, 2, 3):
        raise ValueError(f"level must be 0..3, got {level}")
    params: dict[str, Any] = {"letterbox": True}
    t = letterbox_base(image, size)
    if level == 0:
        return t, params
    angle = float(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    t = F.rotate(t, angle, interpolation=F.InterpolationMode.BILINEAR)
    params["angle"] = angle
    if level in LEVEL_DISTORTIONS:
        codes, max_sev = LEVEL_DISTORTIONS[level]
        sevs: dict[str, int] = {}
        for code in codes:
            sev = int(rng.integers(0, max_sev, endpoint=True))
            sevs[code] = sev
            t = distort_tensor(t, code, sev, rng)
        params["distortions"] = sevs
    return t, params


def augment_letterbox(image: Image.Image, rng: np.random.Generator | None = None, level: int | None = None) -> AugResult:
    """Condition ``letterbox-2026-04`` (validators 2026-04-06 → 2026-05-03): a level drawn as in
    :func:`augment`, the letterboxed 224×224 image; on any exception the raw image with level -1."""
    rng = rng if rng is not None else np.random.default_rng()
    if level is None:
        level = choose_level(rng)
    try:
        t, params = letterbox_tensor(image, rng, level)
        return AugResult(image=tensor_to_pil(t), level=level, params=params)
    except Exception as e:  # noqa: BLE001 - as upstream
        logger.warning(f"augmentation failed ({type(e).__name__}: {e}); sending the raw image (level -1)")
        return AugResult(image=image, level=-1, params={"error": f"{type(e).__name__}: {e}"})


def fullres(image: Image.Image) -> Image.Image:
    """Condition ``fullres`` (validators since 2026-05, docs/protocol.md §10): no augmentation, full resolution,
    RGB. Encode it with :func:`encode_like_validator` (JPEG q75)."""
    return image.convert("RGB")


def encode_like_validator(image) -> str:
    """base64 of ``image`` saved as a Pillow-default JPEG (quality 75, 4:2:0), as ``prepare_image_synapse``.

    Accepts a PIL image or a float CHW tensor in [0, 1] (converted like ``ToPILImage``). An image
    whose mode JPEG cannot store (RGBA, P, ...; only reachable through the level -1 fallback) is
    converted to RGB first — upstream would fail the challenge instead.
    """
    if not isinstance(image, Image.Image):
        image = tensor_to_pil(image)
    buf = io.BytesIO()
    try:
        image.save(buf, format="JPEG")
    except (OSError, ValueError, KeyError):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
