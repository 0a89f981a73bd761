"""Placement planner: which model goes on which device, decided before anything loads (docs/architecture.md §5).

:func:`plan_placement` takes ``(spec, memory_mb)`` pairs and the devices with their total memory
in MB, and packs the models with ``headroom`` (default 10 %) kept free on every device:

1. Order: exact pins first (``cuda:N``, then ``cpu``), then ``cuda`` (any GPU), then ``auto``;
   inside each group the largest model first (first-fit *decreasing*).
2. ``cuda:N`` must go on that GPU; ``cpu`` stays on the CPU; ``cuda`` goes on the first GPU with
   room; ``auto`` goes on the first GPU with room, else on the CPU if the model allows it.
3. CPU fallback for ``auto``: ``options.cpu_ok`` decides when set; by default a model may run on
   the CPU only when its memory estimate is <= :data:`CPU_OK_DEFAULT_MAX_MB` (2000 MB): small
   classifiers/detectors run acceptably on CPU, while a multi-GB VLM on CPU would miss every
   deadline, so it is better to refuse at startup than to serve fallbacks.
4. ``strategy="first_fit"`` (default) fills GPUs in index order; ``"spread"`` puts each model on
   the GPU with the most free memory (balances load across two GPUs).

If anything does not fit, :class:`PlacementError` is raised with a table of every model that
could not be placed, why, and the free memory on each device — before any weights are loaded.
The CPU's capacity is the machine's RAM (same headroom rule).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.profile import ModelSpec

CPU_OK_DEFAULT_MAX_MB = 2000.0
_CUDA_RE = re.compile(r"^cuda:(\d+)$")


class PlacementError(RuntimeError):
    """Models do not fit the devices. ``str(e)`` holds the table; ``e.unplaced`` the details."""

    def __init__(self, message: str, unplaced: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.unplaced = unplaced or []


@dataclass
class Placement:
    model: str
    device: str
    memory_mb: float
    pin: str
    measured_mb: float | None = None


@dataclass
class PlacementPlan:
    placements: list[Placement]
    capacity_mb: dict[str, float]  # device -> total MB
    headroom: float = 0.10
    strategy: str = "first_fit"
    notes: list[str] = field(default_factory=list)

    def device_of(self, model: str) -> str:
        for p in self.placements:
            if p.model == model:
                return p.device
        raise KeyError(f"model {model!r} is not in the placement plan")

    def as_dict(self) -> dict[str, str]:
        return {p.model: p.device for p in self.placements}

    def usable_mb(self, device: str) -> float:
        return self.capacity_mb[device] * (1.0 - self.headroom)

    def used_mb(self, device: str, *, measured: bool = True) -> float:
        tot = 0.0
        for p in self.placements:
            if p.device == device:
                tot += p.measured_mb if (measured and p.measured_mb is not None) else p.memory_mb
        return tot

    def record_measured(self, model: str, mb: float | None) -> str | None:
        """Store a model's measured memory; returns a warning when its device is now over budget."""
        for p in self.placements:
            if p.model == model:
                p.measured_mb = None if mb is None else float(mb)
                used, usable = self.used_mb(p.device), self.usable_mb(p.device)
                if used > usable:
                    return (f"{p.device}: measured use {used:.0f} MB exceeds the usable {usable:.0f} MB "
                            f"({self.headroom:.0%} headroom) after loading {model}")
                return None
        return None

    def remove(self, model: str) -> None:
        self.placements = [p for p in self.placements if p.model != model]

    def table(self) -> str:
        rows = [("model", "pin", "device", "est MB", "measured MB")]
        for p in self.placements:
            rows.append((p.model, p.pin, p.device, f"{p.memory_mb:.0f}",
                         "-" if p.measured_mb is None else f"{p.measured_mb:.0f}"))
        out = [_fmt_rows(rows), "", _device_summary(self.capacity_mb, self.headroom,
                                                    {d: self.used_mb(d) for d in self.capacity_mb})]
        out.extend(self.notes)
        return "\n".join(out)


