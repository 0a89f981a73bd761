"""hf_classifier adapter on a tiny random-init ViT saved to a temp folder (no download)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.registry import build_adapter
from natix_miner.profile import ModelSpec


def _save_vit(path, id2label, num_labels=None, **cfg_kw):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=37, num_labels=num_labels or len(id2label), id2label=id2label,
                    label2id={v: k for k, v in id2label.items()}, **cfg_kw)
    model = ViTForImageClassification(cfg).eval()
    with torch.no_grad():  # make the head's output depend strongly on the image
        model.classifier.weight.mul_(4.0)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vit")
    _save_vit(path, {0: "None", 1: "Roadwork"})
    return path


def _spec(model, **options):
    batch_size = options.pop("batch_size", 8)
    return ModelSpec(name="vit", type="hf_classifier", licence="MIT", model=str(model), device="cpu",
                     batch_size=batch_size, options=options)


def _images():
    import numpy as np

    rng = np.random.default_rng(1)
    arrs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(40, 60), (32, 32), (90, 50), (40, 60)]]
    ims = [Image.fromarray(a) for a in arrs]
    ims.append(Image.fromarray(arrs[1]).convert("L"))
    ims.append(Image.fromarray(arrs[2]).convert("RGBA"))
    ims.append(Image.fromarray(arrs[0]).convert("P"))
    return ims


@pytest.fixture(scope="module")
def adapter(vit_dir):
    a = build_adapter(_spec(vit_dir, batch_size=3))
    a.load("cpu")
    return a


def test_softmax_of_roadwork_label_matches_the_model(adapter, vit_dir):
    from transformers import ViTForImageClassification, ViTImageProcessor

    ims = _images()
    votes = adapter.predict(ims)
    assert len(votes) == len(ims)
    model = ViTForImageClassification.from_pretrained(vit_dir).eval()
    proc = ViTImageProcessor.from_pretrained(vit_dir)
    with torch.no_grad():
        ref = model(**proc(images=[im.convert("RGB") for im in ims], return_tensors="pt")).logits.softmax(-1)[:, 1]
    got = torch.tensor([v.p for v in votes])
    assert torch.allclose(got, ref, atol=1e-5)
    assert all(0.0 <= v.p <= 1.0 for v in votes)
    assert got.std() > 0.01  # the vote depends on the image
    assert votes[0].evidence["top"] in ("None", "Roadwork")


def test_batching_equals_one_by_one(adapter):
    ims = _images()
    batched = [v.p for v in adapter.predict(ims)]
    single = [adapter.predict([im])[0].p for im in ims]
    assert batched == pytest.approx(single, abs=1e-5)
    assert adapter.predict([]) == []


def test_memory_and_metadata(adapter):
    params = sum(p.numel() * p.element_size() for p in adapter.model.parameters())
    assert adapter.measured_memory_mb is not None
    assert adapter.measured_memory_mb >= params / 2**20
    assert adapter.memory_mb == adapter.measured_memory_mb
    assert adapter.family == "hf_classifier"
    adapter.warmup()


def test_positive_labels_option_and_errors(tmp_path):
    d = tmp_path / "multi"
    _save_vit(d, {0: "clear", 1: "cones", 2: "barrier"})
    with pytest.raises(AdapterError, match="no roadwork label"):
        build_adapter(_spec(d)).load("cpu")
    with pytest.raises(AdapterError, match="not among the model's labels"):
        build_adapter(_spec(d, positive_labels=["workzone"])).load("cpu")
    a = build_adapter(_spec(d, positive_labels=["Cones", "barrier"]))
    a.load("cpu")
    ims = _images()[:3]
    probs = a.probabilities(ims)
    votes = a.predict(ims)
    assert [v.p for v in votes] == pytest.approx((probs[:, 1] + probs[:, 2]).tolist(), abs=1e-6)


def test_single_logit_model_uses_sigmoid(tmp_path):
    d = tmp_path / "single"
    model = _save_vit(d, {0: "roadwork"})
    a = build_adapter(_spec(d))
    a.load("cpu")
    assert a.activation == "sigmoid"
    ims = _images()[:2]
    from transformers import ViTImageProcessor

    with torch.no_grad():
        ref = model(**ViTImageProcessor.from_pretrained(d)(images=ims, return_tensors="pt")).logits[:, 0].sigmoid()
    assert [v.p for v in a.predict(ims)] == pytest.approx(ref.tolist(), abs=1e-5)


def test_missing_local_path_is_an_adapter_error(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        build_adapter(_spec(tmp_path / "nope")).load("cpu")


def test_hub_id_not_cached_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = _spec("natix-network-org/roadwork", cache_dir=str(tmp_path / "empty-cache"))
    with pytest.raises(AdapterError, match="scripts/download_models.py") as e:
        build_adapter(spec).load("cpu")
    assert "natix-network-org/roadwork" in str(e.value)


def test_cuda_request_without_cuda_is_an_adapter_error(vit_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(AdapterError, match="CUDA is not available"):
        build_adapter(_spec(vit_dir)).load("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu(vit_dir, adapter):
    a = build_adapter(_spec(vit_dir, dtype="fp16"))
    a.load("cuda")
    assert a.model.dtype == torch.float16
    assert a.measured_memory_mb > 0
    ims = _images()
    assert [v.p for v in a.predict(ims)] == pytest.approx([v.p for v in adapter.predict(ims)], abs=2e-2)


def test_bare_cuda_resolves_to_an_explicit_index(monkeypatch):
    """``cuda``/``auto`` pin cuda:0, never "the current device" (ultralytics changes it on cuda:1)."""
    from natix_miner.models import _torch_utils as tu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert tu.resolve_device("m", "cuda") == "cuda:0"
    assert tu.resolve_device("m", "auto") == "cuda:0"
    assert tu.resolve_device("m", "cuda:1") == "cuda:1"
    with pytest.raises(AdapterError, match="does not exist"):
        tu.resolve_device("m", "cuda:2")


def test_torch_utils_helpers():
    from natix_miner.models import _torch_utils as tu

    assert tu.resolve_dtype("m", "fp16", "cpu") == torch.float32  # half precision only on CUDA
    assert tu.resolve_dtype("m", None, "cpu") == torch.float32
    assert tu.resolve_dtype("m", "auto", "cuda:0") == torch.float16
    assert tu.resolve_dtype("m", "bf16", "cuda") == torch.bfloat16
    with pytest.raises(AdapterError, match="options.dtype"):
        tu.resolve_dtype("m", "int4", "cpu")
    with pytest.raises(AdapterError, match="unknown device"):
        tu.resolve_device("m", "tpu")
    assert tu.resolve_device("m", "cpu") == "cpu"
    assert tu.looks_like_local_path("./models/vit") and tu.looks_like_local_path("/abs/x")
    assert tu.looks_like_local_path("a/b/c") and tu.looks_like_local_path("yolo11x.pt")
    assert not tu.looks_like_local_path("natix-network-org/roadwork")
    ims = [Image.new("RGB", s) for s in [(4, 4), (8, 4), (4, 4), (4, 4), (8, 4)]]
    assert tu.size_groups(ims, 2) == [[0, 2], [3], [1, 4]]
    assert tu.chunks(5, 2) == [[0, 1], [2, 3], [4]]
    assert tu.size_groups([], 4) == []
