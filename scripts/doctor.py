#!/usr/bin/env python
"""Is this machine ready to mine? PASS / WARN / FAIL checks with fixes (exit code 1 on any FAIL).

    .venv/bin/python scripts/doctor.py --netuid 72 --wallet.name miner --wallet.hotkey default
    .venv/bin/python scripts/doctor.py --skip-network --profile configs/h100x1.yaml

Logic and the list of checks: natix_miner/ops/doctor.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.doctor import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
