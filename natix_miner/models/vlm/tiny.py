"""Tiny random-weight Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints built offline (tests, smoke runs).

Nothing is downloaded: the tokenizer is a byte-level BPE trained in milliseconds on a small
in-memory corpus (so ``"yes"``, ``" yes"``, ``"Yes"``... are real single tokens, as in the real
Qwen vocabulary), the chat template is a compact copy of the Qwen2-VL ChatML template, and the
model is built from a small config with random weights. :func:`save_tiny_vlm` writes a folder that
``AutoProcessor`` / ``AutoModelForImageTextToText`` load like a hub checkpoint, so the ``vlm``
adapter can be exercised end to end with ``model: <that folder>``.

The same builders, with real sizes, back ``scripts/bench_gpu.py`` (see :func:`build_processor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the special tokens a Qwen2-VL processor and chat template need
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<think>", "</think>",
)

#: compact Qwen2-VL chat template (same output as the real one for one image + text)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Does this image show road work, a construction site, traffic cones, barriers or workers on the road?",
    "Answer yes or no. yes no Yes No YES NO yes. no. Yes. No.",
    "Final answer (yes or no): yes",
    "Final answer (yes or no): no",
    "Think briefly, step by step, about what you see, then give your final answer.",
    "There is a cone and a barrier next to the road, so the answer is yes.",
    "The street is clear, there is no construction, so the answer is no.",
    "You are a helpful assistant. system user assistant",
    "Yes, there is road work. No, there is none. Yes No Yes No",
]


def build_tokenizer(vocab_size: int = 600) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t in QWEN_SPECIAL_TOKENS if "think" not in t]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in QWEN_SPECIAL_TOKENS
                                   if t not in ("<|im_end|>", "<|endoftext|>", "<think>", "</think>")],
    )
    fast.add_tokens(["<think>", "</think>"])  # added but not "special", as in the real Qwen3 vocabulary
    return fast


def build_processor(tokenizer: Any | None = None, *, min_pixels: int = 56 * 56, max_pixels: int = 112 * 112,
                    patch_size: int = 14, chat_template: str = QWEN2_VL_CHAT_TEMPLATE) -> Any:
    """A ``Qwen2VLProcessor`` (tiny pixel range by default) around ``tokenizer``."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    ip = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch_size,
                               size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    try:
        from transformers import Qwen2VLVideoProcessor

        vp = Qwen2VLVideoProcessor(patch_size=patch_size)
    except Exception:  # pragma: no cover - older transformers
        vp = None
    return Qwen2VLProcessor(image_processor=ip, tokenizer=tokenizer, video_processor=vp, chat_template=chat_template)


def tiny_config(kind: str, tokenizer: Any, *, hidden: int = 32, layers: int = 2, heads: int = 2) -> Any:
    """A small random config of ``kind`` (qwen2_vl | qwen2_5_vl | qwen3_vl) wired to ``tokenizer``'s ids."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                max_position_embeddings=4096, bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    common = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if kind == "qwen2_vl":
        from transformers import Qwen2VLConfig

        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        vision = dict(depth=layers, embed_dim=hidden, hidden_size=hidden, num_heads=heads, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **common)
    if kind == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
        vision = dict(depth=layers, hidden_size=hidden, intermediate_size=hidden * 2, num_heads=heads,
                      out_hidden_size=hidden, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      window_size=56, fullatt_block_indexes=[layers - 1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    if kind == "qwen3_vl":
        from transformers import Qwen3VLConfig

        text.update(head_dim=hidden // heads,
                    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0,
                                     "mrope_interleaved": True})
        vision = dict(depth=layers, hidden_size=hidden, intermediate_size=hidden * 2, num_heads=heads,
                      out_hidden_size=hidden, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                      num_position_embeddings=64, deepstack_visual_indexes=[0])
        return Qwen3VLConfig(text_config=text, vision_config=vision, **common)
    raise ValueError(f"unknown tiny VLM kind {kind!r}; use qwen2_vl, qwen2_5_vl or qwen3_vl")


def model_class(kind: str) -> Any:
    import transformers

    return getattr(transformers, {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                                  "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                  "qwen3_vl": "Qwen3VLForConditionalGeneration"}[kind])


def build_tiny_vlm(kind: str = "qwen2_vl", *, seed: int = 0, **config_kw: Any) -> tuple[Any, Any]:
    """``(model, processor)``: a tiny random ``kind`` model in eval mode on the CPU."""
    import torch

    patch = 16 if kind == "qwen3_vl" else 14
    proc = build_processor(min_pixels=(patch * 4) ** 2, max_pixels=(patch * 8) ** 2, patch_size=patch)
    cfg = tiny_config(kind, proc.tokenizer, **config_kw)
    torch.manual_seed(seed)
    model = model_class(kind)(cfg).eval()
    return model, proc


def save_tiny_vlm(path: str | Path, kind: str = "qwen2_vl", *, seed: int = 0, **config_kw: Any) -> Path:
    """Write a tiny random checkpoint + processor to ``path`` (a hub-like folder) and return it."""
    path = Path(path)
    model, proc = build_tiny_vlm(kind, seed=seed, **config_kw)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path
