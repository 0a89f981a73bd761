"""Ultralytics detectors (``type: ultralytics``): YOLO11 / YOLO26 / RT-DETR ``.pt``, TensorRT ``.engine``,
ONNX ``.onnx`` (any format ``ultralytics.YOLO(path)`` opens), and YOLOE / YOLO-World open-vocabulary
checkpoints driven by text prompts.

``spec.model`` is a local weights file (relative to the profile or the repo root). Nothing is ever
downloaded: a missing file is an :class:`AdapterError` (fetch or export it first with
scripts/download_models.py / scripts/export_tensorrt.py). ``YOLO_OFFLINE=1`` is set (unless already set)
before ultralytics is imported, so it makes no connectivity checks or analytics calls.
``YOLO(path)`` routes RT-DETR, YOLOE and YOLO-World checkpoints to their own classes by itself.

How ``p`` is formed
    Each image gives boxes with a class name and a confidence (ultralytics' own letterbox, NMS for YOLO,
    none needed for RT-DETR/YOLO26 end-to-end heads). Detections whose class is in ``options.class_map``
    (class name -> weight in [0, 1]) and whose confidence is at least ``options.conf`` are combined with
    the shared noisy-OR of :mod:`natix_miner.models.detection`:

        p = 1 - (1 - prior) * Π_i (1 - w_class(i) * conf_i)

    COCO has no cone / barrier / roadwork-sign class, so a COCO checkpoint needs a roadwork fine-tune (its
    class names go in the map) or YOLOE prompts; ``class_map`` is therefore required unless
    ``options.prompts`` is given, and loading fails, listing the model's classes, when no key of the map
    is one of them.

Options
    ``class_map``: ``{class name: weight}`` (or a list of names, weight 1.0 each),
    ``prompts``: YOLOE / YOLO-World text classes, ``{prompt: weight}`` or a list (``true`` = the default
    roadwork vocabulary :data:`~natix_miner.models.detection.ROADWORK_PROMPTS`); they become the model's
    classes via ``model.set_classes(prompts, model.get_text_pe(prompts))`` and the class map defaults to
    the prompt weights. Text embeddings need the model's text encoder weights locally; alternatively
    ``prompt_embeddings``: an ``.npz`` written by ``YOLOE.save_prompt_embeddings`` (no text encoder needed),
    ``imgsz`` (default 640), ``conf`` (default 0.25, ultralytics' own default), ``iou`` (NMS, default 0.7),
    ``max_det`` (default 100), ``prior`` (default 0.02), ``task`` (for exported files whose metadata
    lacks it; default ``detect``), ``dtype``: ``auto`` (fp16 on CUDA for ``.pt``) | ``fp32`` | ``fp16``.

Batches: images are grouped by size (ultralytics letterboxes a batch of equal shapes to the smallest
rectangle but pads mixed shapes to a square, so grouping keeps batched results equal to one-by-one ones)
and each group is cut into chunks of ``spec.batch_size``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from loguru import logger
from pydantic import Field

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError, FamilyOptions
from natix_miner.models.detection import ROADWORK_PROMPTS, Detection
from natix_miner.models.hf_detector import checked_class_map, votes_from_detections
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

SUPPORTED_SUFFIXES = (".pt", ".engine", ".onnx", ".torchscript", ".mlpackage", ".tflite")


def results_to_detections(result: Any, names: dict[int, str] | None = None) -> list[Detection]:
    """One ultralytics ``Results`` -> :class:`Detection` list (class name, confidence, xyxy box)."""
    boxes = getattr(result, "boxes", None)
    if boxes is None or len(boxes) == 0:
        return []
    names = names or result.names
    cls = boxes.cls.detach().cpu().tolist()
    conf = boxes.conf.detach().cpu().tolist()
    xyxy = boxes.xyxy.detach().cpu().tolist()
    return [Detection(label=str(names.get(int(c), int(c)) if isinstance(names, dict) else names[int(c)]),
                      score=float(s), box=tuple(float(v) for v in b))
            for c, s, b in zip(cls, conf, xyxy)]


class UltralyticsOptions(FamilyOptions):
    """``options:`` of ``type: ultralytics`` (see the module docstring), parsed once at build."""

    class_map: Any = None  # checked against the model's classes at load (checked_class_map)
    prompts: Any = None  # true | {prompt: weight} | [prompt, ...]
    prompt_embeddings: str | None = None
    imgsz: int = Field(640, ge=1)
    conf: float = Field(0.25, ge=0.0, le=1.0)
    iou: float = Field(0.7, ge=0.0, le=1.0)
    max_det: int = Field(100, ge=1)
    prior: float = Field(0.02, ge=0.0, le=1.0)
    task: str | None = None
    dtype: str | None = None
    weights: str | None = None


@register("ultralytics")
class UltralyticsAdapter(tu.TorchAdapter):
    options_model = UltralyticsOptions
    opts: UltralyticsOptions
    released_attrs = ("model",)

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: Any = None
        self.class_map: dict[str, float] = {}
        self.names: dict[int, str] = {}
        self.half = False
        self.is_torch = False
        self.weights_path = ""
        self._half_arg: tuple[str, Any] = ("quantize", 16)

    # -- options -------------------------------------------------------------------------
    def _weights(self) -> Path:
        raw = self.spec.options.get("weights") or self.spec.model
        if not raw:
            raise AdapterError(f"{self.name}: no weights given (set 'model:' to a .pt/.engine/.onnx file)")
        path = Path(self.resolve(str(raw))).expanduser()
        if not path.exists():
            raise AdapterError(f"{self.name}: weights file not found: {path} (nothing is downloaded at run time; "
                               f"{tu.DOWNLOAD_HINT}, or export it with scripts/export_tensorrt.py)")
        if path.is_file() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise AdapterError(f"{self.name}: unsupported weights file {path.name}; expected one of "
                               f"{', '.join(SUPPORTED_SUFFIXES)} or an exported model folder")
        return path

    def _prompts(self) -> dict[str, float] | None:
        prompts = self.spec.options.get("prompts")
        if prompts is None or prompts is False:
            return None
        if prompts is True:
            return dict(ROADWORK_PROMPTS)
        return tu.weight_map(self, prompts, "prompts")

    # -- contract ------------------------------------------------------------------------
    def load(self, device: str) -> None:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        opts = self.spec.options
        device = tu.resolve_device(self.name, device)
        path = self._weights()
        self.weights_path = str(path)
        dtype = tu.resolve_dtype(self.name, opts.get("dtype"), device)
        if dtype == torch.bfloat16:
            raise AdapterError(f"{self.name}: ultralytics runs fp32 or fp16 only (options.dtype)")
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        try:
            task = opts.get("task") if path.suffix.lower() == ".pt" else opts.get("task", "detect")
            model = YOLO(str(path), task=task)
        except Exception as e:  # noqa: BLE001
            raise AdapterError(f"{self.name}: ultralytics could not open {path}: {type(e).__name__}: {e}") from e
        self.is_torch = isinstance(model.model, torch.nn.Module)
        self.half = dtype == torch.float16 and self.is_torch
        from ultralytics.cfg import DEFAULT_CFG_DICT  # 8.4 replaced predict(half=True) by quantize=16

        self._half_arg = ("quantize", 16) if "quantize" in DEFAULT_CFG_DICT else ("half", True)
        prompts = self._prompts()
        if opts.get("prompt_embeddings"):
            emb = Path(self.resolve(str(opts["prompt_embeddings"])))
            if not emb.is_file():
                raise AdapterError(f"{self.name}: options.prompt_embeddings file not found: {emb}")
            if not hasattr(model, "load_prompt_embeddings"):
                raise AdapterError(f"{self.name}: {type(model).__name__} model cannot load prompt embeddings "
                                   "(only YOLOE checkpoints can)")
            try:
                model.load_prompt_embeddings(str(emb))
            except Exception as e:  # noqa: BLE001
                raise AdapterError(f"{self.name}: could not load prompt embeddings {emb}: {e}") from e
        elif prompts is not None:
            self._set_prompts(model, list(prompts))
        if self.is_torch:
            model.model.to(device)
        self.model = model
        self.names = {int(k): str(v) for k, v in dict(model.names).items()}
        default = prompts if prompts is not None else (
            dict.fromkeys(self.names.values(), 1.0) if opts.get("prompt_embeddings") else None)
        self.class_map = checked_class_map(self, self.names.values(), default=default, hint=(
            ". COCO has no cone or barrier class: use a roadwork fine-tune or YOLOE options.prompts"))
        self.device = device
        self.loaded = True
        if not self.is_torch:  # exported engines allocate on first use: measure after one dummy call
            from PIL import Image

            self._run([Image.new("RGB", (64, 64), (114, 114, 114))])
        if self.is_torch or device.startswith("cuda"):
            self.measured_memory_mb = tu.loaded_memory_mb(device, before, model.model if self.is_torch else None)
        else:  # an exported file on the CPU: its size is the best cheap estimate
            self.measured_memory_mb = _path_size(path) / 2**20
        logger.info("{}: {} ({}) on {} ({}) in {:.2f}s; roadwork classes {}", self.name, path.name,
                    type(model).__name__, device, "fp16" if self.half else "fp32", time.perf_counter() - t0,
                    sorted(self.class_map))

    def _set_prompts(self, model: Any, prompts: list[str]) -> None:
        if not hasattr(model, "set_classes"):
            raise AdapterError(f"{self.name}: options.prompts needs an open-vocabulary checkpoint (YOLOE or "
                               f"YOLO-World); {Path(self.weights_path).name} is a {type(model).__name__} "
                               "with fixed classes: use options.class_map")
        try:
            if hasattr(model, "get_text_pe"):  # YOLOE
                model.set_classes(prompts, model.get_text_pe(prompts))
            else:  # YOLO-World
                model.set_classes(prompts)
        except Exception as e:  # noqa: BLE001 - typically the text encoder weights are missing offline
            raise AdapterError(f"{self.name}: could not embed the text prompts ({type(e).__name__}: {e}); the "
                               f"text encoder weights must be local ({tu.DOWNLOAD_HINT}) or pass "
                               "options.prompt_embeddings (an .npz from save_prompt_embeddings)") from e

    def _run(self, batch: "list[Image.Image]") -> list[Any]:
        o = self.opts  # parsed once, at build
        kw: dict[str, Any] = dict([self._half_arg]) if self.half else {}
        return self.model.predict(batch, imgsz=o.imgsz, conf=o.conf, iou=o.iou, max_det=o.max_det,
                                  device=self.device, verbose=False, **kw)

    def detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        """Raw detections per image (all classes), in input order."""
        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        rgb = [tu.to_rgb(im) for im in images]
        out: list[list[Detection]] = [[] for _ in images]
        for idx in tu.size_groups(rgb, self.spec.batch_size):
            results = self._run([rgb[i] for i in idx])
            for i, r in zip(idx, results):
                out[i] = results_to_detections(r, self.names)
        return out

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        return votes_from_detections(self.detections(images), self.class_map, self.opts.conf, self.opts.prior)


def _path_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
