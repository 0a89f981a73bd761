#!/usr/bin/env python
"""natix-miner entry point (what pm2 runs): parse flags, hand over to natix_miner.neuron.

    python neurons/miner.py --netuid 72 --wallet.name W --wallet.hotkey H --axon.port 8091
    python neurons/miner.py --mock --mock.validators <validator hotkey>    # local, no chain
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from natix_miner.neuron.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
