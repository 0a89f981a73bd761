"""feature_probe adapter: tiny random-init DINOv2 / DINOv3 backbones saved offline + a head file in
the natix-head/1 format, loaded through the registry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.heads import build_head, save_head
from natix_miner.models.registry import build_adapter
from natix_miner.profile import ModelSpec

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-dinov2")
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=14)
    Dinov2Model(cfg).eval().save_pretrained(d)
    BitImageProcessor(image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3]).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-dinov3")
    cfg = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          image_size=64, patch_size=16, num_register_tokens=4)
    DINOv3ViTModel(cfg).eval().save_pretrained(d)  # no image-processor config: ImageNet mean/std
    return d


def _spec(backbone, batch_size=8, **options):
    return ModelSpec(name="probe", type="feature_probe", licence="Apache-2.0", model=str(backbone),
                     batch_size=batch_size, options=options)


def _images(n=3):
    rng = np.random.default_rng(3)
    sizes = [(136, 80), (64, 64), (50, 90), (120, 70)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _manual_features(path, image, size, mean, std, n_prefix):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    arr = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    x = torch.from_numpy((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        h = model(pixel_values=x).last_hidden_state[0]
    return torch.cat([h[0], h[n_prefix:].mean(0)]).numpy()


def _write_head(adapter, path, kind="linear", **meta_over):
    torch.manual_seed(5)
    head = build_head(kind, adapter.feature_dim, hidden=16)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    meta = {**adapter.feature_meta(), "threshold": 0.5, **meta_over}
    save_head(path, head, kind, meta, hidden=16)
    return head


def test_features_are_cls_plus_mean_patch_tokens(tiny_dinov2):
    a = build_adapter(_spec(tiny_dinov2, image_size=60))
    a.load("cpu")
    assert a.image_size == 56  # rounded to a multiple of the patch size (14)
    assert a.mean == pytest.approx((0.4, 0.5, 0.6)) and a.n_prefix == 1
    ims = _images()
    feats = a.features(ims)
    assert feats.shape == (3, 64) and feats.dtype == np.float32
    ref = _manual_features(tiny_dinov2, ims[0], 56, a.mean, a.std, 1)
    np.testing.assert_allclose(feats[0], ref, atol=1e-4)
    meta = a.feature_meta()
    assert meta["backbone"] == "feature_probe" and meta["feature_dim"] == 64 and meta["image_size"] == 56
    with pytest.raises(AdapterError, match="no head"):
        a.predict(ims)
    a.warmup()  # features only, no head


def test_head_predictions_batching_and_meta(tiny_dinov2, tmp_path):
    probe = build_adapter(_spec(tiny_dinov2, image_size=56))
    probe.load("cpu")
    head_path = tmp_path / "head" / "head.pt"
    head = _write_head(probe, head_path, kind="mlp")
    # options disagree with the head: the head's meta wins (pooling and size it was trained with)
    a = build_adapter(_spec(tiny_dinov2, batch_size=2, head=str(head_path.parent), image_size=112, pooling="cls+mean"))
    a.load("cpu")
    assert a.image_size == 56 and a.head is not None and a.measured_memory_mb > 0
    ims = _images(4)
    votes = a.predict(ims)
    single = [a.predict([im])[0].p for im in ims]
    assert [v.p for v in votes] == pytest.approx(single, abs=1e-6)
    feats = probe.features(ims)
    with torch.no_grad():
        expect = torch.sigmoid(head.eval()(torch.from_numpy(feats))).numpy()
    assert [v.p for v in votes] == pytest.approx(expect.tolist(), abs=1e-5)
    assert all(0.0 <= v.p <= 1.0 for v in votes)
    assert len({round(v.p, 6) for v in votes}) > 1  # image-dependent


def test_head_mismatches_are_errors(tiny_dinov2, tmp_path):
    probe = build_adapter(_spec(tiny_dinov2, image_size=56, pooling="cls"))
    probe.load("cpu")
    _write_head(probe, tmp_path / "cls.pt")
    a = build_adapter(_spec(tiny_dinov2, head=str(tmp_path / "cls.pt")))
    a.load("cpu")  # pooling comes from the head: dims agree
    assert a.pooling == "cls" and a.feature_dim == 32
    _write_head(probe, tmp_path / "wrong_dim.pt", pooling="cls+mean")  # meta claims 64, head takes 32
    with pytest.raises(AdapterError, match="expects 32 features"):
        build_adapter(_spec(tiny_dinov2, head=str(tmp_path / "wrong_dim.pt"))).load("cpu")
    _write_head(probe, tmp_path / "other.pt", backbone="efficientnet_lite")
    with pytest.raises(AdapterError, match="efficientnet_lite"):
        build_adapter(_spec(tiny_dinov2, head=str(tmp_path / "other.pt"))).load("cpu")
    with pytest.raises(AdapterError, match="head file not found"):
        build_adapter(_spec(tiny_dinov2, head=str(tmp_path / "missing.pt"))).load("cpu")
    with pytest.raises(AdapterError, match="pooling"):
        build_adapter(_spec(tiny_dinov2, pooling="gem")).load("cpu")
    with pytest.raises(AdapterError, match="download_models.py"):
        build_adapter(_spec("facebook/dinov2-large-not-cached")).load("cpu")


def test_dinov3_registers_excluded_from_mean(tiny_dinov3):
    a = build_adapter(_spec(tiny_dinov3, image_size=64, batch_size=2))
    a.load("cpu")
    assert a.n_prefix == 5 and a.patch_size == 16 and a.mean == pytest.approx((0.485, 0.456, 0.406))
    ims = _images(3)
    feats = a.features(ims)
    np.testing.assert_allclose(feats[2], _manual_features(tiny_dinov3, ims[2], 64, a.mean, a.std, 5), atol=1e-4)
    np.testing.assert_allclose(feats, np.concatenate([a.features([im]) for im in ims]), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_features_close_to_cpu(tiny_dinov2):
    cpu = build_adapter(_spec(tiny_dinov2, image_size=56))
    cpu.load("cpu")
    gpu = build_adapter(_spec(tiny_dinov2, image_size=56, dtype="fp16"))
    gpu.load("cuda")
    ims = _images()
    np.testing.assert_allclose(gpu.features(ims), cpu.features(ims), atol=5e-2, rtol=5e-2)
