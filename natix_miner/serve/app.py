"""Build and deploy a profile as a Ray Serve application (``python -m natix_miner.serve``).

:func:`build_app` turns a profile into deployments (see :mod:`natix_miner.serve.deployments`): one
``model-<name>`` per served model, with ``ray_actor_options`` from :func:`plan_resources` (GPU
fraction and memory from the placement plan), replicas or autoscaling and ``@serve.batch`` knobs
from the profile's ``serve:`` section, and the ``cascade`` ingress bound to their handles.
:func:`deploy` connects to (or starts) Ray, starts Serve's HTTP proxy on ``host:port`` and runs the
application; :func:`main` keeps it up until SIGINT/SIGTERM and then shuts Serve down.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from natix_miner.serve.config import ServeSpec, parse_serve_spec, plan_resources

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.profile import Profile

APP_NAME = "natix-cascade"
INGRESS_NAME = "cascade"


def model_deployment_name(model: str) -> str:
    return f"model-{model}"


def runtime_env() -> dict[str, Any]:
    """Replicas import this checkout's ``natix_miner`` (the same path must exist on every node)."""
    from natix_miner.profile import REPO_ROOT

    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
                         "YOLO_OFFLINE": "1"}}


def _scaling(opts: Any) -> dict[str, Any]:
    if opts.autoscaling is not None:
        a = opts.autoscaling
        return {"autoscaling_config": {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                       "target_ongoing_requests": a.target_ongoing_requests}}
    return {"num_replicas": opts.num_replicas}


def build_app(profile: "Profile", devices: dict[str, float], *, allow_restricted: bool = False,
              spec: ServeSpec | None = None) -> tuple[Any, dict[str, Any]]:
    """The Serve application and a summary (resources per deployment, the placement table)."""
    from ray import serve

    from natix_miner.serve.deployments import CascadeIngress, ModelServer

    spec = spec or parse_serve_spec(profile)
    resources, plan = plan_resources(profile, spec, devices, allow_restricted)
    handles = {}
    renv = runtime_env()
    for name, res in resources.items():
        opts = spec.for_model(name)
        m = next(m for _, m in profile.models() if m.name == name)
        dep = serve.deployment(ModelServer).options(
            name=model_deployment_name(name), ray_actor_options={**res.actor_options(), "runtime_env": renv},
            max_ongoing_requests=opts.max_ongoing_requests, health_check_period_s=opts.health_check_period_s,
            health_check_timeout_s=opts.health_check_timeout_s, **_scaling(opts))
        handles[name] = dep.bind(profile, name, opts.max_batch_size or m.batch_size, opts.batch_wait_ms / 1000.0)
    ing = spec.ingress
    ingress = serve.deployment(CascadeIngress).options(
        name=INGRESS_NAME, ray_actor_options={"num_cpus": ing.num_cpus, "runtime_env": renv},
        max_ongoing_requests=ing.max_ongoing_requests, health_check_period_s=ing.health_check_period_s,
        health_check_timeout_s=ing.health_check_timeout_s, **_scaling(ing))
    app = ingress.bind(profile, handles, {n: r.replicas for n, r in resources.items()}, allow_restricted)
    summary = {"profile": profile.name, "models": {n: {**r.actor_options(), "device": r.device,
                                                      "replicas": r.replicas} for n, r in resources.items()},
               "placement": plan.table()}
    return app, summary


def app_builder(args: dict[str, str]) -> Any:
    """Serve's application-builder hook, for ``serve run`` / ``serve deploy`` and KubeRay's
    RayService (``import_path: natix_miner.serve.app:app_builder``, ``args: {profile: ...}``).
    Args: ``profile`` (path), optional ``gpu_memory_mb``, ``allow_restricted`` (true/false)."""
    from natix_miner.profile import load_profile
    from natix_miner.serve.config import cluster_devices

    profile = load_profile(args.get("profile"))
    gpu_mb = float(args["gpu_memory_mb"]) if args.get("gpu_memory_mb") else None
    allow = str(args.get("allow_restricted", "false")).lower() in ("1", "true", "yes")
    return build_app(profile, cluster_devices(gpu_mb), allow_restricted=allow)[0]


