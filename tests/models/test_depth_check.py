"""depth_check: the plausibility maths on synthetic depth maps, and the composite voter with a
test-only detector sub-adapter + a tiny random-init Depth Anything checkpoint saved offline."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from natix_miner.engine.types import Vote
from natix_miner.models.base import Adapter, AdapterError
from natix_miner.models.depth_check import (
    DEFAULT_SIZE_PRIORS,
    SizePrior,
    nearness,
    plausibility,
    score_detections,
)
from natix_miner.models.detection import Detection, noisy_or
from natix_miner.models.registry import build_adapter, register
from natix_miner.profile import ModelSpec

torch = pytest.importorskip("torch")


@register("_test_boxes")
class BoxesDetector(Adapter):
    """Test-only detector: ``options.boxes`` = [label, score, x1, y1, x2, y2] rows given to every image
    whose red channel mean is > 100 (so images differ); exposes ``detections()`` like real detectors."""

    def load(self, device):
        self.device, self.loaded = device, True
        self.measured_memory_mb = 7.0
        self.calls = 0

    def detections(self, images):
        self.calls += 1
        out = []
        for im in images:
            red = np.asarray(im.convert("RGB"))[..., 0].mean()
            rows = self.spec.options.get("boxes", []) if red > 100 else []
            out.append([Detection(r[0], float(r[1]), tuple(float(v) for v in r[2:])) for r in rows])
        return out

    def predict(self, images):
        return [Vote(noisy_or([d.score for d in ds])) for ds in self.detections(images)]

    def warmup(self):
        return None


@register("_test_vote_boxes")
class VoteBoxesDetector(BoxesDetector):
    """Same boxes, but only in vote evidence (no ``detections`` method)."""

    detections = None  # type: ignore[assignment]

    def predict(self, images):
        rows = self.spec.options.get("boxes", [])
        return [Vote(0.5, {"detections": [{"label": r[0], "score": r[1], "box": r[2:]} for r in rows]})
                for _ in images]


def vertical_disparity(h=100, w=160):
    """A dashcam-like disparity map: top rows far (small), bottom rows near (large)."""
    return np.repeat(np.linspace(0.0, 10.0, h, dtype=np.float32)[:, None], w, axis=1)


# ---------------------------------------------------------------------------------------------
# maths


def test_plausibility_band_and_floor():
    p = SizePrior(0.05, 0.1, 0.6)
    assert p.band(0.0) == (0.0, pytest.approx(0.1)) and p.band(1.0) == (pytest.approx(0.05), pytest.approx(0.6))
    assert plausibility(0.3, 0.5, p) == 1.0  # band at n=0.5: [0.025, 0.35]
    assert plausibility(0.2, 0.0, p) == pytest.approx(0.5)  # far and twice the largest plausible size
    assert plausibility(0.9, 0.0, p, floor=0.3) == pytest.approx(0.3)  # clipped at the floor
    assert plausibility(0.025, 1.0, p) == pytest.approx(0.5)  # near but half the smallest size
    assert plausibility(0.001, 0.0, p) == 1.0  # far objects may be tiny
    assert plausibility(0.2, 0.0, p, sharpness=2.0) == pytest.approx(0.3)  # 0.25 -> floor
    sizes = [0.1, 0.2, 0.4, 0.8]
    factors = [plausibility(s, 0.1, p, floor=0.0) for s in sizes]
    assert factors == sorted(factors, reverse=True)


def test_nearness_is_rank_based_and_scale_invariant():
    d = vertical_disparity()
    size = (320, 200)  # image twice the map's resolution
    bottom = nearness(d, (100, 180, 140, 200), size)
    top = nearness(d, (100, 0, 140, 20), size)
    assert bottom > 0.85 and top < 0.15
    assert nearness(3.0 * d + 7.0, (100, 180, 140, 200), size) == pytest.approx(bottom)
    assert nearness(d, (100, 180, 140, 200), size, disparity=False) == pytest.approx(1 - bottom, abs=0.02)
    mid = nearness(d, (0, 90, 320, 110), size)
    assert 0.4 < mid < 0.6


def test_score_detections_downweights_implausible_boxes():
    d = vertical_disparity()
    size = (320, 200)
    cmap = {"traffic cone": 1.0}
    plausible = Detection("traffic cone", 0.8, (150, 150, 170, 190))  # near (bottom), 20 % tall
    giant_far = Detection("traffic cone", 0.8, (150, 0, 250, 160))  # centre high up (far), 80 % tall
    ignored = Detection("car", 0.99, (0, 0, 320, 200))
    p1, raw1, ev1 = score_detections([plausible, ignored], d, size, cmap, DEFAULT_SIZE_PRIORS)
    assert p1 == pytest.approx(raw1) and ev1[0]["factor"] == 1.0 and len(ev1) == 1
    p2, raw2, ev2 = score_detections([giant_far], d, size, cmap, DEFAULT_SIZE_PRIORS, floor=0.3)
    assert raw2 == pytest.approx(raw1)
    assert ev2[0]["factor"] < 1.0 and p2 < raw2
    assert p2 >= noisy_or([0.8 * 0.3]) - 1e-9  # never below the floor
    p0, raw0, ev0 = score_detections([], d, size, cmap, DEFAULT_SIZE_PRIORS, prior=0.02)
    assert p0 == pytest.approx(0.02) and raw0 == pytest.approx(0.02) and ev0 == []


# ---------------------------------------------------------------------------------------------
# composite


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory):
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    cfg = DepthAnythingConfig(
        backbone_config=dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                             intermediate_size=64, image_size=56, patch_size=14, out_indices=[1, 2, 3, 4],
                             reshape_hidden_states=False, apply_layernorm=True),
        reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
        depth_estimation_type="relative")
    d = tmp_path_factory.mktemp("tiny-depth-anything")
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(d)
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False).save_pretrained(d)
    return d


BOXES = [["traffic cone", 0.7, 60, 50, 75, 78], ["traffic cone", 0.6, 10, 2, 110, 78], ["car", 0.9, 0, 0, 50, 50]]


def _spec(depth_path, det_type="_test_boxes", **options):
    opts = {"detector": {"type": det_type, "model": "none", "options": {"boxes": BOXES}},
            "class_map": {"traffic cone": 1.0}}
    opts.update(options)
    return ModelSpec(name="dchk", type="depth_check", licence="Apache-2.0", model=str(depth_path),
                     batch_size=2, options=opts)


def _images():
    return [Image.new("RGB", (120, 80), (200, 60, 40)), Image.new("RGB", (120, 80), (20, 60, 200)),
            Image.new("RGB", (90, 90), (220, 200, 10)), Image.new("RGB", (120, 80), (180, 10, 10))]


def test_composite_with_tiny_depth_anything(tiny_depth):
    a = build_adapter(_spec(tiny_depth))
    a.load("cpu")
    assert a.detector.loaded and a.detector.name == "dchk.detector"
    assert a.measured_memory_mb > 7.0  # depth weights + the detector's 7 MB
    ims = _images()
    maps = a.depth_maps(ims[:1])
    assert maps[0].ndim == 2 and maps[0].dtype == np.float32
    votes = a.predict(ims)
    single = [a.predict([im])[0] for im in ims]
    assert [v.p for v in votes] == pytest.approx([v.p for v in single], abs=1e-6)
    assert votes[1].p == pytest.approx(0.02) and votes[1].evidence["n_roadwork"] == 0  # blue: no boxes
    for v in (votes[0], votes[2], votes[3]):
        assert 0.0 <= v.p <= v.evidence["p_detector"] + 1e-9 <= 1.0 + 1e-9
        assert v.evidence["n_roadwork"] == 2 and all(0.3 <= e["factor"] <= 1.0 for e in v.evidence["detections"])
    a.warmup()
    a.unload()
    assert not a.detector.loaded


def test_composite_depth_drives_the_factor(tiny_depth, monkeypatch):
    """With a controlled depth map, the giant box high in the frame is down-weighted, the small low one is not."""
    a = build_adapter(_spec(tiny_depth))
    a.load("cpu")
    monkeypatch.setattr(a, "depth_maps", lambda ims: [vertical_disparity(40, 60) for _ in ims])
    v = a.predict([Image.new("RGB", (120, 80), (200, 0, 0))])[0]
    by_score = {e["score"]: e for e in v.evidence["detections"]}
    assert by_score[0.6]["factor"] < 1.0  # 95 % of the image height, centred high
    assert by_score[0.7]["factor"] == 1.0  # 35 % tall, low in the frame (near)
    assert v.p < v.evidence["p_detector"]


def test_injected_detector_and_vote_evidence_fallback(tiny_depth):
    a = build_adapter(_spec(tiny_depth, detector=None))
    a.detector = build_adapter(ModelSpec(name="inj", type="_test_vote_boxes", licence="MIT",
                                         options={"boxes": BOXES}))
    a.load("cpu")
    v = a.predict([Image.new("RGB", (120, 80), (0, 0, 0))])[0]
    assert v.evidence["n_roadwork"] == 2 and v.p > 0.02


def test_option_errors(tiny_depth):
    with pytest.raises(AdapterError, match="options.detector"):
        build_adapter(_spec(tiny_depth, detector=None)).load("cpu")
    with pytest.raises(AdapterError, match="unknown keys"):
        build_adapter(_spec(tiny_depth, detector={"type": "_test_boxes", "bogus": 1})).load("cpu")
    with pytest.raises(AdapterError, match="size_priors"):
        build_adapter(_spec(tiny_depth, size_priors={"traffic cone": [0.5, 0.1]})).load("cpu")
    with pytest.raises(AdapterError, match="floor"):
        build_adapter(_spec(tiny_depth, floor=1.5)).load("cpu")
    with pytest.raises(AdapterError, match="download_models.py"):
        build_adapter(_spec("depth-anything/not-cached-here")).load("cpu")
