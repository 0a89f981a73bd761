"""The export folder ``OUT/model/``: everything needed to serve the model again, offline.

* ``model.safetensors``: the weights of :class:`~natix_miner.training.models.BinaryClassifier`;
* ``config.json``: ``format``, ``kind`` (timm | hf | lite), ``name``, ``arch``, ``image_size``, the
  preprocessing (``mean``, ``std``, ``resize``), ``temperature`` and ``threshold`` fitted on the validation
  split (never on the test split), the transformers config for ``hf`` models, the timm kwargs for timm ones;
* ``model_card.json``: backbone licence, data sources, metrics, training settings.

``p = sigmoid(logit / temperature)``; ``threshold`` is the MCC@50/50-optimal cut on that ``p`` and belongs in the
profile's ``calibration.threshold`` (:func:`profile_snippet` prints it). :func:`load_export` rebuilds the model
without any download (the adapter :mod:`natix_miner.models.timm_classifier` uses it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "natix-miner-binary-classifier/1"


class ExportError(ValueError):
    """A folder that is not a loadable export."""


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """Temperature ``T`` minimising the NLL of ``sigmoid(z / T)`` (LBFGS on log T); 1.0 when it cannot be fitted."""
    import torch

    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if len(z) < 2 or len(set(y.tolist())) < 2:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def closure():
        opt.zero_grad()
        loss = loss_fn(z / log_t.clamp(-5, 5).exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().clamp(-5, 5).exp())
    return t if math.isfinite(t) else 1.0


def calibrated(logits, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def write_export(out_dir: str | Path, model: Any, *, resize: str, temperature: float, threshold: float,
                 card: dict[str, Any]) -> Path:
    """Write ``out_dir`` (the ``model/`` folder); returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": FORMAT})
    config = {"format": FORMAT, **model.spec(), "resize": resize, "temperature": float(temperature),
              "threshold": float(threshold)}
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str))
    (out / "model_card.json").write_text(json.dumps({"model": model.name, "kind": model.kind, "arch": model.arch,
                                                     "licence": config.get("licence", "unknown"), **card},
                                                    indent=2, default=str))
    return out


def read_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file() or not (folder / "model.safetensors").is_file():
        raise ExportError(f"{folder}: not a training export (needs config.json and model.safetensors; "
                          "make one with scripts/train.py)")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ExportError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    return config


def load_export(folder: str | Path, device: str = "cpu"):
    """``(model, config)``: the exported network in eval mode on ``device``; never downloads."""
    from safetensors.torch import load_file

    from natix_miner.training.models import build_from_spec

    config = read_config(folder)
    model = build_from_spec(config)
    model.load_state_dict(load_file(str(Path(folder) / "model.safetensors")), strict=True)
    return model.eval().to(device), config


def profile_snippet(folder: str | Path, name: str = "finetune") -> str:
    """A profile YAML fragment: the export as the first tier, its threshold as ``calibration.threshold``."""
    cfg = read_config(folder)
    return (f"calibration:\n  threshold: {cfg['threshold']:.4f}  # fitted on the validation split\n"
            f"tiers:\n  - name: finetune\n    exit_threshold: 0.95\n    models:\n"
            f"      - name: {name}\n        type: timm_classifier\n        model: {Path(folder).resolve()}\n"
            f"        licence: {cfg.get('licence', 'see model_card.json')}\n        device: auto\n"
            f"        batch_size: 16\n")


def push_to_hub(folder: str | Path, repo: str, *, private: bool = True, token: str | None = None) -> str:
    """Upload the export folder to the Hugging Face model repo ``repo`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi

    read_config(folder)
    api = HfApi(token=token)
    api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                      commit_message="natix-miner training export")
    return f"https://huggingface.co/{repo}"
