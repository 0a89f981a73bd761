"""``model_card.json`` for a public Hugging Face model repo — optional today (docs/protocol.md §4.9, §12).

The file sits at the repo root::

    {"model_name": "...", "description": "...", "version": "X.Y.Z",
     "submitted_by": "<hotkey ss58>", "submission_time": <unix seconds>}

optionally with ``architecture`` and ``notes``. :func:`validate_card` applies the rules NATIX
validators enforced from 2025-04 to 2025-07 (``natix/validator/verify_models.py``): the four
required keys ``model_name``, ``version``, ``submitted_by``, ``submission_time``;
``submitted_by`` equal to the UID's hotkey; ``int(submission_time)`` (milliseconds accepted and
divided by 1000 when > 10^12) between 2000-01-01 (946684800) and now. On top of that it checks
what the docs ask for (a ``description``, a version of the form ``X.Y.Z``); extra keys are allowed,
as they were upstream. The validator's repo sanitiser (:func:`sanitize_repo_id`) strips
``https://huggingface.co`` and surrounding slashes and requires ``user/repo[/sub]``.

Validators no longer check a card (removed 2025-11-30) and NATIX dropped the server registration (docs
removed 2026-01/02, ``register.sh`` deleted 2026-05-03): publishing a model is optional. Those who publish anyway get a card that passes the
historical rules; ``submitted_by`` must be an SS58 address (checked with bittensor_wallet).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

REQUIRED_KEYS = ("model_name", "version", "submitted_by", "submission_time")  # upstream model_format.py
OPTIONAL_KEYS = ("architecture", "notes")  # upstream model_format.py
DOC_KEYS = ("description",)  # required by docs/Mining.md, not by the validator code
MIN_TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z
VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_REPO_RE = re.compile(r"^[\w\-]+/[\w\-]+(?:/[\w\-/]*)?$")  # upstream sanitize_model_repo
CARD_FILENAME = "model_card.json"


class ModelCardError(ValueError):
    """The card (or the repo id) does not pass the checks; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


def is_ss58(address: str) -> bool:
    """A valid SS58 address (checksum included), e.g. a hotkey's ``5...`` address."""
    from bittensor_wallet.utils import is_valid_ss58_address

    try:
        return bool(is_valid_ss58_address(address))
    except Exception:  # noqa: BLE001 - malformed input of any kind is simply not an address
        return False


def sanitize_repo_id(model_repo: str) -> str:
    """Upstream ``sanitize_model_repo``: ``https://huggingface.co/user/model/`` → ``user/model``.

    Raises ValueError when the result is not ``user/repo`` or ``user/repo/subdir``.
    """
    repo = re.sub(r"^https?://huggingface\.co", "", str(model_repo).strip())
    repo = repo.strip("/")
    if not _REPO_RE.match(repo):
        raise ValueError(f"invalid model repo {model_repo!r}: expected user/repo (letters, digits, _ and - only)")
    return repo


def is_valid_timestamp(ts: int, now: float | None = None) -> bool:
    """Upstream ``is_valid_timestamp``: milliseconds are accepted; 2000-01-01 <= ts <= now."""
    current = int(time.time() if now is None else now)
    if ts > 10**12:
        ts //= 1000
    return MIN_TIMESTAMP <= ts <= current


def build_card(name: str, version: str, hotkey: str, *, description: str = "",
               submission_time: int | None = None, architecture: str | None = None,
               notes: str | None = None) -> dict[str, Any]:
    """The card's dict, keys in the documented order; ``submission_time`` defaults to now (unix s)."""
    card: dict[str, Any] = {
        "model_name": name,
        "description": description,
        "version": version,
        "submitted_by": hotkey,
        "submission_time": int(time.time()) if submission_time is None else int(submission_time),
    }
    if architecture:
        card["architecture"] = architecture
    if notes:
        card["notes"] = notes
    return card


def validate_card(card: Any, hotkey: str | None = None, *, now: float | None = None) -> list[str]:
    """Every problem with ``card`` (an empty list when it passes). ``hotkey``: the expected
    ``submitted_by`` (skipped when None)."""
    if not isinstance(card, dict):
        return [f"the card must be a JSON object, got {type(card).__name__}"]
    errors: list[str] = []
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        errors.append(f"missing required keys {missing} (validators rejected such cards)")
    for k in DOC_KEYS:
        if k not in card:
            errors.append(f"missing {k!r} (required by the NATIX mining docs)")
    name = card.get("model_name")
    if "model_name" in card and (not isinstance(name, str) or not name.strip()):
        errors.append("model_name must be a non-empty string (and unique among miners)")
    version = card.get("version")
    if "version" in card and not (isinstance(version, str) and VERSION_RE.match(version)):
        errors.append(f"version must look like X.Y.Z (e.g. 1.0.0), got {version!r}")
    if "submitted_by" in card:
        sb = card["submitted_by"]
        if not isinstance(sb, str) or not is_ss58(sb):
            errors.append(f"submitted_by must be the miner's hotkey SS58 address (5...), got {sb!r}")
        elif hotkey is not None and sb != hotkey:
            errors.append(f"submitted_by {sb} does not match the hotkey {hotkey}")
    if "submission_time" in card:
        ts = card["submission_time"]
        try:
            if isinstance(ts, bool):
                raise TypeError
            ts_int = int(ts)  # upstream does int(card["submission_time"]): ISO strings fail there
        except (TypeError, ValueError):
            errors.append(f"submission_time must be a unix timestamp in seconds, got {ts!r}")
        else:
            if not is_valid_timestamp(ts_int, now):
                errors.append(f"submission_time {ts} is not between 2000-01-01 and now")
    for k in ("description",) + OPTIONAL_KEYS:
        if k in card and not isinstance(card[k], str):
            errors.append(f"{k} must be a string")
    return errors


