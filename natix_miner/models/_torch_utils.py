"""Small helpers shared by the torch-based adapter families (classifiers, detectors, open-vocab).

- :func:`resolve_device` turns a profile device (``auto``/``cpu``/``cuda``/``cuda:N``) into a real one,
- :func:`resolve_dtype` maps ``options.dtype`` (``auto``/``fp32``/``fp16``/``bf16``) to a torch dtype:
  half precision only on CUDA, CPU always runs fp32,
- :func:`model_source` / :func:`hf_load` load Hugging Face artefacts from a local folder or a hub id
  that is already in the local cache (``local_files_only`` when ``HF_HUB_OFFLINE`` is set), and turn
  every failure into an :class:`AdapterError` that says what to do,
- :func:`size_groups` splits a batch into chunks of at most ``batch_size`` images of equal size, so a
  batched call gives the same numbers as one-by-one calls even where a processor pads to the largest
  image of the batch,
- :func:`cuda_allocated` / :func:`loaded_memory_mb` measure what a load cost,
- :class:`TorchAdapter`: the base class of the torch families: ``unload()`` drops the attributes
  named in ``released_attrs`` and empties the CUDA cache; ``finish_load(HFLoaded)`` ends a
  transformers load (model on its device in eval mode, processor, dtype, measured memory).

torch is imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from natix_miner.models.base import Adapter, AdapterError, FamilyOptions

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

DOWNLOAD_HINT = "run scripts/download_models.py on a machine with internet to fetch it into the local cache"
_LOCAL_SUFFIXES = (".pt", ".pth", ".engine", ".onnx", ".safetensors", ".bin", ".torchscript", ".npz")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("TRANSFORMERS_OFFLINE")


def resolve_device(name: str, device: str) -> str:
    """``auto`` -> ``cuda:0`` when available else ``cpu``; a CUDA device without CUDA is an error.

    A bare ``cuda`` becomes ``cuda:0``: an explicit index, because "the current CUDA device" is process
    state that libraries change behind our back (ultralytics calls ``torch.cuda.set_device`` when it
    predicts on ``cuda:1``), and a model loaded later on plain ``cuda`` would then land on the wrong GPU.
    """
    import torch

    device = (device or "auto").strip()
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise AdapterError(f"{name}: device {device!r} requested but CUDA is not available")
        if device == "cuda":
            return "cuda:0"
        if ":" in device and int(device.split(":", 1)[1]) >= torch.cuda.device_count():
            raise AdapterError(f"{name}: device {device!r} does not exist "
                               f"({torch.cuda.device_count()} CUDA device(s) visible)")
    elif device != "cpu":
        raise AdapterError(f"{name}: unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    return device


_DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
           "half": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def resolve_dtype(name: str, option: Any, device: str, default_cuda: str = "fp16") -> "torch.dtype":
    """The compute dtype: ``auto`` (default) is ``default_cuda`` on CUDA and fp32 on CPU.

    Half precision on CPU is slow or unsupported for many kernels, so it is refused there with a
    warning and fp32 is used.
    """
    import torch
    from loguru import logger

    key = str(option or "auto").strip().lower()
    if key == "auto":
        key = default_cuda if device.startswith("cuda") else "fp32"
    if key not in _DTYPES:
        raise AdapterError(f"{name}: options.dtype must be auto, fp32, fp16 or bf16, got {option!r}")
    dtype = getattr(torch, _DTYPES[key])
    if dtype != torch.float32 and not device.startswith("cuda"):
        logger.warning("{}: dtype {} requested on {}; using fp32 (half precision only on CUDA)", name, key, device)
        return torch.float32
    return dtype


def looks_like_local_path(value: str) -> bool:
    """A local file/folder reference rather than a hub id (``org/name``)."""
    v = value.strip()
    return (v.startswith(("/", "./", "../", "~", "\\")) or v.lower().endswith(_LOCAL_SUFFIXES)
            or v.count("/") > 1 or Path(v).expanduser().exists())


def model_source(adapter: "Adapter", value: str | None = None) -> tuple[str, bool]:
    """``(source, is_local)`` for ``value`` (default ``spec.model``), resolved against the profile.

    A value that looks like a path but does not exist is an :class:`AdapterError`.
    """
    raw = value if value is not None else adapter.spec.model
    if not raw:
        raise AdapterError(f"{adapter.name}: no model given (set 'model:' to a hub id or a local folder)")
    resolved = adapter.resolve(str(raw))
    p = Path(resolved).expanduser()
    if p.exists():
        return str(p), True
    if looks_like_local_path(str(raw)):
        raise AdapterError(f"{adapter.name}: local model path not found: {resolved}")
    return str(raw), False


def hf_load(adapter: "Adapter", loader: Any, source: str, is_local: bool, what: str = "model",
            **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, ...)`` without ever downloading when offline.

    ``options.revision`` and ``options.cache_dir`` are passed through. Any failure becomes an
    :class:`AdapterError` naming the model; for hub ids it adds how to fetch the files.
    """
    opts = adapter.spec.options
    kw: dict[str, Any] = {"local_files_only": is_local or hub_offline()}
    if not is_local:
        if opts.get("revision"):
            kw["revision"] = str(opts["revision"])
        if opts.get("cache_dir"):
            kw["cache_dir"] = adapter.resolve(str(opts["cache_dir"]))
    kw.update(kwargs)
    try:
        return loader.from_pretrained(source, **kw)
    except Exception as e:  # noqa: BLE001 - every loader failure must become an AdapterError
        if is_local:
            raise AdapterError(f"{adapter.name}: could not load the {what} from local folder {source}: "
                               f"{type(e).__name__}: {e}") from e
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise AdapterError(f"{adapter.name}: could not load the {what} for hub id {source!r}{offline}; "
                           f"if it is not in the local Hugging Face cache, {DOWNLOAD_HINT} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


@dataclass
class HFLoaded:
    """What :func:`hf_load_image_model` loaded, for the adapter to finish with :func:`hf_finish_load`."""

    device: str
    dtype: Any
    source: str
    processor: Any
    model: Any
    t0: float
    memory_before: Any


def hf_load_image_model(adapter: "Adapter", model_loader: Any, device: str) -> HFLoaded:
    """The load prologue shared by the transformers image adapters: resolve device and dtype
    (``options.dtype``), then the image processor and the model (``model_loader.from_pretrained``,
    through :func:`hf_load`), on the CPU; :func:`hf_finish_load` moves the model to ``device``."""
    import time

    from transformers import AutoImageProcessor

    device = resolve_device(adapter.name, device)
    dtype = resolve_dtype(adapter.name, adapter.spec.options.get("dtype"), device)
    source, is_local = model_source(adapter)
    t0 = time.perf_counter()
    before = cuda_allocated(device)
    processor = hf_load(adapter, AutoImageProcessor, source, is_local, what="image processor")
    model = hf_load(adapter, model_loader, source, is_local, what="model", dtype=dtype)
    return HFLoaded(device, dtype, source, processor, model, t0, before)


def hf_finish_load(adapter: "Adapter", loaded: HFLoaded) -> None:
    """Compatibility wrapper: :meth:`TorchAdapter.finish_load` for adapters that are not (yet) a
    :class:`TorchAdapter`; new code calls ``self.finish_load(loaded)``."""
    TorchAdapter.finish_load(adapter, loaded)  # type: ignore[arg-type]


class TorchFamilyOptions(FamilyOptions):
    """Options every transformers-loaded family understands (read by the helpers above)."""

    dtype: str | None = None  # auto | fp32 | fp16 | bf16 (checked by resolve_dtype at load)
    revision: str | None = None  # hub revision for from_pretrained
    cache_dir: str | None = None  # hub cache folder
    gpu_preprocess: bool = False  # resize/normalise on the GPU with a torchvision processor


class TorchAdapter(Adapter):
    """Base class of the torch-based families: shared load epilogue and unload.

    ``released_attrs`` names the attributes ``unload()`` sets to None (the model and whatever holds
    tensors); ``unload()`` then marks the adapter unloaded and empties the CUDA cache on CUDA.
    ``warmup()`` is the contract's default (one realistic dummy batch).
    """

    released_attrs: ClassVar[tuple[str, ...]] = ("model",)

    def finish_load(self, loaded: HFLoaded) -> None:
        """Move the model to its device in eval mode and set ``model``, ``processor``, ``dtype``,
        ``_pre`` (processor kwargs), ``device``, ``loaded`` and ``measured_memory_mb``."""
        self.model = loaded.model.to(loaded.device).eval()
        self.processor = loaded.processor
        self.dtype = loaded.dtype
        self._pre = preprocess_kwargs(self, loaded.processor, loaded.device)
        self.device = loaded.device
        self.loaded = True
        self.measured_memory_mb = loaded_memory_mb(loaded.device, loaded.memory_before, self.model)

    def unload(self) -> None:
        for name in self.released_attrs:
            setattr(self, name, None)
        super().unload()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def to_rgb(image: "Image.Image") -> "Image.Image":
    return image if image.mode == "RGB" else image.convert("RGB")


def size_groups(images: Sequence["Image.Image"], batch_size: int) -> list[list[int]]:
    """Indices of ``images`` grouped by size, each group split into chunks of ``batch_size``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.size), []).append(i)
    bs = max(1, int(batch_size))
    return [idx[k:k + bs] for idx in groups.values() for k in range(0, len(idx), bs)]


def chunks(n: int, batch_size: int) -> list[list[int]]:
    bs = max(1, int(batch_size))
    return [list(range(k, min(n, k + bs))) for k in range(0, n, bs)]


def preprocess_kwargs(adapter: "Adapter", processor: Any, device: str) -> dict[str, Any]:
    """``{"device": device}`` when ``options.gpu_preprocess`` is true, the device is CUDA and the (image)
    processor is a torchvision one: resizing/normalising then runs on the GPU instead of the CPU."""
    if not adapter.spec.options.get("gpu_preprocess") or not device.startswith("cuda"):
        return {}
    try:
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # pragma: no cover - older transformers
        return {}
    ip = getattr(processor, "image_processor", processor)
    return {"device": device} if isinstance(ip, TorchvisionBackend) else {}


def move_inputs(inputs: Any, device: str, dtype: "torch.dtype") -> dict[str, Any]:
    """Tensors of a processor output onto ``device``; floating ones cast to ``dtype``."""
    import torch

    out: dict[str, Any] = {}
    for k, v in dict(inputs).items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def cuda_allocated(device: str) -> int:
    """Bytes currently allocated by torch on ``device`` (0 on CPU)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return 0
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    return int(torch.cuda.memory_allocated(dev))


def module_bytes(*modules: Any) -> int:
    """Bytes of the parameters and buffers of torch modules (None entries ignored)."""
    total = 0
    seen: set[int] = set()
    for m in modules:
        if m is None or not hasattr(m, "parameters"):
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def loaded_memory_mb(device: str, before_bytes: int, *modules: Any) -> float:
    """Memory a load cost: the CUDA allocation delta on CUDA, parameter+buffer bytes on CPU."""
    if device.startswith("cuda"):
        return max(0, cuda_allocated(device) - before_bytes) / 2**20
    return module_bytes(*modules) / 2**20


def float_option(adapter: "Adapter", key: str, default: float, lo: float = 0.0, hi: float = 1.0) -> float:
    v = adapter.spec.options.get(key, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise AdapterError(f"{adapter.name}: options.{key} must be a number, got {v!r}") from None
    if not lo <= f <= hi:
        raise AdapterError(f"{adapter.name}: options.{key} must be in [{lo}, {hi}], got {v!r}")
    return f


def weight_map(adapter: "Adapter", value: Any, key: str) -> dict[str, float]:
    """A ``{label: weight}`` mapping from a dict, or a list of labels (weight 1.0 each)."""
    if isinstance(value, (list, tuple)):
        value = {str(v): 1.0 for v in value}
    if not isinstance(value, dict) or not value:
        raise AdapterError(f"{adapter.name}: options.{key} must be a non-empty mapping of label -> weight "
                           f"(or a list of labels), got {value!r}")
    out: dict[str, float] = {}
    for k, v in value.items():
        try:
            w = float(v)
        except (TypeError, ValueError):
            raise AdapterError(f"{adapter.name}: options.{key}[{k!r}] must be a number, got {v!r}") from None
        if not 0.0 <= w <= 1.0:
            raise AdapterError(f"{adapter.name}: options.{key}[{k!r}] must be in [0, 1], got {v!r}")
        out[str(k)] = w
    return out
