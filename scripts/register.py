#!/usr/bin/env python
"""Register this miner with the NATIX application server (docs/protocol.md §4.8; ``register.sh`` in Python).

    .venv/bin/python scripts/register.py --uid 17 --wallet.name miner --wallet.hotkey default \\
        --model-repo user/roadwork            # add --dry-run to print the signed request only

Exit codes: 0 success, 1 failed, 2 timeout, 3 non-JSON reply. Logic: natix_miner/ops/register.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.register import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
