"""Small heads on top of frozen backbone features, and their file format.

A head maps a feature vector (from any backbone adapter's ``features(images)``: EfficientNet-Lite0
today, a DINOv2/CLIP ``feature_probe`` later) to one roadwork logit. Two kinds:

- ``linear``: standardise (stored mean/std) then one linear layer (a logistic regression);
- ``mlp``: standardise, ``Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, 1)``.

File format (``head.pt``, loadable with ``torch.load(weights_only=True)``)::

    {"format": "natix-head/1", "kind": "linear"|"mlp", "in_dim": int, "hidden": int,
     "state_dict": {...tensors...}, "meta": {...}}

``meta`` is plain JSON-able data the consumer needs at inference: ``backbone`` (adapter type it was
trained on), ``pooling`` / ``short_side`` / ``max_long_side`` (how features were made),
``threshold`` (MCC-optimal decision threshold on the validation predictions; the profile's
``calibration.threshold`` remaps it to 0.5), ``feature_dim`` and a short ``provenance`` summary. The
full provenance (data sources, licences, counts, file-list hash, training args) lives next to the
head in ``provenance.json``, the held-out metrics in ``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

HEAD_FORMAT = "natix-head/1"
HEAD_KINDS = ("linear", "mlp")


def build_head(kind: str, in_dim: int, hidden: int = 256, dropout: float = 0.2) -> torch.nn.Module:
    """A fresh head module (standardisation buffers start at mean 0, std 1)."""
    import torch
    from torch import nn

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("std", torch.ones(in_dim))
            if kind == "linear":
                self.net = nn.Linear(in_dim, 1)
            elif kind == "mlp":
                self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, 1))
            else:
                raise ValueError(f"unknown head kind {kind!r}; known: {', '.join(HEAD_KINDS)}")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.mean) / self.std).squeeze(-1)

    return Head()


def save_head(path: str | Path, head: torch.nn.Module, kind: str, meta: dict[str, Any],
              hidden: int = 256) -> Path:
    """Write ``head`` and ``meta`` to ``path`` (parent folders are created)."""
    import torch

    json.dumps(meta)  # fail early on anything that is not plain JSON data
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    in_dim = int(head.mean.numel())
    state = {k: v.detach().cpu().float().contiguous() for k, v in head.state_dict().items()}
    torch.save({"format": HEAD_FORMAT, "kind": kind, "in_dim": in_dim, "hidden": int(hidden),
                "state_dict": state, "meta": meta}, path)
    return path


@dataclass
class LoadedHead:
    """A head ready for inference: ``logits(features)`` -> one logit per row."""

    module: Any
    kind: str
    in_dim: int
    meta: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    path: str = ""

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    def logits(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        import numpy as np
        import torch

        x = torch.as_tensor(np.asarray(features, dtype=np.float32) if not isinstance(features, torch.Tensor)
                            else features.float())
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"head {self.path or ''} expects (n, {self.in_dim}) features, got {tuple(x.shape)}")
        with torch.inference_mode():
            return self.module(x.to(self.device)).float().cpu().numpy()

    def probabilities(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        import numpy as np

        z = np.clip(self.logits(features), -60, 60)
        return 1.0 / (1.0 + np.exp(-z))


def load_head(path: str | Path, device: str = "cpu") -> LoadedHead:
    """Load a ``head.pt`` written by :func:`save_head` (a folder means ``folder/head.pt``)."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "head.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path}: not a natix head file (format {HEAD_FORMAT})")
    kind, in_dim, hidden = blob["kind"], int(blob["in_dim"]), int(blob.get("hidden", 256))
    module = build_head(kind, in_dim, hidden)
    module.load_state_dict(blob["state_dict"], strict=True)
    module.eval().to(device)
    return LoadedHead(module=module, kind=kind, in_dim=in_dim, meta=dict(blob.get("meta", {})),
                      device=device, path=str(path))
