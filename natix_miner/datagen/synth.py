"""Labelled synthetic images made the validators' way (docs/protocol.md §2.3, §12).

Validators make a third of their challenges from ``stabilityai/stable-diffusion-xl-base-1.0``: half image-to-image
from a real frame of the drawn label (strength 0.7, guidance 8.0, 25 steps, the input resized to exactly 1024×1024
when a side exceeds 1024), half text-to-image (1024×1024) from a label-dependent prompt, both with a long
photorealism negative prompt; output PNG. :class:`Synthesizer` reproduces that:

* a deterministic job plan (``plan_jobs``): i2i jobs draw parents 50/50 by label, t2i jobs alternate labels; each
  job has a stable id and its own seed, so a rerun with the same arguments resumes (a job whose image and
  manifest line exist is skipped) and gives the same images whatever the batch size;
* batches through the diffusers pipelines (i2i batches grouped by input size), fp16 on CUDA;
* output in the project's labelled-folder layout (``roadwork/``, ``no_roadwork/``), ``manifest.jsonl`` (one line
  per finished job) and ``SOURCES.tsv`` (rows appended per batch, rebuilt from the manifest at the start and
  end of a run), with ``kind`` (i2i|t2i),
  ``parent`` (the real image's sample key: training keeps an i2i image in its parent's split group),
  ``generator`` and ``generator_license``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from natix_miner.datagen.inputs import RealImage
from natix_miner.datagen.prompts import PromptSource, TemplatePrompts

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
GENERATOR_LICENSES = {SDXL_BASE: "CreativeML Open RAIL++-M"}
# the validators' SDXL negative prompt (natix/validator/config.py, i2i variant; t2i adds motion-blur terms)
NEGATIVE_PROMPT = (
    "cartoon, anime, painting, drawing, artistic, stylized, illustration, sketch, unrealistic, fake, artificial, "
    "3d render, cgi, video game, fantasy, sci-fi, aerial view, bird's eye view, satellite view, drone footage, "
    "helicopter view, top-down view, security camera, cctv, surveillance camera, indoor scene, interior, portrait, "
    "face, person close-up, selfie, vibrant colors, oversaturated, neon, glowing, night vision, thermal imaging, "
    "fisheye lens, wide angle distortion")
T2I_NEGATIVE_EXTRA = (", motion blur, blurry, out of focus, unfocused, soft focus, speed blur, camera shake, "
                      "movement blur")
LABEL_DIRS = {1: "roadwork", 0: "no_roadwork"}
SOURCES_COLUMNS = ("file", "label", "source_repo", "source_path", "license", "notes", "kind", "parent", "generator",
                   "generator_license")
MANIFEST = "manifest.jsonl"


@dataclass
class SynthConfig:
    out: str
    model_id: str = SDXL_BASE
    n_i2i: int = 0
    n_t2i: int = 0
    strength: float = 0.7
    guidance: float = 8.0
    steps: int = 25
    t2i_size: int = 1024
    i2i_max_side: int = 1024  # inputs with a side above this are resized to exactly max_side × max_side
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "auto"  # auto = float16 on CUDA, float32 on CPU
    negative_prompt: str = NEGATIVE_PROMPT
    generator_license: str | None = None  # default: GENERATOR_LICENSES[model_id] or "unknown"
    max_failed_batches: int = 3  # consecutive failed batches before giving up

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength {self.strength} must be in (0, 1]")
        if self.n_i2i < 0 or self.n_t2i < 0 or self.batch_size < 1 or self.steps < 1:
            raise ValueError("counts must be >= 0, batch size and steps >= 1")
        if self.t2i_size % 8:
            raise ValueError(f"t2i size {self.t2i_size} must be a multiple of 8")

    @property
    def license(self) -> str:
        return self.generator_license or GENERATOR_LICENSES.get(self.model_id, "unknown")


@dataclass(frozen=True)
class Job:
    id: str
    kind: str  # i2i | t2i
    label: int
    seed: int
    parent: RealImage | None = None  # i2i: the input image; t2i: a caption reference of the label (or None)

    @property
    def file(self) -> str:
        return f"{LABEL_DIRS[self.label]}/sdxl-{self.kind}-{self.id}.png"


@dataclass
class SynthReport:
    planned: int = 0
    generated: int = 0
    skipped_done: int = 0
    bad_inputs: int = 0
    failed: int = 0
    wall_s: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.generated / self.wall_s if self.wall_s > 0 else 0.0


def _job_seed(base: int, job_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{job_id}".encode()).digest()[:4], "little")


def plan_jobs(cfg: SynthConfig, reals: list[RealImage]) -> list[Job]:
    """The deterministic job list for ``cfg`` (same config and inputs → same ids and seeds)."""
    rng = random.Random(cfg.seed)
    by_label = {lab: [r for r in reals if r.label == lab] for lab in (1, 0)}
    for lst in by_label.values():
        rng.shuffle(lst)
    jobs: list[Job] = []
    if cfg.n_i2i:
        labels = [lab for lab in (1, 0) if by_label[lab]]
        if not labels:
            raise ValueError("image-to-image needs real labelled input images (--from)")
        if len(labels) < 2:
            logger.warning(f"inputs hold only label {labels[0]}: every i2i image gets that label")
        used: dict[str, int] = {}
        for i in range(cfg.n_i2i):
            lab = labels[i % len(labels)]
            lst = by_label[lab]
            parent = lst[(i // len(labels)) % len(lst)]
            k = used.get(parent.key, 0)
            used[parent.key] = k + 1
            jid = hashlib.sha1(f"{parent.key}#{k}".encode()).hexdigest()[:12]
            jobs.append(Job(id=jid, kind="i2i", label=lab, seed=_job_seed(cfg.seed, "i2i" + jid), parent=parent))
    for i in range(cfg.n_t2i):
        lab = 1 - i % 2
        refs = by_label[lab]
        ref = refs[rng.randrange(len(refs))] if refs else None
        # no running number in the name: the training reader groups numbered frames in blocks (stem_group)
        jid = hashlib.sha1(f"{cfg.seed}:{lab}:{i}".encode()).hexdigest()[:12]
        jobs.append(Job(id=jid, kind="t2i", label=lab, seed=_job_seed(cfg.seed, "t2i" + jid), parent=ref))
    return jobs


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    dt = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float32": torch.float32, "fp32": torch.float32}.get(dtype)
    if dt is None:
        raise ValueError(f"unknown dtype {dtype!r} (float16 | bfloat16 | float32)")
    return device, dt


def load_pipelines(model_id: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """SDXL img2img and text2img sharing one set of weights (as the validators do). Downloads from the Hub unless
    the model is cached or ``model_id`` is a local folder."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from diffusers.utils import deprecation_utils

    # diffusers >= 0.42 names it `dtype` (torch_dtype is deprecated); older releases only know torch_dtype
    dtype_kw = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    kw: dict[str, Any] = {dtype_kw: dtype, "use_safetensors": True}
    if dtype == torch.float16 and not Path(model_id).is_dir():
        kw["variant"] = "fp16"
    i2i = StableDiffusionXLImg2ImgPipeline.from_pretrained(model_id, **kw).to(device)
    t2i = StableDiffusionXLPipeline.from_pipe(i2i)
    return i2i, t2i


