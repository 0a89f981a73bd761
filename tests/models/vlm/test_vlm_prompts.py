"""Prompt building per family: literal formats, chat-template rendering, OpenAI messages, detection."""

from __future__ import annotations

import json

import pytest

from natix_miner.models.vlm import prompts as P
from natix_miner.models.vlm import thinking as th

Q = "Is there road work? Answer yes or no."


@pytest.mark.parametrize("family,expected", [
    ("qwen3_vl", "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" + Q
     + "<|im_end|>\n<|im_start|>assistant\n"),
    ("qwen2_5_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
     "<|vision_start|><|image_pad|><|vision_end|>" + Q + "<|im_end|>\n<|im_start|>assistant\n"),
    ("qwen2_vl", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
     "<|vision_start|><|image_pad|><|vision_end|>" + Q + "<|im_end|>\n<|im_start|>assistant\n"),
    ("internvl", "<|im_start|>user\n<image>\n" + Q + "<|im_end|>\n<|im_start|>assistant\n"),
    ("phi4mm", "<|user|><|image_1|>" + Q + "<|end|><|assistant|>"),
    ("molmo2", "<|image|><|im_start|>user\n" + Q + "<|im_end|>\n<|im_start|>assistant\n"),
    ("paligemma", "answer en " + Q),
    ("llava_onevision", "<|im_start|>user <image>\n" + Q + "<|im_end|><|im_start|>assistant\n"),
    ("video_llava", "USER: <image>\n" + Q + " ASSISTANT:"),
])
def test_literal_prompt_per_family(family, expected):
    assert P.render_prompt(P.yes_no_prompt(family, question=Q)) == expected


def test_every_family_has_a_literal_with_one_image_placeholder():
    marks = ("<|image_pad|>", "<image>", "<|image_1|>", "<|image|>")
    for fam in P.FAMILIES:
        text = P.render_prompt(P.yes_no_prompt(fam))
        if fam == "paligemma":  # the processor / vLLM insert the image tokens
            assert text.startswith("answer en ") and not any(m in text for m in marks)
        else:
            assert sum(text.count(m) for m in marks) == 1, fam
        assert P.default_question(fam) in text


def test_system_prompt_and_assistant_prefix():
    p = P.Prompt("phi4mm", Q, system="Be brief.", assistant_prefix="Final answer (yes or no):")
    assert P.render_prompt(p) == ("<|system|>Be brief.<|end|><|user|><|image_1|>" + Q
                                  + "<|end|><|assistant|>Final answer (yes or no):")
    p = P.Prompt("qwen3_vl", Q, system="S")
    assert P.render_prompt(p).startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")


def test_paligemma_refuses_assistant_prefix_and_thinking():
    with pytest.raises(ValueError):
        P.render_prompt(P.Prompt("paligemma", Q, assistant_prefix="x"))
    with pytest.raises(ValueError):
        th.reasoning_prompt("paligemma", think_tags=False)


def test_qwen3_thinking_yes_no_closes_an_empty_think_block():
    p = P.yes_no_prompt("qwen3_vl", question=Q, think_open=True)
    assert P.render_prompt(p).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_qwen3_thinking_final_step_closes_reasoning_then_asks_for_the_answer():
    rp = th.reasoning_prompt("qwen3_vl", think_tags=True, question=Q)
    assert P.render_prompt(rp).endswith("<|im_start|>assistant\n<think>\n")
    fp = th.final_prompt(rp, "I see cones.", think_tags=True)
    assert P.render_prompt(fp).endswith("assistant\n<think>\nI see cones.\n</think>\n\nFinal answer (yes or no):")


def test_plain_family_reasoning_prompt_asks_for_final_answer_and_final_step_appends_it():
    rp = th.reasoning_prompt("qwen2_5_vl", think_tags=False, question=Q)
    assert "Final answer: yes" in rp.question and rp.question.startswith(Q)
    fp = th.final_prompt(rp, "Cones on the lane.", think_tags=False)
    assert P.render_prompt(fp).endswith("<|im_start|>assistant\nCones on the lane.\n\nFinal answer (yes or no):")


