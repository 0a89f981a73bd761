"""scripts/register.py against a fake NATIX server on 127.0.0.1 (docs/protocol.md §4.8 exit codes)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from _helpers import make_wallet
from natix_miner.ops import register as reg


class FakeNatix:
    """POST /participants/register answers ``register_reply``; GET .../registration-status/<uid> pops
    ``statuses`` (the last one repeats). Everything received is recorded."""

    def __init__(self, statuses, register_reply=(200, {"detail": "Registration queued"})):
        self.statuses = list(statuses)
        self.register_reply = register_reply
        self.posts: list = []
        self.gets: list = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                outer.posts.append((self.path, self.headers.get("Content-Type"), json.loads(self.rfile.read(n))))
                self._send(*outer.register_reply)

            def do_GET(self):
                outer.gets.append(self.path)
                body = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self._send(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def wallet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regw")
    w = make_wallet(tmp, "miner", "hk")
    return {"w": w, "args": ["--wallet.name", "miner", "--wallet.hotkey", "hk", "--wallet.path", str(tmp)]}


def _run(wallet, base, *extra):
    return reg.main(["--uid", "17", *wallet["args"], "--model-repo", "someone/roadwork", "--base-url", base,
                     "--interval", "0.02", "--timeout", "0.2", *extra])


def test_dry_run_prints_a_verifiable_signed_request(wallet, capsys):
    from bittensor_wallet import Keypair

    rc = reg.main(["--uid", "17", *wallet["args"], "--model-repo", "https://huggingface.co/someone/roadwork",
                   "--dry-run"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "POST"
    assert out["url"] == "https://hydra.natix.network/participants/register"
    assert out["status_url"] == "https://hydra.natix.network/participants/registration-status/17"
    assert out["signature_verifies"] is True  # checked the way the server checks it (verify_payload)
    p = out["json"]
    assert list(p) == ["uid", "message", "natix_public_key", "natix_signature", "type", "model_repo"]
    assert all(isinstance(v, str) for v in p.values())
    assert p["uid"] == "17" and p["type"] == "miner" and p["model_repo"] == "someone/roadwork"
    assert p["natix_public_key"] == wallet["w"].hotkey.ss58_address
    assert p["message"].isdigit() and not p["natix_signature"].startswith("0x")
    kp = Keypair(ss58_address=p["natix_public_key"])
    assert kp.verify(p["message"].encode(), bytes.fromhex(p["natix_signature"]))
    assert not kp.verify(str(int(p["message"]) + 1).encode(), bytes.fromhex(p["natix_signature"]))
    assert reg.verify_payload(p)


def test_success_after_pending(wallet, capsys):
    with FakeNatix([{"status": "queued"}, {"status": "processing"}, {"status": "succeeded"}]) as srv:
        rc = _run(wallet, srv.url)
    assert rc == reg.EXIT_SUCCESS
    (path, ctype, payload), = srv.posts
    assert path == "/participants/register" and ctype == "application/json"
    assert reg.verify_payload(payload) and payload["uid"] == "17"
    assert srv.gets == ["/participants/registration-status/17"] * 3
    assert "Registration queued" in capsys.readouterr().out


def test_failure_prints_the_reason(wallet, capsys):
    with FakeNatix([{"status": "pending"}, {"status": "failed", "error_message": "model card missing"}]) as srv:
        rc = _run(wallet, srv.url)
    assert rc == reg.EXIT_FAILED
    assert "model card missing" in capsys.readouterr().out


def test_timeout_after_the_allowed_attempts(wallet):
    with FakeNatix([{"status": "pending"}]) as srv:
        rc = _run(wallet, srv.url)
    assert rc == reg.EXIT_TIMEOUT
    assert len(srv.gets) == int(0.2 // 0.02)  # register.sh: TIMEOUT_SECONDS / POLL_INTERVAL attempts


def test_non_json_register_reply_exits_3(wallet):
    with FakeNatix([{"status": "succeeded"}], register_reply=(502, "<html>Bad gateway</html>")) as srv:
        rc = _run(wallet, srv.url)
    assert rc == reg.EXIT_NOT_JSON
    assert srv.gets == []  # no polling after a non-JSON enqueue reply


def test_non_json_and_unknown_status_keep_polling(wallet):
    with FakeNatix(["oops, not json", {"status": "weird"}, {"status": "success"}]) as srv:
        rc = _run(wallet, srv.url)
    assert rc == reg.EXIT_SUCCESS and len(srv.gets) == 3


def test_poll_status_uses_injected_clock():
    replies = iter([reg.HttpReply(200, '{"status": ""}'), reg.HttpReply(200, '{"status": "error"}')])
    sleeps: list = []
    res = reg.poll_status("http://x", 5, interval=3, timeout=180, get=lambda url: next(replies),
                          sleep=sleeps.append, out=lambda s: None)
    assert res.exit_code == reg.EXIT_FAILED and res.attempts == 2 and sleeps == [3]


def test_missing_hotkey_is_reported(tmp_path, capsys):
    rc = reg.main(["--uid", "1", "--wallet.name", "nobody", "--wallet.path", str(tmp_path),
                   "--model-repo", "a/b", "--dry-run"])
    assert rc == 1 and "not found" in capsys.readouterr().out


def test_no_network_is_its_own_case(wallet, capsys):
    from _helpers import free_port

    base = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    rc = _run(wallet, base)
    out = capsys.readouterr().out
    assert rc == reg.EXIT_NO_NETWORK and rc not in (reg.EXIT_NOT_JSON, reg.EXIT_FAILED, reg.EXIT_TIMEOUT)
    assert "no network: could not reach" in out and "not JSON" not in out and "still waiting" not in out


def test_register_is_presented_as_optional():
    text = reg.build_parser().format_help()
    assert "Optional" in text and "register.sh deleted 2026-05-03" in " ".join(text.split())
