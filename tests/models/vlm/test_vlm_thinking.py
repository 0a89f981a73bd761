"""Thinking tier: token budget from the deadline, reasoning under budget, constrained final answer.

A fake engine stands in for the model: it records what it was asked and answers from a script.
"""

from __future__ import annotations

import math
import time

import pytest
from PIL import Image

from natix_miner.engine.deadline import Deadline
from natix_miner.models.registry import build_adapter
from natix_miner.models.vlm import thinking as th
from natix_miner.models.vlm.engines.base import Generation, VLMEngine
from natix_miner.models.vlm.prompts import prompts_for, render_prompt
from natix_miner.profile import ModelSpec


class FakeEngine(VLMEngine):
    kind = "fake"

    def __init__(self, gens=None, logprobs=None, *, gen_delay_s=0.0):
        super().__init__(model="fake", family="qwen3_vl")
        self.gens = gens or []  # one Generation (or None) per image, reused each call
        self.logprobs = logprobs if logprobs is not None else {" yes": math.log(0.8), " no": math.log(0.2)}
        self.gen_delay_s = gen_delay_s
        self.generate_calls: list[dict] = []
        self.yes_no_calls: list[dict] = []

    def load(self):
        pass

    def yes_no_logprobs(self, images, prompt_builder, top_k=20, *, timeout_s=None):
        ps = prompts_for(prompt_builder, len(images))
        self.yes_no_calls.append({"prompts": ps, "timeout_s": timeout_s, "n": len(images)})
        return [dict(self.logprobs) for _ in images]

    def generate(self, images, prompt_builder, max_tokens, *, stop=(), timeout_s=None):
        ps = prompts_for(prompt_builder, len(images))
        self.generate_calls.append({"prompts": ps, "max_tokens": max_tokens, "stop": list(stop),
                                    "timeout_s": timeout_s})
        if self.gen_delay_s:
            time.sleep(self.gen_delay_s)
        return [self.gens[i % len(self.gens)] if self.gens else None for i in range(len(images))]


def make(model="Qwen/Qwen3-VL-8B-Thinking", **opts):
    options = {"engine": "transformers", "thinking": True, "s_per_token": 0.01, "safety_s": 0.2,
               "final_step_s": 0.1, "max_thinking_tokens": 300, "min_thinking_tokens": 16, "warmup": False}
    options.update(opts)
    a = build_adapter(ModelSpec(name="think", type="vlm", licence="Apache-2.0", model=model, options=options))
    return a


def attach(adapter, engine):
    adapter.make_engine = lambda device: engine
    adapter.load("cpu")
    return engine


IMS = [Image.new("RGB", (64, 48), (200, 50, 50)), Image.new("RGB", (64, 48), (20, 50, 200))]


def test_token_budget_formula():
    # (2.0 - 0.25 - 0.25) / 0.01 = 150 tokens
    assert th.token_budget(2.0, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=1000) == 150
    assert th.token_budget(2.0, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=100) == 100  # capped
    assert th.token_budget(0.4, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=100) == 0  # nothing fits
    assert th.token_budget(0.6, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=100, min_tokens=16) == 0
    assert th.token_budget(0.7, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=100, min_tokens=16) == 20
    assert th.token_budget(math.inf, 0.01, safety_s=0.25, final_step_s=0.25, max_tokens=64) == 64


def test_finished_reasoning_gives_a_vote_from_the_constrained_final_step():
    a = make()
    eng = attach(a, FakeEngine([Generation("I see orange cones on the lane.", "stop", 9)]))
    votes = a.predict(IMS, deadline=Deadline.after(2.0))
    assert [v.p for v in votes] == [pytest.approx(0.8), pytest.approx(0.8)]
    g = eng.generate_calls[0]
    # budget from the deadline: (2.0 - call margin - safety 0.2 - final 0.1) / 0.01 ≈ 168 tokens
    assert 150 <= g["max_tokens"] <= 170
    assert g["stop"] == ["</think>"]
    assert render_prompt(g["prompts"][0]).endswith("assistant\n<think>\n")
    final = eng.yes_no_calls[0]["prompts"][0]
    assert render_prompt(final).endswith(
        "<think>\nI see orange cones on the lane.\n</think>\n\nFinal answer (yes or no):")
    assert eng.yes_no_calls[0]["timeout_s"] <= 2.0


