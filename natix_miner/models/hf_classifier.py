"""Hugging Face image classifiers (``type: hf_classifier``).

Covers the official NATIX ViT (``natix-network-org/roadwork``, labels ``Roadwork`` / ``None``) and any
fine-tuned ``AutoModelForImageClassification`` (ConvNeXtV2, DINOv2, EVA, ...), from a hub id already in
the local cache or a local folder holding ``config.json`` + weights + ``preprocessor_config.json``.

How ``p`` is formed
    The image processor resizes/normalises each image exactly as the model was trained, the model gives
    one logit per label, and

        p = Σ_{l ∈ positive labels} softmax(logits)_l

    i.e. the softmax probability of the roadwork label (summed when several labels count as roadwork,
    e.g. ``roadwork_day`` and ``roadwork_night``). For the two-label NATIX ViT this is exactly the
    ``Roadwork`` score of the ``image-classification`` pipeline the NATIX base miner uses. A model with a
    single output logit, or one whose config says ``problem_type: multi_label_classification``, has
    independent sigmoid outputs instead: ``p = max_{l ∈ positive} sigmoid(logit_l)``
    (``options.activation`` overrides the choice).

Options (``options:`` in the profile)
    ``positive_labels``: label names that mean roadwork (case-insensitive; default: every label whose
    lowercase name contains ``roadwork``; loading fails, listing the model's labels, when none match),
    ``activation``: ``softmax`` | ``sigmoid`` (default: inferred as above),
    ``dtype``: ``auto`` (fp16 on CUDA, fp32 on CPU) | ``fp32`` | ``fp16`` | ``bf16``,
    ``revision`` / ``cache_dir``: passed to ``from_pretrained`` for hub ids,
    ``gpu_preprocess``: resize/normalise on the GPU when the processor is a torchvision one (default false).

Batches are cut into chunks of ``spec.batch_size``; the processor resizes to a fixed size, so any mix of
image sizes and colour modes batches together (images are converted to RGB first).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

import torch
from loguru import logger

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


def positive_label_ids(id2label: dict[int, str], wanted: Any, name: str = "model") -> list[int]:
    """Indices of the roadwork labels: ``wanted`` (names, case-insensitive) or every ``*roadwork*`` label."""
    labels = {int(i): str(lbl) for i, lbl in id2label.items()}
    if wanted:
        if isinstance(wanted, str):
            wanted = [wanted]
        want = {str(w).strip().lower() for w in wanted}
        ids = [i for i, lbl in labels.items() if lbl.strip().lower() in want]
        missing = want - {labels[i].strip().lower() for i in ids}
        if missing:
            raise AdapterError(f"{name}: options.positive_labels {sorted(missing)} not among the model's "
                               f"labels {sorted(labels.values())}")
    else:
        ids = [i for i, lbl in labels.items() if "roadwork" in lbl.lower()]
    if not ids:
        raise AdapterError(f"{name}: no roadwork label among the model's labels {sorted(labels.values())}; "
                           "set options.positive_labels to the label(s) that mean roadwork")
    return sorted(ids)


class HFClassifierOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: hf_classifier`` (see the module docstring), parsed once at build."""

    positive_labels: list[str] | str | None = None
    activation: Literal["softmax", "sigmoid"] | None = None


@register("hf_classifier")
class HFClassifierAdapter(tu.TorchAdapter):
    released_attrs = ("model", "processor")
    options_model = HFClassifierOptions
    opts: HFClassifierOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.model: Any = None
        self.processor: Any = None
        self.dtype = torch.float32
        self.positive_ids: list[int] = []
        self.id2label: dict[int, str] = {}
        self.activation = "softmax"
        self._pre: dict[str, Any] = {}

    def load(self, device: str) -> None:
        from transformers import AutoModelForImageClassification

        loaded = tu.hf_load_image_model(self, AutoModelForImageClassification, device)
        model = loaded.model
        self.id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.positive_ids = positive_label_ids(self.id2label, self.opts.positive_labels, self.name)
        act = self.opts.activation  # softmax | sigmoid, checked at build
        if act is None:
            multi = getattr(model.config, "problem_type", None) == "multi_label_classification"
            act = "sigmoid" if multi or model.config.num_labels == 1 else "softmax"
        self.activation = act
        self.finish_load(loaded)
        logger.info("{}: {} on {} ({}, roadwork labels {}, {}) in {:.2f}s", self.name, loaded.source, self.device,
                    str(self.dtype).replace("torch.", ""), [self.id2label[i] for i in self.positive_ids],
                    self.activation, time.perf_counter() - loaded.t0)

    @torch.inference_mode()
    def probabilities(self, images: "list[Image.Image]") -> torch.Tensor:
        """Per-label probabilities (softmax or sigmoid), one row per image, on the CPU in fp32."""
        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        rows = []
        for idx in tu.chunks(len(images), self.spec.batch_size):
            batch = [tu.to_rgb(images[i]) for i in idx]
            inputs = tu.move_inputs(self.processor(images=batch, return_tensors="pt", **self._pre), self.device,
                                    self.dtype)
            logits = self.model(pixel_values=inputs["pixel_values"]).logits.float()
            probs = logits.softmax(-1) if self.activation == "softmax" else logits.sigmoid()
            rows.append(probs.cpu())
        return torch.cat(rows) if rows else torch.zeros((0, len(self.id2label)))

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        probs = self.probabilities(images)
        pos = probs[:, self.positive_ids]
        p_all = pos.sum(-1) if self.activation == "softmax" else pos.max(-1).values
        votes = []
        for row, p in zip(probs.tolist(), p_all.tolist()):
            top = max(range(len(row)), key=row.__getitem__)
            votes.append(Vote(min(1.0, max(0.0, float(p))),
                              {"top": self.id2label.get(top, str(top)), "top_p": round(row[top], 4)}))
        return votes
