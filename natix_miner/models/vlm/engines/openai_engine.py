"""Remote engine: an OpenAI-compatible ``/v1/chat/completions`` endpoint (``vllm serve``, Ray Serve LLM).

Each image is one request: the image as a base64 JPEG data URL plus the question, ``max_tokens=1``,
``temperature=0``, ``logprobs=true``, ``top_logprobs=k``; the answer's
``choices[0].logprobs.content[0].top_logprobs`` become the ``{token: logprob}`` mapping. A batch is
sent concurrently over one keep-alive ``httpx.Client`` (connection reuse; ``max_concurrency``
requests in flight).

Time: every request's timeout is ``min(request_timeout_s, timeout_s)`` where ``timeout_s`` is what
the adapter derives from the request deadline; a failed request (HTTP 5xx, connection error,
malformed JSON — never a timeout) is retried at most ``max_retries`` times and only while the time
left still covers the slowest answer seen so far. Failures are counted in ``errors`` by kind
(``timeout``, ``http_<status>``, ``connect``, ``bad_response``, ``unhealthy``) and give no vote.

Health: ``load()`` calls ``GET {base_url}/models`` and raises :class:`AdapterError` when the
server does not answer or does not serve the model; a daemon thread repeats the check every
``health_interval_s`` and, while it fails, calls return "no vote" at once instead of waiting for
timeouts.

Options: ``base_url`` (required, e.g. ``http://gpu-box:8000/v1``; ``base_url_env`` names an environment
variable that overrides it, so several miners can share one profile), ``served_model_name`` (default
``spec.model``), ``api_key_env`` (default ``OPENAI_API_KEY``; an unset variable means no key) or
``api_key``, ``request_timeout_s`` (5.0), ``connect_timeout_s`` (1.0), ``max_retries`` (1),
``max_concurrency`` (8), ``health_interval_s`` (30; 0 = only at load), ``jpeg_quality`` (90),
``max_image_side`` (downscale before sending; default: send as is), ``extra_body`` (dict merged into
every request, e.g. ``{"mm_processor_kwargs": {"max_pixels": 1003520}}``).

Thinking tier over HTTP: the reasoning request uses ``max_tokens=<budget>`` and ``stop``; the final
step sends the reasoning back as a final assistant message with ``continue_final_message: true,
add_generation_prompt: false`` (vLLM extensions). Serve thinking models WITHOUT
``--reasoning-parser`` so the reasoning comes back in ``content``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loguru import logger

from natix_miner.models.base import AdapterError
from natix_miner.models.vlm.engines.base import Generation, VLMEngine
from natix_miner.models.vlm.prompts import openai_messages, prompts_for
from natix_miner.models.vlm.yesno import merge_logprobs

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: below this many seconds left, no request is started (it could not come back in time)
MIN_REQUEST_S = 0.02


def image_data_url(image: "Image.Image", *, quality: int = 90, max_side: int | None = None) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URL (RGB, optionally downscaled)."""
    im = image.convert("RGB")
    if max_side and max(im.size) > max_side:
        s = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_top_logprobs(data: Any) -> dict[str, float] | None:
    """``{token: logprob}`` of the first generated token of a chat-completions response."""
    try:
        first = data["choices"][0]["logprobs"]["content"][0]
        tops = first.get("top_logprobs") or [first]
        pairs = [(str(t["token"]), float(t["logprob"])) for t in tops]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return merge_logprobs(pairs) or None


def parse_generation(data: Any) -> Generation | None:
    try:
        ch = data["choices"][0]
        msg = ch["message"]
        text = (msg.get("reasoning_content") or msg.get("reasoning") or "") + (msg.get("content") or "")
        reason = ch.get("finish_reason") or "stop"
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    usage = data.get("usage") or {}
    n = int(usage.get("completion_tokens") or 0)
    return Generation(text=text, finish_reason="length" if reason == "length" else "stop", n_tokens=n)


