"""P(yes) from the log-probabilities of ONE generated token. Free text is never parsed.

The engine asks for the top-k (default 20) log-probabilities of the first answer token. Every
entry whose text is a variant of "yes" (``yes``, ``Yes``, `` yes``, `` Yes``, ``YES``, byte-level
markers ``Ġ`` / ``▁`` stripped, trailing punctuation allowed) counts for *yes*, likewise for *no*.
Each class's log-probability is the logsumexp of its entries, and the two are renormalised:

    P(yes) = exp(l_yes) / (exp(l_yes) + exp(l_no))

- Neither class in the top-k: the model is not answering yes/no → ``NaN`` (no vote; the cascade
  drops it and counts it as invalid).
- Only one class in the top-k: the other one's probability is at most that of the k-th entry and
  at most the mass the top-k leaves over, so its log-probability is taken as that upper bound
  (:func:`missing_class_bound`): the answer stays decisive without claiming more certainty than
  the top-k shows.

Local engines know the tokenizer and add the exact log-probabilities of every single-token variant
(:func:`variant_token_ids`) once one variant is in the top-k, so both classes are then exact.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

YES_VARIANTS: tuple[str, ...] = ("yes", "Yes", " yes", " Yes", "YES", " YES")
NO_VARIANTS: tuple[str, ...] = ("no", "No", " no", " No", "NO", " NO")

_MARKERS = ("Ġ", "▁", "Ċ")  # byte-level BPE / sentencepiece space and newline markers
_TRAILING = ".,!:;\"')"


def classify_token(text: str) -> str | None:
    """``"yes"`` / ``"no"`` when ``text`` is a variant of that answer, else None."""
    if not isinstance(text, str):
        return None
    t = text
    for m in _MARKERS:
        t = t.replace(m, " ")
    t = t.strip().rstrip(_TRAILING).strip().lower()
    if t == "yes":
        return "yes"
    if t == "no":
        return "no"
    return None


def logsumexp(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return -math.inf
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def merge_logprobs(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """A token-text → logprob dict; texts seen twice (two ids decoding alike) are logsumexp'ed."""
    out: dict[str, float] = {}
    for text, lp in pairs:
        lp = float(lp)
        if math.isnan(lp):
            continue
        out[text] = logsumexp([out[text], lp]) if text in out else lp
    return out


def class_logprobs(logprobs: Mapping[str, float]) -> tuple[float, float]:
    """``(l_yes, l_no)``: logsumexp of each class's entries (``-inf`` when absent)."""
    yes, no = [], []
    for text, lp in logprobs.items():
        c = classify_token(text)
        if c == "yes":
            yes.append(lp)
        elif c == "no":
            no.append(lp)
    return logsumexp(yes), logsumexp(no)


def p_yes(logprobs: Mapping[str, float] | None) -> float:
    """P(yes) in [0, 1] from a top-k token → logprob mapping, NaN when no class appears."""
    if not logprobs:
        return math.nan
    l_yes, l_no = class_logprobs(logprobs)
    if l_yes == -math.inf and l_no == -math.inf:
        return math.nan
    if l_yes == -math.inf or l_no == -math.inf:
        l_missing = missing_class_bound(logprobs)
        if l_yes == -math.inf:
            l_yes = l_missing
        else:
            l_no = l_missing
    m = max(l_yes, l_no)
    ey = math.exp(l_yes - m) if l_yes > -math.inf else 0.0
    en = math.exp(l_no - m) if l_no > -math.inf else 0.0
    return ey / (ey + en)


def missing_class_bound(logprobs: Mapping[str, float]) -> float:
    """Upper bound on the log-probability of an answer absent from the top-k entries.

    It is not in the top-k, so its probability is at most the smallest top-k probability, and at
    most the mass the top-k leaves over (``1 − Σ p``).
    """
    finite = [v for v in logprobs.values() if v is not None and math.isfinite(v)]
    if not finite:
        return -math.inf
    floor = min(finite)
    rest = 1.0 - sum(math.exp(v) for v in finite)
    if rest <= 0.0:
        return -math.inf
    return min(floor, math.log(rest))


def variant_token_ids(tokenizer: Any) -> dict[int, str]:
    """Token id → ``"yes"``/``"no"`` for every variant that the tokenizer encodes as ONE token.

    Multi-token spellings (e.g. ``YES`` split into ``Y`` + ``ES``) are skipped: their first piece
    is not an answer on its own.
    """
    out: dict[int, str] = {}
    for cls, variants in (("yes", YES_VARIANTS), ("no", NO_VARIANTS)):
        for v in variants:
            try:
                ids = tokenizer.encode(v, add_special_tokens=False)
            except Exception:  # pragma: no cover - odd tokenizers
                continue
            if len(ids) == 1:
                out[int(ids[0])] = cls
    return out


def summarize(logprobs: Mapping[str, float] | None, n: int = 5) -> dict[str, float]:
    """The ``n`` most likely entries, for a vote's evidence (small, JSON-friendly)."""
    if not logprobs:
        return {}
    best = sorted(logprobs.items(), key=lambda kv: kv[1], reverse=True)[:n]
    return {k: round(float(v), 4) for k, v in best}
