"""Detector + monocular depth plausibility check (Depth Anything V2 / DA3): a self-contained voter.

docs/architecture.md §2 calls depth a "modifier" that down-weights detections whose size is implausible. The engine
has no modifier concept (every model votes independently), so this adapter is a **composite voter**:
it owns a detector sub-adapter (``options.detector``: a nested model spec ``{type, model, licence?,
options?, batch_size?}`` built with :func:`natix_miner.models.registry.build_adapter`) and a depth
model (``spec.model``, default ``depth-anything/Depth-Anything-V2-Small-hf``, Apache-2.0; the Large
and Giant V2 checkpoints are CC-BY-NC). Put it in a tier *instead of* its detector, not beside it,
or the detector's evidence counts twice.

How ``p`` = P(roadwork) is formed — a heuristic, not a measurement
    1. The detector gives boxes (``detections(images)``, the raw per-class boxes; a detector without
       that method must put ``{"detections": [{label, score, box}, ...]}`` in its vote evidence).
       Boxes whose label is in ``class_map`` (default: the detector's own ``class_map``, else the
       shared roadwork vocabulary) and whose score is >= ``min_score`` count as evidence.
    2. Depth Anything predicts *relative inverse depth* (disparity; larger = nearer), known only up
       to an unknown scale and shift per image. Only its **rank order** is used: the box's
       *nearness* ``n`` in [0, 1] is the fraction of the image's depth pixels that are farther than
       the median depth inside the box's central part (``box_shrink``, default the central 50 %).
       This is invariant to the unknown scale and shift. (``disparity: false`` for metric-depth
       models, where larger = farther.)
    3. The box's apparent size ``s`` = box height / image height. For a class with size prior
       ``(near_min, far_max, near_max)`` the plausible band at nearness ``n`` is::

           s_max(n) = far_max + (near_max - far_max) * n      # far objects cannot be huge
           s_min(n) = near_min * n                             # near objects cannot be tiny

       A box inside the band keeps its score; outside, its score is multiplied by
       ``max(floor, (bound / s) ** sharpness)`` (too big) or ``max(floor, (s / bound) ** sharpness)``
       (too small), so the factor is in ``[floor, 1]`` (``floor`` default 0.3, ``sharpness`` 1).
       The defaults in :data:`DEFAULT_SIZE_PRIORS` are rough guesses for a forward dashcam (a cone
       ~0.7 m tall seen from a car) and are **not fitted**: override them with ``size_priors``
       (``{label: [near_min, far_max, near_max]}``) and check on labelled frames before trusting the
       modifier. Perspective from a non-dashcam viewpoint (validators' synthetic and web images)
       breaks the assumptions; the floor keeps a strong detection from being erased.
    4. ``p = 1 − (1 − prior) · Π_i (1 − w_i · score_i · factor_i)`` — the shared noisy-OR of
       :mod:`natix_miner.models.detection` with each score scaled by its plausibility factor.

The evidence lists, per counted box, its label, score, nearness, size and factor, plus
``p_detector`` (the same noisy-OR without the factors) so the effect of the check is visible.

Other options: ``dtype`` (depth model; ``auto`` = fp16 on CUDA), ``prior`` (0.02), ``min_score``
(0.05), ``revision`` / ``cache_dir`` (hub). The sub-adapter is loaded on the same device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from loguru import logger
from pydantic import Field

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import Adapter, AdapterError, OptionsError
from natix_miner.models.detection import ROADWORK_PROMPTS, Detection, noisy_or, normalise_label
from natix_miner.models.registry import build_adapter, register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image

DEFAULT_DEPTH_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"


@dataclass(frozen=True)
class SizePrior:
    """Plausible box height as a fraction of the image height (see the module docstring)."""

    near_min: float  # smallest plausible size of the nearest object (n = 1)
    far_max: float  # largest plausible size of the farthest object (n = 0)
    near_max: float  # largest plausible size of the nearest object (n = 1)

    def band(self, nearness: float) -> tuple[float, float]:
        n = min(1.0, max(0.0, float(nearness)))
        return self.near_min * n, self.far_max + (self.near_max - self.far_max) * n


# Rough, unfitted guesses for a forward-facing dashcam (see the module docstring).
DEFAULT_SIZE_PRIORS: dict[str, SizePrior] = {
    "traffic cone": SizePrior(0.04, 0.12, 0.6),
    "traffic barrel": SizePrior(0.05, 0.15, 0.7),
    "construction barrier": SizePrior(0.04, 0.2, 0.8),
    "road barrier": SizePrior(0.04, 0.2, 0.8),
    "road work sign": SizePrior(0.04, 0.2, 0.8),
    "construction worker in safety vest": SizePrior(0.08, 0.3, 1.0),
    "excavator": SizePrior(0.1, 0.4, 1.0),
    "road roller": SizePrior(0.08, 0.35, 1.0),
    "construction vehicle": SizePrior(0.08, 0.4, 1.0),
}
GENERIC_PRIOR = SizePrior(0.02, 0.4, 1.0)


def nearness(depth: "np.ndarray", box: Sequence[float], image_size: tuple[int, int], *,
             disparity: bool = True, shrink: float = 0.5) -> float:
    """Rank-based nearness of ``box`` (x1, y1, x2, y2 in image pixels) in a depth map.

    ``depth`` may have any resolution: the box is scaled from ``image_size`` (width, height) to it.
    Returns the fraction of the map's pixels that are farther than the median of the box's central
    ``shrink`` part: 1 = nothing is nearer, 0 = everything is nearer.
    """
    import numpy as np

    h, w = depth.shape[:2]
    iw, ih = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = max(0.5, (x2 - x1) * shrink / 2), max(0.5, (y2 - y1) * shrink / 2)
    c0 = int(np.clip(np.floor((cx - hw) * w / iw), 0, w - 1))
    c1 = int(np.clip(np.ceil((cx + hw) * w / iw), c0 + 1, w))
    r0 = int(np.clip(np.floor((cy - hh) * h / ih), 0, h - 1))
    r1 = int(np.clip(np.ceil((cy + hh) * h / ih), r0 + 1, h))
    value = float(np.median(depth[r0:r1, c0:c1]))
    flat = depth.reshape(-1)
    if disparity:  # larger = nearer: farther pixels have smaller values
        return float(np.count_nonzero(flat < value) / flat.size)
    return float(np.count_nonzero(flat > value) / flat.size)


def plausibility(rel_size: float, near: float, prior: SizePrior, *, floor: float = 0.3,
                 sharpness: float = 1.0) -> float:
    """Factor in ``[floor, 1]``: 1 inside the prior's band at this nearness, decaying outside."""
    lo, hi = prior.band(near)
    s = max(1e-6, float(rel_size))
    if s > hi:
        f = (hi / s) ** sharpness
    elif lo > 0 and s < lo:
        f = (s / lo) ** sharpness
    else:
        f = 1.0
    return float(min(1.0, max(floor, f)))


