"""ultralytics adapter on a tiny random-init YOLO11n (3 classes) built from yaml and saved as .pt (no download)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.detection import roadwork_probability
from natix_miner.models.registry import build_adapter
from natix_miner.profile import ModelSpec

NAMES = {0: "traffic cone", 1: "person", 2: "car"}


@pytest.fixture(scope="module", autouse=True)
def _offline_ultralytics():
    """No downloads: ultralytics offline, its config dir a temp dir holding a local 'Arial.ttf'."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    cfg = Path(os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-cfg-")))
    target = cfg / "Ultralytics" / "Arial.ttf"
    if not target.exists():
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(font, target)
    yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A yolo11n with 3 classes; convs re-initialised so class scores depend on the image."""
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    d = tmp_path_factory.mktemp("yolo")
    cfg = yaml_model_load("yolo11n.yaml")
    cfg["nc"] = 3
    (d / "yolo11n.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = YOLO(str(d / "yolo11n.yaml"))
    for m in model.model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    for seq in model.model.model[-1].cv3:  # class logits ~ N(-2.4, 1) on random images
        seq[-1].weight.data.mul_(50.0)
        seq[-1].bias.data.fill_(-2.8)
    model.model.names = dict(NAMES)
    path = d / "tiny-yolo11n.pt"
    model.save(str(path))
    return path


def _spec(weights, **options):
    options.setdefault("imgsz", 64)
    options.setdefault("conf", 0.3)
    batch_size = options.pop("batch_size", 8)
    return ModelSpec(name="yolo", type="ultralytics", licence="AGPL-3.0", model=str(weights), device="cpu",
                     batch_size=batch_size, options=options)


def _images():
    import numpy as np

    rng = np.random.default_rng(3)
    ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in
           [(60, 100), (60, 100), (80, 80), (100, 50), (60, 100)]]
    ims.append(ims[2].convert("L"))
    ims.append(ims[3].convert("RGBA"))
    return ims


@pytest.fixture(scope="module")
def adapter(weights):
    a = build_adapter(_spec(weights, class_map={"traffic cone": 1.0, "Construction_Worker": 0.8}, batch_size=2))
    a.load("cpu")
    return a


def test_noisy_or_over_mapped_classes_matches_direct_ultralytics(adapter, weights):
    from ultralytics import YOLO

    ims = _images()
    votes = adapter.predict(ims)
    assert len(votes) == len(ims)
    ref_model = YOLO(str(weights))
    for im, v in zip(ims, votes):
        r = ref_model.predict([im.convert("RGB")], imgsz=64, conf=0.3, verbose=False, device="cpu")[0]
        cones = [float(s) for c, s in zip(r.boxes.cls.tolist(), r.boxes.conf.tolist()) if int(c) == 0]
        expected = 1 - 0.98 * torch.prod(1 - torch.tensor(cones, dtype=torch.float64)).item()
        assert v.p == pytest.approx(expected, abs=1e-4)
        assert 0.0 <= v.p <= 1.0
        assert v.evidence["n_roadwork"] == len(cones)
        assert all(d["label"] == "traffic cone" for d in v.evidence["detections"])
    assert len({round(v.p, 4) for v in votes}) > 1  # depends on the image
    assert adapter.class_map == {"traffic cone": 1.0, "Construction_Worker": 0.8}


def test_batching_equals_one_by_one(adapter):
    ims = _images()
    batched = [v.p for v in adapter.predict(ims)]
    single = [adapter.predict([im])[0].p for im in ims]
    assert batched == pytest.approx(single, abs=1e-5)
    assert adapter.predict([]) == []


def test_class_weights_scale_the_evidence(weights, adapter):
    ims = _images()[:3]
    dets = adapter.detections(ims)
    half = build_adapter(_spec(weights, class_map={"traffic cone": 0.5}))
    half.load("cpu")
    for d, v in zip(dets, half.predict(ims)):
        assert v.p == pytest.approx(roadwork_probability(d, {"traffic cone": 0.5}, min_score=0.3)[0], abs=1e-6)
    assert any(d for d in dets)


def test_memory_and_warmup(adapter):
    params = sum(p.numel() * p.element_size() for p in adapter.model.model.parameters())
    assert adapter.measured_memory_mb >= params / 2**20 > 0
    adapter.warmup()


def test_class_map_required_and_checked(weights):
    with pytest.raises(AdapterError, match="class_map is required.*traffic cone"):
        build_adapter(_spec(weights)).load("cpu")
    with pytest.raises(AdapterError, match="no key of options.class_map"):
        build_adapter(_spec(weights, class_map={"barrier": 1.0})).load("cpu")
    with pytest.raises(AdapterError, match=r"must be in \[0, 1\]"):
        build_adapter(_spec(weights, class_map={"traffic cone": 3})).load("cpu")


def test_prompts_need_an_open_vocabulary_model(weights):
    with pytest.raises(AdapterError, match="open-vocabulary"):
        build_adapter(_spec(weights, prompts=["traffic cone"])).load("cpu")


def test_missing_or_unsupported_weights(tmp_path):
    with pytest.raises(AdapterError, match="weights file not found"):
        build_adapter(_spec(tmp_path / "yolo11x.pt", class_map={"x": 1})).load("cpu")
    bad = tmp_path / "model.txt"
    bad.write_text("x")
    with pytest.raises(AdapterError, match="unsupported weights file"):
        build_adapter(_spec(bad, class_map={"x": 1})).load("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16(weights, adapter):
    a = build_adapter(_spec(weights, class_map={"traffic cone": 1.0}, dtype="fp16"))
    a.load("cuda")
    assert a.half and a.measured_memory_mb > 0
    ims = _images()
    got = [v.p for v in a.predict(ims)]
    assert all(0.0 <= p <= 1.0 for p in got) and len(got) == len(ims)
