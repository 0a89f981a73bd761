"""What :mod:`natix_miner.models.vlm.engines.vllm_engine` sends to vLLM and reads back, as plain dicts and
functions (no vLLM import, testable on a CPU): ``SamplingParams`` keyword arguments, prompt requests with
their image, the prompt format, and the parsing of a ``RequestOutput`` into yes/no logprobs or a generation.
"""

from __future__ import annotations

from typing import Any, Sequence

from natix_miner.models.base import AdapterError
from natix_miner.models.vlm.engines.base import Generation
from natix_miner.models.vlm.prompts import Prompt, render_prompt
from natix_miner.models.vlm.yesno import merge_logprobs


def yes_no_sampling_kwargs(top_k: int) -> dict[str, Any]:
    """``SamplingParams`` for the one-token answer: greedy, top-k logprobs."""
    return {"max_tokens": 1, "temperature": 0.0, "logprobs": int(top_k), "detokenize": True}


def generate_sampling_kwargs(max_tokens: int, stop: Sequence[str] = ()) -> dict[str, Any]:
    """``SamplingParams`` for the reasoning step: greedy, hard cap, stop strings."""
    kw: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": 0.0}
    if stop:
        kw["stop"] = list(stop)
        kw["include_stop_str_in_output"] = False
    return kw


def use_template(family: str, options: dict[str, Any]) -> bool:
    fmt = options.get("prompt_format")
    if fmt is None:
        return family == "internvl"
    if fmt not in ("literal", "template"):
        raise AdapterError(f"options.prompt_format must be literal or template, got {fmt!r}")
    return fmt == "template"


def build_requests(prompts: Sequence[Prompt], images: Sequence[Any],
                   template_owner: Any = None) -> list[dict[str, Any]]:
    """vLLM prompt dicts: rendered text + the image as ``multi_modal_data``."""
    return [{"prompt": render_prompt(p, template_owner), "multi_modal_data": {"image": im}}
            for p, im in zip(prompts, images)]


def _token_text(token_id: Any, lp: Any) -> str:
    text = getattr(lp, "decoded_token", None)
    return text if isinstance(text, str) else f"<id:{token_id}>"


def parse_yes_no_output(request_output: Any) -> dict[str, float] | None:
    """``{token text: logprob}`` of the first generated token of a vLLM ``RequestOutput``."""
    try:
        comp = request_output.outputs[0]
        first = comp.logprobs[0]
    except (AttributeError, IndexError, TypeError):
        return None
    if not first:
        return None
    pairs = []
    for tid, lp in first.items():
        val = getattr(lp, "logprob", lp)
        try:
            pairs.append((_token_text(tid, lp), float(val)))
        except (TypeError, ValueError):
            continue
    return merge_logprobs(pairs) or None


def parse_generation_output(request_output: Any) -> Generation | None:
    try:
        comp = request_output.outputs[0]
    except (AttributeError, IndexError, TypeError):
        return None
    reason = getattr(comp, "finish_reason", None) or "stop"
    n = len(getattr(comp, "token_ids", None) or [])
    return Generation(text=getattr(comp, "text", "") or "", finish_reason="length" if reason == "length" else "stop",
                      n_tokens=n)
