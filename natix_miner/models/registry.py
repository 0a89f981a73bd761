"""Registry mapping a profile's ``type:`` to an adapter class (timm-style).

Families register with ``@register("name")``. Family modules are imported lazily, only when a
profile asks for their type, so heavy libraries load only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.models.base import Adapter
    from natix_miner.profile import ModelSpec, Profile

# type name -> module that registers it (imported on first use)
_FAMILY_MODULES: dict[str, str] = {
    "fake": "natix_miner.models.fake",
    "efficientnet_lite": "natix_miner.models.efficientnet_lite",
    "hf_classifier": "natix_miner.models.hf_classifier",
    "ultralytics": "natix_miner.models.ultralytics_det",
    "hf_detector": "natix_miner.models.hf_detector",
    "rfdetr": "natix_miner.models.hf_detector",
    "open_vocab_detector": "natix_miner.models.open_vocab",
    "zero_shot": "natix_miner.models.zero_shot",
    "feature_probe": "natix_miner.models.feature_probe",
    "depth_check": "natix_miner.models.depth_check",
    "text_segmenter": "natix_miner.models.text_segmenter",
    "vlm": "natix_miner.models.vlm",
    "timm_classifier": "natix_miner.models.timm_classifier",
}

_REGISTRY: dict[str, type["Adapter"]] = {}


def register(name: str) -> Callable[[type["Adapter"]], type["Adapter"]]:
    def deco(cls: type["Adapter"]) -> type["Adapter"]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model type {name!r} registered twice ({_REGISTRY[name]} and {cls})")
        cls.family = name
        _REGISTRY[name] = cls
        return cls

    return deco


def known_types() -> list[str]:
    return sorted(set(_FAMILY_MODULES) | set(_REGISTRY))


def adapter_class(type_name: str) -> type["Adapter"]:
    if type_name not in _REGISTRY:
        module = _FAMILY_MODULES.get(type_name)
        if module is None:
            raise KeyError(f"unknown model type {type_name!r}; known types: {', '.join(known_types())}")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            from natix_miner.models.base import AdapterError

            raise AdapterError(
                f"model type {type_name!r} needs {module}, which could not be imported ({e}); "
                "install the extra it needs or disable the model in the profile"
            ) from e
        if type_name not in _REGISTRY:
            raise KeyError(f"module {module} did not register model type {type_name!r}")
    return _REGISTRY[type_name]


def build_adapter(spec: "ModelSpec", profile: "Profile | None" = None) -> "Adapter":
    return adapter_class(spec.type)(spec, profile)
