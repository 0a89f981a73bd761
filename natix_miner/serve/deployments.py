"""The two Ray Serve deployments: one per model, and the ingress that runs the cascade.

- :class:`ModelServer` (one deployment per profile model, ``model-<name>``): loads one adapter from
  the model registry on the device Ray gives the replica (``cuda:0`` inside its
  ``CUDA_VISIBLE_DEVICES`` when it holds a GPU fraction, else ``cpu``), warms it up, and answers
  ``predict(image)`` one image per call; ``@serve.batch`` gathers the calls of every ingress
  replica into batches of up to the model's ``batch_size``. ``check_health`` raises once the
  adapter is unloaded or failed ``UNHEALTHY_AFTER`` batches in a row, so Serve replaces it.
- :class:`CascadeIngress` (``cascade``, the HTTP route): runs :class:`CascadeEngine` — the same
  class as a miner in process, so tiers, early exit, deadlines, pooling, calibration, breakers,
  micro-batching, dedup and cache are the same code — with :class:`ServeModelAdapter` proxies
  injected as its adapters: a proxy's ``predict`` sends each image of the chunk to its model
  deployment's handle and waits (from the engine's worker thread) until the call's deadline.

HTTP (``natix_miner.engine.remote`` has the wire format): ``POST /infer`` → the cascade result as
JSON (400 for a malformed request); ``GET /health`` → 200 with the profile and models when the
engine is ready, else 503; ``GET /stats`` → ``CascadeEngine.stats()``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from loguru import logger
from ray import serve

from natix_miner.models.base import Adapter, AdapterError

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.engine.deadline import Deadline
    from natix_miner.profile import ModelSpec, Profile

#: consecutive failed batches after which a model replica reports itself unhealthy
UNHEALTHY_AFTER = 5


def _find(profile: "Profile", name: str) -> "ModelSpec":
    for _, m in profile.models(enabled_only=False):
        if m.name == name:
            return m
    raise KeyError(f"model {name!r} is not in profile {profile.name}")


class ModelServer:
    """One model of the profile, behind ``@serve.batch``."""

    def __init__(self, profile: "Profile", model: str, max_batch_size: int, batch_wait_s: float):
        import ray

        from natix_miner.models.registry import build_adapter

        self.spec = _find(profile, model)
        self.adapter = build_adapter(self.spec, profile)
        device = "cuda:0" if ray.get_gpu_ids() else "cpu"
        t0 = time.monotonic()
        self.adapter.load(device)
        self.adapter.warmup()
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_s)
        self._lock = threading.Lock()  # adapters take one call at a time
        self.failed_in_a_row = 0
        self.batches = 0
        logger.info(f"model {model} loaded on {device} in {time.monotonic() - t0:.1f} s "
                    f"(serve.batch max {max_batch_size}, wait {batch_wait_s * 1000:.0f} ms)")

    def _predict(self, images: list[Any]) -> list[Any]:
        with self._lock:
            votes = list(self.adapter.predict(images))
        if len(votes) != len(images):
            raise ValueError(f"predict returned {len(votes)} votes for {len(images)} images")
        return votes

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)  # per-model values set in __init__
    async def predict(self, images: list[Any]) -> list[Any]:
        try:
            votes = await asyncio.to_thread(self._predict, images)
        except BaseException:
            self.failed_in_a_row += 1
            raise  # serve.batch fails every caller of the batch; each caller's engine counts it
        self.failed_in_a_row = 0
        self.batches += 1
        return votes

    def stats(self) -> dict:
        return {"model": self.spec.name, "device": self.adapter.device, "batches": self.batches,
                "failed_in_a_row": self.failed_in_a_row, "memory_mb": self.adapter.memory_mb}

    def check_health(self) -> None:
        if not self.adapter.loaded:
            raise RuntimeError(f"model {self.spec.name} is not loaded")
        if self.failed_in_a_row >= UNHEALTHY_AFTER:
            raise RuntimeError(f"model {self.spec.name}: {self.failed_in_a_row} failed batches in a row")


class ServeModelAdapter(Adapter):
    """An adapter whose model lives in a :class:`ModelServer` deployment.

    Its spec is the model's with ``device: cpu`` and ``memory_mb: 0`` (the ingress holds no
    weights, so its own placement plan is trivial) and ``batch_size`` × ``replicas`` (one engine
    call fans out to every replica at once, each gets up to ``batch_size`` images); ``timeout_s``,
    ``weight`` and the breaker options are the model's, so the engine plans and times a call as it
    would in process.
    """

    accepts_deadline = True  # the engine passes each call's deadline

    def __init__(self, spec: "ModelSpec", handle: Any, profile: "Profile | None" = None, replicas: int = 1):
        super().__init__(replace(spec, device="cpu", memory_mb=0.0,
                                 batch_size=max(1, spec.batch_size) * max(1, replicas)), profile)
        self._handle = handle

    def load(self, device: str) -> None:
        if self._handle is None:
            raise AdapterError(f"{self.name}: no model deployment was created for it")
        self.device = "serve"
        self.loaded = True

    def warmup(self) -> None:  # the model replica warmed itself up
        return None

    def predict(self, images: list[Any], deadline: "Deadline | None" = None) -> list[Any]:
        calls = [self._handle.predict.remote(im) for im in images]
        out = []
        try:
            for c in calls:
                left = None if deadline is None else max(0.001, deadline.remaining())
                out.append(c.result(timeout_s=left))
        except BaseException:
            for c in calls:
                try:
                    c.cancel()
                except Exception:  # pragma: no cover - best effort
                    pass
            raise
        return out


class CascadeIngress:
    """The HTTP route: ``CascadeEngine`` over :class:`ServeModelAdapter` proxies."""

    def __init__(self, profile: "Profile", handles: dict[str, Any], replicas: dict[str, int],
                 allow_restricted: bool = False):
        from natix_miner.engine.cascade import CascadeEngine

        adapters = {m.name: ServeModelAdapter(m, handles.get(m.name), profile, replicas.get(m.name, 1))
                    for _, m in profile.models()}
        self.profile = profile
        self.engine = CascadeEngine(profile, allow_restricted=allow_restricted, devices=["cpu"], adapters=adapters)
        self.engine.start()

    def _info(self) -> dict:
        return {"ready": self.engine.ready, "profile": self.profile.name, "deadline_s": self.profile.deadline_s,
                "models": sorted(self.engine.stats()["models"]), "skipped": dict(self.engine.skipped)}

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        path = request.url.path.rstrip("/")
        if request.method == "POST" and path.endswith("/infer"):
            return await self._infer(request)
        if path.endswith("/health"):
            info = self._info()
            return JSONResponse(info, status_code=200 if info["ready"] else 503)
        if path.endswith("/stats"):
            return JSONResponse(self.engine.stats())
        return JSONResponse({"error": "POST /infer, GET /health or GET /stats"}, status_code=404)

    async def _infer(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        from natix_miner.engine.deadline import Deadline
        from natix_miner.engine.remote import WireError, decode_image

        body = await request.body()
        try:
            image = await asyncio.to_thread(decode_image, body, request.headers)
            ms = float(request.headers.get("x-deadline-ms", self.profile.deadline_s * 1000.0))
            if not ms > 0:
                raise WireError(f"X-Deadline-Ms must be > 0, got {ms}")
        except (WireError, ValueError) as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        res = await self.engine.infer(image, key=request.headers.get("x-image-key") or None,
                                      deadline=Deadline.after(ms / 1000.0))
        return JSONResponse(res.to_dict())

    def check_health(self) -> None:
        if not self.engine.ready:
            raise RuntimeError("cascade engine is not ready")