def _priors(adapter_name: str, value: Any) -> dict[str, SizePrior]:
    priors = {normalise_label(k): v for k, v in DEFAULT_SIZE_PRIORS.items()}
    if value is None:
        return priors
    if not isinstance(value, Mapping):
        raise AdapterError(f"{adapter_name}: options.size_priors must map label -> [near_min, far_max, near_max]")
    for k, v in value.items():
        try:
            near_min, far_max, near_max = (float(x) for x in v)
        except (TypeError, ValueError):
            raise AdapterError(f"{adapter_name}: options.size_priors[{k!r}] must be [near_min, far_max, "
                               f"near_max], got {v!r}") from None
        if not (0 <= near_min <= near_max and 0 < far_max <= near_max):
            raise AdapterError(f"{adapter_name}: options.size_priors[{k!r}] needs 0 <= near_min <= near_max "
                               f"and 0 < far_max <= near_max, got {v!r}")
        priors[normalise_label(k)] = SizePrior(near_min, far_max, near_max)
    return priors


def score_detections(detections: Sequence[Detection], depth: "np.ndarray", image_size: tuple[int, int],
                     class_map: Mapping[str, float], priors: Mapping[str, SizePrior], *,
                     min_score: float = 0.05, prior: float = 0.02, floor: float = 0.3,
                     sharpness: float = 1.0, disparity: bool = True,
                     shrink: float = 0.5) -> tuple[float, float, list[dict[str, Any]]]:
    """``(p, p_detector, evidence)`` for one image (see the module docstring, steps 1–4)."""
    cmap = {normalise_label(k): float(v) for k, v in class_map.items()}
    terms, raw_terms, ev = [], [], []
    ih = image_size[1]
    for d in detections:
        label = normalise_label(d.label)
        w = cmap.get(label)
        if w is None or w <= 0 or d.score < min_score:
            continue
        raw = min(1.0, w) * float(d.score)
        raw_terms.append(raw)
        if d.box is None:  # no box, no check
            terms.append(raw)
            ev.append({"label": d.label, "score": round(float(d.score), 4), "factor": 1.0})
            continue
        rel = max(0.0, float(d.box[3]) - float(d.box[1])) / max(1.0, float(ih))
        n = nearness(depth, d.box, image_size, disparity=disparity, shrink=shrink)
        f = plausibility(rel, n, priors.get(label, GENERIC_PRIOR), floor=floor, sharpness=sharpness)
        terms.append(raw * f)
        ev.append({"label": d.label, "score": round(float(d.score), 4), "nearness": round(n, 3),
                   "rel_size": round(rel, 3), "factor": round(f, 3)})
    ev.sort(key=lambda e: -e["score"])
    return noisy_or(terms, prior=prior), noisy_or(raw_terms, prior=prior), ev


