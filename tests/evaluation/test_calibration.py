import numpy as np
import pytest

from natix_miner.evaluation import calibration as cal


def test_simulated_reward_matches_the_validator_tracker():
    """Cross-check the O(n) simulation against the replica's tracker (docs/protocol.md §3)."""
    from natix_miner.validator.scoring import MinerPerformanceTracker, reward

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 150)
    preds = np.clip(labels * 0.7 + rng.normal(0.15, 0.25, 150), 0, 1)
    tracker = MinerPerformanceTracker()
    expected = np.mean([reward(float(p), int(y), 0, "hk", tracker) for p, y in zip(preds, labels)])
    assert cal.simulate_reward(labels, preds) == pytest.approx(expected, abs=1e-9)


def test_perfect_and_constant_answers():
    y = [0, 1] * 50
    assert cal.simulate_reward(y, [float(v) for v in y]) > 0.9
    # MCC 0, accuracy ~0.5 -> (0.5*0 + 0.5*0.5)^3 ~ 0.016 (docs/protocol.md §3.2)
    assert cal.simulate_reward(y, [0.9] * 100) == pytest.approx(0.25 ** 3, abs=2e-3)


def _samples(n=300, seed=0):
    """Model a is informative, b is noise, c is anti-informative."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        a = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(0, 1.2))))
        b = float(rng.uniform(0.05, 0.95))
        c = 1 / (1 + np.exp(-(-1.0 * (2 * y - 1) + rng.normal(0, 1.0))))
        out.append(cal.Sample(label=y, votes={"a": float(a), "b": b, "c": float(c)},
                              latencies={"a": 5.0, "b": 50.0, "c": 80.0}))
    return out


def test_fit_weights_prefers_the_informative_model_and_drops_the_misleading_one():
    w, bias = cal.fit_weights(_samples(), ["a", "b", "c"])
    assert w["a"] > 0.5 and w["c"] == 0.0 and w["a"] > w["b"]


def test_mcc_optimal_threshold_finds_a_shifted_boundary():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.2 + 0.3 * y + rng.normal(0, 0.05, 400), 0, 1)  # classes split at ~0.35, not 0.5
    t = cal.mcc_optimal_threshold(y, p)
    assert 0.28 < t < 0.42


def test_calibration_improves_reward_on_held_out_split():
    samples = _samples(600)
    fit, held = cal.split(samples, 0.3, 0)
    tiers = [["a"], ["b", "c"]]
    before = cal.CascadeParams({"a": 1.0, "b": 1.0, "c": 1.0}, 0.0, 0.5, [0.95, 1.0])
    w, b = cal.fit_weights(fit, ["a", "b", "c"])
    after = cal.CascadeParams(w, b, 0.5, [0.95, 1.0])
    after.exit_thresholds = cal.fit_exit_thresholds(fit, tiers, after, latency_budget_ms=None)
    r0 = cal.evaluate_params(held, tiers, before)
    r1 = cal.evaluate_params(held, tiers, after)
    assert r1["expected_reward"] > r0["expected_reward"]
    assert r1["mean_latency_ms"] <= r0["mean_latency_ms"] + 1e-9  # early exits on the good model save time


def test_latency_budget_is_respected():
    samples = _samples(300)
    tiers = [["a"], ["b", "c"]]
    params = cal.CascadeParams({"a": 1.0, "b": 0.2, "c": 0.0}, 0.0, 0.5, [1.0, 1.0])
    th = cal.fit_exit_thresholds(samples, tiers, params, latency_budget_ms=30.0)
    params.exit_thresholds = th
    _, lats, _ = cal.simulate_cascade(samples, tiers, params)
    assert np.mean(lats) <= 30.0


def test_reward_is_simulated_at_the_validators_50_50_balance():
    """Validators draw the label first (50/50): a model that always says 'no' on a 90/10 set earns ~0.25^3."""
    y = [1] * 10 + [0] * 90
    always_no = [0.1] * 100
    assert cal.simulate_reward(y, always_no) > 0.09  # the set as it is: accuracy ~0.9 -> (0.45)^3
    assert cal.expected_reward(y, always_no) == pytest.approx(0.25 ** 3, abs=0.01)
    assert cal.balanced_mcc(y, always_no) == 0.0
    assert cal.balanced_mcc([0, 1, 1, 1], [0.1, 0.9, 0.9, 0.9]) == pytest.approx(1.0)
