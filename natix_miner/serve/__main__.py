"""``python -m natix_miner.serve --profile P [--port N] [--address RAY_ADDRESS]``: see :mod:`natix_miner.serve.app`."""

import sys

from natix_miner.serve.app import main

if __name__ == "__main__":
    sys.exit(main())
