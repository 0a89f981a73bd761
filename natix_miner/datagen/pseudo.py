"""Pseudo-labels: run a profile (e.g. the VLM tiers, in process or through a remote OpenAI-compatible endpoint as
configured in the profile) over unlabelled images and write the training pipeline's soft-label layout.

Output folder (a ``--data`` spec for scripts/train.py; natix_miner.training.data reads it, condition ``pseudo``)::

    OUT/images/<relative path>   the image (hard link to the input when possible, else a copy)
    OUT/soft_labels.jsonl        {"file": "images/<rel>", "prob": P(roadwork), "confidence": ..., "votes": {model: p},
                                  "exit_reason": ..., "sha256": ...} per kept image
    OUT/rejected.jsonl           images below --min-confidence and unreadable files (with "reason")

Resumable: both JSONL files are appended after each batch and every file named in either is skipped on a rerun.
Images no model answered (an endpoint down) are counted and retried on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from natix_miner.datasets import IMAGE_EXTS, SOFT_LABELS  # the layout training and evaluation read

REJECTED = "rejected.jsonl"


@dataclass
class PseudoConfig:
    images: str
    out: str
    profile: str | None = None
    min_confidence: float = 0.0
    batch_size: int = 8
    link: str = "hardlink"  # hardlink (copy when not possible) | copy | symlink
    deadline_s: float | None = None  # None: every tier runs (no latency budget offline)
    allow_restricted: bool = False
    devices: list[str] | None = None
    tiers: list[str] | None = None  # run only these tiers of the profile (e.g. the VLM tiers)
    all_tiers: bool = False  # no early exit: every (selected) tier votes on every image

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"--min-confidence {self.min_confidence} must be in [0, 1]")
        if self.link not in ("hardlink", "copy", "symlink"):
            raise ValueError(f"link mode {self.link!r}: hardlink | copy | symlink")
        if self.batch_size < 1:
            raise ValueError("batch size must be >= 1")


@dataclass
class PseudoReport:
    found: int = 0
    skipped_done: int = 0
    labelled: int = 0
    below_min_confidence: int = 0
    unreadable: int = 0
    no_answer: int = 0  # no model voted (retried on the next run)
    roadwork: int = 0
    wall_s: float = 0.0
    per_model_votes: dict[str, int] = field(default_factory=dict)


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively), as sorted POSIX paths relative to it."""
    if not root.is_dir():
        raise FileNotFoundError(f"--images {root}: no such folder")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTS and p.is_file() and "/." not in f"/{p.relative_to(root)}")


def _done_files(out: Path) -> set[str]:
    done: set[str] = set()
    for name in (SOFT_LABELS, REJECTED):
        f = out / name
        if f.is_file():
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    done.add(str(json.loads(line)["file"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash: that image is redone
    return done


def _place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
        return
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copy2(src, dst)


def _append(path: Path, recs: list[dict]) -> None:
    if recs:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in recs))
            fh.flush()
            os.fsync(fh.fileno())


def select_tiers(profile: Any, tiers: list[str] | None, all_tiers: bool) -> Any:
    """Keep only the named tiers (others disabled); with ``all_tiers`` no tier exits early (every selected
    model votes on every image: the most informative soft labels, at the cost of time)."""
    if tiers:
        names = [t.name for t in profile.tiers]
        unknown = sorted(set(tiers) - set(names))
        if unknown:
            raise ValueError(f"--tiers {','.join(unknown)}: not in profile {profile.name} (tiers: {', '.join(names)})")
        profile = profile.replace(tiers=[t.replace(enabled=t.name in tiers) for t in profile.tiers])
    if all_tiers:  # confidence >= 1.0 needs a calibrated answer of exactly 0 or 1: no early exit in practice
        profile = profile.replace(tiers=[t.replace(exit_threshold=1.0) for t in profile.tiers])
    return profile


def _engine(cfg: PseudoConfig) -> Any:
    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.profile import load_profile

    profile = select_tiers(load_profile(cfg.profile), cfg.tiers, cfg.all_tiers)
    return CascadeEngine(profile, allow_restricted=cfg.allow_restricted, devices=cfg.devices)


def pseudo_label(cfg: PseudoConfig, *, engine: Any = None, progress: bool = True) -> PseudoReport:
    """Label every image under ``cfg.images`` not yet labelled in ``cfg.out``; see the module docstring."""
    from tqdm.auto import tqdm

    from natix_miner.imaging import ImageDecodeError, decode_image_bytes

    t0 = time.monotonic()
    src_root, out = Path(cfg.images), Path(cfg.out)
    files = list_images(src_root)
    out.mkdir(parents=True, exist_ok=True)
    done = _done_files(out)
    todo = [rel for rel in files if f"images/{rel}" not in done]
    rep = PseudoReport(found=len(files), skipped_done=len(files) - len(todo))
    if rep.skipped_done:
        logger.info(f"resuming: {rep.skipped_done} of {len(files)} images already in {out}")
    own = engine is None and bool(todo)
    if own:
        engine = _engine(cfg)
    try:
        if todo:
            engine.start()
        bar = tqdm(total=len(todo), desc="pseudo-label", unit="img", disable=not progress)
        for i in range(0, len(todo), cfg.batch_size):
            chunk = todo[i:i + cfg.batch_size]
            kept, rejected, images, metas = [], [], [], []
            for rel in chunk:
                try:
                    d = decode_image_bytes((src_root / rel).read_bytes())
                except (ImageDecodeError, OSError) as e:
                    rep.unreadable += 1
                    rejected.append({"file": f"images/{rel}", "reason": f"unreadable: {e}"})
                    continue
                images.append(d.image)
                metas.append((rel, d.sha256))
            results = engine.infer_batch_sync(images, keys=[m[1] for m in metas],
                                              deadline_s=cfg.deadline_s) if images else []
            for (rel, sha), r in zip(metas, results):
                votes = {v.model: v.p for v in r.votes if v.p is not None}
                if not votes:
                    rep.no_answer += 1
                    continue
                rec = {"file": f"images/{rel}", "prob": float(r.prediction), "confidence": float(r.confidence),
                       "votes": votes, "exit_reason": r.exit_reason, "sha256": sha}
                if rec["confidence"] < cfg.min_confidence:
                    rep.below_min_confidence += 1
                    rejected.append({**rec, "reason": f"confidence below {cfg.min_confidence}"})
                    continue
                _place(src_root / rel, out / rec["file"], cfg.link)
                kept.append(rec)
                rep.labelled += 1
                rep.roadwork += rec["prob"] >= 0.5
                for m in votes:
                    rep.per_model_votes[m] = rep.per_model_votes.get(m, 0) + 1
            _append(out / SOFT_LABELS, kept)
            _append(out / REJECTED, rejected)
            bar.update(len(chunk))
        bar.close()
    finally:
        if own:
            engine.close()
    if rep.no_answer:
        logger.warning(f"{rep.no_answer} images got no vote from any model (endpoint down?); rerun to retry them")
    rep.wall_s = time.monotonic() - t0
    return rep


def report_dict(rep: PseudoReport, cfg: PseudoConfig) -> dict:
    return {**asdict(rep), "config": asdict(cfg)}
