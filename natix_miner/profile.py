"""Engine profiles: YAML files under ``configs/`` validated at load.

A profile names the cascade's tiers, the models in each tier, the deadline, the consensus and the
calibration. Every validation error names the file, the key and what to do about it, e.g.::

    configs/h100x1.yaml: tiers[1].models[0].weight: must be a number >= 0, got 'high'

Only PyYAML is imported here; the model registry is consulted lazily to check ``type:`` names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_PROFILE = REPO_ROOT / "configs" / "lite-cpu.yaml"

# The validator's dendrite timeout is 9 s (PROTOCOL §2.5): a deadline must leave room for the
# network and the axon's own overhead.
MAX_DEADLINE_S = 8.5
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ProfileError(ValueError):
    """A profile file is invalid. The message says where and how to fix it."""


@dataclass
class ModelSpec:
    name: str
    type: str
    licence: str
    model: str | None = None  # hub id or local path; None where the adapter needs none
    weight: float = 1.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (a pin honoured by the planner)
    memory_mb: float = 0.0  # estimate, replaced by the measured value after load
    batch_size: int = 8
    timeout_s: float | None = None  # per-call budget; None = whatever the deadline leaves
    enabled: bool = True
    disabled_reason: str | None = None
    noncommercial: bool = False  # loads only with the explicit opt-in
    gated: bool = False  # gated on the hub (licence acceptance): also needs the opt-in
    options: dict[str, Any] = field(default_factory=dict)  # backend options, adapter-specific

    @property
    def restricted(self) -> bool:
        return self.noncommercial or self.gated


@dataclass
class TierSpec:
    name: str
    exit_threshold: float
    models: list[ModelSpec]
    enabled: bool = True


@dataclass
class ConsensusSpec:
    method: str = "geometric"  # geometric | design_legacy (documented as wrong, DESIGN §4)
    bias: float = 0.0  # added to the pooled log-odds


@dataclass
class CalibrationSpec:
    threshold: float = 0.5  # decision threshold on the pooled probability; remapped to 0.5
    temperature: float = 1.0  # log-odds are divided by it after the shift
    epsilon: float = 1e-3  # outputs are clamped to [epsilon, 1 - epsilon]


@dataclass
class BatchingSpec:
    max_batch: int = 16
    max_wait_ms: float = 4.0


@dataclass
class CacheSpec:
    enabled: bool = True
    size: int = 4096


@dataclass
class Profile:
    name: str
    tiers: list[TierSpec]
    description: str = ""
    deadline_s: float = 6.0
    consensus: ConsensusSpec = field(default_factory=ConsensusSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    cache: CacheSpec = field(default_factory=CacheSpec)
    serve: dict[str, Any] = field(default_factory=dict)  # Ray Serve options, read by natix_miner.serve.config
    source: str = "<memory>"  # file it was loaded from

    def models(self, *, enabled_only: bool = True) -> list[tuple[TierSpec, ModelSpec]]:
        out = []
        for tier in self.tiers:
            if enabled_only and not tier.enabled:
                continue
            for m in tier.models:
                if enabled_only and not m.enabled:
                    continue
                out.append((tier, m))
        return out

    def resolve_path(self, value: str) -> str:
        """Resolve a relative local path against the profile's folder, then the repo root.

        Hub ids (``org/name``) that do not exist locally are returned unchanged.
        """
        p = Path(value).expanduser()
        if p.is_absolute():
            return str(p)
        for base in (Path(self.source).parent, REPO_ROOT):
            cand = base / p
            if cand.exists():
                return str(cand)
        return value


# --------------------------------------------------------------------------------------------
# Validation helpers


class _Ctx:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> ProfileError:
        return ProfileError(f"{self.source}: {key}: {msg}")


def _check_keys(ctx: _Ctx, key: str, data: dict, cls: type, extra: tuple[str, ...] = ()) -> None:
    allowed = {f.name for f in fields(cls)} | set(extra)
    allowed.discard("source")
    for k in data:
        if k not in allowed:
            raise ctx.fail(
                f"{key}.{k}" if key else str(k),
                f"unknown key; allowed keys are: {', '.join(sorted(allowed))}",
            )


def _num(ctx: _Ctx, key: str, value: Any, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ctx.fail(key, f"must be a number, got {value!r}")
    v = float(value)
    if v != v:
        raise ctx.fail(key, "must be a number, got NaN")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ctx.fail(key, f"must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ctx.fail(key, f"must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


def _int(ctx: _Ctx, key: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.fail(key, f"must be an integer, got {value!r}")
    if value < lo:
        raise ctx.fail(key, f"must be >= {lo}, got {value}")
    return value


def _str(ctx: _Ctx, key: str, value: Any, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ctx.fail(key, f"must be a non-empty string, got {value!r}")
    return value


def _bool(ctx: _Ctx, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(key, f"must be true or false, got {value!r}")
    return value


def _section(ctx: _Ctx, key: str, data: Any, cls: type, checks: dict[str, Any]) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ctx.fail(key, f"must be a mapping, got {type(data).__name__}")
    _check_keys(ctx, key, data, cls)
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = checks[k](f"{key}.{k}", v) if k in checks else v
    return cls(**kwargs)


def _parse_model(ctx: _Ctx, key: str, data: Any, known_types: set[str] | None) -> ModelSpec:
    if not isinstance(data, dict):
        raise ctx.fail(key, f"must be a mapping with at least name, type and licence, got {data!r}")
    _check_keys(ctx, key, data, ModelSpec)
    for req in ("name", "type", "licence"):
        if req not in data:
            hint = " (record the model's licence, e.g. 'Apache-2.0')" if req == "licence" else ""
            raise ctx.fail(f"{key}.{req}", f"missing required key{hint}")
    spec = ModelSpec(
        name=_str(ctx, f"{key}.name", data["name"]),
        type=_str(ctx, f"{key}.type", data["type"]),
        licence=_str(ctx, f"{key}.licence", data["licence"]),
    )
    if known_types is not None and spec.type not in known_types:
        raise ctx.fail(f"{key}.type", f"unknown model type {spec.type!r}; known types: "
                                      f"{', '.join(sorted(known_types))}")
    if data.get("model") is not None:
        spec.model = _str(ctx, f"{key}.model", data["model"])
    if "weight" in data:
        spec.weight = _num(ctx, f"{key}.weight", data["weight"], lo=0.0)
    if "device" in data:
        dev = _str(ctx, f"{key}.device", data["device"])
        if not _DEVICE_RE.match(dev):
            raise ctx.fail(f"{key}.device", f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
        spec.device = dev
    if "memory_mb" in data:
        spec.memory_mb = _num(ctx, f"{key}.memory_mb", data["memory_mb"], lo=0.0)
    if "batch_size" in data:
        spec.batch_size = _int(ctx, f"{key}.batch_size", data["batch_size"])
    if data.get("timeout_s") is not None:
        spec.timeout_s = _num(ctx, f"{key}.timeout_s", data["timeout_s"], lo=0.0, lo_open=True)
    for b in ("enabled", "noncommercial", "gated"):
        if b in data:
            setattr(spec, b, _bool(ctx, f"{key}.{b}", data[b]))
    if data.get("disabled_reason") is not None:
        spec.disabled_reason = _str(ctx, f"{key}.disabled_reason", data["disabled_reason"])
    if not spec.enabled and not spec.disabled_reason:
        raise ctx.fail(f"{key}.disabled_reason", "a disabled model must say why (disabled_reason: ...)")
    if "options" in data:
        if not isinstance(data["options"], dict):
            raise ctx.fail(f"{key}.options", f"must be a mapping, got {data['options']!r}")
        spec.options = dict(data["options"])
    return spec


def _known_types() -> set[str] | None:
    try:
        from natix_miner.models.registry import known_types
    except ImportError:  # registry not importable: skip the check rather than fail the load
        return None
    return set(known_types())


def parse_profile(data: Any, source: str = "<memory>", *, check_types: bool = True) -> Profile:
    """Validate a profile mapping (as loaded from YAML) and return a :class:`Profile`."""
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: the file must hold a mapping with 'name' and 'tiers'")
    _check_keys(ctx, "", data, Profile)
    if "name" not in data:
        raise ctx.fail("name", "missing required key (a short name for logs, e.g. lite-cpu)")
    if "tiers" not in data or not isinstance(data["tiers"], list) or not data["tiers"]:
        raise ctx.fail("tiers", "must be a non-empty list of tiers, each with name, exit_threshold and models")
    known = _known_types() if check_types else None

    tiers: list[TierSpec] = []
    seen_models: set[str] = set()
    seen_tiers: set[str] = set()
    for i, t in enumerate(data["tiers"]):
        key = f"tiers[{i}]"
        if not isinstance(t, dict):
            raise ctx.fail(key, "must be a mapping with name, exit_threshold and models")
        _check_keys(ctx, key, t, TierSpec)
        for req in ("name", "exit_threshold", "models"):
            if req not in t:
                raise ctx.fail(f"{key}.{req}", "missing required key")
        name = _str(ctx, f"{key}.name", t["name"])
        if name in seen_tiers:
            raise ctx.fail(f"{key}.name", f"duplicate tier name {name!r}")
        seen_tiers.add(name)
        thr = _num(ctx, f"{key}.exit_threshold", t["exit_threshold"], lo=0.5, hi=1.0)
        if not isinstance(t["models"], list):
            raise ctx.fail(f"{key}.models", "must be a list of models")
        models = []
        for j, m in enumerate(t["models"]):
            spec = _parse_model(ctx, f"{key}.models[{j}]", m, known)
            if spec.name in seen_models:
                raise ctx.fail(f"{key}.models[{j}].name", f"duplicate model name {spec.name!r}; names must be unique")
            seen_models.add(spec.name)
            models.append(spec)
        enabled = _bool(ctx, f"{key}.enabled", t["enabled"]) if "enabled" in t else True
        tiers.append(TierSpec(name=name, exit_threshold=thr, models=models, enabled=enabled))

    prof = Profile(name=_str(ctx, "name", data["name"]), tiers=tiers, source=source)
    if "description" in data:
        prof.description = _str(ctx, "description", data["description"], allow_empty=True)
    if "deadline_s" in data:
        prof.deadline_s = _num(ctx, "deadline_s", data["deadline_s"], lo=0.0, hi=MAX_DEADLINE_S, lo_open=True)
    prof.consensus = _section(ctx, "consensus", data.get("consensus"), ConsensusSpec, {
        "method": lambda k, v: _choice(ctx, k, v, ("geometric", "design_legacy")),
        "bias": lambda k, v: _num(ctx, k, v),
    })
    prof.calibration = _section(ctx, "calibration", data.get("calibration"), CalibrationSpec, {
        "threshold": lambda k, v: _num(ctx, k, v, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        "temperature": lambda k, v: _num(ctx, k, v, lo=0.0, lo_open=True),
        "epsilon": lambda k, v: _num(ctx, k, v, lo=0.0, hi=0.49, lo_open=True),
    })
    prof.batching = _section(ctx, "batching", data.get("batching"), BatchingSpec, {
        "max_batch": lambda k, v: _int(ctx, k, v),
        "max_wait_ms": lambda k, v: _num(ctx, k, v, lo=0.0),
    })
    prof.cache = _section(ctx, "cache", data.get("cache"), CacheSpec, {
        "enabled": lambda k, v: _bool(ctx, k, v),
        "size": lambda k, v: _int(ctx, k, v, lo=0),
    })
    if data.get("serve") is not None:
        if not isinstance(data["serve"], dict):
            raise ctx.fail("serve", f"must be a mapping, got {type(data['serve']).__name__}")
        prof.serve = dict(data["serve"])
    if not prof.models():
        raise ctx.fail("tiers", "no enabled model in any enabled tier: the miner would have nothing to run")
    return prof


def _choice(ctx: _Ctx, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ctx.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_profile(path: str | Path | None = None, *, check_types: bool = True) -> Profile:
    """Load and validate a profile YAML file (default: the embedded CPU profile)."""
    import yaml

    p = Path(path) if path is not None else DEFAULT_PROFILE
    if not p.exists():
        alt = REPO_ROOT / "configs" / p
        if not p.is_absolute() and alt.exists():
            p = alt
        else:
            raise ProfileError(f"{p}: profile file not found (profiles live in {REPO_ROOT / 'configs'})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{p}: not valid YAML: {e}") from e
    return parse_profile(data, str(p), check_types=check_types)
