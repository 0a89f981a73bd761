"""The organic consensus scenario (docs/protocol.md §10, ``natix/validator/proxy/proxy.py`` of 2026-04-29).

Upstream, every 600 s a validator pulls a full-resolution image from NATIX's API, sends it to 10
miners, and scores each miner against ``round(mean of the valid predictions)`` of those 10 — in the
same performance history (the same 100/10 windows) as its challenges. The image's true label is not
used: a miner is rewarded for agreeing with the other miners. At upstream HEAD this path fails
before querying (a type error), so it has no effect today; if NATIX fixes it, about one query in
ten would be scored this way.

The replica can turn it on (``organic_share`` > 0 in
:func:`natix_miner.validator.client.run_mock_validator`, ``--organic-share`` in the scripts): that
share of the steps becomes an organic query instead of a challenge — one full-resolution copy to our
miner (not a burst: the 10 queried UIDs are different miners), answered alongside ``n_peers``
simulated peers (:class:`PeerModel`), then scored with :func:`consensus_label` as the label.

What it would change for a miner: an organic query rewards agreement with the crowd, so where the
other miners are wrong the correct answer *lowers* the MCC/accuracy windows, and where they are
right it is ordinary scoring. With peers of accuracy ``a`` the consensus of 10 is right far more
often than ``a`` (a majority vote), so a miner that beats the crowd only loses on the images where
the majority errs — the report's ``organic`` block shows how often that happened
(``consensus_accuracy`` vs ``miner_accuracy_truth``, ``agreement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ORGANIC_CONDITION = "organic"
UPSTREAM_MINERS_PER_TASK = 10  # the validator sends an organic image to 10 miners


@dataclass(frozen=True)
class PeerModel:
    """Simulated other miners: each answers on the correct side with probability ``accuracy`` (a
    confidence uniform in ``confidence``), does not answer (-1) with probability ``no_answer``."""

    n_peers: int = UPSTREAM_MINERS_PER_TASK - 1
    accuracy: float = 0.8
    no_answer: float = 0.0
    confidence: tuple[float, float] = (0.55, 0.95)

    def __post_init__(self) -> None:
        if self.n_peers < 0:
            raise ValueError(f"n_peers must be >= 0, got {self.n_peers}")
        for name in ("accuracy", "no_answer"):
            v = getattr(self, name)
            if not (0.0 <= v <= 1.0):
                raise ValueError(f"peer {name} must be in [0, 1], got {v}")
        lo, hi = self.confidence
        if not (0.5 <= lo <= hi <= 1.0):
            raise ValueError(f"peer confidence range must lie in [0.5, 1], got {self.confidence}")

    def answers(self, label: int, rng: np.random.Generator) -> list[float]:
        """The peers' predictions for an image whose true label is ``label`` (-1.0 = no answer)."""
        out: list[float] = []
        for _ in range(self.n_peers):
            if rng.random() < self.no_answer:
                out.append(-1.0)
                continue
            conf = float(rng.uniform(*self.confidence))
            correct = rng.random() < self.accuracy
            says_roadwork = (label == 1) == correct
            out.append(conf if says_roadwork else 1.0 - conf)
        return out


def valid_predictions(predictions: Sequence[float]) -> list[float]:
    """The answers upstream averages: finite and in [0, 1] (no answer, -1, and NaN left out)."""
    return [float(p) for p in predictions if p is not None and np.isfinite(p) and 0.0 <= p <= 1.0]


def consensus_label(predictions: Sequence[float]) -> int | None:
    """``round(mean of the valid predictions)`` (numpy's rounding: a mean of exactly 0.5 gives 0);
    ``None`` when no prediction is valid (the organic task is not scored)."""
    valid = valid_predictions(predictions)
    if not valid:
        return None
    return int(np.round(float(np.mean(valid))))


def summarize_organic(records: Sequence[dict]) -> dict | None:
    """The report's ``organic`` block over the replica's query records with ``organic`` set."""
    rs = [r for r in records if r.get("organic")]
    if not rs:
        return None
    scored = [r for r in rs if r.get("scored_label") is not None]
    ans = [r for r in scored if r["prediction"] != -1]

    def share(xs: list[bool]) -> float | None:
        return float(np.mean(xs)) if xs else None

    return {
        "n": len(rs),
        "n_scored": len(scored),
        "agreement": share([int(np.round(r["prediction"])) == r["scored_label"] for r in ans]),
        "consensus_accuracy": share([r["scored_label"] == r["label"] for r in scored]),
        "miner_accuracy_truth": share([int(np.round(r["prediction"])) == r["label"] for r in ans]),
        "right_but_outvoted": sum(1 for r in ans if int(np.round(r["prediction"])) == r["label"] != r["scored_label"]),
        "reward": share([r["reward"] for r in rs]) if rs else None,
    }
