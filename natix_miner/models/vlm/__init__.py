"""The ``vlm`` family: vision-language models answering "does this image show road work?".

How ``p`` is formed: P(roadwork) = P(yes) from the yes/no log-probabilities of ONE generated
token, renormalised over the two answers (:mod:`~natix_miner.models.vlm.yesno`); an image whose
top-k holds neither answer gets NaN (no vote; the cascade drops it). With ``thinking: true`` the
model first reasons under a hard token budget derived from the time left, then answers with one
constrained token (:mod:`~natix_miner.models.vlm.thinking`); a reasoning that does not finish under
budget gives no vote.

Engines (``options.engine``): ``vllm`` (local GPU, a worker process per model), ``openai`` (a remote
OpenAI-compatible server), ``transformers`` (in-process, CPU or GPU). Prompt templates per family
live in :mod:`~natix_miner.models.vlm.prompts`.

Options common to all engines (engine-specific keys: see each engine module):

- ``engine``: vllm | openai | transformers (default transformers)
- ``family``: template family (default: detected from config.json / the model id):
  qwen3_vl, qwen2_5_vl, qwen2_vl, internvl, phi4mm, molmo2, paligemma, llava_onevision, video_llava
- ``question`` / ``system``: override the question / add a system prompt
- ``top_k``: logprobs requested for the answer token (default 20)
- ``think_tags``: the model reasons inside ``<think>`` (default: true for Qwen3-VL ``*Thinking*``)
- ``thinking``: reasoning tier on/off (default false), with ``max_thinking_tokens`` (256),
  ``min_thinking_tokens`` (16), ``s_per_token`` (configured; default measured), ``safety_s`` (0.25),
  ``final_step_s`` (configured; default measured), ``thinking_time_s`` (time budget when the engine
  passes no deadline; default the model's ``timeout_s``, else 3 s)
- ``call_margin_s``: time kept back from the deadline for the engine's own bookkeeping (0.02)

Deadline hook: :meth:`VLMAdapter.predict` reads the optional ``deadline`` of the adapter contract
(a :class:`~natix_miner.types.Deadline`: the engine passes the call's limit). Without it, the yes/no path uses
the model's ``timeout_s`` and the thinking tier ``thinking_time_s``.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from natix_miner.models.base import Adapter, AdapterError, OptionsError
from natix_miner.models.registry import register
from natix_miner.models.vlm import thinking as th
from natix_miner.models.vlm.prompts import detect_family, is_thinking_model, yes_no_prompt
from natix_miner.models.vlm.yesno import p_yes, summarize
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.models.vlm.engines.base import VLMEngine
    from natix_miner.types import Deadline

COMMON_KEYS = frozenset({
    "engine", "family", "question", "system", "top_k", "think_tags", "thinking", "max_thinking_tokens",
    "min_thinking_tokens", "s_per_token", "safety_s", "final_step_s", "thinking_time_s", "call_margin_s",
    "min_pixels", "max_pixels", "warmup",
    "cpu_ok",  # read by the placement planner (devices.py) for every family
})
ENGINE_KEYS = {
    "transformers": frozenset({"dtype", "model_class", "trust_remote_code", "attn_implementation",
                               "processor_kwargs", "threads"}),
    "vllm": frozenset({"gpu_memory_utilization", "kv_cache_memory_bytes", "quantization", "kv_cache_dtype",
                       "max_model_len", "max_num_seqs", "dtype", "mm_processor_kwargs", "tensor_parallel_size",
                       "enforce_eager", "enable_prefix_caching", "trust_remote_code", "vision_lora",
                       "max_lora_rank", "prompt_format", "seed", "load_timeout_s", "close_timeout_s",
                       "engine_args", "tokenizer", "worker_env", "warmup_iters", "measure_memory"}),
    "openai": frozenset({"base_url", "base_url_env", "served_model_name", "api_key_env", "api_key", "request_timeout_s",
                         "connect_timeout_s", "max_retries", "max_concurrency", "health_interval_s",
                         "jpeg_quality", "max_image_side", "extra_body"}),
}


@register("vlm")
class VLMAdapter(Adapter):
    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        o = dict(spec.options or {})
        self.engine_name = str(o.get("engine", "transformers"))
        if self.engine_name not in ENGINE_KEYS:
            raise AdapterError(f"{spec.name}: options.engine must be one of {', '.join(ENGINE_KEYS)}, "
                               f"got {self.engine_name!r}")
        unknown = set(o) - COMMON_KEYS - ENGINE_KEYS[self.engine_name]
        if unknown:  # a typo: the engine's loader refuses to start, naming the file and key
            raise OptionsError(spec.name, f"options.{sorted(unknown)[0]}",
                               f"not an option of the vlm/{self.engine_name} adapter (unknown: {sorted(unknown)})")
        if not spec.model:
            raise AdapterError(f"{spec.name}: a vlm model needs `model:` (hub id, local folder, or the served name)")
        self.model_ref = self.resolve(spec.model)
        try:
            self.family = detect_family(self.model_ref, override=o.get("family"))
        except ValueError as e:
            raise AdapterError(f"{spec.name}: {e}") from e
        self.think_tags = bool(o["think_tags"]) if o.get("think_tags") is not None else \
            is_thinking_model(self.model_ref, self.family)
        self.top_k = int(o.get("top_k", 20))
        self.thinking = bool(o.get("thinking", False))
        self.question = o.get("question")
        self.system = o.get("system")
        self.call_margin_s = float(o.get("call_margin_s", 0.02))
        self.settings = th.ThinkingSettings.from_options(o, spec.timeout_s)
        if self.thinking and self.family == "paligemma":
            raise AdapterError(f"{spec.name}: PaliGemma cannot reason (prefix-style VQA model); "
                               "set thinking: false")
        self.prompt = yes_no_prompt(self.family, question=self.question, system=self.system,
                                    think_open=self.think_tags)
        self.rate = th.TokenRate()
        self.final_latency = th.LatencyEMA()
        self.engine: "VLMEngine | None" = None
        self.last_budget: int | None = None  # reasoning tokens granted on the last thinking call

    @property
    def preallocates_gpu(self) -> bool:  # type: ignore[override]
        """A vLLM engine reserves its GPU share at start, so it loads before in-process models."""
        return self.engine_name == "vllm"

    # ------------------------------------------------------------------------------ lifecycle
    def make_engine(self, device: str) -> "VLMEngine":
        from natix_miner.models.vlm.engines import make_engine

        opts = dict(self.spec.options or {})
        opts.setdefault("top_k", self.top_k)
        return make_engine(self.engine_name, model=self.model_ref, family=self.family, device=device, options=opts)

    def load(self, device: str) -> None:
        self.device = device
        eng = self.make_engine(device)
        try:
            eng.load()
        except AdapterError:
            raise
        except Exception as e:
            raise AdapterError(f"{self.name}: {self.engine_name} engine failed to load {self.model_ref}: "
                               f"{type(e).__name__}: {e}") from e
        self.engine = eng
        self.loaded = True
        if self.engine_name == "openai":
            self.measured_memory_mb = 0.0  # nothing local
        elif eng.measured_memory_mb is not None:
            self.measured_memory_mb = eng.measured_memory_mb

    def warmup(self) -> None:
        """Realistic inputs (a 1360×800 frame and a 224×224 crop); thinking models also measure
        their token rate with a short generation."""
        if self.engine is None or not (self.spec.options or {}).get("warmup", True):
            return
        from natix_miner.models.vlm.engines.base import warmup_images

        ims = warmup_images()
        t0 = time.monotonic()
        self.engine.yes_no_logprobs(ims, self.prompt, self.top_k, timeout_s=None)
        self.final_latency.observe_s(time.monotonic() - t0)
        if self.thinking:
            rp = th.reasoning_prompt(self.family, think_tags=self.think_tags, question=self.question,
                                     system=self.system)
            n = max(8, self.settings.min_thinking_tokens)
            t0 = time.monotonic()
            gens = self.engine.generate(ims[:1], rp, n, stop=th.stop_strings(self.think_tags))
            self._observe_rate(time.monotonic() - t0, gens)

    def unload(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        super().unload()

    # ------------------------------------------------------------------------------ predict
    def _time_left(self, deadline: "Deadline | None", default_s: float | None) -> float | None:
        if deadline is not None:
            rem = deadline.remaining()
            if math.isfinite(rem):
                return max(0.0, rem - self.call_margin_s)
            return default_s
        return default_s

    def predict(self, images: "list[Image.Image]", deadline: "Deadline | None" = None) -> list[Vote]:
        if self.engine is None:
            raise AdapterError(f"{self.name}: not loaded")
        if not images:
            return []
        if self.thinking:
            return self._predict_thinking(images, deadline)
        timeout = self._time_left(deadline, self.spec.timeout_s)
        t0 = time.monotonic()
        lps = self.engine.yes_no_logprobs(images, self.prompt, self.top_k, timeout_s=timeout)
        self.final_latency.observe_s(time.monotonic() - t0)
        return [self._vote(lp) for lp in lps]

    def _vote(self, lp: dict[str, float] | None, **evidence: Any) -> Vote:
        if lp is None:
            return Vote(math.nan, {"no_vote": "engine_error", **evidence})
        p = p_yes(lp)
        ev: dict[str, Any] = {"top": summarize(lp), **evidence}
        if math.isnan(p):
            ev["no_vote"] = "no_yes_no_in_top_k"
        return Vote(p, ev)

    def _observe_rate(self, elapsed_s: float, gens: list[Any]) -> None:
        toks = max((g.n_tokens for g in gens if g is not None), default=0)
        if toks <= 0:
            return
        prefill = self.final_latency.value or 0.0  # one forward ≈ the prefill of the generation
        self.rate.observe(max(elapsed_s - prefill, elapsed_s * 0.1), toks)

    def seconds_per_token(self) -> float:
        if self.settings.s_per_token is not None:
            return self.settings.s_per_token
        return self.rate.value if self.rate.value is not None else th.DEFAULT_S_PER_TOKEN

    def final_step_s(self) -> float:
        if self.settings.final_step_s is not None:
            return self.settings.final_step_s
        return self.final_latency.value if self.final_latency.value is not None else th.DEFAULT_FINAL_STEP_S

    def _predict_thinking(self, images: "list[Image.Image]", deadline: "Deadline | None") -> list[Vote]:
        assert self.engine is not None
        s = self.settings
        start = time.monotonic()
        remaining = self._time_left(deadline, s.thinking_time_s)
        if remaining is None:
            remaining = s.thinking_time_s
        final_s = self.final_step_s()
        spt = self.seconds_per_token()
        budget = th.token_budget(remaining, spt, safety_s=s.safety_s, final_step_s=final_s,
                                 max_tokens=s.max_thinking_tokens, min_tokens=s.min_thinking_tokens)
        self.last_budget = budget
        if budget <= 0:
            return [Vote(math.nan, {"no_vote": "thinking_budget_too_small", "remaining_s": round(remaining, 3),
                                    "s_per_token": spt}) for _ in images]
        rp = th.reasoning_prompt(self.family, think_tags=self.think_tags, question=self.question, system=self.system)
        gen_timeout = max(0.0, remaining - s.safety_s - final_s)
        t0 = time.monotonic()
        gens = self.engine.generate(images, rp, budget, stop=th.stop_strings(self.think_tags), timeout_s=gen_timeout)
        self._observe_rate(time.monotonic() - t0, gens)
        votes: list[Vote | None] = [None] * len(images)
        finals, idx = [], []
        for i, g in enumerate(gens):
            if not th.reasoning_finished(g):
                why = "thinking_error" if g is None else "thinking_over_budget"
                votes[i] = Vote(math.nan, {"no_vote": why, "budget": budget,
                                           "tokens": 0 if g is None else g.n_tokens})
                continue
            reasoning = th.extract_reasoning(g.text, self.think_tags)
            finals.append(th.final_prompt(rp, reasoning, think_tags=self.think_tags))
            idx.append(i)
        if idx:
            left = remaining - (time.monotonic() - start)
            t1 = time.monotonic()
            lps = self.engine.yes_no_logprobs([images[i] for i in idx], finals, self.top_k,
                                              timeout_s=max(0.0, left))
            self.final_latency.observe_s(time.monotonic() - t1)
            for i, lp in zip(idx, lps):
                votes[i] = self._vote(lp, budget=budget, tokens=gens[i].n_tokens)  # type: ignore[union-attr]
        return [v if v is not None else Vote(math.nan, {"no_vote": "thinking_error"}) for v in votes]
