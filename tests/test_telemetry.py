"""natix_miner.telemetry: loguru setup, the validator's scoring maths, and wandb that never breaks the miner."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from loguru import logger

from natix_miner.scoring import mcc
from natix_miner.telemetry import Telemetry, setup_logging, validator_metrics


# ------------------------------------------------------------------------------------------- reference
def _tracker_reference(probs: list[float], labels: list[int], window: int) -> dict[str, float]:
    """A port of natix/validator/miner_performance_tracker.py get_metrics (docs/protocol.md §3.1), with sklearn."""
    from sklearn.metrics import accuracy_score, matthews_corrcoef, precision_score

    n = min(window, len(probs))
    p = np.array(probs[-n:], dtype=float) if n else np.array([])
    y = np.array(labels[-n:]) if n else np.array([])
    keep = p != -1
    p, y = p[keep], y[keep]
    if len(p) == 0:
        return {"accuracy": 0.0, "mcc": 0.0}
    try:
        pred = np.round(p)
        acc = accuracy_score(y, pred)
        precision_score(y, pred, zero_division=0)  # raises for a "multiclass" window, like the validator's
        mcc = max(0.0, matthews_corrcoef(y, pred)) if len(np.unique(y)) > 1 and len(np.unique(pred)) > 1 else 0.0
        return {"accuracy": float(acc), "mcc": float(mcc)}
    except Exception:
        return {"accuracy": 0.0, "mcc": 0.0}


def test_validator_metrics_match_the_trackers_sklearn_maths():
    rng = np.random.default_rng(7)
    for trial in range(30):
        n = int(rng.integers(1, 130))
        labels = rng.integers(0, 2, n).tolist()
        skill = rng.random()
        probs = [float(np.clip(y * skill + (1 - skill) * rng.random(), 0, 1)) for y in labels]
        if trial % 5 == 0:
            probs = [0.5 if rng.random() < 0.3 else q for q in probs]  # ties: np.round(0.5) == 0
        if trial % 7 == 0:
            probs = [-1.0 if rng.random() < 0.2 else q for q in probs]  # "no answer" entries
        for window in (10, 100):
            ref = _tracker_reference(probs, labels, window)
            got = validator_metrics(probs[-window:], labels[-window:])
            assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
            assert got["mcc"] == pytest.approx(ref["mcc"], abs=1e-12)


def test_mcc_known_values():
    assert mcc([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0)
    assert mcc([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(-1.0)
    assert mcc([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0  # undefined → 0
    # tp=2 tn=1 fp=1 fn=0: (2·1 − 1·0)/sqrt(3·2·2·1)
    assert mcc([1, 1, 0, 0], [1, 1, 1, 0]) == pytest.approx(2 / np.sqrt(12))


def test_validator_rules_half_rounds_down_one_class_mcc_zero_out_of_range_zeroes():
    assert validator_metrics([0.5, 0.5], [0, 0])["accuracy"] == 1.0  # 0.5 counts as "no roadwork"
    assert validator_metrics([0.5, 0.5], [1, 1])["accuracy"] == 0.0
    one_class = validator_metrics([0.9, 0.8, 0.7, 0.6], [1, 1, 0, 0])
    assert one_class["accuracy"] == 0.5 and one_class["mcc"] == 0.0
    anti = validator_metrics([0.9, 0.9, 0.1, 0.1], [0, 0, 1, 1])
    assert anti["accuracy"] == 0.0 and anti["mcc"] == 0.0  # clipped at 0
    poisoned = validator_metrics([0.9, 1.6, 0.1], [1, 1, 0])
    assert poisoned == {"accuracy": 0.0, "mcc": 0.0, "n": 3}
    dropped = validator_metrics([-1.0, 0.9, 0.1], [0, 1, 0])
    assert dropped["n"] == 2 and dropped["accuracy"] == 1.0 and dropped["mcc"] == pytest.approx(1.0)
    assert validator_metrics([], [])["accuracy"] == 0.0


# ------------------------------------------------------------------------------------------- rolling windows
def test_rolling_windows_without_wandb():
    t = Telemetry(enabled=False, histogram_every=25)
    assert not t.enabled and t.disabled_reason
    # 100 labelled answers: the first 90 alternate right/wrong, the last 10 are all right
    for i in range(90):
        y = i % 2
        p = 0.9 if y == 1 else 0.1
        if i % 4 >= 2:
            p = 1.0 - p  # wrong
        t.log_request(latency_ms=10.0 + i, prediction=p, exit_tier="fast", exit_reason="threshold", label=y)
    for i in range(10):
        y = i % 2
        t.log_request(latency_ms=5.0, prediction=0.8 if y else 0.2, exit_tier="vlm", exit_reason="threshold", label=y)
    t.log_request(latency_ms=1.0, prediction=0.7, exit_tier=None, exit_reason="fallback", label=None)
    t.log_request(latency_ms=1.0, prediction=0.7, exit_tier="fast", exit_reason="cache", label=-1)

    m = t.rolling_metrics()
    probs = [p for p, _ in t._scored]
    labels = [y for _, y in t._scored]
    assert len(probs) == 100 and m["n_labelled"] == 100.0
    assert m["accuracy_10"] == 1.0
    ref = _tracker_reference(probs, labels, 100)
    assert m["mcc_100"] == pytest.approx(ref["mcc"])
    assert 0.0 < m["mcc_100"] < 1.0
    assert m["reward_estimate"] == pytest.approx((0.5 * m["mcc_100"] + 0.5 * 1.0) ** 3)
    assert t.requests == 102 and t.labelled == 100
    assert t.exit_tiers == {"fast": 91, "vlm": 10, "none": 1}
    assert t.exit_reasons["fallback"] == 1 and t.exit_reasons["cache"] == 1
    lat = t.latency_summary()
    assert lat["latency_p50_ms"] == pytest.approx(float(np.percentile(list(t.latencies_ms), 50)))
    assert "MCC100" in t.summary_line()


def test_mcc_window_forgets_old_answers():
    t = Telemetry(enabled=False)
    for i in range(100):  # all wrong
        t.log_request(1.0, 0.9 if i % 2 == 0 else 0.1, "fast", "threshold", label=1 - (i % 2 == 0))
    assert t.rolling_metrics()["mcc_100"] == 0.0
    for i in range(100):  # all right: the wrong ones leave the window
        y = i % 2
        t.log_request(1.0, 0.9 if y else 0.1, "fast", "threshold", label=y)
    m = t.rolling_metrics()
    assert m["mcc_100"] == pytest.approx(1.0) and m["accuracy_10"] == 1.0
    assert m["reward_estimate"] == pytest.approx(1.0)


def test_no_labels_no_scoring():
    t = Telemetry(enabled=False)
    for _ in range(20):
        t.log_request(3.0, 0.6, "fast", "threshold", label=None)
    assert t.rolling_metrics() == {"mcc_100": 0.0, "accuracy_10": 0.0, "reward_estimate": 0.0, "n_labelled": 0.0}


def test_bad_inputs_never_raise():
    t = Telemetry(enabled=False)
    t.log_request(latency_ms="not a number", prediction=0.5)  # type: ignore[arg-type]
    t.log_metrics(["not", "a", "dict"])  # type: ignore[arg-type]
    t.close()
    t.close()


# ------------------------------------------------------------------------------------------- wandb
class _FakeRun:
    def __init__(self, fail_log: bool = False):
        self.rows: list[dict] = []
        self.fail_log = fail_log
        self.finished = 0

    def log(self, data):
        if self.fail_log:
            raise RuntimeError("wandb backend went away")
        self.rows.append(dict(data))

    def finish(self, exit_code=None):
        self.finished += 1


@pytest.fixture
def fake_wandb_init(monkeypatch):
    wandb = pytest.importorskip("wandb")
    calls: list[dict] = []
    state = {"run": None, "raise": None}

    def init(**kwargs):
        calls.append(kwargs)
        if state["raise"] is not None:
            raise state["raise"]
        state["run"] = _FakeRun(fail_log=state.get("fail_log", False))
        return state["run"]

    monkeypatch.setattr(wandb, "init", init)
    return calls, state


def test_env_vars_respected_and_kill_switch(monkeypatch, fake_wandb_init):
    calls, state = fake_wandb_init
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "proj-from-env")
    monkeypatch.setenv("WANDB_ENTITY", "team-from-env")
    t = Telemetry(enabled=True, project=None, entity=None, mode=None, run_name="r", config={"a": 1})
    assert t.enabled
    assert calls[-1]["project"] == "proj-from-env" and calls[-1]["entity"] == "team-from-env"
    assert calls[-1]["mode"] == "offline" and calls[-1]["name"] == "r" and calls[-1]["config"] == {"a": 1}
    t.close()
    assert state["run"].finished == 1 and not t.enabled

    t = Telemetry(enabled=True, project="explicit", entity="me", mode="offline")
    assert calls[-1]["project"] == "explicit" and calls[-1]["entity"] == "me"
    t.close()

    n = len(calls)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # operator kill switch beats the argument
    t = Telemetry(enabled=True, mode="online")
    assert not t.enabled and len(calls) == n and t.mode == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    t = Telemetry(enabled=False, mode="offline")
    assert not t.enabled and len(calls) == n


def test_broken_wandb_init_leaves_a_usable_disabled_object(monkeypatch, fake_wandb_init):
    calls, state = fake_wandb_init
    monkeypatch.setenv("WANDB_MODE", "offline")
    state["raise"] = RuntimeError("no wandb for you")
    t = Telemetry(enabled=True, project="p", mode="offline")
    assert len(calls) == 1
    assert not t.enabled and "init failed" in t.disabled_reason
    for i in range(12):
        t.log_request(2.0, 0.9 if i % 2 else 0.1, "fast", "threshold", label=i % 2)
    t.log_metrics({"x": 1})
    assert t.rolling_metrics()["accuracy_10"] == 1.0
    t.close()


def test_wandb_init_systemexit_is_contained(monkeypatch, fake_wandb_init):
    calls, state = fake_wandb_init
    monkeypatch.setenv("WANDB_MODE", "online")
    state["raise"] = SystemExit(1)  # what a login prompt without a tty can end in
    t = Telemetry(enabled=True, project="p")
    assert not t.enabled


def test_broken_wandb_log_disables_without_raising(monkeypatch, fake_wandb_init):
    calls, state = fake_wandb_init
    monkeypatch.setenv("WANDB_MODE", "offline")
    state["fail_log"] = True
    t = Telemetry(enabled=True, project="p", mode="offline")
    assert t.enabled
    t.log_request(2.0, 0.9, "fast", "threshold", label=1)
    assert not t.enabled and "log failed" in t.disabled_reason
    assert state["run"].finished == 1
    t.log_request(2.0, 0.1, "fast", "threshold", label=0)
    assert t.requests == 2


def test_rows_sent_to_wandb(monkeypatch, fake_wandb_init):
    calls, state = fake_wandb_init
    monkeypatch.setenv("WANDB_MODE", "offline")
    t = Telemetry(enabled=True, project="p", mode="offline", histogram_every=5)
    for i in range(10):
        t.log_request(float(i), 0.9 if i % 2 else 0.1, "fast", "threshold", label=i % 2 if i < 8 else None)
    t.log_metrics({"mcc": 0.5}, prefix="replica")
    rows = state["run"].rows
    assert len(rows) == 11
    assert rows[0]["request/latency_ms"] == 0.0 and rows[0]["exit_tier/fast"] == 1
    assert "scoring/mcc_100" in rows[7] and "scoring/mcc_100" not in rows[8]
    assert "window/prediction_hist" in rows[4] and "window/latency_p95_ms" in rows[9]
    assert "window/prediction_hist" not in rows[3]
    assert rows[-1] == {"replica/mcc": 0.5}
    t.close()


def test_real_wandb_offline_writes_files_only(monkeypatch, tmp_path):
    """One real offline run (the network guard in conftest refuses any non-loopback connection)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    t = Telemetry(enabled=True, project="natix-miner-test", mode="offline", run_name="unit",
                  config={"profile": "test"}, histogram_every=20, system_stats=False)
    try:
        assert t.enabled, t.disabled_reason
        for i in range(40):
            y = i % 2
            t.log_request(5.0 + i, 0.8 if y else 0.3, "fast", "threshold", label=y)
        t.log_metrics({"mcc": 0.9}, prefix="replica")
        m = t.rolling_metrics()
        assert m["mcc_100"] == pytest.approx(1.0) and m["accuracy_10"] == 1.0
        run = t._run
        assert run.summary["scoring/mcc_100"] == pytest.approx(m["mcc_100"])
        assert run.summary["request/count"] == 40
    finally:
        t.close()
    assert not t.enabled
    run_files = list(tmp_path.rglob("*.wandb"))
    assert run_files and run_files[0].stat().st_size > 0
    assert "offline-run" in str(run_files[0])


# ------------------------------------------------------------------------------------------- logging
@pytest.fixture
def restore_loguru():
    yield
    logger.remove()
    logger.add(sys.stderr)


def test_setup_logging_file_sink_and_json(tmp_path, restore_loguru):
    ids = setup_logging(level="debug", log_dir=str(tmp_path / "logs"))
    assert len(ids) == 2
    logger.debug("hello from the test")
    logger.complete()
    text = (tmp_path / "logs" / "miner.log").read_text()
    assert "hello from the test" in text and "DEBUG" in text

    ids = setup_logging(level="INFO", log_dir=str(tmp_path / "jlogs"), json=True)
    logger.debug("not at info")
    logger.info("structured")
    logger.complete()
    lines = (tmp_path / "jlogs" / "miner.log").read_text().strip().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["record"]["message"] == "structured" and rec["record"]["level"]["name"] == "INFO"

    ids = setup_logging(level="WARNING")
    assert len(ids) == 1
    assert not os.path.exists(tmp_path / "none")
