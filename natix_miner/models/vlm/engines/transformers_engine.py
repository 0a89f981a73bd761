"""In-process transformers engine: ``AutoModelForImageTextToText`` (or a named class) + ``AutoProcessor``.

Yes/no: one forward pass over the left-padded batch; the last position's logits →
``log_softmax`` (float32) → the top-k token ids, decoded; once any yes/no variant is in the top-k,
the exact log-probabilities of every single-token variant (:func:`~natix_miner.models.vlm.yesno.
variant_token_ids`) are added, so both classes are exact. Generation (thinking tier only):
``model.generate`` greedy with ``max_new_tokens`` and ``stop_strings``.

Prompts are rendered with the processor's chat template when it has one (else the family's literal
format, e.g. PaliGemma's ``answer en ...``). ``timeout_s`` cannot interrupt the single forward of the
yes/no step (it is one bounded call); for generation it becomes ``max_time``.

Options: ``dtype`` (auto = bfloat16 on CUDA, float32 on CPU | bfloat16 | float16 | float32),
``model_class`` (a transformers class name; default ``AutoModelForImageTextToText``),
``trust_remote_code`` (default false), ``attn_implementation`` (e.g. ``sdpa``,
``flash_attention_2``), ``min_pixels`` / ``max_pixels`` (Qwen-style processors),
``processor_kwargs`` (extra ``AutoProcessor.from_pretrained`` kwargs), ``threads`` (CPU threads).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

from loguru import logger

from natix_miner.models.base import AdapterError
from natix_miner.models.vlm.engines.base import Generation, VLMEngine
from natix_miner.models.vlm.prompts import prompts_for, render_prompt
from natix_miner.models.vlm.yesno import classify_token, merge_logprobs, variant_token_ids

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from natix_miner.models.vlm.prompts import PromptBuilder


def _dtype(name: str | None, device: str) -> Any:
    import torch

    if name in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if name not in table:
        raise AdapterError(f"options.dtype must be auto, bfloat16, float16 or float32, got {name!r}")
    return table[name]


class TransformersEngine(VLMEngine):
    kind = "transformers"

    def __init__(self, *, model: str, family: str, device: str = "cpu", options: dict[str, Any] | None = None):
        super().__init__(model=model, family=family, device=device, options=options)
        self.hf_model: Any = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self._variants: dict[int, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_components(cls, hf_model: Any, processor: Any, *, family: str, device: str = "cpu",
                        options: dict[str, Any] | None = None) -> "TransformersEngine":
        """An engine around an already built model and processor (benchmarks, tests)."""
        eng = cls(model=getattr(hf_model, "name_or_path", "<in-memory>"), family=family, device=device, options=options)
        eng._attach(hf_model, processor)
        return eng

    def _attach(self, hf_model: Any, processor: Any) -> None:
        self.hf_model = hf_model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        if getattr(self.tokenizer, "padding_side", None) is not None:
            self.tokenizer.padding_side = "left"  # the last position must be the answer position
        if getattr(self.tokenizer, "pad_token", None) is None and getattr(self.tokenizer, "eos_token", None):
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._variants = variant_token_ids(self.tokenizer)
        if not self._variants:
            logger.warning(f"VLM {self.model}: no yes/no variant is a single token in this tokenizer; "
                           "only the top-k entries will be used")

    def load(self) -> None:
        try:
            import torch
            import transformers
        except ImportError as e:  # pragma: no cover - base dependencies
            raise AdapterError(f"the transformers VLM engine needs torch and transformers: {e}") from e
        o = self.options
        if o.get("threads"):
            torch.set_num_threads(int(o["threads"]))
        trust = bool(o.get("trust_remote_code", False))
        pkw = dict(o.get("processor_kwargs") or {})
        for k in ("min_pixels", "max_pixels"):
            if o.get(k) is not None:
                pkw[k] = int(o[k])
        cls_name = o.get("model_class") or "AutoModelForImageTextToText"
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            raise AdapterError(f"options.model_class {cls_name!r} is not a transformers class")
        mkw: dict[str, Any] = {"dtype": _dtype(o.get("dtype"), self.device), "trust_remote_code": trust}
        if o.get("attn_implementation"):
            mkw["attn_implementation"] = o["attn_implementation"]
        before = _cuda_allocated(self.device)
        try:
            processor = transformers.AutoProcessor.from_pretrained(self.model, trust_remote_code=trust, **pkw)
            hf_model = cls.from_pretrained(self.model, **mkw)
        except (OSError, ValueError) as e:
            raise AdapterError(f"VLM {self.model}: cannot load with transformers ({type(e).__name__}: {e}); "
                               "download the weights first (scripts/download_models.py) or fix spec.model") from e
        hf_model = hf_model.to(self.device).eval()
        self._attach(hf_model, processor)
        after = _cuda_allocated(self.device)
        if after is not None and before is not None:
            self.measured_memory_mb = (after - before) / 2**20
        else:
            self.measured_memory_mb = sum(p.numel() * p.element_size() for p in hf_model.parameters()) / 2**20

    # -------------------------------------------------------------------------------- inputs
    def _inputs(self, images: Sequence["Image.Image"], prompt_builder: "PromptBuilder") -> Any:
        prompts = prompts_for(prompt_builder, len(images))
        texts = [render_prompt(p, self.processor) for p in prompts]
        if self.family == "paligemma":  # the processor expands <image> and adds BOS + "\n" itself
            texts = [t if "<image>" in t else "<image>" + t for t in texts]
        inputs = self.processor(text=texts, images=[im.convert("RGB") for im in images], return_tensors="pt",
                                padding=True)
        return inputs.to(self.device)

    def _cast(self, inputs: Any) -> Any:
        import torch

        dt = next(self.hf_model.parameters()).dtype
        for k, v in list(inputs.items()):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                inputs[k] = v.to(dt)
        return inputs

    # -------------------------------------------------------------------------------- calls
    def yes_no_logprobs(self, images, prompt_builder, top_k: int = 20, *, timeout_s=None):
        import torch

        if self.hf_model is None:
            raise AdapterError("transformers engine not loaded")
        if not images:
            return []
        with self._lock, torch.inference_mode():
            inputs = self._cast(self._inputs(images, prompt_builder))
            out = self.hf_model(**inputs, use_cache=False)
            logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
            k = min(int(top_k), logp.shape[-1])
            vals, ids = torch.topk(logp, k, dim=-1)
            vals, ids, logp = vals.cpu(), ids.cpu(), logp.cpu()
        results: list[dict[str, float] | None] = []
        for i in range(len(images)):
            by_id = {int(t): float(v) for t, v in zip(ids[i].tolist(), vals[i].tolist())}
            decoded = {t: self.tokenizer.decode([t]) for t in by_id}
            if any(classify_token(s) for s in decoded.values()):
                for vid in self._variants:
                    if vid < logp.shape[-1] and vid not in by_id:
                        by_id[vid] = float(logp[i, vid])
                        decoded[vid] = self.tokenizer.decode([vid])
            results.append(merge_logprobs((decoded[t], lp) for t, lp in by_id.items()))
        return results

    def generate(self, images, prompt_builder, max_tokens: int, *, stop: Sequence[str] = (), timeout_s=None):
        import torch

        if self.hf_model is None:
            raise AdapterError("transformers engine not loaded")
        if not images:
            return []
        kw: dict[str, Any] = {"max_new_tokens": int(max_tokens), "do_sample": False}
        if stop:
            kw["stop_strings"] = list(stop)
            kw["tokenizer"] = self.tokenizer
        if timeout_s is not None and timeout_s > 0:
            kw["max_time"] = float(timeout_s)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None:
            kw["pad_token_id"] = pad
        t0 = time.monotonic()
        with self._lock, torch.inference_mode():
            inputs = self._cast(self._inputs(images, prompt_builder))
            seqs = self.hf_model.generate(**inputs, **kw)
        n_in = inputs["input_ids"].shape[1]
        new = seqs[:, n_in:].cpu()
        eos = _eos_ids(self.hf_model, self.tokenizer)
        out: list[Generation | None] = []
        timed_out = timeout_s is not None and time.monotonic() - t0 >= float(timeout_s)
        for row in new.tolist():
            # drop right padding emitted after a sequence finished early
            while row and pad is not None and row[-1] == pad and pad not in eos:
                row.pop()
            ended = bool(row) and row[-1] in eos
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            full = self.tokenizer.decode(row, skip_special_tokens=False)
            cuts = [full.find(s) for s in stop if s in full]
            hit_stop = bool(cuts)
            if hit_stop:  # the text up to the first stop string (special tokens included, e.g. </think>)
                text = full[:min(cuts)]
            n = len(row)
            if ended or hit_stop:
                reason = "stop"
            elif n >= max_tokens or timed_out:
                reason = "length"
            else:
                reason = "stop"
            out.append(Generation(text=text, finish_reason=reason, n_tokens=n))
        return out

    def close(self) -> None:
        self.hf_model = None
        self.processor = None
        if self.device.startswith("cuda"):
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:  # pragma: no cover
                pass


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


def _cuda_allocated(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return float(torch.cuda.memory_allocated(torch.device(device)))
