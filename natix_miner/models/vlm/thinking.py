"""The thinking tier: reasoning under a hard token budget, then a constrained one-token answer.

Flow (``options.thinking: true``), per call of the adapter:

1. **Budget.** ``tokens = floor((remaining_s − safety_s − final_step_s) / s_per_token)``, capped by
   ``max_thinking_tokens``. ``remaining_s`` is the request deadline's remaining time (when the engine
   passes one) or ``thinking_time_s``; ``s_per_token`` is the configured value, else the measured
   one (:class:`TokenRate`, learnt from every generation), else a conservative default;
   ``final_step_s`` is the measured latency of the one-token answer step. A budget below
   ``min_thinking_tokens`` means no vote (NaN) without generating anything.
2. **Reasoning.** The model generates at most ``tokens`` tokens, stopping at the end of its
   reasoning: ``</think>`` for models with think tags (Qwen3-VL-Thinking), else the words
   ``Final answer`` the reasoning prompt asks it to end with (or its end-of-turn token).
3. **Final step.** The reasoning is put back as the assistant's text followed by
   ``Final answer (yes or no):`` (think-tag models: after closing ``</think>``), and the yes/no
   log-probabilities of ONE token are read as in :mod:`~natix_miner.models.vlm.yesno`.

A generation that hits the budget (``finish_reason == "length"``), fails or times out gives no
vote: a half-finished chain of thought is not an answer, and guessing would only add noise.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from natix_miner.models.vlm.engines.base import Generation
from natix_miner.models.vlm.prompts import Prompt, default_question

FINAL_ANSWER = "Final answer (yes or no):"
REASON_INSTRUCTION = (
    " Think briefly, step by step, about what you see, then end with 'Final answer: yes' or 'Final answer: no'."
)
#: what ends the reasoning of a model without think tags
PLAIN_STOP = "Final answer"
THINK_STOP = "</think>"
#: s/token assumed before anything was measured or configured (pessimistic: an 8B model on a busy GPU)
DEFAULT_S_PER_TOKEN = 0.05
#: final-step latency assumed before one was measured
DEFAULT_FINAL_STEP_S = 0.25


@dataclass
class ThinkingSettings:
    max_thinking_tokens: int = 256
    min_thinking_tokens: int = 16
    s_per_token: float | None = None  # configured; None = measured
    safety_s: float = 0.25
    final_step_s: float | None = None  # configured; None = measured
    thinking_time_s: float = 3.0  # time budget when the engine passes no deadline

    @classmethod
    def from_options(cls, opts: dict, default_time_s: float | None = None) -> "ThinkingSettings":
        s = cls()
        for k in ("max_thinking_tokens", "min_thinking_tokens"):
            if opts.get(k) is not None:
                setattr(s, k, int(opts[k]))
        for k in ("s_per_token", "safety_s", "final_step_s", "thinking_time_s"):
            if opts.get(k) is not None:
                setattr(s, k, float(opts[k]))
        if opts.get("thinking_time_s") is None and default_time_s is not None:
            s.thinking_time_s = float(default_time_s)
        if s.max_thinking_tokens < 1 or s.min_thinking_tokens < 1:
            raise ValueError("max_thinking_tokens and min_thinking_tokens must be >= 1")
        if s.s_per_token is not None and s.s_per_token <= 0:
            raise ValueError("s_per_token must be > 0")
        return s


def token_budget(remaining_s: float, s_per_token: float, *, safety_s: float, final_step_s: float,
                 max_tokens: int, min_tokens: int = 1) -> int:
    """Reasoning tokens that fit before the deadline; 0 when fewer than ``min_tokens`` fit."""
    if not (s_per_token > 0) or math.isnan(remaining_s):
        return 0
    usable = remaining_s - safety_s - final_step_s
    if math.isinf(usable):
        return int(max_tokens)
    n = int(math.floor(max(0.0, usable) / s_per_token + 1e-9))  # 0.2 / 0.01 is 19.999...
    n = min(n, int(max_tokens))
    return n if n >= max(1, int(min_tokens)) else 0


class TokenRate:
    """Exponential moving average of seconds per generated token (thread-safe)."""

    def __init__(self, alpha: float = 0.3):
        self.alpha = alpha
        self.value: float | None = None
        self._lock = threading.Lock()

    def observe(self, seconds: float, tokens: int) -> None:
        if tokens <= 0 or not math.isfinite(seconds) or seconds <= 0:
            return
        x = seconds / tokens
        with self._lock:
            self.value = x if self.value is None else (1 - self.alpha) * self.value + self.alpha * x


class LatencyEMA(TokenRate):
    """Moving average of one step's latency (seconds)."""

    def observe_s(self, seconds: float) -> None:
        self.observe(seconds, 1)


def stop_strings(think_tags: bool) -> list[str]:
    return [THINK_STOP] if think_tags else [PLAIN_STOP]


def reasoning_prompt(family: str, *, think_tags: bool, question: str | None = None,
                     system: str | None = None) -> Prompt:
    """Step 2's prompt: think-tag models reason inside their open think block; others are told
    to reason and end with 'Final answer'."""
    if family == "paligemma":
        raise ValueError("PaliGemma cannot reason (prefix-style VQA model); disable options.thinking")
    q = question or default_question(family)
    if not think_tags:
        q = q + REASON_INSTRUCTION
    return Prompt(family, q, system, "", think_tags)


def extract_reasoning(text: str, think_tags: bool) -> str:
    """The reasoning text, cut at the stop string when an engine returned it (or past it)."""
    stop = THINK_STOP if think_tags else PLAIN_STOP
    i = text.find(stop)
    if i >= 0:
        text = text[:i]
    if think_tags:
        text = text.replace("<think>", "")
    return text.strip()


def reasoning_finished(gen: Generation | None) -> bool:
    """The model ended its reasoning under budget (stop string or end of turn, not the length cap)."""
    return gen is not None and gen.finish_reason == "stop"


def final_prompt(reasoning_p: Prompt, reasoning: str, *, think_tags: bool) -> Prompt:
    """Step 3's prompt: the reasoning as assistant text, closed, then ``Final answer (yes or no):``."""
    if think_tags:
        prefix = f"{reasoning}\n{THINK_STOP}\n\n{FINAL_ANSWER}"
    else:
        prefix = f"{reasoning}\n\n{FINAL_ANSWER}" if reasoning else FINAL_ANSWER
    return reasoning_p.with_prefix(prefix)
