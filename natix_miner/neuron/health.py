"""A tiny HTTP status endpoint for pm2 checks, load balancers and monitoring.

``GET /health`` → 200 with JSON when the miner is ready (models loaded and warmed, axon serving),
503 otherwise. ``GET /stats`` → the same JSON, always 200. Served by a stdlib ``ThreadingHTTPServer``
in a daemon thread on ``--health.port`` (0 = off), bound to ``--health.host`` (default 127.0.0.1: keep
it private unless a load balancer needs it).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from loguru import logger


class HealthServer:
    def __init__(self, host: str, port: int, status_fn: Callable[[], dict]):
        self.status_fn = status_fn
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - stdlib name
                try:
                    status = outer.status_fn()
                except Exception as e:  # the endpoint must answer even when the miner is broken
                    status = {"ready": False, "error": f"{type(e).__name__}: {e}"}
                if self.path.startswith("/health"):
                    code = 200 if status.get("ready") else 503
                elif self.path.startswith("/stats"):
                    code = 200
                else:
                    code, status = 404, {"error": "not found; use /health or /stats"}
                body = json.dumps(status, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep the miner's log clean
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="health", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        logger.info(f"health endpoint on http://{self._server.server_address[0]}:{self.port}/health")
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