def write_card(model_dir: str | Path, card: dict[str, Any], hotkey: str | None = None,
               now: float | None = None) -> Path:
    """Validate and write ``model_dir/model_card.json`` (the folder is created). Raises ModelCardError."""
    errors = validate_card(card, hotkey, now=now)
    if errors:
        raise ModelCardError(errors)
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / CARD_FILENAME
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def read_card(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / CARD_FILENAME
    return json.loads(path.read_text())


def push_folder(model_dir: str | Path, repo: str, *, token: str | None = None,
                api_factory: Callable[[], Any] | None = None, commit_message: str | None = None) -> str:
    """Create the public model repo (if needed) and upload ``model_dir`` with huggingface_hub.

    The token comes from ``token`` or the ``HF_TOKEN`` environment variable. Returns the repo id.
    ``api_factory`` replaces ``huggingface_hub.HfApi`` in tests.
    """
    repo_id = sanitize_repo_id(repo)
    if len(repo_id.split("/")) != 2:
        raise ValueError(f"push needs a repo id user/repo, got {repo_id!r} (a sub-folder cannot be created)")
    d = Path(model_dir)
    if not (d / CARD_FILENAME).exists():
        raise FileNotFoundError(f"{d / CARD_FILENAME} not found: write the card first")
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise RuntimeError("no Hugging Face token: set HF_TOKEN (a write token from huggingface.co/settings/tokens)")
    if api_factory is None:
        from huggingface_hub import HfApi

        api_factory = HfApi
    api = api_factory()
    api.create_repo(repo_id, token=token, private=False, repo_type="model", exist_ok=True)
    card = read_card(d)
    api.upload_folder(repo_id=repo_id, folder_path=str(d), token=token, repo_type="model",
                      commit_message=commit_message or f"{card.get('model_name', 'model')} {card.get('version', '')}".strip())
    return repo_id


# ---------------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="scripts/model_card.py",
        description="Optional (validators stopped requiring model cards on 2025-11-30): write DIR/model_card.json "
                    "(docs/protocol.md §4.9), validate it with the validators' historical rules, and optionally upload DIR "
                    "to a public Hugging Face model repo (token from HF_TOKEN).",
    )
    p.add_argument("--model-dir", required=True, help="folder to publish (created if missing)")
    p.add_argument("--name", required=True, help="model_name: unique among miners")
    p.add_argument("--version", required=True, help="X.Y.Z")
    p.add_argument("--description", default="", help="free text")
    p.add_argument("--architecture", default=None, help="optional, e.g. 'EfficientNet-Lite0 + logistic head'")
    p.add_argument("--notes", default=None, help="optional free text")
    p.add_argument("--submission-time", type=int, default=None, help="unix seconds (default: now)")
    p.add_argument("--hotkey", default=None, help="the mining hotkey's SS58 address (or give --wallet.*)")
    p.add_argument("--wallet.name", dest="wallet_name", default=os.environ.get("WALLET_NAME") or None)
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default=os.environ.get("WALLET_HOTKEY") or None)
    p.add_argument("--wallet.path", dest="wallet_path", default=os.environ.get("WALLET_PATH") or None)
    p.add_argument("--push", default=None, metavar="USER/REPO", help="upload the folder to this public HF repo")
    return p


def main(argv: list[str] | None = None, *, api_factory: Callable[[], Any] | None = None) -> int:
    from natix_miner.ops.wallet_files import WalletFiles, read_hotkey_ss58

    a = build_parser().parse_args(argv)
    hotkey = a.hotkey
    if hotkey and not is_ss58(hotkey):
        print(f"error: --hotkey {hotkey!r} is not an SS58 address: give the hotkey's address (5..., "
              "btcli wallet overview shows it), not its name; or use --wallet.name/--wallet.hotkey")
        return 2
    if not hotkey:
        if not (a.wallet_name or a.wallet_hotkey or a.wallet_path):
            print("error: give --hotkey SS58 or --wallet.name/--wallet.hotkey[/--wallet.path]")
            return 2
        wf = WalletFiles.from_args(a.wallet_name, a.wallet_hotkey, a.wallet_path)
        hotkey = read_hotkey_ss58(wf)
        if not hotkey:
            print(f"error: could not read the hotkey address from {wf.hotkeypub_file} or {wf.hotkey_file}")
            return 2
    card = build_card(a.name, a.version, hotkey, description=a.description, submission_time=a.submission_time,
                      architecture=a.architecture, notes=a.notes)
    try:
        path = write_card(a.model_dir, card, hotkey)
    except ModelCardError as e:
        print("model card rejected:")
        for err in e.errors:
            print(f"  - {err}")
        return 1
    print(f"wrote {path}:\n{path.read_text()}")
    if a.push:
        try:
            repo_id = push_folder(a.model_dir, a.push, api_factory=api_factory)
        except (ValueError, RuntimeError, FileNotFoundError) as e:
            print(f"push failed: {e}")
            return 1
        print(f"uploaded {a.model_dir} to https://huggingface.co/{repo_id} (public). Optional: validators check no "
              "model card and NATIX requires no registration any more (upstream, 2025-11 to 2026-05).")
    return 0
