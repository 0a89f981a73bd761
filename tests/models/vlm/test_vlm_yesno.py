"""P(yes) from one token's top-k logprobs."""

from __future__ import annotations

import math

import pytest

from natix_miner.models.vlm import yesno as Y


def test_classify_token_variants():
    for t in ("yes", "Yes", " yes", " Yes", "YES", "Ġyes", "▁Yes", "yes.", " Yes,"):
        assert Y.classify_token(t) == "yes", t
    for t in ("no", "No", " no", " No", "NO", "Ġno", "▁No", "no."):
        assert Y.classify_token(t) == "no", t
    for t in ("yesterday", "nope", "not", "y", "", " ", "Final", None):
        assert Y.classify_token(t) is None, t


def test_p_yes_is_logsumexp_per_class_renormalised():
    lp = {" yes": math.log(0.30), "Yes": math.log(0.20), " no": math.log(0.10), "No": math.log(0.15),
          " maybe": math.log(0.2)}
    assert Y.p_yes(lp) == pytest.approx(0.5 / 0.75)


def test_p_yes_no_vote_when_neither_answer_is_in_the_top_k():
    assert math.isnan(Y.p_yes({" maybe": -0.1, "The": -2.0}))
    assert math.isnan(Y.p_yes({}))
    assert math.isnan(Y.p_yes(None))


def test_missing_class_is_bounded_by_the_top_k_not_set_to_zero():
    # only "yes" in the top-k: P(no) <= smallest top-k prob (0.05) and <= leftover mass (1 - 0.95 = 0.05)
    lp = {"yes": math.log(0.6), "The": math.log(0.3), "A": math.log(0.05)}
    p = Y.p_yes(lp)
    assert p == pytest.approx(0.6 / (0.6 + 0.05))
    assert 0.5 < p < 1.0
    # leftover mass smaller than the floor: the leftover is the bound
    lp = {"no": math.log(0.90), "x": math.log(0.099)}
    assert Y.p_yes(lp) == pytest.approx(0.001 / (0.001 + 0.90), rel=1e-6)


def test_merge_logprobs_sums_tokens_that_decode_alike():
    d = Y.merge_logprobs([("yes", math.log(0.2)), ("yes", math.log(0.1)), ("no", math.log(0.3))])
    assert d["yes"] == pytest.approx(math.log(0.3))
    assert Y.p_yes(d) == pytest.approx(0.5)


def test_variant_token_ids_from_a_real_tokenizer():
    from natix_miner.models.vlm.tiny import build_tokenizer

    tok = build_tokenizer()
    ids = Y.variant_token_ids(tok)
    assert "yes" in ids.values() and "no" in ids.values()
    for i, cls in ids.items():
        assert Y.classify_token(tok.decode([i])) == cls
    # multi-token spellings are excluded: every id decodes to a full variant
    multi = [v for v in Y.YES_VARIANTS + Y.NO_VARIANTS if len(tok.encode(v, add_special_tokens=False)) > 1]
    assert multi, "the tiny tokenizer splits some variants (e.g. 'no'), which must be skipped"
    decoded = {tok.decode([i]) for i in ids}
    assert not decoded & set(multi)


def test_summarize_keeps_the_best_entries():
    s = Y.summarize({"a": -3.0, "b": -0.1, "c": -1.0}, n=2)
    assert list(s) == ["b", "c"]
