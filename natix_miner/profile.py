"""Engine profiles: YAML files under ``configs/`` validated at load.

A profile names the cascade's tiers, the models in each tier, the deadline, the consensus and the
calibration. Every validation error names the file, the key and what to do about it, e.g.::

    configs/h100x1.yaml: tiers[1].models[0].weight: must be a number >= 0, got 'high'

Only PyYAML is imported here. This module sits below the models (docs/architecture.md, "Layers"):
it does not import the model registry. ``type:`` names are checked where adapters are built (the
engine's loader), or here when the caller hands in the known names (``known_types=``).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import field, fields
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as _pydantic_dataclass

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
DEFAULT_PROFILE = REPO_ROOT / "configs" / "lite-cpu.yaml"

# The validator's dendrite timeout is 9 s (docs/protocol.md §2.5): a deadline must leave room for the
# network and the axon's own overhead.
MAX_DEADLINE_S = 8.5
# The defaults a profile gets when it does not say, and what the miner uses before a profile is loaded.
DEFAULT_DEADLINE_S = 6.0
DEFAULT_EPSILON = 1e-3
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ProfileError(ValueError):
    """A profile file is invalid. The message says where and how to fix it."""


#: Profile records are pydantic dataclasses: validated when built, frozen (a loaded profile is never
#: edited; an override is a validated copy, see :meth:`Profile.replace`), unknown fields refused.
_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=False)


def _frozen(cls: type) -> type:
    return _pydantic_dataclass(frozen=True, config=_CONFIG)(cls)


class _Replace:
    def replace(self, **changes: Any) -> Any:
        """A validated copy with ``changes``; a mapping given for a nested record updates that record
        (``profile.replace(cache={"enabled": False})``)."""
        for k, v in list(changes.items()):
            cur = getattr(self, k, None)
            if isinstance(v, Mapping) and dataclasses.is_dataclass(cur):
                changes[k] = dataclasses.replace(cur, **v)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@_frozen
class ModelSpec(_Replace):
    name: str
    type: str
    licence: str
    model: str | None = None  # hub id or local path; None where the adapter needs none
    weight: float = Field(1.0, ge=0.0)
    device: str = Field("auto", pattern=_DEVICE_RE.pattern)  # auto | cpu | cuda | cuda:N (a pin for the planner)
    memory_mb: float = Field(0.0, ge=0.0)  # estimate, replaced by the measured value after load
    batch_size: int = Field(8, ge=1)
    timeout_s: float | None = Field(None, gt=0.0)  # per-call budget; None = whatever the deadline leaves
    enabled: bool = True
    disabled_reason: str | None = None
    noncommercial: bool = False  # loads only with the explicit opt-in
    gated: bool = False  # gated on the hub (licence acceptance): also needs the opt-in
    breaker_failures: int | None = Field(None, ge=1)  # consecutive failures that open the breaker (None: 3)
    breaker_cooldown_s: float | None = Field(None, ge=0.0)  # seconds the breaker stays open (None: 30)
    options: dict[str, Any] = field(default_factory=dict)  # the family's options (see its module)

    @property
    def restricted(self) -> bool:
        return self.noncommercial or self.gated


@_frozen
class TierSpec(_Replace):
    name: str
    exit_threshold: Annotated[float, Field(ge=0.5, le=1.0)]
    models: list[ModelSpec]
    enabled: bool = True


@_frozen
class ConsensusSpec(_Replace):
    method: Literal["geometric", "design_legacy"] = "geometric"  # geometric | design_legacy (documented as wrong, docs/architecture.md §4)
    bias: float = 0.0  # added to the pooled log-odds


@_frozen
class CalibrationSpec(_Replace):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # decision threshold on the pooled probability; remapped to 0.5
    temperature: float = Field(1.0, gt=0.0)  # log-odds are divided by it after the shift
    epsilon: float = Field(DEFAULT_EPSILON, gt=0.0, le=0.49)  # outputs are clamped to [epsilon, 1 - epsilon]


@_frozen
class BatchingSpec(_Replace):
    max_batch: int = Field(16, ge=1)
    max_wait_ms: float = Field(4.0, ge=0.0)


@_frozen
class CacheSpec(_Replace):
    enabled: bool = True
    size: int = Field(4096, ge=0)


@_frozen
class Profile(_Replace):
    name: str
    tiers: list[TierSpec]
    description: str = ""
    deadline_s: float = Field(DEFAULT_DEADLINE_S, gt=0.0, le=MAX_DEADLINE_S)
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
    return _build(ctx, key, cls, kwargs)


def _parse_model(ctx: _Ctx, key: str, data: Any, known_types: set[str] | None) -> ModelSpec:
    if not isinstance(data, dict):
        raise ctx.fail(key, f"must be a mapping with at least name, type and licence, got {data!r}")
    _check_keys(ctx, key, data, ModelSpec)
    for req in ("name", "type", "licence"):
        if req not in data:
            hint = " (record the model's licence, e.g. 'Apache-2.0')" if req == "licence" else ""
            raise ctx.fail(f"{key}.{req}", f"missing required key{hint}")
    kw: dict[str, Any] = {
        "name": _str(ctx, f"{key}.name", data["name"]),
        "type": _str(ctx, f"{key}.type", data["type"]),
        "licence": _str(ctx, f"{key}.licence", data["licence"]),
    }
    if known_types is not None and kw["type"] not in known_types:
        raise ctx.fail(f"{key}.type", f"unknown model type {kw['type']!r}; known types: "
                                      f"{', '.join(sorted(known_types))}")
    if data.get("model") is not None:
        kw["model"] = _str(ctx, f"{key}.model", data["model"])
    if "weight" in data:
        kw["weight"] = _num(ctx, f"{key}.weight", data["weight"], lo=0.0)
    if "device" in data:
        dev = _str(ctx, f"{key}.device", data["device"])
        if not _DEVICE_RE.match(dev):
            raise ctx.fail(f"{key}.device", f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
        kw["device"] = dev
    if "memory_mb" in data:
        kw["memory_mb"] = _num(ctx, f"{key}.memory_mb", data["memory_mb"], lo=0.0)
    if "batch_size" in data:
        kw["batch_size"] = _int(ctx, f"{key}.batch_size", data["batch_size"])
    if data.get("timeout_s") is not None:
        kw["timeout_s"] = _num(ctx, f"{key}.timeout_s", data["timeout_s"], lo=0.0, lo_open=True)
    for b in ("enabled", "noncommercial", "gated"):
        if b in data:
            kw[b] = _bool(ctx, f"{key}.{b}", data[b])
    if data.get("disabled_reason") is not None:
        kw["disabled_reason"] = _str(ctx, f"{key}.disabled_reason", data["disabled_reason"])
    if not kw.get("enabled", True) and not kw.get("disabled_reason"):
        raise ctx.fail(f"{key}.disabled_reason", "a disabled model must say why (disabled_reason: ...)")
    if data.get("breaker_failures") is not None:
        kw["breaker_failures"] = _int(ctx, f"{key}.breaker_failures", data["breaker_failures"])
    if data.get("breaker_cooldown_s") is not None:
        kw["breaker_cooldown_s"] = _num(ctx, f"{key}.breaker_cooldown_s", data["breaker_cooldown_s"], lo=0.0)
    if "options" in data:
        if not isinstance(data["options"], dict):
            raise ctx.fail(f"{key}.options", f"must be a mapping, got {data['options']!r}")
        kw["options"] = _lift_deprecated_breaker_options(ctx, key, dict(data["options"]), kw)
    return _build(ctx, key, ModelSpec, kw)


def _build(ctx: _Ctx, key: str, cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``; a pydantic error (a bound the checks above missed) names the file and key."""
    from pydantic import ValidationError

    try:
        return cls(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ()))
        raise ctx.fail(f"{key}.{loc}" if key and loc else (loc or key), err.get("msg", str(e))) from None


