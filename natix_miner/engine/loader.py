"""Bring a profile's models up before traffic: choose → build → place → load → warm up.

:func:`load_models` is what :meth:`CascadeEngine.start` runs before it starts any worker thread:

1. **choose**: enabled models of enabled tiers; restricted licences (non-commercial, gated) are
   skipped unless ``allow_restricted`` (recorded in ``skipped`` with why);
2. **build**: one adapter per model through the model registry (the only door,
   :func:`natix_miner.models.registry.build_adapter`), or a pre-built one handed in (tests). A
   ``type:`` the registry does not know, or ``options:`` its family's options model refuses, is a
   configuration error and stops the start, naming the profile file and key;
3. **place**: :func:`natix_miner.devices.plan_placement` packs the models on the devices
   (:func:`natix_miner.devices.resolve_capacities`); a misfit raises ``PlacementError`` before
   anything loads;
4. **load + warm up**, in :func:`load_order`: adapters that pre-allocate their GPU share
   (``Adapter.preallocates_gpu``: a vLLM engine checks at start that its fraction is still free)
   first, then the rest in profile order. The measured memory replaces the estimate in the plan.

A model that fails to build or load is dropped (logged, recorded in ``skipped``) unless it is the
only one, in which case :class:`~natix_miner.engine.runner.EngineError` is raised.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from loguru import logger

from natix_miner.engine.runner import EngineError

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.devices import PlacementPlan
    from natix_miner.models.base import Adapter
    from natix_miner.profile import ModelSpec, Profile, TierSpec


@dataclass
class LoadedModels:
    """What :func:`load_models` brought up: the placement, the loaded adapters with their tier
    (in load order), and the models that are not running with why."""

    plan: "PlacementPlan"
    models: "list[tuple[TierSpec, Adapter]]"
    skipped: dict[str, str] = field(default_factory=dict)


def load_order(built: "list[tuple[Any, Adapter]]") -> "list[tuple[Any, Adapter]]":
    """Load order: adapters that pre-allocate GPU memory first (one at a time), then everything else
    in profile order. Tiers keep their profile order regardless; this only decides what loads first."""
    first = [b for b in built if b[1].preallocates_gpu]
    return first + [b for b in built if not b[1].preallocates_gpu]


def check_types(profile: "Profile", skip: "set[str] | frozenset[str]" = frozenset()) -> None:
    """Raise :class:`EngineError` naming the profile file and key for a ``type:`` nobody registered."""
    from natix_miner.models.registry import known_types

    known = set(known_types())
    for i, tier in enumerate(profile.tiers):
        for j, spec in enumerate(tier.models):
            if spec.name not in skip and spec.type not in known:
                raise EngineError(f"{profile.source}: tiers[{i}].models[{j}].type: unknown model type "
                                  f"{spec.type!r}; known types: {', '.join(sorted(known))}")


def _key_of(profile: "Profile", name: str) -> str:
    for i, tier in enumerate(profile.tiers):
        for j, spec in enumerate(tier.models):
            if spec.name == name:
                return f"tiers[{i}].models[{j}]"
    return f"model {name!r}"


class _Dropper:
    def __init__(self, skipped: dict[str, str]):
        self.skipped = skipped

    def __call__(self, name: str, why: str, *, only: bool) -> None:
        if only:
            raise EngineError(f"model {name}: {why} (it is the only model, so the engine cannot start)")
        logger.error(f"model {name} dropped: {why}")
        self.skipped[name] = why


def choose(profile: "Profile", allow_restricted: bool, skipped: dict[str, str]) -> "list[tuple[TierSpec, ModelSpec]]":
    chosen = []
    for tier, spec in profile.models():
        if spec.restricted and not allow_restricted:
            kinds = [k for k, on in (("non-commercial", spec.noncommercial), ("gated", spec.gated)) if on]
            why = (f"licence {spec.licence!r} is {' and '.join(kinds)}; start with --engine.allow_restricted "
                   "(ALLOW_RESTRICTED_LICENCES=1) if you accept its terms")
            logger.warning(f"model {spec.name} skipped: {why}")
            skipped[spec.name] = why
            continue
        chosen.append((tier, spec))
    if not chosen:
        raise EngineError(f"{profile.source}: no model left to run after skipping restricted licences "
                          f"({', '.join(skipped) or 'none enabled'}); pass allow_restricted=True "
                          "(--engine.allow_restricted) or enable an unrestricted model")
    return chosen


def load_models(profile: "Profile", *, capacities: Callable[[], dict[str, float]], allow_restricted: bool = False,
                adapters: "dict[str, Adapter] | None" = None, headroom: float = 0.10,
                skipped: dict[str, str] | None = None) -> LoadedModels:
    """Choose, build, place, load and warm up the profile's models (see the module doc).

    ``capacities`` is called once, after the adapters are built (device → total MB). ``skipped``
    (optional) is filled in place, so a caller sees what was dropped even when this raises.
    """
    from natix_miner.devices import DeviceError, plan_placement
    from natix_miner.models.base import OptionsError
    from natix_miner.models.registry import build_adapter

    injected = dict(adapters or {})
    skipped = skipped if skipped is not None else {}
    drop = _Dropper(skipped)
    chosen = choose(profile, allow_restricted, skipped)
    check_types(profile, skip=set(injected))

    built: "list[tuple[TierSpec, Adapter]]" = []
    for tier, spec in chosen:
        try:
            ad = injected.get(spec.name) or build_adapter(spec, profile)
        except OptionsError as e:  # a typo in the profile: refuse to start
            raise EngineError(f"{profile.source}: {_key_of(profile, spec.name)}.{e.key}: {e.reason}") from e
        except Exception as e:
            drop(spec.name, f"cannot build adapter: {type(e).__name__}: {e}", only=len(chosen) == 1)
            continue
        built.append((tier, ad))
    if not built:
        raise EngineError(f"{profile.source}: no adapter could be built; see the errors above")

    try:
        caps = capacities()
    except DeviceError as e:
        raise EngineError(str(e)) from e
    plan = plan_placement([(ad.spec, ad.memory_mb) for _, ad in built], caps,
                          headroom)  # raises PlacementError before anything loads
    logger.info(f"placement for profile {profile.name}:\n{plan.table()}")

    loaded: "list[tuple[TierSpec, Adapter]]" = []
    for tier, ad in load_order(built):
        dev = plan.device_of(ad.name)
        t0 = time.monotonic()
        try:
            if not ad.loaded:
                ad.load(dev)
            ad.warmup()
        except Exception as e:
            plan.remove(ad.name)
            drop(ad.name, f"failed to load on {dev}: {type(e).__name__}: {e}", only=len(built) == 1)
            try:
                ad.unload()
            except Exception:
                pass
            continue
        warn = plan.record_measured(ad.name, ad.measured_memory_mb)
        if warn:
            logger.warning(warn)
        logger.info(f"model {ad.name} ({tier.name}) loaded on {dev} in {time.monotonic() - t0:.1f} s, "
                    f"{ad.memory_mb:.0f} MB")
        loaded.append((tier, ad))
    if not loaded:
        raise EngineError(f"{profile.source}: no model could be loaded; see the errors above")
    return LoadedModels(plan=plan, models=loaded, skipped=skipped)