def _fmt_rows(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _device_summary(capacity: dict[str, float], headroom: float, used: dict[str, float]) -> str:
    rows = [("device", "total MB", "usable MB", "planned MB", "free MB")]
    for d in _device_order(capacity):
        usable = capacity[d] * (1.0 - headroom)
        rows.append((d, f"{capacity[d]:.0f}", f"{usable:.0f}", f"{used.get(d, 0.0):.0f}",
                     f"{usable - used.get(d, 0.0):.0f}"))
    return _fmt_rows(rows)


def _device_order(devices: dict[str, float]) -> list[str]:
    def key(d: str) -> tuple[int, int]:
        m = _CUDA_RE.match(d)
        return (0, int(m.group(1))) if m else (1, 0)

    return sorted(devices, key=key)


def _cpu_ok(spec: "ModelSpec", mb: float) -> bool:
    v = (spec.options or {}).get("cpu_ok")
    if isinstance(v, bool):
        return v
    return mb <= CPU_OK_DEFAULT_MAX_MB


def _group(pin: str) -> int:
    if _CUDA_RE.match(pin):
        return 0
    if pin == "cpu":
        return 1
    if pin == "cuda":
        return 2
    return 3  # auto


def plan_placement(models: "list[tuple[ModelSpec, float]]", devices: dict[str, float],
                   headroom: float = 0.10, *, strategy: str = "first_fit") -> PlacementPlan:
    """Assign every model to a device or raise :class:`PlacementError` (see the module doc)."""
    if not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1), got {headroom}")
    if strategy not in ("first_fit", "spread"):
        raise ValueError(f"strategy must be first_fit or spread, got {strategy!r}")
    devs = {d: float(mb) for d, mb in devices.items()}
    for d in devs:
        if d != "cpu" and not _CUDA_RE.match(d):
            raise ValueError(f"unknown device name {d!r} (cpu or cuda:N)")
    gpus = [d for d in _device_order(devs) if d != "cpu"]
    free = {d: devs[d] * (1.0 - headroom) for d in devs}
    placed: list[Placement] = []
    unplaced: list[dict[str, Any]] = []

    order = sorted(enumerate(models), key=lambda im: (_group(im[1][0].device or "auto"), -float(im[1][1]), im[0]))

    def take(d: str, mb: float) -> bool:
        if free[d] + 1e-9 >= mb:
            free[d] -= mb
            return True
        return False

    def pick_gpu(mb: float) -> str | None:
        cands = [g for g in gpus if free[g] + 1e-9 >= mb]
        if not cands:
            return None
        if strategy == "spread":
            return max(cands, key=lambda g: (free[g], -gpus.index(g)))
        return cands[0]

    for _, (spec, mb) in order:
        mb = max(0.0, float(mb))
        pin = spec.device or "auto"
        dev: str | None = None
        why = ""
        if _CUDA_RE.match(pin):
            if pin not in devs:
                why = f"pinned to {pin}, which is not available (devices: {', '.join(_device_order(devs))})"
            elif take(pin, mb):
                dev = pin
            else:
                why = f"pinned to {pin}: needs {mb:.0f} MB, {free[pin]:.0f} MB free"
        elif pin == "cpu":
            if "cpu" not in devs:
                why = "pinned to cpu, which is not in the device list"
            elif take("cpu", mb):
                dev = "cpu"
            else:
                why = f"pinned to cpu: needs {mb:.0f} MB, {free['cpu']:.0f} MB of RAM free"
        else:
            g = pick_gpu(mb)
            if g is not None:
                take(g, mb)
                dev = g
            elif pin == "cuda":
                why = ("needs a GPU, none is available" if not gpus else
                       f"needs {mb:.0f} MB on a GPU; free: " + ", ".join(f"{x} {free[x]:.0f} MB" for x in gpus))
            elif "cpu" in devs and _cpu_ok(spec, mb):
                if take("cpu", mb):
                    dev = "cpu"
                else:
                    why = f"no GPU room and the CPU has {free['cpu']:.0f} MB free for {mb:.0f} MB"
            else:
                gpu_note = "no GPU" if not gpus else "no GPU has room (" + ", ".join(
                    f"{x} {free[x]:.0f} MB free" for x in gpus) + ")"
                why = (f"{gpu_note}, and CPU fallback is off for a {mb:.0f} MB model "
                       f"(set options.cpu_ok: true to allow it; default only <= {CPU_OK_DEFAULT_MAX_MB:.0f} MB)")
        if dev is not None:
            placed.append(Placement(model=spec.name, device=dev, memory_mb=mb, pin=pin))
        else:
            unplaced.append({"model": spec.name, "pin": pin, "memory_mb": mb, "reason": why})

    # restore the profile's order in the plan
    pos = {spec.name: i for i, (spec, _) in enumerate(models)}
    placed.sort(key=lambda p: pos[p.model])
    plan = PlacementPlan(placements=placed, capacity_mb=devs, headroom=headroom, strategy=strategy)
    if unplaced:
        rows = [("model", "pin", "MB", "why it does not fit")]
        rows += [(u["model"], u["pin"], f"{u['memory_mb']:.0f}", u["reason"]) for u in unplaced]
        used = {d: plan.used_mb(d) for d in devs}
        msg = (f"{len(unplaced)} model(s) do not fit the devices ({headroom:.0%} headroom kept free "
               f"on each); nothing was loaded.\n{_fmt_rows(rows)}\n\nplanned so far:\n"
               f"{_device_summary(devs, headroom, used)}\n"
               "fix: disable models, lower memory_mb estimates only if measured, pin differently, "
               "or run a smaller profile")
        raise PlacementError(msg, unplaced)
    return plan


