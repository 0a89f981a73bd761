"""The openai engine against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from natix_miner.engine.deadline import Deadline
from natix_miner.models.base import AdapterError
from natix_miner.models.registry import build_adapter
from natix_miner.models.vlm.engines.openai_engine import OpenAIEngine, parse_generation, parse_top_logprobs
from natix_miner.models.vlm.prompts import yes_no_prompt
from natix_miner.profile import ModelSpec

MODEL = "test/Qwen2.5-VL-7B-Instruct"


def red_share(data_url: str) -> float:
    raw = base64.b64decode(data_url.split(",", 1)[1])
    im = Image.open(io.BytesIO(raw)).convert("RGB").resize((4, 4))
    px = list(im.getdata())
    r = sum(p[0] for p in px) + 1.0
    b = sum(p[2] for p in px) + 1.0
    return r / (r + b)


class FakeServer:
    """/v1/models and /v1/chat/completions; ``mode`` picks the behaviour of completions."""

    def __init__(self, models=(MODEL,)):
        self.mode = "ok"
        self.models = list(models)
        self.requests: list[dict] = []
        self.ports: set[int] = set()
        self.lock = threading.Lock()
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive

            def log_message(self, *a):
                pass

            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    if srv.mode == "health_500":
                        return self._send(500, b"{}")
                    return self._send(200, json.dumps({"data": [{"id": m} for m in srv.models]}).encode())
                self._send(404, b"{}")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with srv.lock:
                    srv.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    srv.ports.add(self.client_address[1])
                mode = srv.mode
                if mode == "slow":
                    time.sleep(3.0)
                if mode == "500":
                    return self._send(500, b'{"error": "boom"}')
                if mode == "badjson":
                    return self._send(200, b"{not json")
                if mode == "nologprobs":
                    return self._send(200, json.dumps({"choices": [{"message": {"content": "yes"}}]}).encode())
                url = body["messages"][-1]["content"][0]["image_url"]["url"] if body["messages"][-1]["role"] == "user" \
                    else body["messages"][-2]["content"][0]["image_url"]["url"]
                p = red_share(url)
                if body.get("max_tokens", 1) > 1:  # reasoning step
                    out = {"choices": [{"message": {"content": "I see cones."}, "finish_reason": "stop"}],
                           "usage": {"completion_tokens": 4}}
                    return self._send(200, json.dumps(out).encode())
                tops = [{"token": " yes", "logprob": math.log(p * 0.9)},
                        {"token": " no", "logprob": math.log((1 - p) * 0.9)},
                        {"token": "Yes", "logprob": math.log(p * 0.05)}, {"token": " maybe", "logprob": math.log(0.01)}]
                out = {"choices": [{"message": {"content": " yes"}, "finish_reason": "length",
                                    "logprobs": {"content": [{"token": " yes", "logprob": tops[0]["logprob"],
                                                              "top_logprobs": tops[: body.get("top_logprobs", 20)]}]}}]}
                self._send(200, json.dumps(out).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def engine(server, **opts):
    o = {"base_url": server.url, "served_model_name": MODEL, "request_timeout_s": 2.0, "health_interval_s": 0}
    o.update(opts)
    e = OpenAIEngine(model=MODEL, family="qwen2_5_vl", options=o)
    e.load()
    return e


RED = Image.new("RGB", (320, 200), (220, 20, 20))
BLUE = Image.new("RGB", (320, 200), (20, 20, 220))


def test_logprobs_are_parsed_per_image_with_keepalive_and_auth(server, monkeypatch):
    monkeypatch.setenv("MY_VLM_KEY", "sekret")
    e = engine(server, api_key_env="MY_VLM_KEY", max_concurrency=2, max_image_side=160)
    try:
        prompt = yes_no_prompt("qwen2_5_vl")
        out = e.yes_no_logprobs([RED, BLUE, RED, BLUE], prompt, top_k=3)
        assert len(out) == 4 and all(o is not None for o in out)
        assert set(out[0]) == {" yes", " no", "Yes"}  # top_logprobs=3 respected
        from natix_miner.models.vlm.yesno import p_yes

        assert p_yes(out[0]) > 0.8 and p_yes(out[1]) < 0.2
        b = server.requests[0]["body"]
        assert b["model"] == MODEL and b["max_tokens"] == 1 and b["logprobs"] is True and b["top_logprobs"] == 3
        assert b["temperature"] == 0.0
        url = b["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        assert Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size == (160, 100)  # downscaled
        assert all(r["auth"] == "Bearer sekret" for r in server.requests)
        for _ in range(3):
            e.yes_no_logprobs([RED], prompt)
        assert len(server.requests) == 7
        assert len(server.ports) <= 2  # connections reused (max_concurrency=2)
    finally:
        e.close()


def test_slow_response_times_out_quickly_with_no_vote(server):
    e = engine(server, request_timeout_s=0.4, max_retries=3)
    try:
        server.mode = "slow"
        t0 = time.monotonic()
        out = e.yes_no_logprobs([RED], yes_no_prompt("qwen2_5_vl"), timeout_s=5.0)
        dt = time.monotonic() - t0
        assert out == [None]
        assert dt < 1.5  # the 3 s server delay is not waited for, and a timeout is never retried
        assert e.errors["timeout"] == 1 and len(server.requests) == 1
        # the deadline-derived timeout wins when it is shorter than request_timeout_s
        e.request_timeout_s = 5.0
        t0 = time.monotonic()
        assert e.yes_no_logprobs([RED], yes_no_prompt("qwen2_5_vl"), timeout_s=0.3) == [None]
        assert time.monotonic() - t0 < 1.2
    finally:
        e.close()


@pytest.mark.parametrize("mode,kind", [("500", "http_500"), ("badjson", "bad_response"),
                                       ("nologprobs", "bad_response")])
def test_server_errors_give_no_vote_and_are_counted(server, mode, kind):
    e = engine(server, max_retries=1)
    try:
        server.mode = mode
        out = e.yes_no_logprobs([RED, BLUE], yes_no_prompt("qwen2_5_vl"), timeout_s=3.0)
        assert out == [None, None]
        assert e.errors[kind] == 4  # 2 images × (1 try + 1 retry)
        assert len(server.requests) == 4
    finally:
        e.close()


def test_health_check_failures_at_load_raise_clear_errors(server):
    with pytest.raises(AdapterError, match="not served"):
        OpenAIEngine(model="other/model", family="qwen2_5_vl",
                     options={"base_url": server.url, "health_interval_s": 0}).load()
    server.mode = "health_500"
    with pytest.raises(AdapterError, match="HTTP 500"):
        engine(server)
    dead = FakeServer()
    url = dead.url
    dead.close()
    with pytest.raises(AdapterError, match="health check"):
        OpenAIEngine(model=MODEL, family="qwen2_5_vl", options={"base_url": url, "health_interval_s": 0}).load()
    with pytest.raises(AdapterError, match="base_url"):
        OpenAIEngine(model=MODEL, family="qwen2_5_vl", options={})


def test_periodic_health_check_fails_fast_then_recovers(server):
    e = engine(server, health_interval_s=0.1)
    try:
        server.mode = "health_500"
        t0 = time.monotonic()
        while e.healthy and time.monotonic() - t0 < 3:
            time.sleep(0.05)
        assert not e.healthy
        n = len(server.requests)
        assert e.yes_no_logprobs([RED], yes_no_prompt("qwen2_5_vl")) == [None]
        assert len(server.requests) == n and e.errors["unhealthy"] == 1  # no request sent
        server.mode = "ok"
        t0 = time.monotonic()
        while not e.healthy and time.monotonic() - t0 < 3:
            time.sleep(0.05)
        assert e.yes_no_logprobs([RED], yes_no_prompt("qwen2_5_vl"))[0] is not None
    finally:
        e.close()


def test_adapter_end_to_end_with_thinking_over_http(server):
    spec = ModelSpec(name="remote", type="vlm", licence="Apache-2.0", model=MODEL,
                     options={"engine": "openai", "base_url": server.url, "health_interval_s": 0, "warmup": False})
    a = build_adapter(spec)
    a.load("cpu")
    try:
        votes = a.predict([RED, BLUE], deadline=Deadline.after(3.0))
        assert votes[0].p > 0.8 and votes[1].p < 0.2
        assert a.memory_mb == 0.0
    finally:
        a.unload()
    spec.options.update({"thinking": True, "s_per_token": 0.005, "max_thinking_tokens": 64})
    a = build_adapter(spec)
    a.load("cpu")
    try:
        server.requests.clear()
        votes = a.predict([RED], deadline=Deadline.after(3.0))
        assert votes[0].p > 0.8
        reason, final = server.requests[0]["body"], server.requests[1]["body"]
        assert reason["max_tokens"] == 64 and reason["stop"] == ["Final answer"]
        assert final["max_tokens"] == 1 and final["continue_final_message"] is True
        assert final["add_generation_prompt"] is False
        assert final["messages"][-1] == {"role": "assistant", "content": "I see cones.\n\nFinal answer (yes or no):"}
    finally:
        a.unload()


def test_response_parsers():
    assert parse_top_logprobs({"choices": []}) is None
    one = {"choices": [{"logprobs": {"content": [{"token": "No", "logprob": -0.1}]}}]}
    assert parse_top_logprobs(one) == {"No": -0.1}
    g = parse_generation({"choices": [{"message": {"content": "abc"}, "finish_reason": "length"}],
                          "usage": {"completion_tokens": 7}})
    assert g.finish_reason == "length" and g.n_tokens == 7 and g.text == "abc"
    assert parse_generation({"nope": 1}) is None


def test_base_url_env_overrides(server, monkeypatch):
    monkeypatch.setenv("NATIX_TEST_VLM_URL", server.url)
    e = OpenAIEngine(model=MODEL, family="qwen2_5_vl",
                     options={"base_url": "http://127.0.0.1:9/v1", "base_url_env": "NATIX_TEST_VLM_URL",
                              "health_interval_s": 0})
    e.load()
    try:
        assert e.base_url == server.url and e.healthy
    finally:
        e.close()
