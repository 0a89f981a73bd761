"""The profile's optional ``serve:`` section and the Ray resources each deployment asks for.

::

    serve:
      headroom: 0.10            # memory kept free on each device when planning (as in process)
      strategy: spread          # first_fit | spread (how replicas are packed onto GPUs)
      ingress:                  # the deployment running CascadeEngine (policy only, no model)
        num_replicas: 1
        num_cpus: 0.5
        max_ongoing_requests: 256
      defaults:                 # every model deployment, unless models.<name> says otherwise
        num_replicas: 1
        num_cpus: 1
      models:
        big-detector:
          autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 8}
          batch_wait_ms: 5      # @serve.batch wait; max_batch_size defaults to the model's batch_size

``num_gpus`` and ``memory_mb`` are normally left out: :func:`plan_resources` runs the engine's own
placement planner (:func:`natix_miner.devices.plan_placement`) over every initial replica and gives
a GPU model ``num_gpus = memory_mb / usable GPU memory`` (so Ray never packs more models on a GPU
than its memory holds) and a CPU model Ray's ``memory`` resource. A plan that does not fit fails
before anything is deployed, with the planner's table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from natix_miner.profile import ProfileError

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.devices import PlacementPlan
    from natix_miner.profile import ModelSpec, Profile


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _order(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class DeploymentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    num_replicas: int = Field(1, ge=1)
    autoscaling: Autoscaling | None = None  # replaces num_replicas when set
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0)  # None: from the placement plan
    memory_mb: float | None = Field(None, ge=0)  # None: the model's memory_mb on CPU, 0 on GPU
    max_ongoing_requests: int = Field(64, ge=1)
    max_batch_size: int | None = Field(None, ge=1)  # models: None = the model's batch_size
    batch_wait_ms: float = Field(2.0, ge=0)
    health_check_period_s: float = Field(10.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)

    @property
    def initial_replicas(self) -> int:
        return max(1, self.autoscaling.min_replicas) if self.autoscaling else self.num_replicas


class ServeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    headroom: float = Field(0.10, ge=0, lt=1)
    strategy: Literal["first_fit", "spread"] = "spread"
    ingress: DeploymentOptions = DeploymentOptions(num_cpus=0.5, max_ongoing_requests=256)
    defaults: DeploymentOptions = DeploymentOptions()
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per model: overrides of `defaults`

    def for_model(self, name: str) -> DeploymentOptions:
        over = self.models.get(name) or {}
        return DeploymentOptions(**{**self.defaults.model_dump(exclude_unset=True), **over})


def parse_serve_spec(profile: "Profile") -> ServeSpec:
    """Validate ``profile.serve`` (a mapping, possibly empty); errors name the file and key."""
    data = getattr(profile, "serve", None) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{profile.source}: serve: must be a mapping, got {type(data).__name__}")
    try:
        spec = ServeSpec(**data)
        names = {m.name for _, m in profile.models(enabled_only=False)}
        for name in spec.models:
            if name not in names:
                raise ValueError(f"models.{name}: no model of that name in the profile ({', '.join(sorted(names))})")
            spec.for_model(name)  # validate the merged options now, not at deploy time
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ProfileError(f"{profile.source}: serve: {errs}") from e
    except ValueError as e:
        raise ProfileError(f"{profile.source}: serve: {e}") from e
    return spec


@dataclass(frozen=True)
class Resources:
    """What one model deployment asks Ray for, and why."""

    model: str
    device: str  # where the planner put the first replica: cpu or cuda:N (Ray picks the actual GPU)
    num_cpus: float
    num_gpus: float
    memory_bytes: int
    replicas: int

    def actor_options(self) -> dict[str, Any]:
        d: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes > 0:
            d["memory"] = self.memory_bytes
        return d


def served_models(profile: "Profile", allow_restricted: bool) -> list["ModelSpec"]:
    """The models the ingress's CascadeEngine will run: enabled, and restricted only with the opt-in
    (the engine applies the same rule and logs why it skips the others)."""
    return [m for _, m in profile.models() if allow_restricted or not m.restricted]


def plan_resources(profile: "Profile", spec: ServeSpec, devices: dict[str, float],
                   allow_restricted: bool = False) -> tuple[dict[str, Resources], "PlacementPlan"]:
    """Ray resources per model deployment from the placement plan of all initial replicas over
    ``devices`` (device → total MB for the whole cluster: ``cpu`` and ``cuda:N``)."""
    from natix_miner.devices import plan_placement

    items: list[tuple["ModelSpec", float]] = []
    for m in served_models(profile, allow_restricted):
        for r in range(spec.for_model(m.name).initial_replicas):
            items.append((replace(m, name=f"{m.name}#{r}"), m.memory_mb))
    plan = plan_placement(items, devices, spec.headroom, strategy=spec.strategy)
    out: dict[str, Resources] = {}
    for m in served_models(profile, allow_restricted):
        opts = spec.for_model(m.name)
        dev = plan.device_of(f"{m.name}#0")
        if opts.num_gpus is not None:
            gpus = opts.num_gpus
        elif dev == "cpu":
            gpus = 0.0
        else:  # memory share of the GPU, rounded up to 1 %, at least 1 %
            gpus = min(1.0, max(0.01, math.ceil(100.0 * m.memory_mb / plan.usable_mb(dev)) / 100.0))
        mem_mb = opts.memory_mb if opts.memory_mb is not None else (m.memory_mb if dev == "cpu" else 0.0)
        out[m.name] = Resources(model=m.name, device=dev, num_cpus=opts.num_cpus, num_gpus=gpus,
                                memory_bytes=int(mem_mb * 2**20), replicas=opts.initial_replicas)
    return out, plan


def cluster_devices(gpu_memory_mb: float | None = None) -> dict[str, float]:
    """Devices of the connected Ray cluster for planning: ``cuda:0..N-1`` for its N GPUs (memory per
    GPU: ``gpu_memory_mb``, else this machine's first GPU) and ``cpu`` = Ray's memory resource."""
    import ray

    from natix_miner.devices import detect_devices

    res = ray.cluster_resources()
    n_gpu = int(res.get("GPU", 0))
    out: dict[str, float] = {}
    if n_gpu:
        if gpu_memory_mb is None:
            local = [v for k, v in detect_devices(cuda=True).items() if k.startswith("cuda:")]
            if not local:
                raise ProfileError("the Ray cluster has GPUs but this machine has none to measure: pass "
                                   "--gpu-memory-mb (memory of one GPU, MB)")
            gpu_memory_mb = local[0]
        out.update({f"cuda:{i}": float(gpu_memory_mb) for i in range(n_gpu)})
    out["cpu"] = float(res.get("memory", 0.0)) / 2**20 or detect_devices(cuda=False)["cpu"]
    return out
