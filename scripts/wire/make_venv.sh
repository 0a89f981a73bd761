#!/usr/bin/env bash
# Build .venv-wire: a separate virtual environment with the validators' bittensor 9.12.2,
# used by tests/test_wire_compat.py and by operators to check a miner like a validator would.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${WIRE_VENV:-$root/.venv-wire}"
py="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import bittensor, sys; sys.exit(0 if bittensor.__version__ == '9.12.2' else 1)" 2>/dev/null; then
  echo "$venv ready"; exit 0
fi
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c "import bittensor; print('bittensor', bittensor.__version__, 'in', '$venv')"