def test_reasoning_over_budget_gives_no_vote_and_no_final_step():
    a = make()
    eng = attach(a, FakeEngine([Generation("Let me look at the left side, then", "length", 168)]))
    votes = a.predict(IMS, deadline=Deadline.after(2.0))
    assert all(math.isnan(v.p) for v in votes)
    assert votes[0].evidence["no_vote"] == "thinking_over_budget"
    assert eng.yes_no_calls == []


def test_budget_too_small_gives_no_vote_without_generating():
    a = make()
    eng = attach(a, FakeEngine([Generation("x", "stop", 1)]))
    votes = a.predict(IMS, deadline=Deadline.after(0.3))  # 0.3 - 0.2 - 0.1 -> 0 tokens
    assert all(math.isnan(v.p) for v in votes)
    assert votes[0].evidence["no_vote"] == "thinking_budget_too_small"
    assert eng.generate_calls == [] and eng.yes_no_calls == []


def test_mixed_batch_only_finished_images_reach_the_final_step():
    a = make()
    eng = attach(a, FakeEngine([Generation("cones", "stop", 3), Generation("hmm", "length", 168), None]))
    ims = IMS + [IMS[0]]
    votes = a.predict(ims, deadline=Deadline.after(2.0))
    assert votes[0].p == pytest.approx(0.8)
    assert math.isnan(votes[1].p) and votes[1].evidence["no_vote"] == "thinking_over_budget"
    assert math.isnan(votes[2].p) and votes[2].evidence["no_vote"] == "thinking_error"
    assert eng.yes_no_calls[0]["n"] == 1


def test_final_step_without_yes_or_no_in_top_k_is_no_vote():
    a = make()
    attach(a, FakeEngine([Generation("r", "stop", 2)], logprobs={" maybe": -0.1, " I": -2.5}))
    votes = a.predict(IMS[:1], deadline=Deadline.after(2.0))
    assert math.isnan(votes[0].p) and votes[0].evidence["no_vote"] == "no_yes_no_in_top_k"


def test_plain_family_uses_final_answer_stop_string():
    a = make(model="Qwen/Qwen2.5-VL-7B-Instruct")
    eng = attach(a, FakeEngine([Generation("A barrier blocks the lane.\n", "stop", 7)]))
    votes = a.predict(IMS[:1], deadline=Deadline.after(2.0))
    assert votes[0].p == pytest.approx(0.8)
    assert eng.generate_calls[0]["stop"] == ["Final answer"]
    assert render_prompt(eng.yes_no_calls[0]["prompts"][0]).endswith(
        "assistant\nA barrier blocks the lane.\n\nFinal answer (yes or no):")


def test_no_deadline_uses_thinking_time_s_and_measured_rate_shrinks_the_budget():
    a = make(s_per_token=None, thinking_time_s=1.3, max_thinking_tokens=10_000)
    eng = attach(a, FakeEngine([Generation("r", "stop", 50)], gen_delay_s=0.25))
    a.predict(IMS[:1])
    first = eng.generate_calls[0]["max_tokens"]
    # default 0.05 s/token before any measurement: (1.3 - 0.02 - 0.2 - 0.1) / 0.05 ≈ 19
    assert 17 <= first <= 20
    # measured: ~0.25 s for 50 tokens ≈ 5 ms/token -> a much larger budget next time
    assert a.rate.value is not None and a.rate.value < 0.02
    a.predict(IMS[:1])
    assert eng.generate_calls[1]["max_tokens"] > 2 * first


def test_thinking_settings_validation():
    with pytest.raises(ValueError):
        th.ThinkingSettings.from_options({"max_thinking_tokens": 0})
    with pytest.raises(ValueError):
        th.ThinkingSettings.from_options({"s_per_token": 0})
    s = th.ThinkingSettings.from_options({}, default_time_s=4.0)
    assert s.thinking_time_s == 4.0


def test_extract_reasoning_and_finished():
    assert th.extract_reasoning("<think>\nabc</think>\n\nyes", True) == "abc"
    assert th.extract_reasoning("abc Final answer: yes", False) == "abc"
    assert th.reasoning_finished(Generation("x", "stop"))
    assert not th.reasoning_finished(Generation("x", "length"))
    assert not th.reasoning_finished(None)
