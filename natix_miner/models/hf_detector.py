"""Closed-vocabulary DETR-style detectors: ``type: hf_detector`` (transformers) and ``type: rfdetr``.

``hf_detector`` loads any ``AutoModelForObjectDetection`` with its ``AutoImageProcessor`` from a local
folder or a hub id already in the local cache: D-FINE (``ustc-community/dfine-xlarge-coco`` /
``-obj2coco`` / ``-obj365``), RT-DETRv2 (``PekingU/rtdetr_v2_r50vd``; RT-DETRv3 is Paddle-only), RT-DETR,
DETR, Deformable/Conditional DETR, or a roadwork fine-tune of any of them. The processor resizes to the
model's fixed input size, ``model(pixel_values)`` gives per-query class logits and boxes, and the
processor's ``post_process_object_detection(outputs, threshold, target_sizes)`` turns them into
``(score, label id, box)`` per image (sigmoid/top-k for the focal-loss models, softmax without the
no-object class for DETR). Label ids are named by ``config.id2label``.

``rfdetr`` runs Roboflow's RF-DETR (Apache-2.0 for N/S/M/B/L; XL/2XL use the PML licence) through its
own ``rfdetr`` package, which is *not* a dependency of this project: it is imported inside ``load()``
and its absence is an :class:`AdapterError` saying ``pip install rfdetr``. ``RFDETR<Variant>(
pretrain_weights=<local .pth>, device=...)`` loads the weights (a missing file is refused before the
package can try to download it) and ``.predict(images, threshold=)`` returns ``supervision.Detections``
(``xyxy``, ``confidence``, ``class_id``); class ids are named by the model's ``class_names`` (COCO
names for the pretrained checkpoints, the dataset's for fine-tunes).

How ``p`` is formed (both types)
    Detections whose class name is in ``options.class_map`` (class -> weight in [0, 1]) with a score of at
    least ``options.threshold`` are combined by the shared noisy-OR
    (:func:`natix_miner.models.detection.roadwork_probability`):

        p = 1 - (1 - prior) * Π_i (1 - w_class(i) * score_i)

    ``class_map`` is required (COCO / Objects365 checkpoints have no "roadwork" class; map e.g.
    ``traffic cone`` from an Objects365 model, or the classes of a roadwork fine-tune) and loading fails,
    listing the model's classes, when no key matches.

Options
    ``class_map`` (required), ``threshold`` (default 0.3, the value of the transformers RT-DETR example;
    not tuned here: calibrate on labelled data), ``prior`` (default 0.02), ``dtype``: ``auto`` (fp16 on
    CUDA, fp32 on CPU) | ``fp32`` | ``fp16`` | ``bf16`` (hf_detector), ``revision`` / ``cache_dir`` (hub
    ids), ``gpu_preprocess`` (hf_detector: resize/normalise on the GPU with a torchvision processor,
    default false). ``rfdetr`` only: ``variant`` (``nano|small|medium|base|large``, default ``base``),
    ``model_kwargs`` (extra constructor arguments, e.g. ``resolution``, ``num_classes``), ``optimize``
    (call ``optimize_for_inference(compile=False)``, default false).

Batches are cut into chunks of ``spec.batch_size``; both processors resize every image to the same fixed
size, so mixed sizes batch together and give the same numbers as one-by-one calls.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from loguru import logger
from pydantic import Field

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import Adapter, AdapterError
from natix_miner.models.detection import Detection, normalise_label, roadwork_probability
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_THRESHOLD = 0.3
RFDETR_VARIANTS = {"nano": "RFDETRNano", "small": "RFDETRSmall", "medium": "RFDETRMedium",
                   "base": "RFDETRBase", "large": "RFDETRLarge"}


def checked_class_map(adapter: Adapter, class_names: Iterable[str], default: Any = None,
                      hint: str = "") -> dict[str, float]:
    """``options.class_map`` (else ``default``) validated against the model's class names.

    Missing, or with no key among the model's classes: :class:`AdapterError` listing the classes.
    Keys that match no class are logged and ignored.
    """
    names = [str(n) for n in class_names]
    cmap = adapter.spec.options.get("class_map", default)
    if cmap is None:
        raise AdapterError(f"{adapter.name}: options.class_map is required (detector class name -> roadwork "
                           f"weight); this model's classes are: {', '.join(names[:120])}{hint}")
    cmap = tu.weight_map(adapter, cmap, "class_map")
    known = {normalise_label(n) for n in names}
    matched = [k for k in cmap if normalise_label(k) in known]
    if not matched:
        raise AdapterError(f"{adapter.name}: no key of options.class_map {sorted(cmap)} is a class of this "
                           f"model; its classes are: {', '.join(names[:120])}")
    unknown = sorted(set(cmap) - set(matched))
    if unknown:
        logger.warning("{}: class_map keys not among the model's classes (ignored): {}", adapter.name, unknown)
    return cmap


def votes_from_detections(per_image: list[list[Detection]], class_map: Mapping[str, float], threshold: float,
                          prior: float) -> list[Vote]:
    votes = []
    for dets in per_image:
        p, used = roadwork_probability(dets, class_map, min_score=threshold, prior=prior)
        votes.append(Vote(p, {"detections": [d.to_dict() for d in used[:5]], "n_roadwork": len(used),
                              "n_all": len(dets)}))
    return votes


def post_processed_to_detections(result: Mapping[str, Any], id2label: Mapping[int, str]) -> list[Detection]:
    """One ``post_process_object_detection`` result dict -> :class:`Detection` list."""
    scores = result["scores"].detach().float().cpu().tolist()
    labels = result["labels"].detach().cpu().tolist()
    boxes = result["boxes"].detach().float().cpu().tolist()
    return [Detection(label=str(id2label.get(int(lbl), int(lbl))), score=float(s), box=tuple(float(v) for v in b))
            for s, lbl, b in zip(scores, labels, boxes)]


class DetectorOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: hf_detector`` (see the module docstring), parsed once at build."""

    class_map: Any = None  # required; checked against the model's classes at load (checked_class_map)
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0)
    prior: float = Field(0.02, ge=0.0, le=1.0)


