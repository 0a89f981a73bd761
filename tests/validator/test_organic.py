"""The organic consensus scenario (docs/protocol.md §10): peers, the consensus label, the report block."""

import math

import numpy as np
import pytest

from natix_miner.validator.organic import PeerModel, consensus_label, summarize_organic, valid_predictions


def test_consensus_is_the_rounded_mean_of_valid_answers():
    assert consensus_label([0.9, 0.8, 0.1]) == 1  # mean 0.6
    assert consensus_label([0.9, 0.1, 0.2]) == 0  # mean 0.4
    assert consensus_label([0.9, 0.1]) == 0  # mean exactly 0.5: numpy rounds half to even -> 0
    # no answer (-1), NaN and out-of-range values are left out of the mean
    assert consensus_label([0.9, -1.0, float("nan"), 7.0, 0.7]) == 1
    assert valid_predictions([0.2, -1.0, float("nan"), 1.5, 1.0]) == [0.2, 1.0]
    assert consensus_label([-1.0, float("nan")]) is None
    assert consensus_label([]) is None


@pytest.mark.parametrize("acc", [0.0, 0.6, 1.0])
def test_peers_answer_with_the_configured_accuracy(acc):
    rng = np.random.default_rng(0)
    peers = PeerModel(n_peers=9, accuracy=acc)
    answers = [(label, p) for _ in range(400) for label in (0, 1) for p in peers.answers(label, rng)]
    assert all(0.0 <= p <= 1.0 and p != 0.5 for _, p in answers)
    observed = np.mean([int(np.round(p)) == label for label, p in answers])
    assert abs(observed - acc) < 0.03


def test_peers_that_do_not_answer_and_bad_settings():
    rng = np.random.default_rng(1)
    assert PeerModel(n_peers=5, no_answer=1.0).answers(1, rng) == [-1.0] * 5
    assert PeerModel(n_peers=0).answers(1, rng) == []
    for bad in (dict(accuracy=1.5), dict(no_answer=-0.1), dict(n_peers=-1), dict(confidence=(0.4, 0.9))):
        with pytest.raises(ValueError):
            PeerModel(**bad)


def test_summary_counts_right_but_outvoted():
    recs = [
        # right (truth 1) but the crowd said 0
        {"organic": True, "label": 1, "scored_label": 0, "prediction": 0.9, "reward": 0.0},
        # agrees with a right crowd
        {"organic": True, "label": 0, "scored_label": 0, "prediction": 0.2, "reward": 0.5},
        # not scored (no valid answer at all)
        {"organic": True, "label": 1, "scored_label": None, "prediction": -1.0, "reward": 0.0},
        {"organic": False, "label": 1, "scored_label": 1, "prediction": 0.9, "reward": 1.0},
    ]
    s = summarize_organic(recs)
    assert s["n"] == 3 and s["n_scored"] == 2 and s["right_but_outvoted"] == 1
    assert s["agreement"] == 0.5 and s["consensus_accuracy"] == 0.5 and s["miner_accuracy_truth"] == 1.0
    assert math.isclose(s["reward"], 0.5 / 3)
    assert summarize_organic([r for r in recs if not r["organic"]]) is None
