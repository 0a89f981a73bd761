"""Every model family's ``options:`` are typed: parsed once at build, a typo stops the start naming file and key."""

import math

import pytest

from natix_miner.models.base import FamilyOptions, OptionsError
from natix_miner.models.registry import _FAMILY_MODULES, adapter_class, build_adapter
from natix_miner.profile import ModelSpec, parse_profile

#: vlm checks its keys per engine itself (COMMON_KEYS + ENGINE_KEYS, at build); every other family has a model
FREE_FORM_BUT_CHECKED = {"vlm"}
#: the shipped families (the registry's lazy table); tests register private ``_test_*`` types of their own
SHIPPED = sorted(_FAMILY_MODULES)

#: options (and model) a family needs before its unknown-key check is reached
MINIMAL: dict[str, dict] = {
    "vlm": {"model": "org/qwen2-vl", "options": {"engine": "openai", "family": "qwen2_vl",
                                                  "base_url": "http://127.0.0.1:1/v1"}},
    "ultralytics": {"model": "y.pt"},
}


def test_every_registered_family_declares_an_options_model():
    untyped = {t for t in SHIPPED if adapter_class(t).options_model is None}
    assert untyped == FREE_FORM_BUT_CHECKED
    for t in set(SHIPPED) - untyped:
        assert issubclass(adapter_class(t).options_model, FamilyOptions), t


@pytest.mark.parametrize("family", SHIPPED)
def test_a_typo_in_any_family_stops_the_engine_naming_file_and_key(family):
    from natix_miner.engine.cascade import CascadeEngine, EngineError

    entry = {"name": "m", "type": family, "licence": "MIT", "model": "org/m", **MINIMAL.get(family, {})}
    entry["options"] = {**entry.get("options", {}), "tresholdd": 0.5}
    data = {"name": "typo", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "ok", "type": "fake", "licence": "MIT"}, entry]}]}
    prof = parse_profile(data, "configs/typo.yaml")
    with pytest.raises(EngineError, match=r"configs/typo.yaml: tiers\[0\].models\[1\].options.tresholdd: "):
        CascadeEngine(prof, devices=["cpu"]).start()


def _spec(type_, model="org/x", **options):
    return ModelSpec(name="x", type=type_, licence="MIT", model=model, options=options)


def test_options_are_parsed_once_with_their_defaults():
    zs = build_adapter(_spec("zero_shot", tiles=3, tile_reduce="mean"))
    assert (zs.tiles, zs.tile_reduce, zs.tile_overlap, zs.square, zs.temperature) == (3, "mean", 0.2, "pad", 1.0)
    assert build_adapter(_spec("zero_shot", tiles=1)).tiles == 0  # 1 = the whole image
    ov = build_adapter(_spec("open_vocab_detector", prompts=["cone"]))
    assert (ov.opts.nms_iou, ov.opts.prior, ov.opts.max_new_tokens, ov.opts.task) == (0.5, 0.02, 256, "<OD>")
    ov.arch = "owlv2"
    assert ov.threshold == 0.1  # the architecture's default
    ov.arch = "grounding_dino"
    assert ov.threshold == 0.3
    assert build_adapter(_spec("open_vocab_detector", threshold=0.42)).threshold == 0.42
    dc = build_adapter(_spec("depth_check", floor=0.4, disparity=False))
    assert (dc.opts.floor, dc.opts.disparity, dc.opts.box_shrink, dc.opts.sharpness) == (0.4, False, 0.5, 1.0)
    el = build_adapter(_spec("efficientnet_lite", None, short_side=320, crop="centre"))
    assert (el.short_side, el.max_long_side, el.pooling, el.crop) == (320, 896, "avg+grid2max", "centre")
    fp = build_adapter(_spec("feature_probe", image_size=224))
    assert fp._opt("image_size", 448) == 224 and fp._opt("pooling", "cls+mean") == "cls+mean"
    assert build_adapter(_spec("timm_classifier", temperature=2.5, dtype="fp32")).opts.temperature == 2.5