class OpenAIEngine(VLMEngine):
    kind = "openai"

    def __init__(self, *, model: str, family: str, device: str = "cpu", options: dict[str, Any] | None = None):
        super().__init__(model=model, family=family, device=device, options=options)
        o = self.options
        env_name = o.get("base_url_env")
        base = (os.environ.get(str(env_name)) if env_name else None) or o.get("base_url")
        if not base:
            raise AdapterError("the openai VLM engine needs options.base_url (e.g. http://gpu-box:8000/v1)"
                               + (f" or the environment variable {env_name}" if env_name else ""))
        self.base_url = str(base).rstrip("/")
        self.served_model = str(o.get("served_model_name") or model)
        self.request_timeout_s = float(o.get("request_timeout_s", 5.0))
        self.connect_timeout_s = float(o.get("connect_timeout_s", 1.0))
        self.max_retries = int(o.get("max_retries", 1))
        self.max_concurrency = max(1, int(o.get("max_concurrency", 8)))
        self.health_interval_s = float(o.get("health_interval_s", 30.0))
        self.jpeg_quality = int(o.get("jpeg_quality", 90))
        self.max_image_side = int(o["max_image_side"]) if o.get("max_image_side") else None
        self.extra_body = dict(o.get("extra_body") or {})
        self.healthy = False
        self.slowest_ok_s = 0.0
        self._client: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._health_thread: threading.Thread | None = None

    def api_key(self) -> str | None:
        if self.options.get("api_key"):
            return str(self.options["api_key"])
        return os.environ.get(str(self.options.get("api_key_env") or "OPENAI_API_KEY")) or None

    # -------------------------------------------------------------------------------- lifecycle
    def load(self) -> None:
        import httpx

        headers = {"Content-Type": "application/json"}
        key = self.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency,
                              keepalive_expiry=60.0)
        self._client = httpx.Client(base_url=self.base_url, headers=headers, limits=limits,
                                    timeout=httpx.Timeout(self.request_timeout_s, connect=self.connect_timeout_s))
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="vlm-http")
        ok, why = self.check_health()
        if not ok:
            self.close()
            raise AdapterError(f"VLM endpoint {self.base_url} failed its health check: {why}. Start the server "
                               f"(e.g. `vllm serve {self.served_model} --port 8000`) and check options.base_url / "
                               "served_model_name / the API key")
        if self.health_interval_s > 0:
            self._health_thread = threading.Thread(target=self._health_loop, name="vlm-health", daemon=True)
            self._health_thread.start()

    def check_health(self) -> tuple[bool, str]:
        """``GET /models``: the server answers and serves our model."""
        try:
            r = self._client.get("/models", timeout=max(self.connect_timeout_s, 2.0))
        except Exception as e:
            self.healthy = False
            return False, f"{type(e).__name__}: {e}"
        if r.status_code != 200:
            self.healthy = False
            return False, f"GET /models returned HTTP {r.status_code}"
        try:
            ids = [m.get("id") for m in r.json().get("data", [])]
        except (ValueError, AttributeError):
            self.healthy = False
            return False, "GET /models returned malformed JSON"
        if self.served_model not in ids:
            self.healthy = False
            return False, f"model {self.served_model!r} is not served (served: {ids})"
        self.healthy = True
        return True, "ok"

    def _health_loop(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            was = self.healthy
            ok, why = self.check_health()
            if was and not ok:
                logger.warning(f"VLM endpoint {self.base_url} unhealthy: {why}")
            elif ok and not was:
                logger.info(f"VLM endpoint {self.base_url} healthy again")

    def close(self) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # pragma: no cover
                pass
            self._client = None

    # -------------------------------------------------------------------------------- requests
    def _post(self, body: dict[str, Any], deadline_at: float, parse: Callable[[Any], Any]) -> Any:
        """One request with bounded retries; None on failure (counted)."""
        import httpx

        attempt = 0
        while True:
            left = deadline_at - time.monotonic()
            if left < MIN_REQUEST_S:
                self.count_error("timeout")
                return None
            t = min(self.request_timeout_s, left)
            t0 = time.monotonic()
            try:
                r = self._client.post("/chat/completions", json=body,
                                      timeout=httpx.Timeout(t, connect=min(self.connect_timeout_s, t)))
            except httpx.TimeoutException:
                self.count_error("timeout")
                return None  # never retried: the time is gone
            except httpx.HTTPError as e:
                kind, why = "connect", f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        out = parse(r.json())
                    except (ValueError, json.JSONDecodeError):
                        out = None
                    if out is not None:
                        self.slowest_ok_s = max(self.slowest_ok_s * 0.95, time.monotonic() - t0)
                        return out
                    kind, why = "bad_response", "malformed response"
                else:
                    kind, why = f"http_{r.status_code}", r.text[:200]
            self.count_error(kind)
            attempt += 1
            left = deadline_at - time.monotonic()
            if attempt > self.max_retries or kind.startswith("http_4") or left < max(self.slowest_ok_s * 1.5, 0.05):
                logger.debug(f"VLM request to {self.base_url} failed ({kind}: {why}); no vote")
                return None

    def _map(self, fn: Callable[[int], Any], n: int) -> list[Any]:
        if self._client is None or self._pool is None:
            raise AdapterError("openai engine not loaded")
        if n == 1:
            return [fn(0)]
        return list(self._pool.map(fn, range(n)))

    def _deadline_at(self, timeout_s: float | None) -> float:
        t = self.request_timeout_s * (1 + self.max_retries) if timeout_s is None else float(timeout_s)
        return time.monotonic() + t

    def _body(self, prompt: Any, image: "Image.Image", **fields: Any) -> dict[str, Any]:
        url = image_data_url(image, quality=self.jpeg_quality, max_side=self.max_image_side)
        msgs, extra = openai_messages(prompt, url)
        body = {"model": self.served_model, "messages": msgs, "temperature": 0.0, **fields, **extra}
        body.update(self.extra_body)
        return body

    def _requests(self, images, prompt_builder, timeout_s, fields: dict[str, Any], parse) -> list:
        """One request per image (concurrently, all inside one deadline); ``None`` for each failure and
        for every image while the endpoint is marked unhealthy."""
        n = len(images)
        if n == 0:
            return []
        if not self.healthy:
            self.count_error("unhealthy")
            return [None] * n
        prompts = prompts_for(prompt_builder, n)
        at = self._deadline_at(timeout_s)
        return self._map(lambda i: self._post(self._body(prompts[i], images[i], **fields), at, parse), n)

    def yes_no_logprobs(self, images, prompt_builder, top_k: int = 20, *, timeout_s=None):
        fields = {"max_tokens": 1, "logprobs": True, "top_logprobs": int(top_k)}
        return self._requests(images, prompt_builder, timeout_s, fields, parse_top_logprobs)

    def generate(self, images, prompt_builder, max_tokens: int, *, stop: Sequence[str] = (), timeout_s=None):
        fields: dict[str, Any] = {"max_tokens": int(max_tokens)}
        if stop:
            fields["stop"] = list(stop)
        return self._requests(images, prompt_builder, timeout_s, fields, parse_generation)