def _cpu_ram_mb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return 8192.0


def detect_devices(*, cuda: bool = True) -> dict[str, float]:
    """Devices and their total memory in MB: every visible CUDA GPU (via torch, when importable
    and available) plus ``cpu`` (the machine's RAM). With ``cuda=False`` torch is not imported."""
    out: dict[str, float] = {}
    if cuda:
        import importlib.util

        if importlib.util.find_spec("torch") is not None:
            try:
                import torch

                if torch.cuda.is_available():
                    for i in range(torch.cuda.device_count()):
                        out[f"cuda:{i}"] = torch.cuda.get_device_properties(i).total_memory / 2**20
            except Exception:  # a broken CUDA install: behave as CPU-only
                out.clear()
    out["cpu"] = _cpu_ram_mb()
    return out


class DeviceError(RuntimeError):
    """A requested device is not available (the engine reports it as an ``EngineError``)."""


def resolve_capacities(devices: list[str] | None = None,
                       device_memory_mb: dict[str, float] | None = None) -> dict[str, float]:
    """Device → total MB for the devices the engine may use.

    ``devices``: names to use (``cpu``, ``cuda``, ``cuda:N``, ``auto``; None or ``auto`` = every
    detected device). The CPU is always included, for models pinned to it. ``device_memory_mb``
    overrides detection (tests, dry runs): it is filtered by ``devices`` and gets a ``cpu`` entry
    from the machine's RAM when it has none. A requested device that is not there raises
    :class:`DeviceError`.
    """
    if device_memory_mb is not None:
        caps = dict(device_memory_mb)
        if devices:
            keep = {"cpu"} | {d for d in devices if d != "cuda"}
            if "cuda" in devices:
                keep |= {d for d in caps if d.startswith("cuda:")}
            caps = {d: v for d, v in caps.items() if d in keep}
        caps.setdefault("cpu", detect_devices(cuda=False)["cpu"])
        return caps
    if not devices or "auto" in devices:
        return detect_devices(cuda=True)
    want_cuda = any(d.startswith("cuda") for d in devices)
    det = detect_devices(cuda=want_cuda)
    caps = {"cpu": det["cpu"]}
    for d in devices:
        if d == "cpu":
            continue
        if d == "cuda":
            caps.update({k: v for k, v in det.items() if k.startswith("cuda:")})
            if len(caps) == 1:
                raise DeviceError("device 'cuda' requested but no CUDA GPU is visible")
        elif d in det:
            caps[d] = det[d]
        else:
            raise DeviceError(f"device {d!r} requested but not available; detected: {', '.join(det)}")
    return caps