_DEPRECATED_BREAKER_OPTIONS = ("breaker_failures", "breaker_cooldown_s")


def _lift_deprecated_breaker_options(ctx: _Ctx, key: str, options: dict[str, Any],
                                     kw: dict[str, Any]) -> dict[str, Any]:
    """``options.breaker_failures`` / ``options.breaker_cooldown_s`` (the old place) become the spec
    fields, with a deprecation warning; the spec field wins when both are set. Returns the options
    without them."""
    for k in _DEPRECATED_BREAKER_OPTIONS:
        if k not in options:
            continue
        value = options.pop(k)
        warnings.warn(f"{ctx.source}: {key}.options.{k} is deprecated; move it up to {key}.{k}",
                      FutureWarning, stacklevel=5)
        if kw.get(k) is None:
            if k == "breaker_failures":
                kw[k] = _int(ctx, f"{key}.options.{k}", value)
            else:
                kw[k] = _num(ctx, f"{key}.options.{k}", value, lo=0.0)
    return options


def parse_profile(data: Any, source: str = "<memory>", *, check_types: bool = True,
                  known_types: Iterable[str] | None = None) -> Profile:
    """Validate a profile mapping (as loaded from YAML) and return a :class:`Profile`.

    ``known_types``: the model ``type:`` names to accept (e.g. ``natix_miner.models.registry.known_types()``);
    None leaves the check to the engine's loader, which refuses unknown types before anything loads.
    """
    ctx = _Ctx(source)
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: the file must hold a mapping with 'name' and 'tiers'")
    _check_keys(ctx, "", data, Profile)
    if "name" not in data:
        raise ctx.fail("name", "missing required key (a short name for logs, e.g. lite-cpu)")
    if "tiers" not in data or not isinstance(data["tiers"], list) or not data["tiers"]:
        raise ctx.fail("tiers", "must be a non-empty list of tiers, each with name, exit_threshold and models")
    known = set(known_types) if (check_types and known_types is not None) else None

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
        tiers.append(_build(ctx, key, TierSpec, {"name": name, "exit_threshold": thr, "models": models,
                                                 "enabled": enabled}))

    kw: dict[str, Any] = {"name": _str(ctx, "name", data["name"]), "tiers": tiers, "source": source}
    if "description" in data:
        kw["description"] = _str(ctx, "description", data["description"], allow_empty=True)
    if "deadline_s" in data:
        kw["deadline_s"] = _num(ctx, "deadline_s", data["deadline_s"], lo=0.0, hi=MAX_DEADLINE_S, lo_open=True)
    kw["consensus"] = _section(ctx, "consensus", data.get("consensus"), ConsensusSpec, {
        "method": lambda k, v: _choice(ctx, k, v, ("geometric", "design_legacy")),
        "bias": lambda k, v: _num(ctx, k, v),
    })
    kw["calibration"] = _section(ctx, "calibration", data.get("calibration"), CalibrationSpec, {
        "threshold": lambda k, v: _num(ctx, k, v, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
        "temperature": lambda k, v: _num(ctx, k, v, lo=0.0, lo_open=True),
        "epsilon": lambda k, v: _num(ctx, k, v, lo=0.0, hi=0.49, lo_open=True),
    })
    kw["batching"] = _section(ctx, "batching", data.get("batching"), BatchingSpec, {
        "max_batch": lambda k, v: _int(ctx, k, v),
        "max_wait_ms": lambda k, v: _num(ctx, k, v, lo=0.0),
    })
    kw["cache"] = _section(ctx, "cache", data.get("cache"), CacheSpec, {
        "enabled": lambda k, v: _bool(ctx, k, v),
        "size": lambda k, v: _int(ctx, k, v, lo=0),
    })
    if data.get("serve") is not None:
        if not isinstance(data["serve"], dict):
            raise ctx.fail("serve", f"must be a mapping, got {type(data['serve']).__name__}")
        kw["serve"] = dict(data["serve"])
    prof = _build(ctx, "", Profile, kw)
    if not prof.models():
        raise ctx.fail("tiers", "no enabled model in any enabled tier: the miner would have nothing to run")
    return prof


def _choice(ctx: _Ctx, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ctx.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def load_profile(path: str | Path | None = None, *, check_types: bool = True,
                 known_types: Iterable[str] | None = None) -> Profile:
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
    return parse_profile(data, str(p), check_types=check_types, known_types=known_types)
