"""The GPU profiles: they validate, name the design's models, flag restricted licences, and fit the
H100s according to the placement planner (simulated devices; no GPU needed)."""

from __future__ import annotations

import re

import pytest

from natix_miner.devices import PlacementError, plan_placement
from natix_miner.profile import REPO_ROOT, load_profile

H100_MB = 81559.0
FULL = REPO_ROOT / "configs" / "h100x2-full.yaml"
SINGLE = REPO_ROOT / "configs" / "h100x1.yaml"
THRESHOLDS = [0.95, 0.90, 0.85, 0.75, 0.65, 0.50]

# docs/architecture.md §3: (number, design name, profile entry name, the real id / file it must use)
DESIGN_26 = [
    (1, "YOLO-Master ES-MoE", "yolo-master-esmoe", "yolo-master"),
    (2, "YOLO26-X", "yolo26-x", "yoloe-26x-seg.pt"),
    (3, "YOLO11-X", "yolo11-x", "yoloe-11l-seg.pt"),
    (4, "RF-DETR-large", "rf-detr-large", "rf-detr-large"),
    (5, "Grounding DINO 1.6 Pro", "grounding-dino", "IDEA-Research/grounding-dino-base"),
    (6, "Depth Anything 3", "depth-check", "depth-anything/Depth-Anything-V2-Small-hf"),
    (7, "SAM 3 Agent", "sam3", "facebook/sam3"),
    (8, "Anomaly-OV", "siglip2-anomaly-ov", "google/siglip2-so400m-patch14-384"),
    (9, "CoTracker 3", "cotracker3", "facebook/cotracker3"),
    (10, "DINOv3-ViT-H+/16", "dinov3-probe", "facebook/dinov3-vith16plus-pretrain-lvd1689m"),
    (11, "AnomalyCLIP", "clip336-anomalyclip", "openai/clip-vit-large-patch14-336"),
    (12, "Qwen3-VL-4B", "qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct-FP8"),
    (13, "Molmo 2-4B", "molmo2-4b", "allenai/Molmo2-4B"),
    (14, "Phi-4-Multimodal", "phi-4-multimodal", "microsoft/Phi-4-multimodal-instruct"),
    (15, "Qwen3-VL-32B", "qwen3-vl-32b", "Qwen/Qwen3-VL-32B-Instruct-FP8"),
    (16, "InternVL3.5-78B", "internvl3.5-38b", "OpenGVLab/InternVL3_5-38B"),
    (17, "Qwen3-VL-8B-Thinking", "qwen3-vl-8b-thinking", "Qwen/Qwen3-VL-8B-Thinking"),
    (18, "Qwen3-VL-32B-Thinking", "qwen3-vl-32b-thinking", "Qwen/Qwen3-VL-32B-Thinking-FP8"),
    (19, "Florence-2-Base", "florence-2-base", "florence-community/Florence-2-base"),
    (20, "RT-DETRv3-R50", "rtdetrv2-r50", "PekingU/rtdetr_v2_r50vd"),
    (21, "D-FINE-X", "dfine-x", "ustc-community/dfine-xlarge-"),
    (22, "OWLv2", "owlv2", "google/owlv2-large-patch14-ensemble"),
    (23, "CLIP ViT-L/14", "clip-vit-l14", "openai/clip-vit-large-patch14"),
    (24, "PaliGemma-3B", "paligemma2-3b", "google/paligemma2-3b-mix-224"),
    (25, "LLaVA-OneVision-7B", "llava-onevision-7b", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    (26, "Video-LLaVA-7B", "video-llava-7b", "LanguageBind/Video-LLaVA-7B-hf"),
]
# licences that need the explicit opt-in (docs/architecture.md §3): gated on the hub or non-commercial
GATED = {"sam3", "dinov3-probe", "paligemma2-3b"}
NONCOMMERCIAL = {"cotracker3"}
NOT_APPLICABLE = {"cotracker3", "yolo-master-esmoe"}


@pytest.fixture(scope="module")
def full():
    return load_profile(FULL, check_types=True)


@pytest.fixture(scope="module")
def single():
    return load_profile(SINGLE, check_types=True)


def _all(profile):
    return {m.name: (t, m) for t, m in profile.models(enabled_only=False)}


def _enabled(profile):
    return [(m, m.memory_mb) for _, m in profile.models()]


def test_full_profile_names_all_26_design_models(full):
    models = _all(full)
    assert len(DESIGN_26) == 26
    for num, design, name, real in DESIGN_26:
        assert name in models, f"design model {num} ({design}) missing from {FULL.name}"
        assert real in (models[name][1].model or ""), f"{design}: expected {real}, got {models[name][1].model}"
    # the seed's tier structure: design numbers 1-4, 5-7, 8-11, 12-14, 15-16, 17-18, 19-26
    tier_of = {name: [t.name for t in full.tiers].index(models[name][0].name) for _, _, name, _ in DESIGN_26}
    bounds = [(1, 4), (5, 7), (8, 11), (12, 14), (15, 16), (17, 18), (19, 26)]
    for k, (lo, hi) in enumerate(bounds):
        assert {n for num, _, n, _ in DESIGN_26 if lo <= num <= hi} == {n for n, t in tier_of.items() if t == k}
    assert "natix-network-org/roadwork" in {m.model for _, m in models.values()}


def test_tiers_and_thresholds(full, single):
    for prof in (full, single):
        assert len(prof.tiers) == 7
        assert [t.exit_threshold for t in prof.tiers[:6]] == THRESHOLDS
        thinking = prof.tiers[-1] if prof is single else prof.tiers[5]
        assert thinking.name == "thinking" and not any(m.enabled for m in thinking.models)
        assert all(m.disabled_reason for m in thinking.models)


def test_every_entry_is_complete_and_pinned(full):
    for _, m in full.models(enabled_only=False):
        assert m.licence.strip() and m.memory_mb > 0, m.name
        assert re.fullmatch(r"cuda:[01]", m.device) or not m.enabled, f"{m.name}: pin it to cuda:0 or cuda:1"
        if not m.enabled:
            assert m.disabled_reason and len(m.disabled_reason) > 20, m.name
    for name in NOT_APPLICABLE:
        assert not _all(full)[name][1].enabled


def test_restricted_licences_are_flagged(full, single):
    for prof in (full, single):
        for _, m in prof.models(enabled_only=False):
            lic = m.licence.lower()
            if re.search(r"\bnc\b|non-?commercial|cc-by-nc", lic):
                assert m.noncommercial, f"{m.name}: {m.licence} must set noncommercial: true"
            if any(k in lic for k in ("sam license", "dinov3", "gemma")):
                assert m.gated, f"{m.name}: {m.licence} is gated on the hub"
    models = _all(full)
    assert {n for n, (_, m) in models.items() if m.gated} == GATED
    assert {n for n, (_, m) in models.items() if m.noncommercial} == NONCOMMERCIAL
    assert all(models[n][1].restricted for n in GATED | NONCOMMERCIAL)


def test_vllm_memory_matches_its_gpu_fraction(full, single):
    for prof in (full, single):
        for _, m in prof.models(enabled_only=False):
            if m.type == "vlm" and m.options.get("engine") == "vllm":
                frac = float(m.options["gpu_memory_utilization"])
                assert m.memory_mb == pytest.approx(frac * H100_MB, abs=1.0), m.name


def test_full_profile_fits_two_h100s(full):
    enabled = _enabled(full)
    plan = plan_placement(enabled, {"cuda:0": H100_MB, "cuda:1": H100_MB})
    assert len(plan.placements) == len(enabled)
    for dev in ("cuda:0", "cuda:1"):
        assert plan.used_mb(dev) <= plan.usable_mb(dev)
    for m, _ in enabled:
        assert plan.device_of(m.name) == m.device  # pins honoured
    with pytest.raises(PlacementError):  # and it really needs both
        plan_placement(enabled, {"cuda:0": H100_MB})


def test_single_profile_fits_one_h100(single):
    enabled = _enabled(single)
    names = {m.name for m, _ in enabled}
    assert {"natix-roadwork-vit", "owlv2", "clip-vit-l14", "siglip2", "qwen3-vl-4b", "qwen3-vl-32b"} <= names
    tiers = [t.name for t in single.tiers]
    where = {m.name: tiers.index(t.name) for t, m in single.models()}
    assert where["qwen3-vl-4b"] == 4 and where["qwen3-vl-32b"] == 5
    plan = plan_placement(enabled, {"cuda:0": H100_MB})
    assert plan.used_mb("cuda:0") <= plan.usable_mb("cuda:0")
    assert {p.device for p in plan.placements} == {"cuda:0"}


# ---------------------------------------------------------------------------------------------
# scripts/download_models.py and scripts/export_tensorrt.py (offline: argument parsing, the offline
# verification path on a local tiny model folder, the export dry run)


def _script(name):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO_ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_download_models_arguments():
    dm = _script("download_models")
    a = dm.parse_args(["--profile", "configs/h100x1.yaml", "--only", "owlv2", "siglip2", "--allow-restricted"])
    assert a.only == ["owlv2", "siglip2"] and a.allow_restricted and a.device == "cpu" and not a.verify_only
    b = dm.parse_args(["--profile", "p.yaml", "--verify-only", "--device", "cuda:0", "--verify-max-mb", "100"])
    assert b.verify_only and b.device == "cuda:0" and b.verify_max_mb == 100 and not b.allow_restricted
    with pytest.raises(SystemExit):
        dm.parse_args(["--only", "x"])  # --profile is required


def test_download_models_artefacts_of_the_profiles(full):
    from natix_miner.ops import download_models as dm

    assets = frozenset({"yoloe-26x-seg.pt", "yoloe-11l-seg.pt"})
    by = {m.name: m for _, m in full.models(enabled_only=False)}
    arts = dm.artefacts_of("ultralytics", by["yolo26-x"].model, by["yolo26-x"].options, full, assets)
    assert arts[0].kind == "ultralytics" and arts[0].ref == str(REPO_ROOT / "models" / "yoloe-26x-seg.pt")
    assert arts[0].yoloe_prompts  # prompts: true -> the default roadwork vocabulary
    dc = by["depth-check"]
    kinds = [(a.kind, a.ref) for a in dm.artefacts_of(dc.type, dc.model, dc.options, full, assets)]
    assert kinds == [("ultralytics", str(REPO_ROOT / "models" / "yoloe-11l-seg.pt")),
                     ("hf", "depth-anything/Depth-Anything-V2-Small-hf")]
    q = by["qwen3-vl-32b"]
    assert [a.kind for a in dm.artefacts_of(q.type, q.model, q.options, full, assets)] == ["hf"]
    assert dm.artefacts_of("vlm", "x/y", {"engine": "openai"}, full, assets) == []
    assert dm.artefacts_of("ultralytics", "models/roadwork-yolo11x.pt", {}, full, assets)[0].kind == "local"
    with pytest.raises(SystemExit, match="unknown model"):
        dm.select(full, ["nope"], False)
    assert [m.name for m in dm.select(full, ["internvl3.5-38b"], False)] == ["internvl3.5-38b"]


def test_download_models_offline_verification(tmp_path):
    """A tiny local backbone loads (ok), an uncached hub id is missing, a gated one is skipped
    without the opt-in, a remote VLM needs nothing — and nothing touches the network."""
    import yaml

    torch = pytest.importorskip("torch")
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    tiny = tmp_path / "tiny-dinov2"
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(tiny)
    prof = {"name": "verify-test", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "tiny-probe", "type": "feature_probe", "licence": "Apache-2.0", "model": str(tiny),
         "options": {"image_size": 28}},
        {"name": "not-cached", "type": "zero_shot", "licence": "MIT", "model": "natix-test/not-a-real-model"},
        {"name": "gated-one", "type": "text_segmenter", "licence": "SAM License", "gated": True,
         "model": "facebook/sam3"},
        {"name": "remote", "type": "vlm", "licence": "Apache-2.0", "model": "Qwen/Qwen3-VL-4B-Instruct",
         "options": {"engine": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        {"name": "big-local", "type": "feature_probe", "licence": "Apache-2.0", "model": str(tiny),
         "memory_mb": 99999},
    ]}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    from natix_miner.ops import download_models as dm

    profile = load_profile(path)
    rows = {r.name: r for r in dm.verify(profile, dm.select(profile, None, False), device="cpu")}
    assert rows["tiny-probe"].status == "ok", rows["tiny-probe"].reason
    assert rows["not-cached"].status == "missing" and "not in the Hugging Face cache" in rows["not-cached"].reason
    assert rows["gated-one"].status == "skipped" and "--allow-restricted" in rows["gated-one"].reason
    assert rows["remote"].status == "skipped"
    assert rows["big-local"].status == "files-ok"
    allowed = {r.name: r for r in dm.verify(profile, dm.select(profile, ["gated-one"], False), allow_restricted=True)}
    assert allowed["gated-one"].status == "missing"
    table = dm.format_table(rows.values())
    assert "tiny-probe" in table and "missing: 1" in table and "ok: 1" in table
    # the CLI (scripts/download_models.py) in verify-only mode: exit status 1 because one model is missing
    cli = _script("download_models")
    assert cli.main(["--profile", str(path), "--verify-only", "--only", "tiny-probe", "not-cached"]) == 1
    assert cli.main(["--profile", str(path), "--verify-only", "--only", "tiny-probe"]) == 0


def test_export_tensorrt_dry_run(tmp_path, capsys):
    import yaml

    ex = _script("export_tensorrt")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "det.pt").write_bytes(b"not really weights")
    prof = {"name": "export-test", "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "det", "type": "ultralytics", "licence": "AGPL-3.0", "model": str(tmp_path / "w" / "det.pt"),
         "batch_size": 4, "options": {"imgsz": 800, "class_map": {"cone": 1.0}, "conf": 0.2}},
        {"name": "yoloe", "type": "ultralytics", "licence": "AGPL-3.0", "model": str(tmp_path / "w" / "yoloe.pt"),
         "options": {"prompts": {"traffic cone": 1.0, "barrier": 0.8}}},
        {"name": "already", "type": "ultralytics", "licence": "AGPL-3.0", "model": str(tmp_path / "w" / "x.engine")},
        {"name": "dchk", "type": "depth_check", "licence": "Apache-2.0", "model": "depth-anything/x",
         "options": {"detector": {"type": "ultralytics", "model": str(tmp_path / "w" / "det.pt")}}},
        {"name": "clip", "type": "zero_shot", "licence": "MIT", "model": "openai/clip-vit-large-patch14"},
    ]}]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(prof))
    profile = load_profile(path)
    plans = {p.name: p for p in ex.plan_exports(profile)}
    assert set(plans) == {"det", "yoloe", "already", "dchk.detector"}
    assert plans["det"].status == "todo" and plans["det"].imgsz == 800 and plans["det"].batch == 4
    assert plans["det"].target == tmp_path / "w" / "det.engine"
    assert plans["yoloe"].status == "missing" and plans["already"].status == "skip"
    assert ex.main(["--profile", str(path), "--dry-run"]) == 1  # one source is missing
    out = capsys.readouterr().out
    assert "[would export] det" in out and "[missing] yoloe" in out and "[skip] already" in out
    assert not (tmp_path / "w" / "det.engine").exists()
    # the real path with a stand-in exporter: prints the profile lines to switch to the engine
    made = []

    def fake_export(p):
        p.target.write_bytes(b"engine")
        made.append(p.name)
        return p.target

    assert ex.run([plans["det"]], profile, dry_run=False, exporter=fake_export) == 0
    out = capsys.readouterr().out
    assert made == ["det"] and f"model: {tmp_path / 'w' / 'det.engine'}" in out
    assert "class_map: {cone: 1.0}" in out and "conf: 0.2" in out
    plans["yoloe"].status = "todo"
    lines = ex.profile_lines(plans["yoloe"], profile)
    assert "prompts are baked in" in lines and "traffic cone: 1.0" in lines and "barrier: 0.8" in lines
    a = ex.parse_args(["--profile", "x.yaml", "--int8", "--no-dynamic", "--batch", "2"])
    assert a.int8 and not a.dynamic and a.batch == 2 and a.half