def fit_input(image: Any, max_side: int) -> Any:
    """The validators' i2i input rule: a side above ``max_side`` → resized to exactly max_side × max_side."""
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > max_side:
        image = image.resize((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def _clean(s: str) -> str:
    return " ".join(str(s).split())


def _row(rec: dict) -> str:
    return "\t".join(_clean(rec.get(c, "")) for c in SOURCES_COLUMNS)


class Synthesizer:
    """Construct with the config and (optionally) ready pipelines and a prompt source; :meth:`run` the jobs."""

    def __init__(self, cfg: SynthConfig, *, i2i_pipe: Any = None, t2i_pipe: Any = None,
                 prompt_source: PromptSource | None = None):
        self.cfg = cfg
        self.i2i, self.t2i = i2i_pipe, t2i_pipe
        self.prompts = prompt_source or TemplatePrompts()
        self.out = Path(cfg.out)
        self.device, self.dtype = resolve_device_dtype(cfg.device, cfg.dtype)

    # ------------------------------------------------------------------------------ state on disk
    def _done(self) -> dict[str, dict]:
        done: dict[str, dict] = {}
        mf = self.out / MANIFEST
        if mf.is_file():
            for line in mf.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    done[rec["file"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that job is redone
        return {f: r for f, r in done.items() if (self.out / f).is_file()}

    def _write_sources(self, done: dict[str, dict]) -> None:
        """Rewrite SOURCES.tsv from the manifest (sorted; at the start and the end of a run)."""
        rows = ["\t".join(SOURCES_COLUMNS)] + [_row(done[f]) for f in sorted(done)]
        tmp = self.out / "SOURCES.tsv.tmp"
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        os.replace(tmp, self.out / "SOURCES.tsv")

    def _append_sources(self, recs: list[dict]) -> None:
        """Add a batch's rows (cheap; the manifest stays the reference: a crash here is repaired on resume)."""
        if recs:
            with open(self.out / "SOURCES.tsv", "a", encoding="utf-8") as fh:
                fh.write("".join(_row(r) + "\n" for r in recs))

    def _record(self, job: Job, prompt: str, image: Any) -> dict:
        path = self.out / job.file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
        cfg = self.cfg
        params = f"steps {cfg.steps}, guidance {cfg.guidance}" + (f", strength {cfg.strength}" if job.kind == "i2i"
                                                                 else f", {cfg.t2i_size}px")
        parent = job.parent.key if (job.kind == "i2i" and job.parent is not None) else ""
        lic = cfg.license + (f"; derived from {parent} ({job.parent.license})" if parent else "")
        rec = {"file": job.file, "label": LABEL_DIRS[job.label], "source_repo": cfg.model_id,
               "source_path": parent, "license": lic,
               "notes": f"synthetic {job.kind} ({params}, seed {job.seed}, {self.prompts.name}): {prompt}",
               "kind": job.kind, "parent": parent, "generator": cfg.model_id, "generator_license": cfg.license,
               "job": job.id, "seed": job.seed, "prompt": prompt, "size": list(image.size)}
        with open(self.out / MANIFEST, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        return rec

    # ------------------------------------------------------------------------------ generation
    def _generators(self, jobs: list[Job]) -> list[Any]:
        import torch

        gen_device = self.device if self.device.startswith("cuda") else "cpu"
        return [torch.Generator(gen_device).manual_seed(j.seed) for j in jobs]

    def _call(self, kind: str, jobs: list[Job], prompts: list[str], images: list[Any] | None) -> list[Any]:
        cfg = self.cfg
        common = dict(prompt=prompts, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                      generator=self._generators(jobs), output_type="pil")
        if kind == "i2i":
            out = self.i2i(image=images, strength=cfg.strength, negative_prompt=[cfg.negative_prompt] * len(jobs),
                           **common)
        else:
            out = self.t2i(height=cfg.t2i_size, width=cfg.t2i_size,
                           negative_prompt=[cfg.negative_prompt + T2I_NEGATIVE_EXTRA] * len(jobs), **common)
        return list(out.images)

    def _ensure_pipelines(self, kinds: set[str]) -> None:
        if ("i2i" in kinds and self.i2i is None) or ("t2i" in kinds and self.t2i is None):
            logger.info(f"loading {self.cfg.model_id} on {self.device} ({self.dtype})")
            i2i, t2i = load_pipelines(self.cfg.model_id, self.device, self.dtype)
            self.i2i, self.t2i = self.i2i or i2i, self.t2i or t2i
        for p in (self.i2i, self.t2i):
            if p is not None and hasattr(p, "set_progress_bar_config"):
                p.set_progress_bar_config(disable=True)

    def _batch(self, kind: str, batch: list[Job], rep: SynthReport, done: dict[str, dict]) -> None:
        rng = random.Random(self.cfg.seed ^ _job_seed(0, batch[0].id))
        loaded: list[tuple[Job, Any]] = []
        for j in batch:
            try:
                im = j.parent.load() if j.parent is not None else None
                if kind == "i2i":
                    im = fit_input(im, self.cfg.i2i_max_side)
                loaded.append((j, im))
            except Exception as e:  # a bad input file is skipped and counted, never fatal
                rep.bad_inputs += 1
                logger.warning(f"{j.parent.key if j.parent else j.id}: unreadable input, skipped "
                               f"({type(e).__name__}: {e})")
                if kind == "t2i":
                    loaded.append((j, None))
        # i2i images of one call must share a size: one pipeline call per size
        by_size: dict[Any, list[tuple[Job, Any]]] = {}
        for j, im in loaded:
            by_size.setdefault(im.size if (kind == "i2i" and im is not None) else None, []).append((j, im))
        for group in by_size.values():
            jobs = [j for j, _ in group]
            refs = [im for _, im in group]
            prompts = self.prompts.prompts([j.label for j in jobs], refs, rng)
            images = self._call(kind, jobs, prompts, refs if kind == "i2i" else None)
            recs = []
            for j, p, im in zip(jobs, prompts, images):
                done[j.file] = self._record(j, p, im)
                recs.append(done[j.file])
                rep.generated += 1
                rep.by_kind[kind] = rep.by_kind.get(kind, 0) + 1
            self._append_sources(recs)

    def run(self, reals: list[RealImage], *, progress: bool = True) -> SynthReport:
        from tqdm.auto import tqdm

        t0 = time.monotonic()
        self.out.mkdir(parents=True, exist_ok=True)
        jobs = plan_jobs(self.cfg, reals)
        done = self._done()
        todo = [j for j in jobs if j.file not in done]
        rep = SynthReport(planned=len(jobs), skipped_done=len(jobs) - len(todo))
        if rep.skipped_done:
            logger.info(f"resuming: {rep.skipped_done} of {len(jobs)} images already in {self.out}")
        self._write_sources(done)
        if todo:
            self._ensure_pipelines({j.kind for j in todo})
        bar = tqdm(total=len(todo), desc="synthesize", unit="img", disable=not progress)
        failures = 0
        bs = self.cfg.batch_size
        for kind in ("i2i", "t2i"):
            kjobs = [j for j in todo if j.kind == kind]
            for i in range(0, len(kjobs), bs):
                batch = kjobs[i:i + bs]
                try:
                    self._batch(kind, batch, rep, done)
                    failures = 0
                except Exception as e:
                    failures += 1
                    rep.failed += len(batch)
                    logger.error(f"{kind} batch of {len(batch)} failed ({type(e).__name__}: {e})")
                    if failures >= self.cfg.max_failed_batches:
                        self._write_sources(done)
                        raise RuntimeError(f"{failures} batches failed in a row; stopping (rerun resumes)") from e
                bar.update(len(batch))
        bar.close()
        self._write_sources(done)
        rep.wall_s = time.monotonic() - t0
        return rep


def report_dict(rep: SynthReport, cfg: SynthConfig) -> dict:
    return {**asdict(rep), "images_per_s": rep.images_per_s, "config": asdict(cfg)}
