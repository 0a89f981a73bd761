from hypothesis import given
from hypothesis import strategies as st

from natix_miner.models.detection import Detection, noisy_or, roadwork_probability


def test_no_evidence_gives_prior():
    p, used = roadwork_probability([Detection("car", 0.99)], {"traffic cone": 1.0}, prior=0.02)
    assert abs(p - 0.02) < 1e-12 and used == []


def test_one_confident_cone_is_enough_and_weak_ones_add_up():
    one, _ = roadwork_probability([Detection("Traffic_Cone", 0.9)], {"traffic cone": 1.0}, prior=0.0)
    assert abs(one - 0.9) < 1e-9
    three, used = roadwork_probability([Detection("traffic cone", 0.3)] * 3, {"traffic cone": 1.0}, prior=0.0)
    assert abs(three - (1 - 0.7 ** 3)) < 1e-9 and len(used) == 3


def test_class_weight_and_min_score():
    p, _ = roadwork_probability([Detection("excavator", 0.5), Detection("traffic cone", 0.01)],
                                {"excavator": 0.5, "traffic cone": 1.0}, min_score=0.05, prior=0.0)
    assert abs(p - 0.25) < 1e-9


@given(st.lists(st.floats(0, 1), max_size=20), st.floats(0, 1))
def test_noisy_or_range_and_monotone(scores, prior):
    p = noisy_or(scores, prior)
    assert 0.0 <= p <= 1.0
    assert noisy_or(scores + [0.5], prior) >= p - 1e-12