def test_processor_chat_template_matches_the_literal_for_qwen2_vl():
    from natix_miner.models.vlm.tiny import build_processor

    proc = build_processor()
    for prompt in (P.yes_no_prompt("qwen2_vl", question=Q),
                   P.Prompt("qwen2_vl", Q, assistant_prefix="Final answer (yes or no):")):
        assert P.render_prompt(prompt, proc) == P.render_prompt(prompt)


def test_template_owner_without_template_falls_back_to_literal_and_think_opener_is_not_doubled():
    class NoTemplate:
        chat_template = None

    p = P.yes_no_prompt("internvl", question=Q)
    assert P.render_prompt(p, NoTemplate()) == P.render_prompt(p)

    class ThinkingTokenizer:  # a tokenizer (has encode) whose template already opens <think>
        chat_template = "x"

        def encode(self, s):
            return []

        def apply_chat_template(self, msgs, add_generation_prompt, tokenize):
            assert isinstance(msgs[-1]["content"], str)  # tokenizer templates get string content
            return f"<|im_start|>user\n{msgs[-1]['content']}<|im_end|>\n<|im_start|>assistant\n<think>\n"

    p = P.yes_no_prompt("qwen3_vl", question=Q, think_open=True)
    text = P.render_prompt(p, ThinkingTokenizer())
    assert text.count("<think>") == 1 and text.endswith("<think>\n\n</think>\n\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>" + Q in text


def test_openai_messages():
    url = "data:image/jpeg;base64,AAAA"
    msgs, extra = P.openai_messages(P.yes_no_prompt("qwen2_5_vl", question=Q), url)
    assert extra == {}
    assert msgs == [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": Q}]}]
    fp = th.final_prompt(th.reasoning_prompt("qwen3_vl", think_tags=True), "r", think_tags=True)
    msgs, extra = P.openai_messages(fp, url)
    assert msgs[-1] == {"role": "assistant", "content": "r\n</think>\n\nFinal answer (yes or no):"}
    assert extra == {"continue_final_message": True, "add_generation_prompt": False}
    msgs, _ = P.openai_messages(P.yes_no_prompt("paligemma"), url)
    assert msgs[0]["content"][1]["text"].startswith("answer en ")


def test_prompts_for():
    a, b = P.Prompt("qwen2_vl", "a"), P.Prompt("qwen2_vl", "b")
    assert P.prompts_for(a, 3) == [a, a, a]
    assert P.prompts_for([a, b], 2) == [a, b]
    assert P.prompts_for(lambda i: [a, b][i], 2) == [a, b]
    with pytest.raises(ValueError):
        P.prompts_for([a], 2)


@pytest.mark.parametrize("model,family", [
    ("Qwen/Qwen3-VL-4B-Instruct-FP8", "qwen3_vl"), ("Qwen/Qwen3-VL-32B-Thinking-FP8", "qwen3_vl"),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"), ("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl"),
    ("OpenGVLab/InternVL3_5-38B", "internvl"), ("microsoft/Phi-4-multimodal-instruct", "phi4mm"),
    ("allenai/Molmo2-4B", "molmo2"), ("google/paligemma2-3b-mix-224", "paligemma"),
    ("llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision"), ("LanguageBind/Video-LLaVA-7B-hf", "video_llava"),
])
def test_detect_family_from_hub_ids(model, family):
    assert P.detect_family(model) == family


def test_detect_family_from_config_and_override(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert P.detect_family(str(tmp_path)) == "qwen2_5_vl"
    assert P.detect_family("anything", override="PaliGemma2") == "paligemma"
    with pytest.raises(ValueError):
        P.detect_family("some/unknown-model")
    with pytest.raises(ValueError):
        P.detect_family("x", override="nope")
    assert P.is_thinking_model("Qwen/Qwen3-VL-8B-Thinking", "qwen3_vl")
    assert not P.is_thinking_model("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl")
