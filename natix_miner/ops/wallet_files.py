"""Find a bittensor wallet's files and read its public hotkey without decrypting anything.

Layout written by bittensor-wallet (``btcli wallet new_coldkey/new_hotkey``)::

    <path>/<name>/coldkey              encrypted (or plain) coldkey, not needed on a mining box
    <path>/<name>/coldkeypub.txt       public coldkey (JSON with ``ss58Address``)
    <path>/<name>/hotkeys/<hotkey>     hotkey keypair JSON (private key, usually unencrypted)
    <path>/<name>/hotkeys/<hotkey>pub.txt   public hotkey (newer wallets)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_WALLET_PATH = "~/.bittensor/wallets/"


@dataclass(frozen=True)
class WalletFiles:
    path: Path  # the wallets folder
    name: str
    hotkey: str

    @classmethod
    def from_args(cls, name: str | None, hotkey: str | None, path: str | None) -> "WalletFiles":
        return cls(Path(path or DEFAULT_WALLET_PATH).expanduser(), name or "default", hotkey or "default")

    @property
    def wallet_dir(self) -> Path:
        return self.path / self.name

    @property
    def hotkey_file(self) -> Path:
        return self.wallet_dir / "hotkeys" / self.hotkey

    @property
    def hotkeypub_file(self) -> Path:
        return self.wallet_dir / "hotkeys" / f"{self.hotkey}pub.txt"

    @property
    def coldkeypub_file(self) -> Path:
        return self.wallet_dir / "coldkeypub.txt"

    @property
    def coldkey_file(self) -> Path:
        return self.wallet_dir / "coldkey"


def _ss58_from_json_file(p: Path) -> str | None:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict):
        v = data.get("ss58Address")
        return str(v) if v else None
    return None


def read_hotkey_ss58(wf: WalletFiles) -> str | None:
    """The hotkey's SS58 address from ``<hotkey>pub.txt`` or the (unencrypted) hotkey file; None if neither
    can be read (missing, or an encrypted hotkey without a pub file)."""
    for p in (wf.hotkeypub_file, wf.hotkey_file):
        if p.exists():
            ss58 = _ss58_from_json_file(p)
            if ss58:
                return ss58
    return None


def load_hotkey_keypair(wf: WalletFiles):
    """The hotkey ``Keypair`` (with its private key) through bittensor; prompts if the hotkey is encrypted."""
    import bittensor as bt

    if not wf.hotkey_file.exists():
        raise FileNotFoundError(
            f"hotkey file {wf.hotkey_file} not found; create it with: btcli wallet new_hotkey "
            f"--wallet-name {wf.name} --hotkey {wf.hotkey} --wallet-path {wf.path}")
    w = bt.Wallet(name=wf.name, hotkey=wf.hotkey, path=str(wf.path))
    return w.hotkey
