#!/usr/bin/env python
"""Write and validate model_card.json (docs/protocol.md §4.9); optionally push the folder to Hugging Face.

    .venv/bin/python scripts/model_card.py --model-dir hf_model --name my-roadwork --version 1.0.0 \\
        --wallet.name miner --wallet.hotkey default --description "..." [--push user/roadwork]

Logic: natix_miner/ops/model_card.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.ops.model_card import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
