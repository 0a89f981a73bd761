"""Per-family prompt templates for the yes/no question (and the thinking tier's two steps).

A :class:`Prompt` is what the adapter asks; :func:`render_prompt` turns it into the text a local
engine (vLLM, transformers) feeds the model, and :func:`openai_messages` into the chat messages an
OpenAI-compatible server (whose own chat template then applies) receives.

Rendering, in order of preference:

1. the processor's / tokenizer's ``apply_chat_template`` when the caller passes one that has a chat
   template (transformers engine: the model's own processor; vLLM engine: only for families whose
   documented vLLM usage is the tokenizer template, i.e. InternVL, or with ``prompt_format: template``),
2. otherwise the documented literal format of the family (the formats of vLLM's
   ``examples/offline_inference/vision_language.py`` and the model cards):

   ============== ====================================================================================
   family         literal prompt (``{q}`` the question, ``{a}`` the assistant prefix)
   ============== ====================================================================================
   qwen3_vl       ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\\n``
                  ``<|im_start|>assistant\\n{a}`` (Thinking models: ``<think>\\n`` before ``{a}``)
   qwen2_5_vl,    as qwen3_vl, preceded by the default system turn
   qwen2_vl       ``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n``
   internvl       ``<|im_start|>user\\n<image>\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}``
   phi4mm         ``<|user|><|image_1|>{q}<|end|><|assistant|>{a}``
   molmo2         ``<|image|><|im_start|>user\\n{q}<|im_end|>\\n<|im_start|>assistant\\n{a}``
   paligemma      ``answer en {q}`` (prefix-style; the processor / vLLM insert the image tokens and
                  BOS; no chat turns, no assistant prefix, no thinking)
   llava_onevision``<|im_start|>user <image>\\n{q}<|im_end|><|im_start|>assistant\\n{a}``
   video_llava    ``USER: <image>\\n{q} ASSISTANT:{a}`` (single image, transformers engine only)
   ============== ====================================================================================

Thinking models with ``<think>`` tags (Qwen3-VL-*-Thinking): their template opens the assistant
turn with ``<think>\\n``. The yes/no question then closes an empty think block
(``<think>\\n\\n</think>\\n\\n``) so the first generated token is the answer; the reasoning step
leaves the block open; the final step closes it after the reasoning and adds
``Final answer (yes or no):`` (see :mod:`natix_miner.models.vlm.thinking`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, Union

#: the question every family is asked (PaliGemma gets its own short VQA form)
DEFAULT_QUESTION = (
    "Does this image show road work (a construction site, roadwork signs, traffic cones, barriers, "
    "road machinery or workers on or next to the road)? Answer yes or no."
)
PALIGEMMA_QUESTION = "is there road work or a construction site in this image?"
QWEN2_DEFAULT_SYSTEM = "You are a helpful assistant."

FAMILIES = ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "internvl", "phi4mm", "molmo2", "paligemma",
            "llava_onevision", "video_llava")

# model_type in config.json -> family
_MODEL_TYPES = {
    "qwen3_vl": "qwen3_vl", "qwen3_vl_moe": "qwen3_vl",
    "qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl",
    "internvl": "internvl", "internvl_chat": "internvl",
    "phi4mm": "phi4mm", "phi4_multimodal": "phi4mm",
    "molmo2": "molmo2",
    "paligemma": "paligemma",
    "llava_onevision": "llava_onevision",
    "video_llava": "video_llava",
}
# substrings of a hub id / folder name -> family (first match wins: qwen2.5 before qwen2)
_NAME_HINTS = (
    ("qwen3-vl", "qwen3_vl"), ("qwen3_vl", "qwen3_vl"),
    ("qwen2.5-vl", "qwen2_5_vl"), ("qwen2_5-vl", "qwen2_5_vl"), ("qwen2_5_vl", "qwen2_5_vl"),
    ("qwen2-vl", "qwen2_vl"), ("qwen2_vl", "qwen2_vl"),
    ("internvl", "internvl"),
    ("phi-4-multimodal", "phi4mm"), ("phi4mm", "phi4mm"), ("phi-4-mm", "phi4mm"),
    ("molmo2", "molmo2"), ("molmo-2", "molmo2"),
    ("paligemma", "paligemma"),
    ("llava-onevision", "llava_onevision"), ("llava_onevision", "llava_onevision"),
    ("video-llava", "video_llava"), ("video_llava", "video_llava"),
)


@dataclass(frozen=True)
class Prompt:
    """One request's text: the user question and what the assistant turn already holds.

    ``think_open``: the model's template opens the assistant turn with ``<think>\\n`` (Thinking
    models); ``assistant_prefix`` is the text *after* that opener.
    """

    family: str
    question: str
    system: str | None = None
    assistant_prefix: str = ""
    think_open: bool = False

    def with_prefix(self, prefix: str) -> "Prompt":
        return replace(self, assistant_prefix=prefix)


PromptBuilder = Union[Prompt, Sequence[Prompt], Callable[[int], Prompt]]


def prompts_for(builder: PromptBuilder, n: int) -> list[Prompt]:
    """``n`` prompts from one prompt (shared), a list (one per image) or a callable(index)."""
    if isinstance(builder, Prompt):
        return [builder] * n
    if callable(builder):
        return [builder(i) for i in range(n)]
    out = list(builder)
    if len(out) != n:
        raise ValueError(f"{len(out)} prompts for {n} images")
    return out


def detect_family(model: str | None, *, override: str | None = None) -> str:
    """The template family of ``model`` (a hub id or a local folder), or ``override`` when set."""
    if override:
        fam = override.strip().lower().replace("-", "_").replace(".", "_")
        aliases = {"qwen2_5vl": "qwen2_5_vl", "qwen3vl": "qwen3_vl", "qwen2vl": "qwen2_vl", "phi4": "phi4mm",
                   "phi_4_multimodal": "phi4mm", "paligemma2": "paligemma", "internvl3_5": "internvl",
                   "llava_ov": "llava_onevision"}
        fam = aliases.get(fam, fam)
        if fam not in FAMILIES:
            raise ValueError(f"unknown VLM family {override!r}; known: {', '.join(FAMILIES)}")
        return fam
    if not model:
        raise ValueError("cannot detect the VLM family without a model id; set options.family")
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        try:
            mt = json.loads(cfg.read_text()).get("model_type", "")
        except (OSError, ValueError):
            mt = ""
        if mt in _MODEL_TYPES:
            return _MODEL_TYPES[mt]
    low = model.lower()
    for hint, fam in _NAME_HINTS:
        if hint in low:
            return fam
    raise ValueError(f"cannot tell the VLM family of {model!r}; set options.family to one of {', '.join(FAMILIES)}")


def is_thinking_model(model: str | None, family: str) -> bool:
    """Qwen3-VL ``*-Thinking`` checkpoints open every assistant turn with ``<think>``."""
    return family == "qwen3_vl" and model is not None and "thinking" in model.lower()


def default_question(family: str) -> str:
    return PALIGEMMA_QUESTION if family == "paligemma" else DEFAULT_QUESTION


def yes_no_prompt(family: str, *, question: str | None = None, system: str | None = None,
                  think_open: bool = False) -> Prompt:
    """The one-token yes/no question. Thinking models get an empty, closed think block."""
    prefix = "\n</think>\n\n" if think_open else ""
    return Prompt(family, question or default_question(family), system, prefix, think_open)


# ------------------------------------------------------------------------------------------ render


def _literal(p: Prompt) -> str:
    q, a = p.question, (("<think>\n" if p.think_open else "") + p.assistant_prefix)
    f = p.family
    if f in ("qwen3_vl", "qwen2_5_vl", "qwen2_vl"):
        system = p.system if p.system is not None else (None if f == "qwen3_vl" else QWEN2_DEFAULT_SYSTEM)
        sys_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return (f"{sys_turn}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n"
                f"<|im_start|>assistant\n{a}")
    if f == "internvl":
        sys_turn = f"<|im_start|>system\n{p.system}<|im_end|>\n" if p.system else ""
        return f"{sys_turn}<|im_start|>user\n<image>\n{q}<|im_end|>\n<|im_start|>assistant\n{a}"
    if f == "phi4mm":
        sys_turn = f"<|system|>{p.system}<|end|>" if p.system else ""
        return f"{sys_turn}<|user|><|image_1|>{q}<|end|><|assistant|>{a}"
    if f == "molmo2":
        sys_turn = f"<|im_start|>system\n{p.system}<|im_end|>\n" if p.system else ""
        return f"<|image|>{sys_turn}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}"
    if f == "paligemma":
        if p.assistant_prefix or p.think_open:
            raise ValueError("PaliGemma takes a prefix-style prompt only (no assistant prefix, no thinking)")
        return f"answer en {q}"
    if f == "llava_onevision":
        sys_turn = f"<|im_start|>system\n{p.system}<|im_end|>\n" if p.system else ""
        return f"{sys_turn}<|im_start|>user <image>\n{q}<|im_end|><|im_start|>assistant\n{a}"
    if f == "video_llava":
        sys_txt = f"{p.system} " if p.system else ""
        return f"{sys_txt}USER: <image>\n{q} ASSISTANT:{a}"
    raise ValueError(f"unknown VLM family {f!r}")


#: how the image is written inside a *string* user message for tokenizer-only chat templates
_INLINE_IMAGE = {"internvl": "<image>\n", "llava_onevision": "<image>\n", "molmo2": "",
                 "phi4mm": "<|image_1|>", "video_llava": "<image>\n",
                 "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                 "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                 "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}


def _has_template(owner: Any) -> bool:
    return owner is not None and bool(getattr(owner, "chat_template", None))


def _is_processor(owner: Any) -> bool:
    return hasattr(owner, "image_processor") or (hasattr(owner, "tokenizer") and not hasattr(owner, "encode"))


def render_prompt(p: Prompt, template_owner: Any = None) -> str:
    """The full text prompt (with the family's image placeholder) for a local engine.

    ``template_owner``: a processor (structured content: ``{"type": "image"}``) or a tokenizer
    (string content with the family's inline placeholder) whose ``chat_template`` is used when set;
    otherwise, or for PaliGemma, the literal format.
    """
    if p.family == "paligemma" or not _has_template(template_owner):
        return _literal(p)
    msgs: list[dict[str, Any]] = []
    if p.system:
        msgs.append({"role": "system", "content": p.system if not _is_processor(template_owner)
                     else [{"type": "text", "text": p.system}]})
    if _is_processor(template_owner):
        msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.question}]})
    else:
        msgs.append({"role": "user", "content": _INLINE_IMAGE.get(p.family, "<image>\n") + p.question})
    text = template_owner.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if isinstance(text, list):  # some processors return one string per conversation
        text = text[0]
    if p.think_open and not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return text + p.assistant_prefix


def openai_messages(p: Prompt, image_url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Chat messages for ``/v1/chat/completions`` and the extra body fields they need.

    A non-empty assistant prefix becomes a final assistant message continued by the server
    (vLLM's ``continue_final_message: true, add_generation_prompt: false``). The server's chat
    template adds the ``<think>`` opener of Thinking models itself, so the prefix is sent as is.
    PaliGemma has no chat template: serve it with ``--chat-template`` that renders
    ``answer en {text}`` (see the README).
    """
    msgs: list[dict[str, Any]] = []
    if p.system:
        msgs.append({"role": "system", "content": p.system})
    text = f"answer en {p.question}" if p.family == "paligemma" else p.question
    msgs.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                             {"type": "text", "text": text}]})
    extra: dict[str, Any] = {}
    if p.assistant_prefix:
        msgs.append({"role": "assistant", "content": p.assistant_prefix})
        extra = {"continue_final_message": True, "add_generation_prompt": False}
    return msgs, extra
