"""Register the miner with the NATIX application server: ``register.sh`` in Python (docs/protocol.md §4.8).

**Optional, and probably unused today**: upstream removed the registration docs (2026-01/02) and deleted
``register.sh`` (2026-05-03); validators do not check it (docs/protocol.md §10). Kept for operators whom NATIX asks to.

Steps, as the upstream script (``register.sh``, 2025-11-30 version) does them:

1. ``message`` = the current unix time in seconds, as a string.
2. ``natix_signature`` = ``hotkey.sign(message.encode("utf-8")).hex()`` — sr25519, hex, no ``0x``
   (what ``btcli w sign --use-hotkey`` outputs); ``natix_public_key`` = the hotkey's SS58 address.
3. ``POST {base}/participants/register`` with the JSON object ``{uid, message, natix_public_key,
   natix_signature, type: "miner", model_repo}`` (every value a string). A reply that is not JSON
   ends the run with exit code 3; otherwise its ``detail`` is printed (whatever the HTTP status, as
   upstream does) and polling starts.
4. ``GET {base}/participants/registration-status/<uid>`` every ``interval`` (3 s) for at most
   ``timeout // interval`` attempts (180 s): ``succeeded``/``success`` → 0; ``failed``/``error``
   (with ``error_message``) → 1; ``pending``/``queued``/``processing``/empty, an unknown status, a
   non-JSON or failed poll → keep polling; out of attempts → 2.

No ``btcli`` or ``jq`` is needed; only the standard library does HTTP.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_BASE_URL = "https://hydra.natix.network"
REGISTER_PATH = "/participants/register"
STATUS_PATH = "/participants/registration-status/{uid}"
POLL_INTERVAL_S = 3.0
TIMEOUT_S = 180.0

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2
EXIT_NOT_JSON = 3
EXIT_NO_NETWORK = 4

SUCCESS_STATES = ("succeeded", "success")
FAILED_STATES = ("failed", "error")
PENDING_STATES = ("pending", "queued", "processing", "")


@dataclass
class HttpReply:
    status: int  # HTTP status; 0 when the request itself failed
    body: str


def sign_message(keypair: Any, message: str) -> str:
    """sr25519 signature of ``message`` (UTF-8) by ``keypair``, lower-case hex without ``0x``."""
    sig = keypair.sign(message.encode("utf-8"))
    if isinstance(sig, str):  # some keypair versions return 0x-hex
        return sig[2:] if sig.startswith("0x") else sig
    return bytes(sig).hex()


def build_payload(uid: int | str, keypair: Any, model_repo: str, *, timestamp: int | None = None,
                  participant_type: str = "miner") -> dict[str, str]:
    """The registration JSON, all values strings, keys in ``register.sh`` order."""
    message = str(int(time.time()) if timestamp is None else int(timestamp))
    payload = {
        "uid": str(uid),
        "message": message,
        "natix_public_key": str(keypair.ss58_address),
        "natix_signature": sign_message(keypair, message),
        "type": participant_type,
    }
    if participant_type == "miner":
        payload["model_repo"] = str(model_repo)
    return payload


def register_url(base_url: str) -> str:
    return base_url.rstrip("/") + REGISTER_PATH


def status_url(base_url: str, uid: int | str) -> str:
    return base_url.rstrip("/") + STATUS_PATH.format(uid=uid)


def verify_payload(payload: dict[str, str]) -> bool:
    """Check ``natix_signature`` against ``natix_public_key`` (what the server does)."""
    from bittensor_wallet import Keypair

    kp = Keypair(ss58_address=payload["natix_public_key"])
    return bool(kp.verify(payload["message"].encode("utf-8"), bytes.fromhex(payload["natix_signature"])))


def http_request(method: str, url: str, payload: dict | None = None, timeout: float = 30.0) -> HttpReply:
    """One HTTP request with urllib; HTTP errors are returned (with their body), not raised."""
    data = None
    headers = {"Accept": "application/json", "User-Agent": "natix-miner-register"}
    if payload is not None:
        data = json.dumps(payload).encode("utf-8")
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return HttpReply(r.status, r.read().decode("utf-8", errors="replace"))
    except urllib.error.HTTPError as e:
        try:
            body = e.read().decode("utf-8", errors="replace")
        except Exception:
            body = ""
        return HttpReply(e.code, body)
    except (urllib.error.URLError, OSError) as e:
        return HttpReply(0, f"request failed: {e}")


def _json(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return _NOT_JSON


_NOT_JSON = object()


@dataclass
class RegisterResult:
    exit_code: int
    detail: str | None = None
    status_payload: Any = None
    attempts: int = 0


def poll_status(base_url: str, uid: int | str, *, interval: float = POLL_INTERVAL_S, timeout: float = TIMEOUT_S,
                get: Callable[[str], HttpReply] | None = None, sleep: Callable[[float], None] = time.sleep,
                out: Callable[[str], None] = print) -> RegisterResult:
    """Poll the registration status like ``register.sh``; returns the exit code and the last payload."""
    get = get or (lambda url: http_request("GET", url))
    url = status_url(base_url, uid)
    max_attempts = max(1, int(timeout // interval)) if interval > 0 else 1
    last: Any = None
    for attempt in range(1, max_attempts + 1):
        reply = get(url)
        data = _json(reply.body)
        if data is _NOT_JSON:
            out(f"status endpoint returned non-JSON (HTTP {reply.status}): {reply.body[:300]}")
            sleep(interval)
            continue
        last = data
        status = str(data.get("status") or "") if isinstance(data, dict) else ""
        if status in SUCCESS_STATES:
            out(f"registration succeeded for uid {uid}: {json.dumps(data)}")
            return RegisterResult(EXIT_SUCCESS, status_payload=data, attempts=attempt)
        if status in FAILED_STATES:
            reason = data.get("error_message") if isinstance(data, dict) else None
            out(f"registration failed for uid {uid}" + (f": {reason}" if reason else "") + f" ({json.dumps(data)})")
            return RegisterResult(EXIT_FAILED, status_payload=data, attempts=attempt)
        if status in PENDING_STATES:
            out(f"... still waiting (attempt {attempt}/{max_attempts}, status {status or 'empty'!s})")
        else:
            out(f"unknown status {status!r}; full payload: {json.dumps(data)}")
        sleep(interval)
    out(f"timed out after {timeout:.0f} s waiting for the registration to finish; check later with:\n"
        f"  curl -s {url}")
    return RegisterResult(EXIT_TIMEOUT, status_payload=last, attempts=max_attempts)


def register(base_url: str, payload: dict[str, str], *, interval: float = POLL_INTERVAL_S,
             timeout: float = TIMEOUT_S, post: Callable[[str, dict], HttpReply] | None = None,
             get: Callable[[str], HttpReply] | None = None, sleep: Callable[[float], None] = time.sleep,
             out: Callable[[str], None] = print) -> RegisterResult:
    """POST the signed payload, print ``detail``, then :func:`poll_status`."""
    post = post or (lambda url, p: http_request("POST", url, p))
    url = register_url(base_url)
    out(f"sending the registration request to {url}")
    reply = post(url, payload)
    if reply.status == 0:  # the request never reached a server (DNS, refused, timeout, proxy)
        out(f"no network: could not reach {url} ({reply.body.removeprefix('request failed: ')[:300]}). Check the "
            "internet connection, DNS and any proxy/firewall, or --base-url")
        return RegisterResult(EXIT_NO_NETWORK)
    data = _json(reply.body)
    if data is _NOT_JSON:
        out(f"server response was not JSON (HTTP {reply.status}):\n{reply.body[:1000]}")
        return RegisterResult(EXIT_NOT_JSON)
    detail = data.get("detail") if isinstance(data, dict) else None
    if detail:
        out(f"! {detail if isinstance(detail, str) else json.dumps(detail)}")
    else:
        out(f"! unexpected response (HTTP {reply.status}): {json.dumps(data)}")
    res = poll_status(base_url, payload["uid"], interval=interval, timeout=timeout, get=get, sleep=sleep, out=out)
    res.detail = detail if isinstance(detail, str) else (json.dumps(detail) if detail else None)
    return res


# ---------------------------------------------------------------------------------------------- CLI
def build_parser():
    import argparse
    import os

    p = argparse.ArgumentParser(
        prog="scripts/register.py",
        description="Optional (upstream dropped the NATIX registration: register.sh deleted 2026-05-03; validators "
                    "do not check it). Register this miner with the NATIX application server (register.sh in "
                    "Python): sign the current timestamp with the hotkey, POST it with the model repo, then poll "
                    "the registration status. Exit codes: 0 success, 1 failed, 2 timeout, 3 non-JSON reply, "
                    "4 no network.",
    )
    p.add_argument("--uid", required=True, type=int, help="the miner's UID on the subnet")
    p.add_argument("--wallet.name", dest="wallet_name", default=os.environ.get("WALLET_NAME") or None)
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default=os.environ.get("WALLET_HOTKEY") or None)
    p.add_argument("--wallet.path", dest="wallet_path", default=os.environ.get("WALLET_PATH") or None)
    p.add_argument("--model-repo", required=True, help="public Hugging Face repo (optional to publish), e.g. user/roadwork")
    p.add_argument("--base-url", default=os.environ.get("PROXY_CLIENT_URL") or DEFAULT_BASE_URL)
    p.add_argument("--type", dest="participant_type", default="miner", choices=["miner", "validator"],
                   help=argparse.SUPPRESS)
    p.add_argument("--interval", type=float, default=float(os.environ.get("POLL_INTERVAL_SECONDS", POLL_INTERVAL_S)),
                   help="seconds between status polls")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("TIMEOUT_SECONDS", TIMEOUT_S)),
                   help="give up polling after this many seconds")
    p.add_argument("--dry-run", action="store_true", help="print the signed request (URL + JSON) and whether its signature verifies; send nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    from natix_miner.ops.model_card import sanitize_repo_id
    from natix_miner.ops.wallet_files import WalletFiles, load_hotkey_keypair

    a = build_parser().parse_args(argv)
    try:
        repo = sanitize_repo_id(a.model_repo)
    except ValueError as e:
        print(f"error: {e}")
        return 1
    wf = WalletFiles.from_args(a.wallet_name, a.wallet_hotkey, a.wallet_path)
    try:
        keypair = load_hotkey_keypair(wf)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 1
    payload = build_payload(a.uid, keypair, repo, participant_type=a.participant_type)
    if a.dry_run:
        print(json.dumps({"method": "POST", "url": register_url(a.base_url), "json": payload,
                          "status_url": status_url(a.base_url, a.uid),
                          "signature_verifies": verify_payload(payload)}, indent=2))
        return 0
    print(f"uid {a.uid}, hotkey {payload['natix_public_key']}, timestamp {payload['message']}, model repo {repo}")
    res = register(a.base_url, payload, interval=a.interval, timeout=a.timeout)
    return res.exit_code
