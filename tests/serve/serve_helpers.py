"""Helpers for the serve tests (imported as ``serve_helpers``).

:class:`StubService` speaks the service's wire format (``natix_miner.engine.remote``) on loopback
with an in-process ``CascadeEngine`` behind it, and can be made slow, failing, garbled or stopped
and restarted on the same port: the client's degraded-mode tests need no Ray.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

from natix_miner.profile import parse_profile

COLOR_PROFILE = {
    "name": "serve-test",
    "deadline_s": 3.0,
    "batching": {"max_batch": 16, "max_wait_ms": 2.0},
    "tiers": [
        {"name": "fast", "exit_threshold": 0.9,
         "models": [{"name": "color", "type": "fake", "licence": "MIT", "batch_size": 1,
                     "options": {"p_by_color": True}}]},
        {"name": "slow", "exit_threshold": 0.99,
         "models": [{"name": "steady", "type": "fake", "licence": "MIT", "options": {"p": 0.7}}]},
    ],
}


def color_profile(**serve):
    data = json.loads(json.dumps(COLOR_PROFILE))
    if serve:
        data["serve"] = serve
    return parse_profile(data)


def images(n: int = 6) -> list[Image.Image]:
    """Distinct solid images from red to blue (some exit at the first tier, some need the second)."""
    return [Image.new("RGB", (64, 48), (255 - i * 255 // max(1, n - 1), 40, i * 255 // max(1, n - 1)))
            for i in range(n)]


class StubService:
    """``POST /infer`` and ``GET /health`` like the Ray service; ``mode``: ok | slow | error | garbage."""

    def __init__(self, profile, port: int = 0, slow_s: float = 5.0):
        from natix_miner.engine.cascade import CascadeEngine

        self.engine = CascadeEngine(profile)
        self.engine.start()
        self.mode = "ok"
        self.slow_s = slow_s
        self.requests = 0
        self.deadlines_ms: list[float] = []
        self.port = port
        self._server: ThreadingHTTPServer | None = None

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, obj) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, {"ready": True, "profile": outer.engine.profile.name, "models": ["color"]})

            def do_POST(self):
                from natix_miner.engine.remote import WireError, decode_image

                outer.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.mode == "slow":
                    time.sleep(outer.slow_s)
                if outer.mode == "error":
                    return self._send(500, {"error": "injected"})
                if outer.mode == "garbage":
                    return self._send(200, {"prediction": 7.0, "exit_reason": "threshold"})
                try:
                    im = decode_image(body, self.headers)
                except WireError as e:
                    return self._send(400, {"error": str(e)})
                ms = float(self.headers["X-Deadline-Ms"])
                outer.deadlines_ms.append(ms)
                res = outer.engine.infer_batch_sync([im], keys=[self.headers.get("X-Image-Key")],
                                                    deadline_s=ms / 1000.0)[0]
                self._send(200, res.to_dict())

            def log_message(self, *a):
                return

        return Handler

    def start(self) -> "StubService":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop()
        self.engine.close()


def wait_until(cond, timeout: float = 30.0, step: float = 0.1) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(step)
    return cond()
