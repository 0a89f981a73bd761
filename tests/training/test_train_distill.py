"""Distillation from soft targets with a temperature (issue 15): the loss, the batch flag, the wiring."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from natix_miner.training.batches import collate, distill_loss, is_soft
from tests.training.train_helpers import make_folder, train_args


def test_temperature_one_is_plain_bce_and_hard_labels_are_never_softened():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    y = torch.tensor([1.0, 0.0, 0.8, 0.3])
    soft = torch.tensor([False, False, True, True])
    assert torch.allclose(distill_loss(z, y, soft, 1.0), F.binary_cross_entropy_with_logits(z, y))
    hard_only = torch.zeros(4, dtype=torch.bool)
    assert torch.allclose(distill_loss(z, y, hard_only, 4.0), F.binary_cross_entropy_with_logits(z, y))


def test_soft_targets_are_softened_and_scaled_by_t_squared():
    z = torch.tensor([2.0, -1.0, 0.5, -3.0])
    y = torch.tensor([1.0, 0.0, 0.8, 0.3])
    soft = torch.tensor([False, False, True, True])
    t = 2.0
    p_soft = torch.sigmoid(torch.logit(y[2:]) / t)
    assert p_soft[0] < 0.8 and p_soft[1] > 0.3  # softened towards 0.5
    expected = torch.cat([F.binary_cross_entropy_with_logits(z[:2], y[:2], reduction="none"),
                          t * t * F.binary_cross_entropy_with_logits(z[2:] / t, p_soft, reduction="none")]).mean()
    assert torch.allclose(distill_loss(z, y, soft, t), expected)
    assert not torch.allclose(distill_loss(z, y, soft, t), distill_loss(z, y, soft, 1.0))
    # a pseudo label of exactly 1.0 stays finite
    assert torch.isfinite(distill_loss(torch.tensor([5.0]), torch.tensor([1.0]), torch.tensor([True]), 3.0))


def test_collate_flags_pseudo_and_fractional_targets_as_soft():
    assert is_soft("pseudo", 1.0) and is_soft("real", 0.7) and not is_soft("real", 1.0) and not is_soft("i2i", 0.0)
    items = [{"x": torch.zeros(3, 4, 4), "target": t, "label": int(t >= 0.5), "key": str(i), "source": "s",
              "condition": c, "view": "eval"} for i, (c, t) in enumerate([("real", 1.0), ("pseudo", 1.0),
                                                                        ("real", 0.6), ("i2i", 0.0)])]
    assert collate(items)["soft"].tolist() == [False, True, True, False]


def _pseudo_folder(tmp_path):
    src = make_folder(tmp_path / "src", n_per_class=6, seed=3)
    root = tmp_path / "pseudo"
    (root / "imgs").mkdir(parents=True)
    lines = []
    for f in sorted(src.rglob("*.jpg")):
        shutil.copy(f, root / "imgs" / f.name)
        prob = 0.85 if f.parent.name == "roadwork" else 0.2
        lines.append(json.dumps({"file": f"imgs/{f.name}", "prob": prob, "confidence": 0.7}))
    (root / "soft_labels.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_train_py_distill_temperature_reaches_the_loss(tmp_path, monkeypatch, t):
    from natix_miner.training import loop
    from natix_miner.training.cli import main

    seen = []
    real = loop.distill_loss

    def spy(logits, target, soft, temperature):
        seen.append((temperature, soft.clone(), target.clone()))
        return real(logits, target, soft, temperature)

    monkeypatch.setattr(loop, "distill_loss", spy)
    data = make_folder(tmp_path / "real", n_per_class=6)
    args = train_args(data, tmp_path / "run", "test_convnext", "--epochs", "1", "--max-steps", "2",
                      "--data", str(_pseudo_folder(tmp_path)), "--distill-temperature", str(t))
    assert main(args) == 0
    assert seen and all(temp == t for temp, _, _ in seen)
    soft = torch.cat([s for _, s, _ in seen])
    targets = torch.cat([y for _, _, y in seen])
    assert soft.any() and not soft.all()  # pseudo rows soft, labelled rows hard
    assert {round(v, 4) for v in targets[soft].tolist()} <= {0.85, 0.2}
    assert set(targets[~soft].tolist()) <= {0.0, 1.0}
