"""Datasets, the collate that drops unreadable images, and one sampler for every case.

* :class:`ImageDataset` returns ``None`` for an image that cannot be decoded (a 10-hour run never dies at hour
  9 on one bad file); :func:`collate` drops those and reports their keys, the loop counts them.
* :class:`EpochSampler` draws an epoch's indices from a generator seeded by ``(seed, epoch)``: class-balanced
  with replacement from ``weights`` (the ``WeightedRandomSampler`` draw), or a permutation without. Under DDP
  the epoch's draw is cut to a multiple of the world size and rank ``r`` takes positions ``r, r+W, ...``, so
  the ranks share one draw and never the same position (disjoint data). ``skip`` drops the first items of the
  epoch: a resumed run continues mid-epoch without loading the batches it already trained on.
* :func:`distill_loss` is the training loss: binary cross-entropy on hard labels, and knowledge distillation with a
  temperature on soft targets (pseudo labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ImageDataset(Dataset):
    """``samples[i]`` -> dict(x, target, label, key, condition, source) or ``None`` when unreadable.

    ``train``: the transform draws from a generator seeded by (seed, epoch, index, draw): the same
    augmentation for the same sample in the same epoch, whichever worker loads it.
    """

    def __init__(self, samples: Sequence[Any], load: Callable[[Any], Any], spec: Any, *, train: bool,
                 seed: int = 0, unreadable: tuple[type[BaseException], ...] = (OSError, ValueError)):
        self.samples = list(samples)
        self.load = load
        self.spec = spec
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.unreadable = unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any] | None:
        index, draw = item if isinstance(item, tuple) else (item, 0)
        s = self.samples[index]
        try:
            image = self.load(s)
        except self.unreadable:
            return {"skipped": s.key}
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index, draw])
            x, cond = self.spec.train(image, rng)
        else:
            x, cond = self.spec.eval(image), "eval"
        return {"x": x, "target": float(s.target), "label": int(s.label), "key": s.key, "source": s.source,
                "condition": getattr(s, "condition", "real"), "view": cond}


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stack the readable items; ``skipped`` lists the keys of the unreadable ones."""
    good = [it for it in items if it is not None and "x" in it]
    out: dict[str, Any] = {"skipped": [it["skipped"] for it in items if it is not None and "skipped" in it],
                           "n": len(good)}
    if good:
        out["x"] = torch.stack([it["x"] for it in good])
        out["target"] = torch.tensor([it["target"] for it in good], dtype=torch.float32)
        out["soft"] = torch.tensor([is_soft(it["condition"], it["target"]) for it in good], dtype=torch.bool)
        for k in ("label", "key", "source", "condition", "view"):
            out[k] = [it[k] for it in good]
    return out


def is_soft(condition: str, target: float) -> bool:
    """A soft target (distilled with the temperature): a pseudo label, or any target that is not exactly 0 or 1."""
    return condition == "pseudo" or target not in (0.0, 1.0)


def distill_loss(logits: torch.Tensor, target: torch.Tensor, soft: torch.Tensor | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
    """Mean loss of a batch: ``BCE(logit, target)`` for hard labels; for soft targets (``soft`` True) with
    temperature T, the binary form of Hinton et al.'s distillation loss ``T² · BCE(logit / T, p')`` where the
    teacher's probability is softened as ``p' = sigmoid(logit(p) / T)`` and the student's logit is divided by T
    alike (``T²`` keeps the gradient scale independent of T). ``T = 1`` is plain BCE on the soft targets."""
    import torch.nn.functional as F

    hard = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if soft is None or temperature == 1.0 or not bool(soft.any()):
        return hard.mean()
    t = float(temperature)
    p = target.clamp(1e-6, 1 - 1e-6)
    p_soft = torch.sigmoid(torch.logit(p) / t)
    kd = F.binary_cross_entropy_with_logits(logits / t, p_soft, reduction="none") * (t * t)
    return torch.where(soft.to(logits.device), kd, hard).mean()


class EpochSampler(Sampler):
    """Yields ``(index, draw)`` pairs for this rank (see the module docstring)."""

    def __init__(self, n: int, *, weights: Sequence[float] | None = None, num_samples: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0):
        if n <= 0:
            raise ValueError("no samples to draw from")
        self.n = n
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        total = int(num_samples or n)
        self.total = total - total % world_size
        if self.total == 0:
            raise ValueError(f"{total} samples cannot be shared by {world_size} ranks")
        self.rank, self.world_size, self.seed = rank, world_size, int(seed)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.total, replacement=True, generator=g)
        else:
            reps = -(-self.total // self.n)
            idx = torch.cat([torch.randperm(self.n, generator=g) for _ in range(reps)])[:self.total]
        return idx.tolist()

    def __iter__(self):
        mine = list(enumerate(self.global_order()))[self.rank::self.world_size]
        for pos, idx in mine[self.skip:]:
            yield idx, pos

    def __len__(self) -> int:
        return self.total // self.world_size - self.skip
