"""The replica's command-line options, shared by ``scripts/mock_validator.py`` and ``scripts/dry_run.py``."""

from __future__ import annotations

import argparse

from natix_miner.validator.challenges import CONDITIONS
from natix_miner.validator.organic import PeerModel

#: the conditions a run can ask for: one of :data:`CONDITIONS`, ``both`` (aug-2026-01 + fullres) or ``all``
CONDITION_CHOICES = [*CONDITIONS, "both", "all"]


def add_replica_args(ap: argparse.ArgumentParser, *, condition_default: str) -> None:
    """Sources (synthetic, api), condition, organic scenario and burst size of a replica run."""
    ap.add_argument("--synthetic", action="append", default=[],
                    help="synthetic folder with the same layout (repeat: two folders = i2i and t2i)")
    ap.add_argument("--api-images", default=None,
                    help="folder with roadwork/ and no_roadwork/ standing in for NATIX's api tasks (a third of the "
                         "challenges); without it those challenges are skipped")
    ap.add_argument("--condition", default=condition_default, choices=CONDITION_CHOICES,
                    help="both = aug-2026-01 + fullres; all = the three (default: %(default)s)")
    ap.add_argument("--organic-share", type=float, default=0.0,
                    help="share of steps scored by peer consensus (upstream's dormant organic path); 0 = off")
    ap.add_argument("--peers", type=int, default=PeerModel.n_peers, help="simulated other miners of an organic query")
    ap.add_argument("--peer-accuracy", type=float, default=PeerModel.accuracy,
                    help="their accuracy on the true label")
    ap.add_argument("--burst", type=int, default=10,
                    help="identical concurrent copies per challenge (a lone miner gets 10)")
