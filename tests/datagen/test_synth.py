"""scripts/synthesize.py logic (natix_miner.datagen.synth) with a tiny random-init SDXL on CPU."""

import csv
import random

import numpy as np
import pytest
from PIL import Image

from natix_miner.datagen.inputs import RealImage, real_images
from natix_miner.datagen.prompts import LABEL_INSTRUCTIONS, CaptionPrompts, TemplatePrompts, make_prompt_source
from natix_miner.datagen.synth import SOURCES_COLUMNS, SynthConfig, Synthesizer, fit_input, plan_jobs


def make_real_folder(root, n_per_class=3, size=(48, 40), corrupt=False):
    """A labelled folder like gtsdb-dev/ (roadwork/, no_roadwork/, SOURCES.tsv with a licence per file)."""
    rows = ["file\tlabel\tsource_repo\tsource_path\tlicense\tnotes"]
    rng = np.random.default_rng(0)
    for sub in ("roadwork", "no_roadwork"):
        (root / sub).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            f = f"{sub}/cam{sub[0]}_{i * 100:05d}.jpg"
            Image.fromarray(arr).save(root / f)
            rows.append(f"{f}\t{sub}\tsome/repo\tx/{i}.jpg\tCC-BY-4.0\ttest")
    if corrupt:
        (root / "roadwork" / "cam_99999.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "SOURCES.tsv").write_text("\n".join(rows) + "\n")
    return root


def _reals(n1, n0):
    return [RealImage(key=f"d/{'roadwork' if lab else 'no_roadwork'}/{i}.jpg", label=lab, load=lambda: None)
            for lab, n in ((1, n1), (0, n0)) for i in range(n)]


def test_plan_is_deterministic_balanced_and_unique(tmp_path):
    cfg = SynthConfig(out=str(tmp_path), n_i2i=9, n_t2i=6, seed=3)
    a, b = plan_jobs(cfg, _reals(2, 5)), plan_jobs(cfg, _reals(2, 5))
    assert [(j.id, j.seed, j.file) for j in a] == [(j.id, j.seed, j.file) for j in b]
    assert len({j.file for j in a}) == 15
    i2i = [j for j in a if j.kind == "i2i"]
    assert sum(j.label for j in i2i) == 5 and all(j.parent.label == j.label for j in i2i)  # 5/4 by label
    t2i = [j for j in a if j.kind == "t2i"]
    assert [j.label for j in t2i] == [1, 0, 1, 0, 1, 0] and all(j.file.startswith(("roadwork/", "no_roadwork/"))
                                                               for j in t2i)
    assert {j.seed for j in a} != {j.seed for j in plan_jobs(SynthConfig(out="x", n_i2i=9, n_t2i=6, seed=4),
                                                             _reals(2, 5))}
    with pytest.raises(ValueError, match="real labelled input"):
        plan_jobs(SynthConfig(out="x", n_i2i=1), [])


def test_config_refuses_bad_values():
    with pytest.raises(ValueError):
        SynthConfig(out="x", strength=0.0)
    with pytest.raises(ValueError):
        SynthConfig(out="x", t2i_size=100)
    assert SynthConfig(out="x").license == "CreativeML Open RAIL++-M"
    assert SynthConfig(out="x", model_id="some/other").license == "unknown"


def test_template_prompts_depend_on_the_label():
    ps = TemplatePrompts().prompts([1, 0, 1, 0], [None] * 4, random.Random(0))
    assert all(p.startswith("Photorealistic dashcam footage") for p in ps)
    assert "roadwork" in ps[0] and "roadwork" in ps[2]
    assert "no construction" in ps[1] and "roadwork" not in ps[1]
    assert isinstance(make_prompt_source(), TemplatePrompts)


def test_caption_prompts_rewrite_per_label_and_survive_a_failing_rewrite():
    calls = []

    def rewriter(instruction, caption):
        calls.append((instruction, caption))
        if "boom" in caption:
            raise RuntimeError("llm down")
        return f"Photorealistic dashcam footage [{instruction[:20]}] {caption}"

    caps = iter(["a street with cars", "boom", "a road"])
    src = CaptionPrompts(captioner=lambda im: next(caps), rewriter=rewriter)
    img = Image.new("RGB", (8, 8))
    out = src.prompts([1, 0, 0, 1], [img, img, img, None], random.Random(0))
    assert calls[0] == (LABEL_INSTRUCTIONS[1], "a street with cars.") and calls[2][0] == LABEL_INSTRUCTIONS[0]
    assert out[0].endswith("a street with cars.") and out[1] == "boom."  # the caption when the rewrite fails
    assert out[3].startswith("Photorealistic dashcam footage")  # no reference image: a template
    with pytest.raises(ValueError):
        CaptionPrompts()


def test_fit_input_follows_the_validator_rule():
    assert fit_input(Image.new("RGB", (1360, 800)), 1024).size == (1024, 1024)
    assert fit_input(Image.new("L", (640, 480)), 1024).size == (640, 480)
    assert fit_input(Image.new("L", (640, 480)), 1024).mode == "RGB"


@pytest.fixture(scope="module")
def tiny():
    from tiny_sdxl import build_tiny_pipelines

    return build_tiny_pipelines()


class CountingPipe:
    """Wraps a pipeline and records each call's keyword arguments."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kw):
        self.calls.append(kw)
        return self.pipe(**kw)


@pytest.mark.slow
def test_synthesize_with_tiny_sdxl_writes_layout_sources_and_resumes(tmp_path, tiny):
    from natix_miner.training.data import scan_data

    real = make_real_folder(tmp_path / "real", corrupt=True)
    out = tmp_path / "synth"
    cfg = SynthConfig(out=str(out), n_i2i=4, n_t2i=2, steps=2, t2i_size=32, batch_size=2, device="cpu",
                      i2i_max_side=44)
    i2i, t2i = CountingPipe(tiny[0]), CountingPipe(tiny[1])
    reals = real_images([str(real)])
    assert len(reals) == 7 and sum(r.label for r in reals) == 4
    rep = Synthesizer(cfg, i2i_pipe=i2i, t2i_pipe=t2i).run(reals, progress=False)
    # the corrupt roadwork file, if drawn, is skipped and counted (an i2i job is not made; a t2i job is made from
    # a template prompt), never fatal
    bad = {k: sum(j.kind == k and "99999" in j.parent.key for j in plan_jobs(cfg, reals)) for k in ("i2i", "t2i")}
    assert rep.generated == 6 - bad["i2i"] and rep.bad_inputs == bad["i2i"] + bad["t2i"] and rep.failed == 0
    assert rep.by_kind["t2i"] == 2
    assert all(c["strength"] == 0.7 and c["guidance_scale"] == 8.0 and "cartoon" in c["negative_prompt"][0]
               for c in i2i.calls)
    assert all(c["image"][0].size == (44, 44) for c in i2i.calls)  # 48x40 > 44: resized to exactly 44x44
    assert t2i.calls[0]["height"] == 32 and "motion blur" in t2i.calls[0]["negative_prompt"][0]

    with open(out / "SOURCES.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert tuple(rows[0].keys()) == SOURCES_COLUMNS and len(rows) == rep.generated
    for r in rows:
        im = Image.open(out / r["file"])
        assert im.format == "PNG" and r["file"].startswith(r["label"] + "/")
        assert r["generator"] == "stabilityai/stable-diffusion-xl-base-1.0"
        assert r["generator_license"] == "CreativeML Open RAIL++-M"
        if r["kind"] == "i2i":
            assert r["parent"].startswith("real/") and "CC-BY-4.0" in r["license"]
            assert r["file"].startswith("roadwork/") == r["parent"].startswith("real/roadwork/")
        else:
            assert r["kind"] == "t2i" and r["parent"] == "" and im.size == (32, 32)

    # the training reader sees the conditions, and an i2i image shares its parent's split group
    samples = {s.key: s for s in scan_data([str(real), str(out)])}
    for r in rows:
        s = samples[f"synth/{r['file']}"]
        assert s.condition == r["kind"] and s.label == (r["label"] == "roadwork")
        if r["kind"] == "i2i":
            assert s.group == samples[r["parent"]].group

    # resume: nothing is redone; a deleted image is made again, the same image (per-job seed)
    rep2 = Synthesizer(cfg, i2i_pipe=i2i, t2i_pipe=t2i).run(reals, progress=False)
    assert rep2.generated == 0 and rep2.skipped_done == rep.generated
    victim = next(r for r in rows if r["kind"] == "t2i")
    before = np.asarray(Image.open(out / victim["file"]), dtype=np.int16)
    (out / victim["file"]).unlink()
    n_calls = len(i2i.calls) + len(t2i.calls)
    rep3 = Synthesizer(cfg, i2i_pipe=i2i, t2i_pipe=t2i).run(reals, progress=False)
    assert rep3.generated == 1 and len(i2i.calls) + len(t2i.calls) == n_calls + 1
    after = np.asarray(Image.open(out / victim["file"]), dtype=np.int16)
    other = np.asarray(Image.open(out / next(r["file"] for r in rows if r["kind"] == "t2i" and r is not victim)),
                       dtype=np.int16)
    # the same image up to batch numerics (made in a batch of 2, then alone); another job's image differs more
    assert np.abs(before - after).mean() < 0.5 * np.abs(before - other).mean()
    with open(out / "SOURCES.tsv", newline="") as fh:
        assert len(list(csv.DictReader(fh, delimiter="\t"))) == len(rows)


class EchoPipe:
    """A stand-in pipeline: returns its input images (i2i) or grey squares (t2i); records the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        from types import SimpleNamespace

        self.calls.append(kw)
        n = len(kw["prompt"])
        imgs = kw.get("image") or [Image.new("RGB", (kw["width"], kw["height"]), (128, 128, 128))] * n
        return SimpleNamespace(images=list(imgs))


def test_parquet_parents_keep_their_video_group(tmp_path):
    """i2i from a NATIX-style parquet: the parent is the row's sample key and the image joins its video's group."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from natix_miner.training.data import scan_data

    rows = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (200 if i % 2 else 20, 40, 40)).save(buf, format="JPEG")
        rows.append({"image": {"bytes": buf.getvalue()}, "label": i % 2,
                     "scene_description": "cones on the road" if i % 2 else "",
                     "video_info": {"vid_id": f"vid{i // 2}"}})
    (tmp_path / "natix").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "natix" / "train-0.parquet")
    reals = real_images([str(tmp_path / "natix")])
    assert [r.key for r in reals][:2] == ["natix/train-0.parquet#0", "natix/train-0.parquet#1"]
    out = tmp_path / "synth"
    pipe = EchoPipe()
    rep = Synthesizer(SynthConfig(out=str(out), n_i2i=4, n_t2i=2, t2i_size=32, device="cpu"), i2i_pipe=pipe,
                      t2i_pipe=EchoPipe()).run(reals, progress=False)
    assert rep.generated == 6 and rep.bad_inputs == 0
    samples = {s.key: s for s in scan_data([str(tmp_path / "natix"), str(out)])}
    i2i = [s for s in samples.values() if s.condition == "i2i"]
    assert len(i2i) == 4
    with open(out / "SOURCES.tsv", newline="") as fh:
        parent = {f"synth/{r['file']}": r["parent"] for r in csv.DictReader(fh, delimiter="\t")}
    for s in i2i:
        p = samples[parent[s.key]]
        assert p.key.startswith("natix/train-0.parquet#") and s.group == p.group and s.group.startswith("natix/vid:")
        assert s.label == p.label


class FailingPipe(EchoPipe):
    """Works for ``ok`` calls, then raises (a GPU that fell over)."""

    def __init__(self, ok: int):
        super().__init__()
        self.ok = ok

    def __call__(self, **kw):
        if len(self.calls) >= self.ok:
            self.calls.append(kw)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().__call__(**kw)


def test_failing_pipeline_stops_after_three_batches_and_a_rerun_resumes(tmp_path):
    real = make_real_folder(tmp_path / "real", n_per_class=4)
    reals = real_images([str(real)])
    cfg = SynthConfig(out=str(tmp_path / "synth"), n_i2i=12, batch_size=2, device="cpu")
    bad = FailingPipe(ok=2)
    with pytest.raises(RuntimeError, match="3 batches failed in a row"):
        Synthesizer(cfg, i2i_pipe=bad, t2i_pipe=EchoPipe()).run(reals, progress=False)
    assert len(bad.calls) == 5
    with open(tmp_path / "synth" / "SOURCES.tsv", newline="") as fh:
        assert len(list(csv.DictReader(fh, delimiter="\t"))) == 4
    rep = Synthesizer(cfg, i2i_pipe=EchoPipe(), t2i_pipe=EchoPipe()).run(reals, progress=False)
    assert rep.skipped_done == 4 and rep.generated == 8
    with open(tmp_path / "synth" / "SOURCES.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == 12 == len({r["file"] for r in rows})