@pytest.mark.parametrize(("family", "options", "key"), [
    ("zero_shot", {"tiles": 1.5}, "options.tiles"),
    ("zero_shot", {"tiles": 7}, "options.tiles"),
    ("zero_shot", {"tile_overlap": 0.95}, "options.tile_overlap"),
    ("zero_shot", {"tile_reduce": "min"}, "options.tile_reduce"),
    ("zero_shot", {"square": "round"}, "options.square"),
    ("zero_shot", {"temperature": 0}, "options.temperature"),
    ("zero_shot", {"scoring": "vote"}, "options.scoring"),
    ("open_vocab_detector", {"threshold": 1.5}, "options.threshold"),
    ("open_vocab_detector", {"nms_iou": -0.1}, "options.nms_iou"),
    ("open_vocab_detector", {"max_new_tokens": 0}, "options.max_new_tokens"),
    ("depth_check", {"box_shrink": 0.01}, "options.box_shrink"),
    ("depth_check", {"sharpness": 11}, "options.sharpness"),
    ("depth_check", {"min_score": 2}, "options.min_score"),
    ("depth_check", {"detector": {"type": "hf_detector", "options": {"class_map": {"a": 1.0}, "thresh": 0.3}}},
     "options.detector.options.thresh"),
    ("efficientnet_lite", {"crop": "left"}, "options.crop"),
    ("efficientnet_lite", {"tta": "rot"}, "options.tta"),
    ("feature_probe", {"image_size": "big"}, "options.image_size"),
    ("timm_classifier", {"temperature": 0}, "options.temperature"),
    ("timm_classifier", {"temperature": float("nan")}, "options.temperature"),
    ("timm_classifier", {"temprature": 2.0}, "options.temprature"),
])
def test_bad_values_are_refused_at_build(family, options, key):
    with pytest.raises(OptionsError, match=key.replace(".", r"\.")):
        build_adapter(_spec(family, **options))


def test_timm_classifier_temperature_option_overrides_the_export(tmp_path):
    torch = pytest.importorskip("torch")
    from PIL import Image

    from natix_miner.training.export import write_export
    from natix_miner.training.models import build_model

    torch.manual_seed(0)
    m = build_model("test_convnext", pretrained=False, image_size=32)
    with torch.no_grad():
        m.net.get_classifier().weight.normal_(0, 1.0)
    folder = write_export(tmp_path / "model", m.eval(), resize="letterbox", temperature=2.0, threshold=0.5,
                          card={"data": ["synthetic"]})
    im = [Image.new("RGB", (40, 30), (200, 30, 30))]
    own = build_adapter(ModelSpec(name="a", type="timm_classifier", licence="MIT", model=str(folder)))
    own.load("cpu")
    over = build_adapter(ModelSpec(name="b", type="timm_classifier", licence="MIT", model=str(folder),
                                   options={"temperature": 0.5}))
    over.load("cpu")
    assert (own.temperature, over.temperature) == (2.0, 0.5)
    z = own.predict(im)[0].evidence["logit"]
    assert over.predict(im)[0].evidence["logit"] == z
    assert over.predict(im)[0].p == pytest.approx(1 / (1 + math.exp(-z / 0.5)), abs=1e-3)


@pytest.mark.parametrize("family", ["efficientnet_lite", "feature_probe"])
def test_train_head_features_only_options_are_accepted(family):
    # natix_miner.training.features.build_backbone always adds features_only: true
    a = build_adapter(_spec(family, None, features_only=True, head="some/head.pt", pooling="avg"))
    assert a.opts.features_only is True
    if family == "feature_probe":
        assert a._head_path() is None  # features only: the head is not loaded


def test_predict_paths_read_the_parsed_options_not_the_raw_mapping():
    zs = build_adapter(_spec("zero_shot", tiles=2, temperature=0.5))
    ov = build_adapter(_spec("open_vocab_detector", threshold=0.4))
    el = build_adapter(_spec("efficientnet_lite", None, tta="flip"))
    for a in (zs, ov, el):
        a.spec.options.clear()  # a read of spec.options from here on would see the defaults
        a.spec.options["tiles"] = "garbage"
    ov.arch = "owlv2"
    assert (zs.tiles, zs.temperature, ov.threshold, el.tta) == (2, 0.5, 0.4, "flip")
