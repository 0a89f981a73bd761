"""Fetch every model a profile needs into the local caches, then check each one loads offline.

The logic of ``scripts/download_models.py`` (its docstring is the user guide, its flags the CLI):
:func:`artefacts_of` (what a model spec needs), :func:`download` (hub snapshots, ultralytics assets;
"no network" said once per host), :func:`verify` (offline: files present, then a real load where
affordable), :func:`format_table`, and :func:`run` (the whole CLI for parsed arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.profile import ModelSpec, Profile

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "YOLO_OFFLINE")
HF_IGNORE = ["*.onnx", "onnx/*", "*.msgpack", "*.h5", "*.tflite", "flax_model*", "tf_model*", "*.ot",
             "coreml/*", "openvino/*", "*.mlmodel", "*.mlpackage/*", "rust_model*"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
STATUSES = ("ok", "files-ok", "missing", "failed", "skipped")


@dataclass
class Artefact:
    kind: str  # hf | ultralytics | local | none
    ref: str  # hub id, asset path or local path
    revision: str | None = None
    cache_dir: str | None = None
    yoloe_prompts: list[str] | None = None


@dataclass
class Row:
    name: str
    type: str
    model: str
    status: str
    reason: str = ""
    artefacts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# What a model needs


def _ultralytics_assets() -> frozenset[str]:
    try:
        from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES
    except Exception:  # ultralytics missing or changed: only local files then
        return frozenset()
    return frozenset(GITHUB_ASSETS_NAMES)


def _local_target(profile: "Profile | None", value: str) -> Path:
    """Where a local model path lives (or will be downloaded to): the profile's own resolution when
    the file exists, else relative paths go under the repository root."""
    from natix_miner.profile import REPO_ROOT

    resolved = Path(profile.resolve_path(value) if profile is not None else value).expanduser()
    if resolved.is_absolute():
        return resolved
    return REPO_ROOT / value


def artefacts_of(spec_type: str, model: str | None, options: dict[str, Any], profile: "Profile | None",
                 assets: frozenset[str] | None = None) -> list[Artefact]:
    """The files a model spec needs (recursing into nested detector specs)."""
    assets = _ultralytics_assets() if assets is None else assets
    out: list[Artefact] = []
    opts = options or {}
    nested = opts.get("detector")
    if isinstance(nested, dict) and nested.get("type"):
        out += artefacts_of(str(nested["type"]), nested.get("model"), dict(nested.get("options") or {}), profile, assets)
    head = opts.get("head")
    if spec_type == "feature_probe" and head:
        out.append(Artefact("local", str(_local_target(profile, str(head)))))
    if spec_type in ("fake", "efficientnet_lite") or not model:
        return out
    if spec_type == "vlm" and str(opts.get("engine", "transformers")) == "openai":
        return out
    if spec_type in ("ultralytics", "rfdetr"):
        target = _local_target(profile, str(model))
        prompts = opts.get("prompts")
        names = None
        if prompts:
            from natix_miner.models.detection import ROADWORK_PROMPTS

            names = list(ROADWORK_PROMPTS) if prompts is True else list(prompts)
        if target.exists() or target.name not in assets or spec_type == "rfdetr":
            out.append(Artefact("local", str(target), yoloe_prompts=names))
        else:
            out.append(Artefact("ultralytics", str(target), yoloe_prompts=names))
        return out
    target = _local_target(profile, str(model))
    if target.exists() or not _HUB_ID.match(str(model)):
        out.append(Artefact("local", str(target)))
    else:
        out.append(Artefact("hf", str(model), revision=opts.get("revision"), cache_dir=opts.get("cache_dir")))
    return out


def select(profile: "Profile", only: list[str] | None, include_disabled: bool) -> list["ModelSpec"]:
    """Models to handle: enabled ones (or all), filtered by ``only`` (unknown names are an error)."""
    pairs = profile.models(enabled_only=not include_disabled)
    specs = [m for _, m in pairs]
    if only:
        known = {m.name for _, m in profile.models(enabled_only=False)}
        unknown = [n for n in only if n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown model name(s) {unknown}; the profile has: {', '.join(sorted(known))}")
        specs = [m for _, m in profile.models(enabled_only=False) if m.name in only]
    return specs


# ---------------------------------------------------------------------------------------------
# Download


def download_one(art: Artefact) -> str:
    if art.kind == "hf":
        from huggingface_hub import snapshot_download

        path = snapshot_download(art.ref, revision=art.revision, cache_dir=art.cache_dir, ignore_patterns=HF_IGNORE)
        return f"hub snapshot at {path}"
    if art.kind == "ultralytics":
        from ultralytics.utils.downloads import attempt_download_asset

        target = Path(art.ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        got = attempt_download_asset(str(target))
        if not Path(got).is_file():
            raise RuntimeError(f"ultralytics did not produce {target}")
        note = f"asset at {got}"
        if art.yoloe_prompts and "yoloe" in target.name:
            from ultralytics import YOLOE

            YOLOE(str(target)).get_text_pe(art.yoloe_prompts)  # fetches the text encoder into the weights dir
            note += " (+ text encoder)"
        return note
    if art.kind == "local":
        if not Path(art.ref).exists():
            raise FileNotFoundError(f"{art.ref} is a local file that no registry holds: train/export/copy it there")
        return f"local {art.ref}"
    return "nothing to fetch"


def download(profile: "Profile", specs: list["ModelSpec"], allow_restricted: bool,
             reachable=None) -> list[Row]:
    """Fetch each spec's artefacts. The first time a host cannot be reached, say "no network" once and mark
    every remote artefact of that host "missing (no network)" instead of trying (and retrying) each."""
    from natix_miner.ops.probes import download_host, is_network_error, tcp_connect

    reachable = reachable or (lambda host: tcp_connect(host, 443, 5.0))
    host_ok: dict[str, bool] = {}
    rows = []
    for spec in specs:
        if spec.restricted and not allow_restricted:
            rows.append(Row(spec.name, spec.type, spec.model or "", "skipped", _restricted_note(spec)))
            continue
        arts = artefacts_of(spec.type, spec.model, spec.options, profile)
        notes, status = [], "ok"
        for art in arts:
            host = download_host(art.kind)
            if host is not None and host not in host_ok:
                host_ok[host] = bool(reachable(host))
                if not host_ok[host]:
                    print(f"no network: cannot reach {host}:443; skipping every download from it. Run this again "
                          "with internet access (check DNS, proxy, firewall).", flush=True)
            if host is not None and not host_ok[host]:
                status = "missing"
                notes.append(f"{art.ref}: no network ({host})")
                continue
            print(f"[{spec.name}] {art.kind}: {art.ref}", flush=True)
            try:
                notes.append(download_one(art))
            except Exception as e:  # noqa: BLE001 - report every failure in the table
                if host is not None and is_network_error(e):
                    host_ok[host] = False
                    print(f"no network: lost {host} ({type(e).__name__}); skipping every further download from it",
                          flush=True)
                    status = "missing"
                    notes.append(f"{art.ref}: no network ({host})")
                    continue
                status = "missing" if isinstance(e, FileNotFoundError) else "failed"
                notes.append(f"{art.ref}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        rows.append(Row(spec.name, spec.type, spec.model or "", status, "; ".join(notes) or "nothing to fetch",
                        [a.ref for a in arts]))
    return rows


def _restricted_note(spec: "ModelSpec") -> str:
    kinds = [k for k, v in (("gated", spec.gated), ("non-commercial", spec.noncommercial)) if v]
    hub = f" and accept it at https://huggingface.co/{spec.model}" if spec.gated and spec.model else ""
    return (f"restricted licence ({' and '.join(kinds)}: {spec.licence}); read it{hub}, then rerun with "
            "--allow-restricted")


# ---------------------------------------------------------------------------------------------
# Offline verification


def artefact_present(art: Artefact) -> str | None:
    """None when present locally, else why not (never touches the network)."""
    if art.kind == "hf":
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(art.ref, revision=art.revision, cache_dir=art.cache_dir, local_files_only=True)
        except Exception as e:  # noqa: BLE001
            return f"{art.ref} is not in the Hugging Face cache ({type(e).__name__})"
        return None
    if art.kind in ("ultralytics", "local"):
        return None if Path(art.ref).exists() else f"{art.ref} does not exist"
    return None


def verify(profile: "Profile", specs: list["ModelSpec"], *, device: str = "cpu", allow_restricted: bool = False,
           max_load_mb: float = 4000.0) -> list[Row]:
    """Offline check of each model: files present, then a real ``load(device)`` where affordable."""
    from natix_miner.models.base import AdapterError
    from natix_miner.models.registry import build_adapter

    rows = []
    for spec in specs:
        base = dict(name=spec.name, type=spec.type, model=spec.model or "")
        if spec.restricted and not allow_restricted:
            rows.append(Row(**base, status="skipped", reason=_restricted_note(spec)))
            continue
        if spec.type == "vlm" and str(spec.options.get("engine", "transformers")) == "openai":
            rows.append(Row(**base, status="skipped", reason="remote endpoint (engine: openai): nothing local"))
            continue
        arts = artefacts_of(spec.type, spec.model, spec.options, profile)
        missing = [why for why in (artefact_present(a) for a in arts) if why]
        if missing:
            rows.append(Row(**base, status="missing", reason="; ".join(missing) + "; run this script online",
                            artefacts=[a.ref for a in arts]))
            continue
        if spec.type == "vlm" and str(spec.options.get("engine")) == "vllm":
            rows.append(Row(**base, status="files-ok", reason="vLLM engines load at miner start (GPU + vllm)"))
            continue
        if spec.memory_mb > max_load_mb:
            rows.append(Row(**base, status="files-ok",
                            reason=f"memory_mb {spec.memory_mb:.0f} > --verify-max-mb {max_load_mb:.0f}: load not tried"))
            continue
        try:
            adapter = build_adapter(spec, profile)
            adapter.load(device)
            mem = adapter.memory_mb
            adapter.unload()
            rows.append(Row(**base, status="ok", reason=f"loaded offline on {device} ({mem:.0f} MB)"))
        except AdapterError as e:
            msg = str(e)
            status = "missing" if re.search(r"not (available|found)|download_models|not in the local", msg) else "failed"
            rows.append(Row(**base, status=status, reason=msg.splitlines()[0]))
        except Exception as e:  # noqa: BLE001
            rows.append(Row(**base, status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
    return rows


def format_table(rows: Iterable[Row], width: int = 110) -> str:
    rows = list(rows)
    head = ("model", "type", "id / path", "status", "reason")
    data = [(r.name, r.type, r.model, r.status, r.reason) for r in rows]
    widths = [max([len(head[i])] + [len(d[i]) for d in data]) for i in range(4)]
    widths = [min(w, 48) for w in widths]

    def fmt(cols: tuple[str, ...]) -> str:
        cells = [c if len(c) <= w else c[: w - 1] + "…" for c, w in zip(cols[:4], widths)]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cols[4][:width]

    lines = [fmt(head), fmt(tuple("-" * w for w in widths) + ("-" * 6,))]
    lines += [fmt(d) for d in data]
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines.append("")
    lines.append("  ".join(f"{k}: {v}" for k, v in counts.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI (arguments parsed by scripts/download_models.py)


def _child_verify(a: argparse.Namespace, cli: Path) -> list[Row]:
    """Run the verification in a fresh interpreter with the offline switches set (``cli --verify-only``)."""
    import tempfile

    env = dict(os.environ)
    env.update({v: "1" for v in OFFLINE_VARS})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(cli), "--profile", a.profile, "--verify-only",
               "--no-table", "--device", a.device, "--json", str(out)]
        if a.only:
            cmd += ["--only", *a.only]
        if a.allow_restricted:
            cmd.append("--allow-restricted")
        if a.include_disabled:
            cmd.append("--include-disabled")
        if a.verify_max_mb is not None:
            cmd += ["--verify-max-mb", str(a.verify_max_mb)]
        subprocess.run(cmd, env=env, check=False)
        if not out.exists():
            return [Row("(verification)", "-", "-", "failed", "the offline verification process crashed")]
        return [Row(**r) for r in json.loads(out.read_text())]


def run(a: argparse.Namespace, cli: Path) -> int:
    """The CLI's work for parsed arguments ``a`` (``scripts/download_models.py``); ``cli``: that script,
    re-run with ``--verify-only`` for the offline check. Exit status: 1 when a model is missing or failed."""
    downloading = not (a.verify_only or a.skip_download)
    if a.verify_only:
        os.environ.update({v: "1" for v in OFFLINE_VARS})
    elif downloading:
        for v in OFFLINE_VARS:  # huggingface_hub reads these at import: clear them before importing it
            if os.environ.pop(v, None):
                print(f"note: {v} cleared for the download step", flush=True)
    from natix_miner.profile import load_profile

    profile = load_profile(a.profile)
    specs = select(profile, a.only, a.include_disabled)
    if not specs:
        print("no model selected")
        return 0
    max_mb = a.verify_max_mb if a.verify_max_mb is not None else (4000.0 if a.device == "cpu" else float("inf"))
    if a.verify_only:
        rows = verify(profile, specs, device=a.device, allow_restricted=a.allow_restricted, max_load_mb=max_mb)
    else:
        if downloading:
            rows = download(profile, specs, a.allow_restricted)
            print("\ndownload:\n" + format_table(rows), flush=True)
        if a.skip_verify:
            return 1 if any(r.status in ("missing", "failed") for r in rows) else 0
        print("\nverifying offline (HF_HUB_OFFLINE=1, YOLO_OFFLINE=1) ...", flush=True)
        rows = _child_verify(a, cli)
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if not a.no_table:
        print("\n" + format_table(rows))
    return 1 if any(r.status in ("missing", "failed") for r in rows) else 0