def detections_from_votes(votes: Sequence[Vote]) -> list[list[Detection]]:
    """Fallback for detectors without ``detections()``: boxes listed in their vote evidence."""
    out = []
    for v in votes:
        items = v.evidence.get("detections") if isinstance(v.evidence, dict) else None
        if items is None:
            raise AdapterError("depth_check: the detector sub-adapter has no detections() method and its "
                               "votes carry no evidence['detections']")
        out.append([Detection(label=str(d["label"]), score=float(d["score"]),
                              box=tuple(d["box"]) if d.get("box") is not None else None) for d in items])
    return out


class DepthCheckOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: depth_check`` (see the module docstring), parsed once at build."""

    detector: Any = None  # a nested model spec mapping (checked when the detector is built)
    size_priors: Any = None  # {label: [near_min, far_max, near_max]} (checked at load)
    class_map: Any = None  # None: the detector's class_map, else the roadwork prompts
    floor: float = Field(0.3, ge=0.0, le=1.0)
    box_shrink: float = Field(0.5, ge=0.05, le=1.0)
    sharpness: float = Field(1.0, ge=0.0, le=10.0)
    min_score: float = Field(0.05, ge=0.0, le=1.0)
    prior: float = Field(0.02, ge=0.0, le=1.0)
    disparity: bool = True


@register("depth_check")
class DepthCheckAdapter(tu.TorchAdapter):
    """Detector whose boxes are re-weighted by a depth-based size check (see the module docstring).

    ``detector`` may be injected (set the attribute before ``load``); otherwise it is built from
    ``options.detector``.
    """
    released_attrs = ("depth_model",)
    options_model = DepthCheckOptions
    opts: DepthCheckOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self._check_detector_options()
        self.detector: Adapter | None = None
        self.depth_model = None
        self.processor = None
        self.dtype = None
        self.class_map: dict[str, float] = {}
        self.priors: dict[str, SizePrior] = {}

    def _opt(self, key: str, default: Any = None) -> Any:
        """The parsed option ``key``, or ``default`` when the profile does not give it."""
        value = getattr(self.opts, key)
        return default if value is None else value

    def _check_detector_options(self) -> None:
        """A typo in ``options.detector.options`` stops the start at build, like one in ``options``
        (the rest of the nested spec is checked when the detector is built at load)."""
        from natix_miner.models.registry import adapter_class
        from natix_miner.profile import ModelSpec

        d = self.opts.detector
        if not isinstance(d, Mapping) or not d.get("type") or d["type"] == self.family:
            return
        try:
            cls = adapter_class(str(d["type"]))
        except Exception:  # noqa: BLE001 - an unknown/uninstallable type is reported when it is built
            return
        sub = ModelSpec(name=f"{self.name}.detector", type=str(d["type"]), licence=self.spec.licence,
                        options=dict(d.get("options") or {}))
        try:
            cls.parse_options(sub)
        except OptionsError as e:
            raise OptionsError(self.name, f"options.detector.{e.key}", e.reason) from None

    def _build_detector(self) -> Adapter:
        from natix_miner.profile import ModelSpec

        d = self._opt("detector")
        if not isinstance(d, Mapping) or not d.get("type"):
            raise AdapterError(f"{self.name}: options.detector must be a model spec mapping with at least "
                               "'type' (and usually 'model' and 'options'), e.g. {type: ultralytics, "
                               "model: models/roadwork-yolo11x.pt, options: {class_map: {...}}}")
        allowed = {"type", "model", "licence", "options", "batch_size", "memory_mb", "weight"}
        extra = set(d) - allowed
        if extra:
            raise AdapterError(f"{self.name}: options.detector has unknown keys {sorted(extra)}; "
                               f"allowed: {', '.join(sorted(allowed))}")
        if d["type"] == self.family:
            raise AdapterError(f"{self.name}: options.detector cannot itself be a depth_check")
        sub = ModelSpec(name=f"{self.name}.detector", type=str(d["type"]),
                        licence=str(d.get("licence", self.spec.licence)),
                        model=None if d.get("model") is None else str(d["model"]),
                        batch_size=int(d.get("batch_size", self.spec.batch_size)),
                        memory_mb=float(d.get("memory_mb", 0.0)),
                        options=dict(d.get("options") or {}), device=self.spec.device)
        return build_adapter(sub, self.profile)

    def load(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        device = tu.resolve_device(self.name, device)
        self.priors = _priors(self.name, self._opt("size_priors"))
        floor = self.opts.floor
        t0 = time.perf_counter()
        if self.detector is None:
            self.detector = self._build_detector()
        if not self.detector.loaded:
            self.detector.load(device)
        det_map = getattr(self.detector, "class_map", None) or self.detector.spec.options.get("class_map")
        cmap = self._opt("class_map") or det_map or ROADWORK_PROMPTS
        self.class_map = tu.weight_map(self, cmap, "class_map")
        source, is_local = tu.model_source(self, self.spec.model or DEFAULT_DEPTH_MODEL)
        dtype = tu.resolve_dtype(self.name, self._opt("dtype"), device)
        before = tu.cuda_allocated(device)
        model = tu.hf_load(self, AutoModelForDepthEstimation, source, is_local, what="depth model", dtype=dtype)
        self.processor = tu.hf_load(self, AutoImageProcessor, source, is_local, what="depth processor")
        self.depth_model = model.eval().to(device)
        self.dtype = dtype
        self.device = device
        own = tu.loaded_memory_mb(device, before, self.depth_model)
        self.measured_memory_mb = own + float(self.detector.memory_mb or 0.0)
        self.loaded = True
        logger.info("{}: detector {} ({}) + depth {} on {} in {:.2f}s (floor {})", self.name,
                    self.detector.spec.model, self.detector.family, source, device,
                    time.perf_counter() - t0, floor)

    def depth_maps(self, images: "list[Image.Image]") -> "list[np.ndarray]":
        """Raw depth predictions (processor resolution, float32), one per image."""
        import torch

        if self.depth_model is None:
            raise AdapterError(f"{self.name}: predict before load")
        rgb = [tu.to_rgb(im) for im in images]
        out: list[Any] = [None] * len(images)
        for idx in tu.size_groups(rgb, self.spec.batch_size):
            inputs = tu.move_inputs(self.processor(images=[rgb[i] for i in idx], return_tensors="pt"),
                                    self.device, self.dtype)
            with torch.inference_mode():
                pred = self.depth_model(**inputs).predicted_depth
            pred = pred.float().cpu().numpy()
            for k, i in enumerate(idx):
                out[i] = pred[k]
        return out

    def _detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        det = self.detector
        fn = getattr(det, "detections", None)
        if callable(fn):
            return fn(images)
        return detections_from_votes(det.predict(images))

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        if self.detector is None or self.depth_model is None:
            raise AdapterError(f"{self.name}: predict before load")
        o = self.opts  # parsed once, when the adapter was built
        kw = dict(min_score=o.min_score, prior=o.prior, floor=o.floor, sharpness=o.sharpness,
                  disparity=o.disparity, shrink=o.box_shrink)
        dets = self._detections(images)
        votes = []
        # depth only where a counted detection needs it (most frames have none)
        cmap = {normalise_label(k) for k, v in self.class_map.items() if v > 0}
        need = [i for i, ds in enumerate(dets)
                if any(normalise_label(d.label) in cmap and d.score >= kw["min_score"] and d.box is not None
                       for d in ds)]
        depths = dict(zip(need, self.depth_maps([images[i] for i in need]))) if need else {}
        import numpy as np

        for i, (im, ds) in enumerate(zip(images, dets)):
            depth = depths.get(i, np.zeros((1, 1), np.float32))
            p, p_det, ev = score_detections(ds, depth, im.size, self.class_map, self.priors, **kw)
            votes.append(Vote(p, {"p_detector": round(p_det, 4), "detections": ev[:5], "n_roadwork": len(ev)}))
        return votes

    def warmup(self) -> None:
        ims = self.warmup_images()
        self.detector.warmup()
        self.depth_maps(ims)
        self.predict(ims)

    def unload(self) -> None:
        if self.detector is not None:
            self.detector.unload()
        super().unload()
