#!/usr/bin/env python
"""Export a profile's ultralytics models to TensorRT engines (run on the GPU box).

    python scripts/export_tensorrt.py --profile configs/h100x1.yaml [--only NAME ...] [--dry-run] \
        [--device 0] [--imgsz 640] [--batch N] [--no-dynamic] [--no-half | --int8] [--workspace GiB]

For every ``type: ultralytics`` model of the profile (enabled ones, or all with --include-disabled;
detectors nested in ``options.detector`` of a depth_check too) whose ``model`` is a ``.pt`` file:

    YOLO(pt).export(format="engine", half=True, imgsz=options.imgsz or 640, device=0,
                    batch=spec.batch_size, dynamic=True)

ultralytics writes ``<name>.engine`` beside the ``.pt``. A YOLOE model with ``options.prompts`` gets its
text prompts baked in first (``set_classes(names, get_text_pe(names))``): the engine's classes are then
the prompts, so the profile must switch from ``prompts`` to a ``class_map`` with the same weights. The
script prints the profile lines to paste for each engine; it does not edit the profile.

An engine is specific to the GPU model, TensorRT and driver it was built with: build it on the machine
that serves. ``--dry-run`` lists what would be exported (works on a CPU-only machine, imports nothing
heavy). Needs the ``tensorrt`` package (the ``gpu`` extra) for a real export.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EXPORTABLE = (".pt",)


@dataclass
class ExportPlan:
    name: str  # profile entry (a nested detector is "<name>.detector")
    source: Path
    target: Path
    imgsz: int
    batch: int
    prompts: dict[str, float] | None = None  # YOLOE prompts baked into the engine
    class_map: dict[str, float] | None = None
    other_options: dict[str, Any] = field(default_factory=dict)
    status: str = "todo"  # todo | missing | skip
    note: str = ""


def _prompt_map(value: Any) -> dict[str, float] | None:
    from natix_miner.models.detection import ROADWORK_PROMPTS

    if not value:
        return None
    if value is True:
        return dict(ROADWORK_PROMPTS)
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {str(v): 1.0 for v in value}


def _plan_one(name: str, model: str | None, options: dict[str, Any], batch: int, profile: Any,
              imgsz: int | None, batch_override: int | None) -> ExportPlan | None:
    from natix_miner.profile import REPO_ROOT

    if not model:
        return None
    resolved = Path(profile.resolve_path(model))
    source = resolved if resolved.is_absolute() else REPO_ROOT / model
    opts = dict(options or {})
    plan = ExportPlan(name=name, source=source, target=source.with_suffix(".engine"),
                      imgsz=int(imgsz or opts.get("imgsz", 640)), batch=int(batch_override or batch),
                      prompts=_prompt_map(opts.get("prompts")), class_map=opts.get("class_map"),
                      other_options={k: v for k, v in opts.items() if k not in ("prompts", "class_map", "imgsz",
                                                                                 "prompt_embeddings", "dtype")})
    if source.suffix.lower() not in EXPORTABLE:
        plan.status, plan.note = "skip", f"already a {source.suffix or 'non-.pt'} model"
    elif not source.is_file():
        plan.status, plan.note = "missing", "weights not found: run scripts/download_models.py first"
    return plan


def plan_exports(profile: Any, *, only: list[str] | None = None, include_disabled: bool = False,
                 imgsz: int | None = None, batch: int | None = None) -> list[ExportPlan]:
    """What would be exported, in profile order (no heavy import)."""
    plans: list[ExportPlan] = []
    known = {m.name for _, m in profile.models(enabled_only=False)}
    if only:
        unknown = [n for n in only if n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown model name(s) {unknown}; the profile has: {', '.join(sorted(known))}")
    for _, spec in profile.models(enabled_only=not include_disabled and not only):
        if only and spec.name not in only:
            continue
        if spec.type == "ultralytics":
            p = _plan_one(spec.name, spec.model, spec.options, spec.batch_size, profile, imgsz, batch)
            if p:
                plans.append(p)
        nested = spec.options.get("detector") if isinstance(spec.options, dict) else None
        if isinstance(nested, dict) and nested.get("type") == "ultralytics":
            p = _plan_one(f"{spec.name}.detector", nested.get("model"), dict(nested.get("options") or {}),
                          int(nested.get("batch_size", spec.batch_size)), profile, imgsz, batch)
            if p:
                plans.append(p)
    seen: dict[Path, str] = {}
    for p in plans:  # one engine per file (a depth_check often reuses a tier's detector weights)
        if p.status == "todo" and p.source in seen:
            p.status, p.note = "skip", f"same weights as {seen[p.source]} (one export serves both)"
        seen.setdefault(p.source, p.name)
    return plans


def profile_lines(plan: ExportPlan, profile: Any) -> str:
    """The YAML to put in the profile for the exported engine."""
    from natix_miner.profile import REPO_ROOT

    try:
        shown = plan.target.relative_to(REPO_ROOT)
    except ValueError:
        shown = plan.target
    opts: dict[str, Any] = {"imgsz": plan.imgsz}
    cmap = plan.prompts if plan.prompts else plan.class_map
    if cmap:
        opts["class_map"] = cmap
    opts.update(plan.other_options)
    inner = ", ".join(f"{k}: {_yaml_value(v)}" for k, v in opts.items())
    where = "options.detector of " + plan.name.rsplit(".", 1)[0] if plan.name.endswith(".detector") else plan.name
    lines = [f"# {where}: TensorRT engine (batch <= {plan.batch}, {plan.imgsz} px)"]
    if plan.prompts:
        lines.append("# YOLOE prompts are baked in: 'prompts' becomes this class_map")
    lines += [f"model: {shown}", f"options: {{{inner}}}"]
    return "\n".join(lines)


def _yaml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def ultralytics_export(plan: ExportPlan, *, device: str, half: bool, int8: bool, dynamic: bool,
                       workspace: float | None) -> Path:
    """The real export (GPU box)."""
    from ultralytics import YOLO

    model = YOLO(str(plan.source))
    if plan.prompts:
        names = list(plan.prompts)
        if not hasattr(model, "get_text_pe"):
            raise RuntimeError(f"{plan.source} has prompts but is not a YOLOE model")
        model.set_classes(names, model.get_text_pe(names))
    kw: dict[str, Any] = dict(format="engine", half=half and not int8, int8=int8, imgsz=plan.imgsz, device=device,
                              batch=plan.batch, dynamic=dynamic)
    if workspace:
        kw["workspace"] = workspace
    out = Path(model.export(**kw))
    if out.resolve() != plan.target.resolve() and out.is_file():
        out.replace(plan.target)
    return plan.target


def run(plans: list[ExportPlan], profile: Any, *, dry_run: bool, exporter: Callable[[ExportPlan], Path]) -> int:
    failures = 0
    missing: list[str] = []
    for p in plans:
        head = f"{p.name}: {p.source} -> {p.target} (imgsz {p.imgsz}, batch {p.batch}"
        head += f", prompts baked: {', '.join(p.prompts)})" if p.prompts else ")"
        if p.status != "todo":
            print(f"[{p.status}] {head}: {p.note}")
            failures += p.status == "missing"
            if p.status == "missing":
                missing.append(p.name.split(".")[0])
            continue
        if dry_run:
            print(f"[would export] {head}")
            continue
        print(f"[export] {head}", flush=True)
        try:
            exporter(p)
        except ImportError as e:
            print(f"[failed] {p.name}: {e}. The export needs ultralytics and TensorRT on the GPU box: "
                  "install the GPU extras first (.venv/bin/pip install -e '.[gpu]'), then download the weights "
                  f"(.venv/bin/python scripts/download_models.py --profile {getattr(profile, 'source', '<profile>')})")
            return 1
        except Exception as e:  # noqa: BLE001 - report and continue with the others
            failures += 1
            print(f"[failed] {p.name}: {type(e).__name__}: {e}")
            continue
        print(f"[done] {p.target}\n--- profile lines for {p.name} ---\n{profile_lines(p, profile)}\n")
    if not plans:
        print("no ultralytics model in the selection")
    if missing:
        print(f"\nweights missing for {', '.join(sorted(set(missing)))}: download them first with\n"
              f"  .venv/bin/python scripts/download_models.py --profile {getattr(profile, 'source', '<profile>')} "
              f"--only {' '.join(sorted(set(missing)))}\nthen run this export again.")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--only", nargs="+", metavar="NAME")
    ap.add_argument("--include-disabled", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="list what would be exported and exit")
    ap.add_argument("--device", default="0", help="CUDA device index for the build (default 0)")
    ap.add_argument("--imgsz", type=int, default=None, help="override options.imgsz")
    ap.add_argument("--batch", type=int, default=None, help="max batch (default: the model's batch_size)")
    ap.add_argument("--no-dynamic", dest="dynamic", action="store_false", help="static batch/shape engine")
    prec = ap.add_mutually_exclusive_group()
    prec.add_argument("--no-half", dest="half", action="store_false", help="fp32 engine")
    prec.add_argument("--int8", action="store_true", help="INT8 engine (needs calibration data: see ultralytics)")
    ap.add_argument("--workspace", type=float, default=None, help="TensorRT workspace in GiB")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from natix_miner.profile import load_profile

    profile = load_profile(a.profile)
    plans = plan_exports(profile, only=a.only, include_disabled=a.include_disabled, imgsz=a.imgsz, batch=a.batch)

    def exporter(p: ExportPlan) -> Path:
        return ultralytics_export(p, device=a.device, half=a.half, int8=a.int8, dynamic=a.dynamic,
                                  workspace=a.workspace)

    return run(plans, profile, dry_run=a.dry_run, exporter=exporter)


if __name__ == "__main__":
    raise SystemExit(main())
