"""Local vLLM engine: one model per worker process, pinned to its GPU by ``CUDA_VISIBLE_DEVICES``.

vLLM (optional ``gpu`` extra; no CPU build) is imported only inside the worker process. vLLM has
no per-engine device argument, so each engine runs in its own process started with the ``spawn``
context, whose environment maps the profile's device (``cuda:1``) to ``CUDA_VISIBLE_DEVICES=1``
(through the parent's own ``CUDA_VISIBLE_DEVICES`` list when that is set). Engines start one after
another (a module lock held until the worker reports ready), since two vLLM engines profiling
memory on one GPU at the same time mis-measure each other.

Protocol (two ``multiprocessing`` queues): the parent sends ``(kind, request_id, payload)`` with
kind ``yesno`` | ``generate`` | ``close``; the worker answers ``(request_id, "ok", result)`` or
``(request_id, "error", message)``; at start it sends ``("ready", info)`` or ``("failed", msg)``.
A reader thread in the parent resolves one future per request, so a call that timed out simply
drops its late answer (the worker is serial: later calls wait behind a slow one).

Engine options (``options:``): ``gpu_memory_utilization`` (fraction of the GPU this engine may take,
default 0.3) or ``kv_cache_memory_bytes`` (an absolute KV-cache size, takes precedence),
``quantization`` (``fp8`` on Hopper/Ada; ``nvfp4`` / ``modelopt_fp4`` only on compute capability
>= 10, checked before start), ``kv_cache_dtype`` (e.g. ``fp8``), ``max_model_len`` (default 4096),
``max_num_seqs`` (default 16), ``dtype`` (default auto), ``min_pixels`` / ``max_pixels``
(→ ``mm_processor_kwargs``), ``mm_processor_kwargs`` (merged), ``tensor_parallel_size`` (default 1;
2 pins ``cuda:N`` and ``cuda:N+1``), ``enforce_eager``, ``enable_prefix_caching`` (default true),
``trust_remote_code`` (default true for molmo2 / phi4mm / internvl), ``vision_lora`` (Phi-4: path
of the vision LoRA, default ``<model>/vision-lora`` when it exists), ``prompt_format``
(``literal`` | ``template``; default: template for InternVL, literal otherwise), ``seed``,
``load_timeout_s`` (default 1200), ``engine_args`` (a dict passed to ``vllm.LLM`` last, for
anything else).

Request building and output parsing (sampling kwargs, prompt dicts, ``RequestOutput`` → logprobs / text)
live in :mod:`natix_miner.models.vlm.engines.vllm_requests` and are re-exported here.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Sequence

from loguru import logger

from natix_miner.models.base import AdapterError
from natix_miner.models.vlm.engines.base import VLMEngine, warmup_images
from natix_miner.models.vlm.engines.vllm_requests import (  # noqa: F401 - re-exported
    build_requests,
    generate_sampling_kwargs,
    parse_generation_output,
    parse_yes_no_output,
    use_template,
    yes_no_sampling_kwargs,
)
from natix_miner.models.vlm.prompts import prompts_for

#: vLLM engines start one at a time (see module docstring)
_START_LOCK = threading.Lock()
FP4_QUANTIZATIONS = ("nvfp4", "modelopt_fp4", "fp4", "mxfp4")
_REMOTE_CODE_FAMILIES = ("molmo2", "phi4mm", "internvl")
DEFAULT_GPU_MEMORY_UTILIZATION = 0.3


# ------------------------------------------------------------------------------ pure helpers (tested)


def cuda_visible_devices(device: str, tensor_parallel_size: int = 1, parent: str | None = None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that makes ``device`` (and the next TP-1 GPUs) the worker's GPUs.

    ``parent`` is the parent's own ``CUDA_VISIBLE_DEVICES`` (None/empty: all GPUs visible, index =
    physical id); ``cuda`` and ``auto`` mean ``cuda:0``.
    """
    if device in ("cuda", "auto"):
        idx = 0
    elif device.startswith("cuda:"):
        try:
            idx = int(device.split(":", 1)[1])
        except ValueError as e:
            raise AdapterError(f"bad device {device!r}") from e
    else:
        raise AdapterError(f"the vllm engine needs a CUDA device, got {device!r} (use engine: transformers on CPU)")
    tp = max(1, int(tensor_parallel_size))
    wanted = list(range(idx, idx + tp))
    if parent is not None and parent.strip() != "":
        visible = [x.strip() for x in parent.split(",") if x.strip() != ""]
        if wanted[-1] >= len(visible):
            raise AdapterError(f"device {device} with tensor_parallel_size={tp} needs GPU index {wanted[-1]}, but "
                               f"only {len(visible)} GPU(s) are visible (CUDA_VISIBLE_DEVICES={parent})")
        return ",".join(visible[i] for i in wanted)
    return ",".join(str(i) for i in wanted)