@dataclass
class ServeHandle:
    """A deployed service: its URL and how to take it down."""

    url: str
    summary: dict[str, Any]
    owns_ray: bool
    name: str = APP_NAME

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.name)
        except Exception as e:  # pragma: no cover - best effort
            logger.warning(f"serve delete: {e}")
        if self.owns_ray:
            serve.shutdown()
            ray.shutdown()


def connect_ray(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``auto``, ``ray://…`` or ``host:port``), or start a local
    Ray on loopback when None. Returns True when this process started Ray (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    return True


def deploy(profile: "Profile", *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
           allow_restricted: bool = False, gpu_memory_mb: float | None = None,
           devices: dict[str, float] | None = None, num_cpus: int | None = None,
           name: str = APP_NAME, route_prefix: str = "/") -> ServeHandle:
    """Deploy ``profile`` as application ``name`` under ``route_prefix`` and return once every
    replica is up (``serve.run`` blocks until then)."""
    from ray import serve

    from natix_miner.serve.config import cluster_devices

    owns = connect_ray(address, num_cpus=num_cpus)
    serve.start(http_options={"host": host, "port": port})
    app, summary = build_app(profile, devices or cluster_devices(gpu_memory_mb), allow_restricted=allow_restricted)
    logger.info(f"deploying profile {profile.name}: {summary['models']}\n{summary['placement']}")
    serve.run(app, name=name, route_prefix=route_prefix)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '[::]') else host}:{port}{route_prefix.rstrip('/')}"
    logger.info(f"cascade service ready at {url} (POST /infer, GET /health, GET /stats)")
    return ServeHandle(url=url, summary=summary, owns_ray=owns, name=name)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m natix_miner.serve",
                                description="Serve a profile's cascade on Ray Serve for many miners.")
    p.add_argument("--profile", default=os.environ.get("MINER_PROFILE"),
                   help="engine profile YAML (default: configs/lite-cpu.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (0.0.0.0 to serve other boxes)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None,
                   help="Ray cluster to join (auto, host:6379 after `ray start --head`); default: a local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--gpu-memory-mb", type=float, default=None,
                   help="memory of one cluster GPU when this machine has none to measure")
    p.add_argument("--allow-restricted", action="store_true",
                   default=os.environ.get("ALLOW_RESTRICTED_LICENCES", "") in ("1", "true", "yes"),
                   help="serve models whose licence is non-commercial or gated (you accept their terms)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (resources, placement) and exit")
    p.add_argument("--gpus", type=int, default=None,
                   help="--dry-run: plan for this many GPUs of --gpu-memory-mb each instead of this machine's")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from natix_miner.devices import PlacementError
    from natix_miner.profile import ProfileError, load_profile

    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        profile = load_profile(a.profile)
        if a.dry_run:
            import json

            from natix_miner.devices import detect_devices

            if a.gpus is not None:
                if a.gpus and not a.gpu_memory_mb:
                    raise ProfileError("--gpus needs --gpu-memory-mb (memory of one GPU, MB)")
                devs = {**{f"cuda:{i}": float(a.gpu_memory_mb) for i in range(a.gpus)},
                        "cpu": detect_devices(cuda=False)["cpu"]}
            else:
                devs = detect_devices(cuda=True)
                if a.gpu_memory_mb:
                    devs = {k: (a.gpu_memory_mb if k.startswith("cuda:") else v) for k, v in devs.items()}
            res, plan = plan_resources(profile, parse_serve_spec(profile), devs, a.allow_restricted)
            print(json.dumps({n: {**r.actor_options(), "device": r.device, "replicas": r.replicas}
                              for n, r in res.items()}, indent=2))
            print(plan.table())
            return 0
        svc = deploy(profile, host=a.host, port=a.port, address=a.address, allow_restricted=a.allow_restricted,
                     gpu_memory_mb=a.gpu_memory_mb, num_cpus=a.num_cpus)
    except (ProfileError, PlacementError) as e:
        logger.error(str(e))
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("stopping the cascade service")
    svc.shutdown()
    return 0
