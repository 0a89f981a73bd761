"""hf_detector on tiny random-init D-FINE and RT-DETRv2 models saved to temp folders; rfdetr output
conversion with fake objects (the rfdetr package is an optional extra, not installed here)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.detection import roadwork_probability
from natix_miner.models.registry import build_adapter
from natix_miner.profile import ModelSpec

ID2LABEL = {0: "person", 1: "traffic cone", 2: "car", 3: "barrier"}


def _save_dfine(path):
    from transformers import DFineConfig, DFineForObjectDetection, HGNetV2Config, RTDetrImageProcessor

    torch.manual_seed(0)
    backbone = HGNetV2Config(
        stage_in_channels=[16, 64, 128, 256], stage_mid_channels=[16, 32, 64, 128],
        stage_out_channels=[64, 128, 256, 512], stage_num_blocks=[1, 1, 2, 1],
        stage_downsample=[False, True, True, True], stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3], embeddings_size=10,
        hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1], out_features=["stage2", "stage3", "stage4"],
        out_indices=[2, 3, 4], stem_channels=[3, 16, 16], use_lab=True)
    cfg = DFineConfig(backbone_config=backbone, encoder_hidden_dim=32, encoder_in_channels=[128, 256, 512],
                      encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, num_queries=30,
                      decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_n_points=[3, 6, 3],
                      decoder_layers=2, decoder_attention_heads=2, num_denoising=0, depth_mult=0.34,
                      hidden_expansion=0.5, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    DFineForObjectDetection(cfg).eval().save_pretrained(path)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)


def _save_rtdetr_v2(path):
    from transformers import RTDetrImageProcessor, RTDetrResNetConfig, RTDetrV2Config, RTDetrV2ForObjectDetection

    torch.manual_seed(0)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    cfg = RTDetrV2Config(backbone_config=backbone, encoder_hidden_dim=32, encoder_in_channels=[16, 32, 64],
                         encoder_ffn_dim=64, encoder_attention_heads=2, d_model=32, num_queries=20,
                         decoder_in_channels=[32, 32, 32], decoder_ffn_dim=64, decoder_layers=2,
                         decoder_attention_heads=2, num_denoising=0, hidden_expansion=0.5,
                         id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()})
    RTDetrV2ForObjectDetection(cfg).eval().save_pretrained(path)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)


@pytest.fixture(scope="module", params=["dfine", "rtdetr_v2"])
def model_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    (_save_dfine if request.param == "dfine" else _save_rtdetr_v2)(path)
    return path


def _spec(model, **options):
    options.setdefault("threshold", 0.2)
    batch_size = options.pop("batch_size", 8)
    return ModelSpec(name="det", type="hf_detector", licence="Apache-2.0", model=str(model), device="cpu",
                     batch_size=batch_size, options=options)


def _images():
    rng = np.random.default_rng(5)
    ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
           for h, w in [(60, 100), (64, 64), (120, 40), (60, 100)]]
    ims.append(ims[1].convert("L"))
    ims.append(ims[2].convert("RGBA"))
    return ims


@pytest.fixture(scope="module")
def adapter(model_dir):
    a = build_adapter(_spec(model_dir, class_map={"traffic cone": 0.1, "barrier": 0.05}, batch_size=2))
    a.load("cpu")
    return a


def test_noisy_or_matches_the_post_processed_model_output(adapter, model_dir):
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    ims = _images()
    votes = adapter.predict(ims)
    assert len(votes) == len(ims)
    model = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir)
    rgb = [im.convert("RGB") for im in ims]
    with torch.no_grad():
        out = model(**proc(images=rgb, return_tensors="pt"))
    results = proc.post_process_object_detection(out, threshold=0.2, target_sizes=[(im.height, im.width) for im in rgb])
    for r, v in zip(results, votes):
        q = 0.98
        for s, lbl in zip(r["scores"].tolist(), r["labels"].tolist()):
            q *= 1 - {1: 0.1, 3: 0.05}.get(lbl, 0.0) * s
        assert v.p == pytest.approx(1 - q, abs=1e-5)
        assert 0.0 <= v.p <= 1.0
        assert {d["label"] for d in v.evidence["detections"]} <= {"traffic cone", "barrier"}
    ps = [v.p for v in votes]
    assert max(ps) > 0.05 and max(ps) < 0.999 and len({round(p, 4) for p in ps}) > 1  # informative, not saturated


def test_batching_equals_one_by_one(adapter):
    ims = _images()
    batched = [v.p for v in adapter.predict(ims)]
    single = [adapter.predict([im])[0].p for im in ims]
    assert batched == pytest.approx(single, abs=1e-5)
    assert adapter.predict([]) == []


def test_detections_boxes_are_in_image_pixels(adapter):
    ims = _images()[:3]
    for im, dets in zip(ims, adapter.detections(ims)):
        for d in dets:
            x1, y1, x2, y2 = d.box
            assert -1 <= x1 <= x2 <= im.width + 1 and -1 <= y1 <= y2 <= im.height + 1
            assert d.score >= 0.2


def test_memory_and_warmup(adapter):
    params = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    assert adapter.measured_memory_mb >= params / 2**20 > 0
    adapter.warmup()


def test_class_map_required_and_checked(model_dir):
    with pytest.raises(AdapterError, match="class_map is required.*traffic cone"):
        build_adapter(_spec(model_dir)).load("cpu")
    with pytest.raises(AdapterError, match="no key of options.class_map"):
        build_adapter(_spec(model_dir, class_map={"excavator": 1.0})).load("cpu")


def test_missing_path_and_uncached_hub_id(tmp_path, monkeypatch):
    with pytest.raises(AdapterError, match="not found"):
        build_adapter(_spec(tmp_path / "missing" / "dfine", class_map={"x": 1})).load("cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec("ustc-community/dfine-xlarge-obj2coco", class_map={"x": 1}, cache_dir=str(tmp_path / "empty"))
    with pytest.raises(AdapterError, match="scripts/download_models.py"):
        build_adapter(spec).load("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16(model_dir):
    a = build_adapter(_spec(model_dir, class_map={"traffic cone": 1.0}, dtype="fp16"))
    a.load("cuda")
    assert a.model.dtype == torch.float16 and a.measured_memory_mb > 0
    votes = a.predict(_images())
    assert len(votes) == 6 and all(0.0 <= v.p <= 1.0 for v in votes)


# ----------------------------------------------------------------------------------------------
# rfdetr (package not installed: conversion tested with fakes, load with a fake module)


class FakeSvDetections:
    def __init__(self, xyxy, confidence, class_id):
        self.xyxy = np.asarray(xyxy, dtype=float).reshape(-1, 4)
        self.confidence = np.asarray(confidence, dtype=float)
        self.class_id = np.asarray(class_id, dtype=int)


def test_supervision_conversion():
    from natix_miner.models.hf_detector import supervision_to_detections

    det = FakeSvDetections([[1, 2, 30, 40], [5, 5, 9, 9], [0, 0, 1, 1]], [0.9, 0.4, 0.7], [1, 3, 99])
    dets = supervision_to_detections(det, {1: "person", 3: "traffic cone"})
    assert [d.label for d in dets] == ["person", "traffic cone", "99"]
    assert [d.score for d in dets] == pytest.approx([0.9, 0.4, 0.7])
    assert dets[0].box == (1.0, 2.0, 30.0, 40.0)
    assert supervision_to_detections(FakeSvDetections([], [], []), {}) == []
    with pytest.raises(AdapterError, match="inconsistent"):
        supervision_to_detections(FakeSvDetections([[0, 0, 1, 1]], [0.5, 0.6], [1]), {})


class _FakeRFDETR:
    """Mimics rfdetr.RFDETRBase: a class_names dict and predict(list, threshold) -> list of Detections."""

    instances: list = []

    def __init__(self, pretrain_weights, device, **kwargs):
        self.pretrain_weights, self.device, self.kwargs = pretrain_weights, device, kwargs
        self.class_names = {1: "person", 3: "traffic cone"}
        self.calls: list[int] = []
        _FakeRFDETR.instances.append(self)

    def predict(self, images, threshold=0.5):
        self.calls.append(len(images))
        out = []
        for im in images:
            red = np.asarray(im.convert("RGB"), dtype=float)[..., 0].mean() / 255.0
            dets = FakeSvDetections([[0, 0, 5, 5], [1, 1, 4, 4]], [red, 0.9], [3, 1])
            keep = dets.confidence > threshold
            out.append(FakeSvDetections(dets.xyxy[keep], dets.confidence[keep], dets.class_id[keep]))
        return out if len(out) > 1 else out[0]  # rfdetr returns a bare Detections for one image


def test_rfdetr_adapter_with_a_fake_package(tmp_path, monkeypatch):
    fake = types.ModuleType("rfdetr")
    fake.RFDETRBase = _FakeRFDETR
    monkeypatch.setitem(sys.modules, "rfdetr", fake)
    weights = tmp_path / "rf-detr-base.pth"
    weights.write_bytes(b"x")
    spec = ModelSpec(name="rf", type="rfdetr", licence="Apache-2.0", model=str(weights), device="cpu",
                     batch_size=2, options={"class_map": {"traffic cone": 1.0}, "threshold": 0.3,
                                            "model_kwargs": {"resolution": 560}})
    a = build_adapter(spec)
    a.load("cpu")
    inst = _FakeRFDETR.instances[-1]
    assert inst.pretrain_weights == str(weights) and inst.device == "cpu" and inst.kwargs == {"resolution": 560}
    ims = [Image.new("RGB", (8, 8), (r, 0, 0)) for r in (255, 128, 0)]
    votes = a.predict(ims)
    assert inst.calls == [2, 1]
    expected = [roadwork_probability([], {})[0] if r / 255 <= 0.3 else 1 - 0.98 * (1 - r / 255) for r in (255, 128, 0)]
    assert [v.p for v in votes] == pytest.approx(expected, abs=1e-6)
    with pytest.raises(AdapterError, match="variant"):
        build_adapter(ModelSpec(name="rf", type="rfdetr", licence="x", model=str(weights),
                                options={"class_map": {"a": 1}, "variant": "huge"})).load("cpu")


def test_rfdetr_missing_package_or_weights(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rfdetr", None)  # import rfdetr -> ImportError
    spec = ModelSpec(name="rf", type="rfdetr", licence="Apache-2.0", model=str(tmp_path / "w.pth"),
                     options={"class_map": {"traffic cone": 1.0}})
    with pytest.raises(AdapterError, match="pip install rfdetr"):
        build_adapter(spec).load("cpu")
    fake = types.ModuleType("rfdetr")
    fake.RFDETRBase = _FakeRFDETR
    monkeypatch.setitem(sys.modules, "rfdetr", fake)
    with pytest.raises(AdapterError, match="weights file not found"):
        build_adapter(spec).load("cpu")
