"""Shared test helpers (import as `from _helpers import ...`)."""

import socket


def make_wallet(path, name: str, hotkey: str = "default"):
    """A throwaway bittensor wallet (no passwords) under ``path``."""
    import bittensor as bt

    w = bt.Wallet(path=str(path), name=name, hotkey=hotkey)
    w.create_if_non_existent(coldkey_use_password=False, hotkey_use_password=False, suppress=True)
    return w


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


FAKE_COLOR_PROFILE = """\
name: test-fake-color
description: a fake model whose P(roadwork) is red minus blue, for end-to-end tests
deadline_s: 3.0
tiers:
  - name: fast
    exit_threshold: 0.95
    models:
      - name: color
        type: fake
        licence: MIT
        options: {p_by_color: true}
"""

