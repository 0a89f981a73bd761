"""Pieces of the training pipeline: backbones, transforms, sampler, temperature, export + adapter."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from natix_miner.training.batches import EpochSampler, collate
from natix_miner.training.models import ModelError, build_model, source_kind
from natix_miner.training.transforms import (
    TransformSpec,
    letterbox,
    model_input,
    parse_mix,
)


def test_lite0_offline_weights_map_onto_timm_exactly():
    from natix_miner.models.efficientnet_lite import load_lite0

    m = build_model("lite0").eval()
    ref = load_lite0()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(m.net.forward_features(x), ref.forward_features(x))
    assert m(x).shape == (1,) and m.kind == "lite" and m.mean[0] == pytest.approx(127 / 255)


def test_source_kinds_and_unknown_name():
    assert source_kind("lite1") == "lite" and source_kind("convnext_tiny") == "timm"
    assert source_kind("natix-network-org/roadwork") == "hf" and source_kind("hf:x/y") == "hf"
    with pytest.raises(ModelError, match="unknown model"):
        build_model("no_such_backbone_xyz", pretrained=False)


def test_layer_decay_groups_and_freeze():
    m = build_model("test_vit", pretrained=False, image_size=32)
    scales = sorted({g["lr_scale"] for g in m.param_groups(0.05, 0.5)})
    assert len(scales) >= 3 and scales[-1] == 1.0 and scales[0] < 0.2
    flat = m.param_groups(0.05, None)
    assert {g["lr_scale"] for g in flat} == {1.0}
    assert {g["weight_decay"] for g in flat} == {0.0, 0.05}  # no decay on biases / norms
    m.freeze_backbone()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("net.head") for n in trainable)


def test_fresh_head_starts_near_chance():
    m = build_model("test_convnext", pretrained=False, image_size=32).eval()
    with torch.no_grad():
        z = m(torch.randn(4, 3, 32, 32))
    assert z.abs().max() < 0.5


def test_letterbox_and_model_input():
    im = Image.new("RGB", (200, 100), (255, 255, 255))
    lb = letterbox(im, 64)
    arr = np.asarray(lb)
    assert lb.size == (64, 64) and arr[0, 32].sum() == 0 and arr[32, 32].sum() == 765  # black bars, centred
    assert model_input(im, 32).size == (32, 32)
    with pytest.raises(ValueError):
        model_input(im, 32, "crop")


def test_condition_mix():
    assert parse_mix("fullres") == {"fullres": 1.0}
    assert parse_mix("fullres=1,aug-2026-01=3")["aug-2026-01"] == 0.75
    with pytest.raises(ValueError, match="unknown condition"):
        parse_mix("fullres,rot90")
    spec = TransformSpec(size=32, mean=(0.5,) * 3, std=(0.5,) * 3, mix=parse_mix("aug-2026-01"))
    im = Image.new("RGB", (320, 200), (200, 100, 50))
    x, cond = spec.train(im, np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and cond == "aug-2026-01"
    a, _ = spec.train(im, np.random.default_rng(1))
    b, _ = spec.train(im, np.random.default_rng(1))
    assert torch.equal(a, b)  # seeded: a resumed run draws the same augmentation


def test_sampler_ranks_split_one_draw_and_skip():
    w = [1.0] * 10 + [9.0] * 2
    ranks = [EpochSampler(12, weights=w, num_samples=12, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(1)
    order = ranks[0].global_order()
    got0, got1 = [p for _, p in ranks[0]], [p for _, p in ranks[1]]
    assert not set(got0) & set(got1) and sorted(got0 + got1) == list(range(12))
    assert [i for i, _ in ranks[0]] == order[0::2]
    ranks[0].set_epoch(1, skip=2)
    assert [i for i, _ in ranks[0]] == order[0::2][2:] and len(ranks[0]) == 4
    s = EpochSampler(12, weights=w, seed=3)
    s.set_epoch(0)
    drawn = s.global_order()
    assert sum(i >= 10 for i in drawn) > 3  # class-balanced: the two heavy samples are drawn far above 2/12
    ranks[0].set_epoch(2)
    assert ranks[0].global_order() != order  # a new draw each epoch


def test_collate_drops_unreadable():
    out = collate([{"skipped": "a.jpg"}, {"x": torch.zeros(3, 4, 4), "target": 1.0, "label": 1, "key": "b",
                                          "source": "s", "condition": "real", "view": "fullres"}])
    assert out["skipped"] == ["a.jpg"] and out["n"] == 1 and out["x"].shape == (1, 3, 4, 4)
    assert collate([{"skipped": "a"}])["n"] == 0


def test_temperature_fit_recovers_the_scale():
    from natix_miner.training.export import fit_temperature

    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, 4000)
    y = (rng.random(4000) < 1 / (1 + np.exp(-true))).astype(int)
    assert fit_temperature(true * 3.0, y) == pytest.approx(3.0, rel=0.15)
    assert fit_temperature([1.0, 2.0], [1, 1]) == 1.0


@pytest.fixture()
def export_dir(tmp_path):
    from natix_miner.training.export import write_export

    torch.manual_seed(0)
    m = build_model("test_convnext", pretrained=False, image_size=32)
    with torch.no_grad():
        m.net.get_classifier().weight.normal_(0, 1.0)  # a head that answers differently per image
    return write_export(tmp_path / "model", m.eval(), resize="letterbox", temperature=2.0, threshold=0.37,
                        card={"data": ["synthetic"]}), m


def test_export_loads_through_the_adapter(export_dir):
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec
    from natix_miner.training.transforms import normalise

    folder, model = export_dir
    a = build_adapter(ModelSpec(name="ft", type="timm_classifier", licence="MIT", model=str(folder), device="cpu"))
    a.load("cpu")
    ims = [Image.new("RGB", (90, 60), (230, 20, 20)), Image.new("RGB", (40, 70), (20, 20, 230))]
    votes = a.predict(ims)
    with torch.no_grad():
        z = model(torch.stack([normalise(letterbox(im, 32), model.mean, model.std) for im in ims]))
    expected = torch.sigmoid(z / 2.0).tolist()  # the export's letterbox preprocessing and temperature
    assert [v.p for v in votes] == pytest.approx(expected, abs=1e-5)
    assert all(0 <= v.p <= 1 for v in votes) and votes[0].p != pytest.approx(votes[1].p)


def test_adapter_refuses_a_folder_that_is_not_an_export(tmp_path):
    from natix_miner.models.base import AdapterError
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    a = build_adapter(ModelSpec(name="ft", type="timm_classifier", licence="MIT", model=str(tmp_path), device="cpu"))
    with pytest.raises(AdapterError, match="not a training export"):
        a.load("cpu")


def test_profile_snippet_and_push_to_hub(export_dir, monkeypatch):
    from natix_miner.training import export

    folder, _ = export_dir
    snippet = yaml.safe_load(export.profile_snippet(folder))
    assert snippet["calibration"]["threshold"] == pytest.approx(0.37)
    assert snippet["tiers"][0]["models"][0]["type"] == "timm_classifier"
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw["folder_path"]))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert export.push_to_hub(folder, "me/roadwork-ft").endswith("me/roadwork-ft")
    assert calls[1] == ("upload", "me/roadwork-ft", str(folder))
    card = json.loads((folder / "model_card.json").read_text())
    assert card["data"] == ["synthetic"] and card["licence"]


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    from natix_miner.training.models import build_model as build

    m = build("lite0", pretrained=False, image_size=32)
    m.freeze_backbone()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("net.classifier")}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        m(torch.randn(4, 3, 32, 32)).sum().backward()
        opt.step()
    after = m.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # weights and BN running stats unchanged
    assert m.net.classifier.training and not m.net.bn1.training


def test_dataset_passes_soft_targets_to_the_loss():
    from natix_miner.training.batches import ImageDataset
    from natix_miner.training.data import Sample

    s = Sample(key="p/a.jpg", label=1, target=0.7, source="p", group="g", path="a.jpg", condition="pseudo")
    spec = TransformSpec(size=16, mean=(0.5,) * 3, std=(0.5,) * 3, mix=parse_mix("fullres"))
    ds = ImageDataset([s], lambda _: Image.new("RGB", (40, 30)), spec, train=True)
    batch = collate([ds[(0, 0)]])
    assert batch["target"].tolist() == [pytest.approx(0.7)] and batch["condition"] == ["pseudo"]


def test_wandb_only_when_configured(monkeypatch, tmp_path):
    import sys
    import types

    from natix_miner.training.config import TrainConfig
    from natix_miner.training.loop import _Wandb

    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw["project"])) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = TrainConfig(data=["d"], model="lite0", out=str(tmp_path))
    off = _Wandb(cfg, main=True)
    off.log({"a": 1}, 1)
    assert calls == []
    on = _Wandb(cfg.model_copy(update={"wandb_project": "p"}), main=True)
    on.log({"a": 1}, 3)
    on.finish()
    assert calls == [("init", "p"), ("log", {"a": 1}, 3), ("finish",)]
    assert _Wandb(cfg.model_copy(update={"wandb_project": "p"}), main=False).run is None  # rank > 0 never logs


def test_dist_env_from_torchrun_variables():
    from natix_miner.training.distributed import DistEnv

    e = DistEnv.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (e.rank, e.world_size, e.local_rank, e.enabled, e.main) == (3, 4, 1, True, False)
    assert not DistEnv.from_env({}).enabled