class RFDETROptions(DetectorOptions):
    """``options:`` of ``type: rfdetr``: the detector's plus the rfdetr package's."""

    variant: str = "base"  # checked against RFDETR_VARIANTS at load
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    optimize: bool = False
    weights: str | None = None


class _DetectionVoter(tu.TorchAdapter):
    """``predict`` = noisy-OR over ``self.detections(images)`` mapped through ``self.class_map``."""

    class_map: dict[str, float]
    options_model = DetectorOptions
    opts: DetectorOptions

    def detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        raise NotImplementedError

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        return votes_from_detections(self.detections(images), self.class_map, self.opts.threshold,
                                     self.opts.prior)


@register("hf_detector")
class HFDetectorAdapter(_DetectionVoter):
    released_attrs = ("model", "processor")

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: Any = None
        self.processor: Any = None
        self.dtype = torch.float32
        self.id2label: dict[int, str] = {}
        self.class_map: dict[str, float] = {}
        self._pre: dict[str, Any] = {}

    def load(self, device: str) -> None:
        from transformers import AutoModelForObjectDetection

        loaded = tu.hf_load_image_model(self, AutoModelForObjectDetection, device)
        self.id2label = {int(k): str(v) for k, v in loaded.model.config.id2label.items()}
        self.class_map = checked_class_map(self, self.id2label.values())
        self.finish_load(loaded)
        logger.info("{}: {} ({}) on {} ({}) in {:.2f}s; roadwork classes {}", self.name, loaded.source,
                    type(loaded.model).__name__, self.device, str(self.dtype).replace("torch.", ""),
                    time.perf_counter() - loaded.t0, sorted(self.class_map))

    @torch.inference_mode()
    def detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        """All detections per image above ``options.threshold`` (every class), in input order."""
        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        threshold = self.opts.threshold
        out: list[list[Detection]] = []
        for idx in tu.chunks(len(images), self.spec.batch_size):
            batch = [tu.to_rgb(images[i]) for i in idx]
            inputs = tu.move_inputs(self.processor(images=batch, return_tensors="pt", **self._pre), self.device,
                                    self.dtype)
            outputs = self.model(pixel_values=inputs["pixel_values"])
            outputs.logits = outputs.logits.float()
            outputs.pred_boxes = outputs.pred_boxes.float()
            results = self.processor.post_process_object_detection(
                outputs, threshold=threshold, target_sizes=[(im.height, im.width) for im in batch])
            out.extend(post_processed_to_detections(r, self.id2label) for r in results)
        return out


# ----------------------------------------------------------------------------------------------
# RF-DETR (own package)


def rfdetr_class_names(model: Any) -> dict[int, str]:
    """The model's ``class_names`` as ``{class id: name}`` (rfdetr returns a dict or a list)."""
    names = getattr(model, "class_names", None)
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    raise AdapterError(f"rfdetr model exposes no class_names (got {type(names).__name__})")


