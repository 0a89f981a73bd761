"""The transformers engine end to end on tiny random Qwen2-VL / Qwen2.5-VL checkpoints built offline
and loaded through ``build_adapter(spec)`` like a hub model."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from natix_miner.engine.deadline import Deadline
from natix_miner.models.registry import build_adapter
from natix_miner.models.vlm.prompts import render_prompt, yes_no_prompt
from natix_miner.models.vlm.yesno import classify_token
from natix_miner.profile import ModelSpec


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def tiny_dir(request, tmp_path_factory):
    from natix_miner.models.vlm.tiny import save_tiny_vlm

    return save_tiny_vlm(tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}", request.param)


def adapter(path, **opts):
    o = {"engine": "transformers", "top_k": 1000}  # > vocab: every token, so yes/no are always present
    o.update(opts)
    a = build_adapter(ModelSpec(name="tiny-vlm", type="vlm", licence="Apache-2.0", model=str(path), options=o))
    a.load("cpu")
    return a


IMS = [Image.new("RGB", (1360, 800), (200, 120, 40)), Image.new("RGB", (224, 224), (10, 60, 230)),
       Image.new("RGB", (300, 500), (40, 200, 40))]


def test_one_probability_per_image_and_batching_is_consistent(tiny_dir):
    a = adapter(tiny_dir)
    try:
        assert a.family in ("qwen2_vl", "qwen2_5_vl")  # detected from config.json
        a.warmup()
        batch = a.predict(IMS)
        assert len(batch) == len(IMS)
        for v in batch:
            assert 0.0 <= v.p <= 1.0 and not math.isnan(v.p)
            assert v.evidence["top"]
        single = [a.predict([im])[0].p for im in IMS]
        assert single == pytest.approx([v.p for v in batch], abs=1e-4)  # left padding keeps answers stable
        assert a.measured_memory_mb and a.measured_memory_mb > 0
    finally:
        a.unload()


def test_yes_no_logprobs_match_a_direct_forward(tiny_dir):
    """The engine's P(yes) equals the renormalised softmax mass of the variant ids at the last position."""
    a = adapter(tiny_dir)
    try:
        eng = a.engine
        proc, model = eng.processor, eng.hf_model
        prompt = yes_no_prompt(a.family)
        inputs = proc(text=[render_prompt(prompt, proc)], images=[IMS[0]], return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits[0, -1].float(), -1)
        yes = [i for i, c in eng._variants.items() if c == "yes"]
        no = [i for i, c in eng._variants.items() if c == "no"]
        # multi-token spellings also reach the top-k as their first piece only if it decodes to an answer
        extra_yes = [i for i in range(logp.shape[0]) if i not in eng._variants
                     and classify_token(eng.tokenizer.decode([i])) == "yes"]
        extra_no = [i for i in range(logp.shape[0]) if i not in eng._variants
                    and classify_token(eng.tokenizer.decode([i])) == "no"]
        py = torch.logsumexp(logp[yes + extra_yes], 0).exp().item()
        pn = torch.logsumexp(logp[no + extra_no], 0).exp().item()
        assert a.predict([IMS[0]])[0].p == pytest.approx(py / (py + pn), rel=1e-4)
    finally:
        a.unload()


def bias_token(a, token: str, amount: float = 50.0):
    """Make the model strongly prefer ``token`` (a forward hook adding a logit bias to the LM head)."""
    eng = a.engine
    tid = eng.tokenizer.convert_tokens_to_ids(token)
    assert isinstance(tid, int) and tid >= 0, token

    def hook(module, args, out):
        out = out.clone()
        out[..., tid] += amount
        return out

    return eng.hf_model.get_output_embeddings().register_forward_hook(hook), tid


def test_no_vote_when_the_model_answers_something_else(tiny_dir):
    a = adapter(tiny_dir, top_k=5)
    try:
        handle, tid = bias_token(a, "road")  # a model that answers "road ..." instead of yes/no
        lp = a.engine.yes_no_logprobs([IMS[1]], a.prompt, 5)[0]
        assert len(lp) == 5 and a.engine.tokenizer.decode([tid]) in lp
        assert not any(classify_token(t) for t in lp)
        votes = a.predict(IMS[:2])
        assert all(math.isnan(v.p) and v.evidence["no_vote"] == "no_yes_no_in_top_k" for v in votes)
        handle.remove()
        handle, _ = bias_token(a, "Ġyes", 8.0)  # now "yes" dominates: a confident vote
        assert all(v.p > 0.99 for v in a.predict(IMS[:2]))
        handle.remove()
    finally:
        a.unload()


def test_generation_respects_the_token_cap(tiny_dir):
    a = adapter(tiny_dir)
    try:
        gens = a.engine.generate(IMS[:2], yes_no_prompt(a.family), 5, stop=["Final answer"])
        assert len(gens) == 2
        for g in gens:
            assert 0 < g.n_tokens <= 5
            assert g.finish_reason in ("stop", "length")
            assert g.finish_reason == "length" or g.n_tokens < 5 or "Final answer" in g.text or g.text == ""
    finally:
        a.unload()


def test_thinking_tier_no_vote_when_the_budget_is_too_small(tiny_dir):
    a = adapter(tiny_dir, thinking=True, s_per_token=0.05, safety_s=0.2, final_step_s=0.1,
                min_thinking_tokens=16, max_thinking_tokens=8)
    try:
        calls = []
        orig = a.engine.generate
        a.engine.generate = lambda *args, **kw: calls.append(kw) or orig(*args, **kw)
        votes = a.predict(IMS[:2], deadline=Deadline.after(0.5))  # 0.2 s left for reasoning: 4 < 16 tokens
        assert [v.evidence["no_vote"] for v in votes] == ["thinking_budget_too_small"] * 2
        assert all(math.isnan(v.p) for v in votes) and calls == []
    finally:
        a.unload()


def test_thinking_tier_over_budget_and_finished_reasoning(tiny_dir):
    a = adapter(tiny_dir, thinking=True, s_per_token=0.05, safety_s=0.2, final_step_s=0.1,
                min_thinking_tokens=2, max_thinking_tokens=6)
    try:
        # a model that rambles ("the the the ..."): the 6-token budget runs out -> no vote
        handle, _ = bias_token(a, "Ġthe")
        votes = a.predict(IMS[:2], deadline=Deadline.after(5.0))
        assert a.last_budget == 6
        assert all(math.isnan(v.p) and v.evidence == {"no_vote": "thinking_over_budget", "budget": 6, "tokens": 6}
                   for v in votes)
        handle.remove()
        # a model that ends its turn at once: reasoning finished under budget -> the final one-token step votes
        handle, _ = bias_token(a, "<|im_end|>")
        votes = a.predict(IMS[:2], deadline=Deadline.after(5.0))
        for v in votes:
            assert 0.0 <= v.p <= 1.0 and v.evidence["tokens"] == 1
        handle.remove()
    finally:
        a.unload()
