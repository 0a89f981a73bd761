"""The adapter contract and the layer rules: deadline hand-over, neutral types, breaker settings."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image

from engine_helpers import fake, make_profile, tier
from natix_miner.models.base import Adapter
from natix_miner.profile import ProfileError, parse_profile
from natix_miner.types import Deadline, Vote


class _Old(Adapter):
    """A family written against the old ``predict(images)`` signature."""

    def load(self, device):
        self.loaded = True

    def predict(self, images):
        return [Vote(0.25) for _ in images]


class _New(Adapter):
    def load(self, device):
        self.loaded = True

    def predict(self, images, deadline=None):
        return [Vote(0.0 if deadline is None else min(1.0, deadline.remaining())) for _ in images]


def _spec():
    return make_profile(tier("t", 0.9, fake("m"))).tiers[0].models[0]


def test_old_predict_signature_accepts_a_deadline():
    a = _Old(_spec())
    assert [v.p for v in a.predict([Image.new("RGB", (4, 4))], deadline=Deadline.after(1.0))] == [0.25]
    assert [v.p for v in a.predict([Image.new("RGB", (4, 4))])] == [0.25]


def test_new_predict_signature_is_left_alone():
    assert _New.predict.__qualname__ == "_New.predict"
    p = _New(_spec()).predict([Image.new("RGB", (4, 4))], deadline=Deadline.after(0.5))[0].p
    assert 0.4 < p <= 0.5


def test_engine_types_is_a_shim_for_the_neutral_module():
    import natix_miner.engine.types as et
    import natix_miner.types as t

    assert et.Vote is t.Vote and et.CascadeResult is t.CascadeResult and et.ModelVote is t.ModelVote
    from natix_miner.engine.deadline import Deadline as D

    assert D is t.Deadline


def test_models_and_profile_load_without_the_engine():
    code = ("import sys; import natix_miner.models.fake, natix_miner.models.vlm, natix_miner.profile; "
            "bad = sorted(m for m in sys.modules if m.startswith(('natix_miner.engine', 'natix_miner.neuron'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_profile_does_not_import_the_model_registry():
    code = ("import sys; import natix_miner.profile as p; p.load_profile(); "
            "sys.exit(1 if 'natix_miner.models.registry' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_breaker_settings_are_spec_fields():
    prof = make_profile(tier("t", 0.9, fake("m", breaker_failures=5, breaker_cooldown_s=1.5)))
    spec = prof.tiers[0].models[0]
    assert (spec.breaker_failures, spec.breaker_cooldown_s) == (5, 1.5) and spec.options == {}
    with pytest.raises(ProfileError, match=r"tiers\[0\].models\[0\].breaker_failures"):
        make_profile(tier("t", 0.9, fake("m", breaker_failures=0)))


def test_breaker_option_keys_still_load_with_a_warning():
    data = {"name": "old", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "m", "type": "fake", "licence": "MIT", "options": {"breaker_cooldown_s": 0.2, "p": 0.9}}]}]}
    with pytest.warns(FutureWarning, match=r"old.yaml: tiers\[0\].models\[0\].options.breaker_cooldown_s is deprecated"):
        prof = parse_profile(data, "old.yaml")
    spec = prof.tiers[0].models[0]
    assert spec.breaker_cooldown_s == 0.2 and spec.breaker_failures is None and spec.options == {"p": 0.9}


def test_the_runner_uses_the_spec_breaker_settings():
    from natix_miner.engine.runner import ModelRunner
    from natix_miner.models.fake import FakeAdapter

    spec = make_profile(tier("t", 0.9, fake("m", breaker_failures=7, breaker_cooldown_s=2.5))).tiers[0].models[0]
    r = ModelRunner(FakeAdapter(spec), "t", failure_threshold=3, cooldown_s=30.0, max_call_s=1.0)
    d = make_profile(tier("t", 0.9, fake("d"))).tiers[0].models[0]
    r2 = ModelRunner(FakeAdapter(d), "t", failure_threshold=3, cooldown_s=30.0, max_call_s=1.0)
    r.close()
    r2.close()
    assert (r.breaker.failure_threshold, r.breaker.cooldown_s) == (7, 2.5)
    assert (r2.breaker.failure_threshold, r2.breaker.cooldown_s) == (3, 30.0)


def test_an_unknown_type_stops_the_engine_naming_file_and_key():
    from natix_miner.engine.cascade import CascadeEngine, EngineError

    prof = make_profile(tier("t", 0.9, fake("a"), {"name": "b", "type": "nope", "licence": "MIT"}))
    with pytest.raises(EngineError, match=r"tiers\[0\].models\[1\].type: unknown model type 'nope'"):
        CascadeEngine(prof, devices=["cpu"]).start()


def test_profiles_are_frozen_and_overrides_are_validated_copies():
    import dataclasses

    prof = make_profile(tier("t", 0.9, fake("m")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.deadline_s = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prof.cache.enabled = False  # type: ignore[misc]
    fast = prof.replace(deadline_s=1.0, cache={"enabled": False})
    assert (fast.deadline_s, fast.cache.enabled, fast.cache.size) == (1.0, False, prof.cache.size)
    assert (prof.deadline_s, prof.cache.enabled) == (2.0, True)  # the original is untouched
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        prof.replace(deadline_s=9.5)  # the bound is checked on the copy too
    with pytest.raises(ValidationError):
        prof.tiers[0].models[0].replace(wieght=2.0)


def test_family_options_are_parsed_once_and_typos_stop_the_start():
    from natix_miner.engine.cascade import CascadeEngine, EngineError
    from natix_miner.models.base import OptionsError
    from natix_miner.models.fake import FakeAdapter, FakeOptions

    spec = make_profile(tier("t", 0.9, fake("m", p=0.3, latency_ms=0))).tiers[0].models[0]
    a = FakeAdapter(spec)
    assert isinstance(a.opts, FakeOptions) and a.opts.p == 0.3
    bad = make_profile(tier("t", 0.9, fake("m", latncy_ms=5))).tiers[0].models[0]
    with pytest.raises(OptionsError, match="options.latncy_ms"):
        FakeAdapter(bad)
    prof = make_profile(tier("t", 0.9, fake("ok"), fake("typo", fail="explode")))
    with pytest.raises(EngineError, match=r"tiers\[0\].models\[1\].options.fail: "):
        CascadeEngine(prof, devices=["cpu"]).start()


def test_a_family_without_an_options_model_keeps_free_form_options():
    class Free(_New):
        pass

    spec = make_profile(tier("t", 0.9, fake("m", anything=1, nested={"a": [1]}))).tiers[0].models[0]
    a = Free(spec)
    assert a.opts is None and a.spec.options == {"anything": 1, "nested": {"a": [1]}}


def test_a_vlm_option_typo_stops_the_start_naming_file_and_key():
    from natix_miner.engine.cascade import CascadeEngine, EngineError

    data = {"name": "v", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "ok", "type": "fake", "licence": "MIT"},
        {"name": "qwen", "type": "vlm", "licence": "Apache-2.0", "model": "org/qwen2-vl",
         "options": {"engine": "openai", "family": "qwen2_vl", "base_url": "http://127.0.0.1:1/v1",
                     "top_kk": 5}}]}]}
    prof = parse_profile(data, "configs/v.yaml")
    with pytest.raises(EngineError, match=r"configs/v.yaml: tiers\[0\].models\[1\].options.top_kk: not an option"):
        CascadeEngine(prof, devices=["cpu"]).start()
    data["tiers"][0]["models"][1]["options"]["cpu_ok"] = True  # read by the planner: allowed
    del data["tiers"][0]["models"][1]["options"]["top_kk"]
    from natix_miner.models.registry import build_adapter

    assert build_adapter(parse_profile(data, "v.yaml").tiers[0].models[1]).opts is None  # free-form family


def test_shipped_profiles_options_parse_with_their_family_models():
    from pathlib import Path

    from natix_miner.models.registry import adapter_class, known_types
    from natix_miner.profile import REPO_ROOT, load_profile

    checked = 0
    for f in sorted(Path(REPO_ROOT / "configs").glob("*.yaml")):
        for _, spec in load_profile(f, known_types=known_types()).models(enabled_only=False):
            cls = adapter_class(spec.type)
            if cls.options_model is not None:
                cls.parse_options(spec)  # raises OptionsError on a key the family does not know
                checked += 1
    assert checked > 0


def test_typed_families_refuse_bad_options_when_built():
    from natix_miner.models.base import OptionsError
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    def spec(type_, **options):
        return ModelSpec(name="x", type=type_, licence="MIT", model="org/x", options=options)

    assert build_adapter(spec("hf_classifier", activation="sigmoid", dtype="fp16")).opts.activation == "sigmoid"
    with pytest.raises(OptionsError, match="options.activation"):
        build_adapter(spec("hf_classifier", activation="relu"))
    with pytest.raises(OptionsError, match="options.positve_labels"):
        build_adapter(spec("hf_classifier", positve_labels=["a"]))
    assert build_adapter(spec("text_segmenter", max_area=0.6)).opts.max_area == 0.6
    with pytest.raises(OptionsError, match="min_area"):
        build_adapter(spec("text_segmenter", min_area=0.8, max_area=0.2))


def test_detector_options_are_typed():
    from natix_miner.models.base import OptionsError
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    ok = build_adapter(ModelSpec(name="d", type="hf_detector", licence="MIT", model="org/d",
                                 options={"class_map": {"traffic cone": 1.0}, "threshold": 0.4}))
    assert ok.opts.threshold == 0.4 and ok.opts.prior == 0.02
    with pytest.raises(OptionsError, match="options.threshold"):
        build_adapter(ModelSpec(name="d", type="hf_detector", licence="MIT", model="org/d",
                                options={"class_map": {"a": 1.0}, "threshold": 1.5}))
    with pytest.raises(OptionsError, match="options.variant"):  # an rfdetr key is not an hf_detector key
        build_adapter(ModelSpec(name="d", type="hf_detector", licence="MIT", model="org/d",
                                options={"class_map": {"a": 1.0}, "variant": "large"}))


def test_ultralytics_options_are_typed():
    from natix_miner.models.base import OptionsError
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    a = build_adapter(ModelSpec(name="y", type="ultralytics", licence="AGPL-3.0", model="y.pt",
                                options={"imgsz": 320, "conf": 0.15, "prompts": True}))
    assert (a.opts.imgsz, a.opts.conf, a.opts.iou, a.opts.max_det) == (320, 0.15, 0.7, 100)
    with pytest.raises(OptionsError, match="options.conf"):
        build_adapter(ModelSpec(name="y", type="ultralytics", licence="x", model="y.pt", options={"conf": 2}))
    with pytest.raises(OptionsError, match="options.imgs"):
        build_adapter(ModelSpec(name="y", type="ultralytics", licence="x", model="y.pt", options={"imgs": 640}))