def supervision_to_detections(det: Any, class_names: Mapping[int, str]) -> list[Detection]:
    """A ``supervision.Detections`` (``xyxy``, ``confidence``, ``class_id`` arrays) -> :class:`Detection` list."""
    import numpy as np

    xyxy = np.asarray(getattr(det, "xyxy", np.zeros((0, 4))), dtype=float).reshape(-1, 4)
    n = len(xyxy)
    conf = getattr(det, "confidence", None)
    conf = np.ones(n) if conf is None else np.asarray(conf, dtype=float).reshape(-1)
    cls = getattr(det, "class_id", None)
    cls = np.full(n, -1) if cls is None else np.asarray(cls).reshape(-1)
    if len(conf) != n or len(cls) != n:
        raise AdapterError(f"rfdetr returned inconsistent detections: {n} boxes, {len(conf)} scores, "
                           f"{len(cls)} class ids")
    return [Detection(label=class_names.get(int(c), str(int(c))), score=float(s), box=tuple(float(v) for v in b))
            for b, s, c in zip(xyxy.tolist(), conf.tolist(), cls.tolist())]


@register("rfdetr")
class RFDETRAdapter(_DetectionVoter):
    options_model = RFDETROptions
    opts: RFDETROptions
    released_attrs = ("model",)

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: Any = None
        self.class_names: dict[int, str] = {}
        self.class_map: dict[str, float] = {}

    def _weights(self) -> Path:
        raw = self.spec.options.get("weights") or self.spec.model
        if not raw:
            raise AdapterError(f"{self.name}: no weights given (set 'model:' to a local RF-DETR .pth file)")
        path = Path(self.resolve(str(raw))).expanduser()
        if not path.is_file():  # checked here: rfdetr would otherwise try to download a missing file
            raise AdapterError(f"{self.name}: weights file not found: {path} ({tu.DOWNLOAD_HINT})")
        return path

    def load(self, device: str) -> None:
        opts = self.spec.options
        try:
            import rfdetr
        except ImportError as e:
            raise AdapterError(f"{self.name}: the rfdetr package is not installed; pip install rfdetr "
                               f"(it is an optional extra, not a base dependency) ({e})") from e
        variant = str(opts.get("variant", "base")).lower()
        if variant not in RFDETR_VARIANTS:
            raise AdapterError(f"{self.name}: options.variant must be one of {', '.join(RFDETR_VARIANTS)}, "
                               f"got {variant!r}")
        cls = getattr(rfdetr, RFDETR_VARIANTS[variant], None)
        if cls is None:
            raise AdapterError(f"{self.name}: this rfdetr version has no {RFDETR_VARIANTS[variant]}; upgrade rfdetr")
        device = tu.resolve_device(self.name, device)
        path = self._weights()
        kwargs = dict(opts.get("model_kwargs") or {})
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        self.device = device
        try:
            with self._on_device():  # rfdetr accepts only "cpu" / "cuda": pick the GPU via the current device
                model = cls(pretrain_weights=str(path), device=device.split(":")[0], **kwargs)
                if opts.get("optimize"):
                    model.optimize_for_inference(compile=False)
        except Exception as e:  # noqa: BLE001
            raise AdapterError(f"{self.name}: rfdetr could not load {path}: {type(e).__name__}: {e}") from e
        self.model = model
        self.class_names = rfdetr_class_names(model)
        self.class_map = checked_class_map(self, self.class_names.values())
        self.loaded = True
        inner = getattr(getattr(model, "model", None), "model", None)
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, inner)
        logger.info("{}: RF-DETR {} {} on {} in {:.2f}s; roadwork classes {}", self.name, variant, path.name,
                    device, time.perf_counter() - t0, sorted(self.class_map))

    def _on_device(self) -> Any:
        """``torch.cuda.device(N)`` for ``cuda:N`` (rfdetr puts tensors on the current CUDA device)."""
        import contextlib

        if self.device.startswith("cuda:"):
            return torch.cuda.device(int(self.device.split(":", 1)[1]))
        return contextlib.nullcontext()

    def detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        threshold = self.opts.threshold
        out: list[list[Detection]] = []
        for idx in tu.chunks(len(images), self.spec.batch_size):
            batch = [tu.to_rgb(images[i]) for i in idx]
            with self._on_device():
                res = self.model.predict(batch, threshold=threshold)
            res = list(res) if isinstance(res, (list, tuple)) else [res]
            if len(res) != len(batch):
                raise AdapterError(f"{self.name}: rfdetr returned {len(res)} results for {len(batch)} images")
            out.extend(supervision_to_detections(r, self.class_names) for r in res)
        return out
