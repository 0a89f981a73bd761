#!/usr/bin/env python
"""Soak a miner: N simulated validators, each with its own wallet and bt.Dendrite, for M minutes.

    .venv/bin/python scripts/soak.py --validators 5 --minutes 30 --report reports/soak.json --png reports/soak.png
    .venv/bin/python scripts/soak.py --axon 127.0.0.1:8091 --hotkey 5F... --pid 1234 --wallet-dir soak-wallets

Starts `neurons/miner.py --mock` (loopback only) unless --axon is given. Exit code 0 when every request was
answered. Logic: natix_miner/ops/soak.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.soak import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