def check_quantization(quantization: str | None, capability: tuple[int, int] | None) -> None:
    """Refuse FP4 formats on GPUs without native FP4 (compute capability < 10, e.g. H100 = 9.0)."""
    if not quantization or quantization.lower() not in FP4_QUANTIZATIONS:
        return
    if capability is None:
        raise AdapterError(f"quantization {quantization!r} needs a Blackwell-class GPU (compute capability >= 10.0); "
                           "no CUDA GPU is visible")
    if capability[0] < 10:
        raise AdapterError(f"quantization {quantization!r} needs a Blackwell-class GPU (compute capability >= 10.0); "
                           f"this GPU is {capability[0]}.{capability[1]} — use quantization: fp8 on Hopper/Ada "
                           "(H100 = 9.0)")


def gpu_capability(device: str) -> tuple[int, int] | None:
    """Compute capability of ``device`` in this (parent) process, None without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    idx = 0 if device in ("cuda", "auto") else int(device.split(":", 1)[1])
    return tuple(torch.cuda.get_device_capability(idx))  # type: ignore[return-value]


def engine_kwargs(model: str, family: str, options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(...)``."""
    o = options
    kw: dict[str, Any] = {
        "model": model,
        "dtype": o.get("dtype", "auto"),
        "max_model_len": int(o.get("max_model_len", 4096)),
        "max_num_seqs": int(o.get("max_num_seqs", 16)),
        "limit_mm_per_prompt": {"image": 1},
        "tensor_parallel_size": int(o.get("tensor_parallel_size", 1)),
        "enable_prefix_caching": bool(o.get("enable_prefix_caching", True)),
        "trust_remote_code": bool(o.get("trust_remote_code", family in _REMOTE_CODE_FAMILIES)),
        "seed": int(o.get("seed", 0)),
        "disable_log_stats": True,
    }
    if o.get("kv_cache_memory_bytes") is not None:
        kw["kv_cache_memory_bytes"] = int(o["kv_cache_memory_bytes"])
    else:
        kw["gpu_memory_utilization"] = float(o.get("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    if o.get("quantization"):
        kw["quantization"] = str(o["quantization"])
    if o.get("kv_cache_dtype"):
        kw["kv_cache_dtype"] = str(o["kv_cache_dtype"])
    if o.get("enforce_eager") is not None:
        kw["enforce_eager"] = bool(o["enforce_eager"])
    if o.get("tokenizer"):
        kw["tokenizer"] = str(o["tokenizer"])
    mm = dict(o.get("mm_processor_kwargs") or {})
    for k in ("min_pixels", "max_pixels"):
        if o.get(k) is not None:
            mm[k] = int(o[k])
    if mm:
        kw["mm_processor_kwargs"] = mm
    top_k = int(o.get("top_k", 20))
    if top_k > 20:  # vLLM's default max_logprobs is 20
        kw["max_logprobs"] = top_k
    lora = vision_lora_path(model, family, o)
    if lora:
        kw["enable_lora"] = True
        kw["max_lora_rank"] = int(o.get("max_lora_rank", 320))
    kw.update(dict(o.get("engine_args") or {}))
    return kw


def vision_lora_path(model: str, family: str, options: dict[str, Any]) -> str | None:
    """Phi-4-multimodal serves images through its vision LoRA (``<model>/vision-lora``)."""
    if options.get("vision_lora"):
        return str(options["vision_lora"])
    if family == "phi4mm":
        cand = Path(model) / "vision-lora"
        if cand.is_dir():
            return str(cand)
    return None


# ------------------------------------------------------------------------------ worker process


def _worker_main(req_q: Any, resp_q: Any, model: str, family: str, kwargs: dict[str, Any], env: dict[str, str],
                 options: dict[str, Any]) -> None:  # pragma: no cover - runs in the child (tested with a fake vllm)
    os.environ.update(env)
    try:
        info: dict[str, Any] = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        measure = bool(options.get("measure_memory", True))
        free_before = _free_gpu_bytes() if measure else None
        import vllm

        t0 = time.monotonic()
        llm = vllm.LLM(**kwargs)
        info["load_s"] = time.monotonic() - t0
        lora_req = None
        lora = vision_lora_path(model, family, options)
        if lora:
            from vllm.lora.request import LoRARequest

            lora_req = LoRARequest("vision", 1, lora)
        owner = llm.get_tokenizer() if use_template(family, options) else None
        top_k = int(options.get("top_k", 20))

        def run(kind: str, payload: dict[str, Any]) -> Any:
            prompts, images = payload["prompts"], payload["images"]
            reqs = build_requests(prompts, images, owner)
            if kind == "yesno":
                sp = vllm.SamplingParams(**yes_no_sampling_kwargs(payload.get("top_k", top_k)))
                outs = llm.generate(reqs, sp, use_tqdm=False, lora_request=lora_req)
                return [parse_yes_no_output(o) for o in outs]
            sp = vllm.SamplingParams(**generate_sampling_kwargs(payload["max_tokens"], payload.get("stop", ())))
            outs = llm.generate(reqs, sp, use_tqdm=False, lora_request=lora_req)
            return [parse_generation_output(o) for o in outs]

        from natix_miner.models.vlm.prompts import yes_no_prompt

        t0 = time.monotonic()
        ims = warmup_images()
        for _ in range(int(options.get("warmup_iters", 2))):
            run("yesno", {"prompts": [yes_no_prompt(family)] * len(ims), "images": ims})
        info["warmup_s"] = time.monotonic() - t0
        free_after = _free_gpu_bytes() if measure else None
        if free_before is not None and free_after is not None:
            info["memory_mb"] = (free_before - free_after) / 2**20
        resp_q.put(("ready", info))
    except BaseException as e:  # noqa: BLE001 - report every start failure to the parent
        resp_q.put(("failed", f"{type(e).__name__}: {e}"))
        return
    while True:
        msg = req_q.get()
        if msg is None or msg[0] == "close":
            break
        kind, rid, payload = msg
        try:
            resp_q.put((rid, "ok", run(kind, payload)))
        except BaseException as e:  # noqa: BLE001
            resp_q.put((rid, "error", f"{type(e).__name__}: {e}"))


def _free_gpu_bytes() -> float | None:  # pragma: no cover - GPU only
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(0)
        return float(free)
    except Exception:
        return None


# ------------------------------------------------------------------------------ parent side


class VLLMEngine(VLMEngine):
    kind = "vllm"

    def __init__(self, *, model: str, family: str, device: str = "cuda", options: dict[str, Any] | None = None):
        super().__init__(model=model, family=family, device=device, options=options)
        self._proc: Any = None
        self._req_q: Any = None
        self._resp_q: Any = None
        self._pending: dict[int, Future] = {}
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._reader: threading.Thread | None = None
        self._closed = False
        self.info: dict[str, Any] = {}
        self.worker_target = _worker_main  # replaceable in tests
        self.capability_probe = gpu_capability  # replaceable in tests

    def worker_env(self) -> dict[str, str]:
        tp = int(self.options.get("tensor_parallel_size", 1))
        env = {"CUDA_VISIBLE_DEVICES": cuda_visible_devices(self.device, tp, os.environ.get("CUDA_VISIBLE_DEVICES")),
               "VLLM_WORKER_MULTIPROC_METHOD": "spawn", "TOKENIZERS_PARALLELISM": "false"}
        env.update({str(k): str(v) for k, v in (self.options.get("worker_env") or {}).items()})
        return env

    def load(self) -> None:
        import multiprocessing as mp

        check_quantization(self.options.get("quantization"), self.capability_probe(self.device))
        env = self.worker_env()
        kwargs = engine_kwargs(self.model, self.family, self.options)
        timeout = float(self.options.get("load_timeout_s", 1200))
        ctx = mp.get_context("spawn")
        with _START_LOCK:
            self._req_q, self._resp_q = ctx.Queue(), ctx.Queue()
            self._proc = ctx.Process(target=self.worker_target, name=f"vllm-{Path(self.model).name}",
                                     args=(self._req_q, self._resp_q, self.model, self.family, kwargs, env,
                                           self.options), daemon=False)
            logger.info(f"vLLM {self.model}: starting worker on CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}")
            self._proc.start()
            deadline = time.monotonic() + timeout
            msg = None
            while time.monotonic() < deadline:
                try:
                    msg = self._resp_q.get(timeout=1.0)
                    break
                except Exception:  # queue.Empty
                    if not self._proc.is_alive():
                        break
            if msg is None or msg[0] != "ready":
                why = msg[1] if msg is not None else (
                    f"worker exited with code {self._proc.exitcode}" if not self._proc.is_alive()
                    else f"not ready after {timeout:.0f} s")
                self._kill()
                raise AdapterError(f"vLLM {self.model}: engine failed to start: {why}")
        self.info = dict(msg[1])
        if self.info.get("memory_mb") is not None:
            self.measured_memory_mb = float(self.info["memory_mb"])
        self._reader = threading.Thread(target=self._read_loop, name=f"vllm-reader-{self._proc.pid}", daemon=True)
        self._reader.start()
        logger.info(f"vLLM {self.model}: ready {self.info}")

    def _read_loop(self) -> None:
        while not self._closed:
            try:
                msg = self._resp_q.get(timeout=0.5)
            except Exception:  # queue.Empty / closed queue
                if self._proc is not None and not self._proc.is_alive():
                    self._fail_all("vLLM worker died")
                    return
                continue
            rid, status, result = msg
            with self._pending_lock:
                fut = self._pending.pop(rid, None)
            if fut is None:
                continue  # a call that already timed out: its late answer is dropped
            if status == "ok":
                fut.set_result(result)
            else:
                fut.set_exception(RuntimeError(result))

    def _fail_all(self, why: str) -> None:
        with self._pending_lock:
            futs, self._pending = list(self._pending.values()), {}
        for f in futs:
            if not f.done():
                f.set_exception(RuntimeError(why))

    def _call(self, kind: str, payload: dict[str, Any], n: int, timeout_s: float | None) -> list[Any]:
        if self._proc is None or self._closed:
            raise AdapterError(f"vLLM {self.model}: engine not loaded")
        if not self._proc.is_alive():
            self.count_error("worker_dead")
            return [None] * n
        rid = next(self._ids)
        fut: Future = Future()
        with self._pending_lock:
            self._pending[rid] = fut
        self._req_q.put((kind, rid, payload))
        try:
            res = fut.result(timeout=timeout_s)
        except FutureTimeout:
            with self._pending_lock:
                self._pending.pop(rid, None)
            self.count_error("timeout")
            return [None] * n
        except Exception as e:
            self.count_error("error")
            logger.warning(f"vLLM {self.model}: {kind} failed: {e}")
            return [None] * n
        if not isinstance(res, list) or len(res) != n:
            self.count_error("bad_response")
            return [None] * n
        return res

    def yes_no_logprobs(self, images, prompt_builder, top_k: int = 20, *, timeout_s=None):
        if not images:
            return []
        payload = {"prompts": prompts_for(prompt_builder, len(images)), "images": list(images), "top_k": int(top_k)}
        return self._call("yesno", payload, len(images), timeout_s)

    def generate(self, images, prompt_builder, max_tokens: int, *, stop: Sequence[str] = (), timeout_s=None):
        if not images:
            return []
        payload = {"prompts": prompts_for(prompt_builder, len(images)), "images": list(images),
                   "max_tokens": int(max_tokens), "stop": list(stop)}
        return self._call("generate", payload, len(images), timeout_s)

    def _kill(self) -> None:
        p = self._proc
        if p is None:
            return
        if p.is_alive():
            p.terminate()
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._proc is not None and self._proc.is_alive():
            try:
                self._req_q.put(("close", None, None))
                self._proc.join(float(self.options.get("close_timeout_s", 30)))
            except Exception:  # pragma: no cover
                pass
        self._kill()
        self._fail_all("engine closed")
