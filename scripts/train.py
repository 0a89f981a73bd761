#!/usr/bin/env python
"""Fine-tune a roadwork classifier: ``scripts/train.py --data DIR --model lite0 --out runs/x`` (docs/training.md).

Thin entry point; the pipeline lives in :mod:`natix_miner.training`. Also runs under
``torchrun --nproc_per_node N scripts/train.py ...`` (DDP).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natix_miner.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
