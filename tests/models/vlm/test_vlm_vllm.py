"""The vllm engine without vLLM: request building, output parsing, GPU pinning, and the worker
protocol against a fake ``vllm`` package in a real spawned process."""

from __future__ import annotations

import math
import textwrap
from types import SimpleNamespace

import pytest
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.vlm.engines import vllm_engine as V
from natix_miner.models.vlm.prompts import Prompt, yes_no_prompt


def test_cuda_visible_devices_mapping():
    assert V.cuda_visible_devices("cuda:1") == "1"
    assert V.cuda_visible_devices("cuda") == "0"
    assert V.cuda_visible_devices("cuda:0", tensor_parallel_size=2) == "0,1"
    # the parent already restricts the GPUs: index 1 of "2,3" is physical GPU 3
    assert V.cuda_visible_devices("cuda:1", parent="2,3") == "3"
    assert V.cuda_visible_devices("cuda:0", 2, parent="4,5,6") == "4,5"
    with pytest.raises(AdapterError, match="only 2 GPU"):
        V.cuda_visible_devices("cuda:2", parent="0,1")
    with pytest.raises(AdapterError, match="CUDA device"):
        V.cuda_visible_devices("cpu")


def test_fp4_is_refused_on_hopper_and_allowed_on_blackwell():
    with pytest.raises(AdapterError, match="compute capability >= 10.0.*9.0"):
        V.check_quantization("nvfp4", (9, 0))
    with pytest.raises(AdapterError, match="modelopt_fp4"):
        V.check_quantization("modelopt_fp4", (9, 0))
    with pytest.raises(AdapterError, match="no CUDA GPU"):
        V.check_quantization("nvfp4", None)
    V.check_quantization("nvfp4", (10, 0))
    V.check_quantization("fp8", (9, 0))
    V.check_quantization(None, None)


def test_engine_kwargs():
    kw = V.engine_kwargs("Qwen/Qwen3-VL-4B-Instruct-FP8", "qwen3_vl",
                         {"gpu_memory_utilization": 0.12, "kv_cache_dtype": "fp8", "quantization": "fp8",
                          "max_model_len": 2048, "min_pixels": 3136, "max_pixels": 802816,
                          "engine_args": {"enforce_eager": True}})
    assert kw["model"] == "Qwen/Qwen3-VL-4B-Instruct-FP8"
    assert kw["gpu_memory_utilization"] == 0.12 and "kv_cache_memory_bytes" not in kw
    assert kw["kv_cache_dtype"] == "fp8" and kw["quantization"] == "fp8"
    assert kw["max_model_len"] == 2048 and kw["limit_mm_per_prompt"] == {"image": 1}
    assert kw["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 802816}
    assert kw["enforce_eager"] is True and kw["trust_remote_code"] is False
    assert "enable_lora" not in kw and "max_logprobs" not in kw
    kw = V.engine_kwargs("m", "molmo2", {"kv_cache_memory_bytes": 2 * 2**30, "gpu_memory_utilization": 0.5,
                                         "top_k": 50})
    assert kw["kv_cache_memory_bytes"] == 2 * 2**30 and "gpu_memory_utilization" not in kw
    assert kw["trust_remote_code"] is True and kw["max_logprobs"] == 50


def test_phi4_vision_lora(tmp_path):
    (tmp_path / "vision-lora").mkdir()
    kw = V.engine_kwargs(str(tmp_path), "phi4mm", {})
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 320
    assert V.vision_lora_path(str(tmp_path), "phi4mm", {}) == str(tmp_path / "vision-lora")
    assert V.vision_lora_path(str(tmp_path), "qwen3_vl", {}) is None


def test_sampling_kwargs():
    assert V.yes_no_sampling_kwargs(20) == {"max_tokens": 1, "temperature": 0.0, "logprobs": 20, "detokenize": True}
    g = V.generate_sampling_kwargs(128, ["</think>"])
    assert g == {"max_tokens": 128, "temperature": 0.0, "stop": ["</think>"], "include_stop_str_in_output": False}


def test_build_requests_and_prompt_format():
    im = Image.new("RGB", (8, 8))
    reqs = V.build_requests([yes_no_prompt("phi4mm", question="Q?")], [im])
    assert reqs == [{"prompt": "<|user|><|image_1|>Q?<|end|><|assistant|>", "multi_modal_data": {"image": im}}]
    assert V.use_template("internvl", {}) and not V.use_template("qwen3_vl", {})
    assert V.use_template("qwen3_vl", {"prompt_format": "template"})
    with pytest.raises(AdapterError):
        V.use_template("qwen3_vl", {"prompt_format": "jinja"})


def _out(logprobs=None, text="", finish="stop", ids=()):
    return SimpleNamespace(outputs=[SimpleNamespace(logprobs=logprobs, text=text, finish_reason=finish,
                                                    token_ids=list(ids))])


def Lp(logprob, decoded):
    return SimpleNamespace(logprob=logprob, rank=1, decoded_token=decoded)


def test_parse_yes_no_output():
    o = _out([{9454: Lp(math.log(0.6), " Yes"), 2753: Lp(math.log(0.3), " No"), 11: Lp(-5.0, "."),
               77: Lp(math.log(0.05), " Yes")}])  # two ids decoding alike are summed
    d = V.parse_yes_no_output(o)
    assert d[" Yes"] == pytest.approx(math.log(0.65)) and d[" No"] == pytest.approx(math.log(0.3))
    from natix_miner.models.vlm.yesno import p_yes

    assert p_yes(d) == pytest.approx(0.65 / 0.95)
    assert V.parse_yes_no_output(_out(None)) is None
    assert V.parse_yes_no_output(_out([{}])) is None
    assert V.parse_yes_no_output(SimpleNamespace(outputs=[])) is None
    assert V.parse_yes_no_output(_out([{5: Lp(-0.1, None)}])) == {"<id:5>": -0.1}


def test_parse_generation_output():
    g = V.parse_generation_output(_out(text="cones", finish="length", ids=[1, 2, 3]))
    assert (g.text, g.finish_reason, g.n_tokens) == ("cones", "length", 3)
    assert V.parse_generation_output(_out(text="x", finish="stop", ids=[1])).finish_reason == "stop"
    assert V.parse_generation_output(SimpleNamespace(outputs=[])) is None


FAKE_VLLM = '''
import os, time

class SamplingParams:
    def __init__(self, **kw):
        self.kw = kw

class Logprob:
    def __init__(self, logprob, decoded_token):
        self.logprob, self.decoded_token, self.rank = logprob, decoded_token, 1

class LLM:
    def __init__(self, **kw):
        if kw.get("model") == "fail/model":
            raise RuntimeError("CUDA out of memory (fake)")
        self.kw = kw
        self.env = os.environ.get("CUDA_VISIBLE_DEVICES")

    def get_tokenizer(self):
        return None

    def generate(self, reqs, sp, use_tqdm=False, lora_request=None):
        import math
        from types import SimpleNamespace as NS
        outs = []
        for r in reqs:
            if "SLOW" in r["prompt"]:
                time.sleep(2.0)
            im = r["multi_modal_data"]["image"].convert("RGB").resize((2, 2))
            px = list(im.getdata())
            red = (sum(p[0] for p in px) + 1.0) / (sum(p[0] + p[2] for p in px) + 2.0)
            if sp.kw["max_tokens"] == 1:
                lps = [{1: Logprob(math.log(red), " yes"), 2: Logprob(math.log(1 - red), " no"),
                        3: Logprob(-9.0, self.env)}]
                outs.append(NS(outputs=[NS(logprobs=lps, text=" yes", finish_reason="length", token_ids=[1])]))
            else:
                outs.append(NS(outputs=[NS(logprobs=None, text="reasoning on " + str(self.kw["max_model_len"]),
                                           finish_reason="length", token_ids=list(range(sp.kw["max_tokens"])))]))
        return outs
'''


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    pkg = tmp_path / "fakevllm" / "vllm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FAKE_VLLM))
    monkeypatch.syspath_prepend(str(tmp_path / "fakevllm"))  # spawn children inherit sys.path
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return pkg


def _engine(model="fake/Qwen2-VL", **opts):
    o = {"max_model_len": 1234, "measure_memory": False, "warmup_iters": 1, "load_timeout_s": 120,
         "close_timeout_s": 10}
    o.update(opts)
    e = V.VLLMEngine(model=model, family="qwen2_vl", device="cuda:1", options=o)
    e.capability_probe = lambda device: (9, 0)  # an H100, without touching CUDA here
    return e


def test_worker_process_protocol_pinning_timeouts_and_close(fake_vllm):
    e = _engine()
    e.load()
    try:
        assert e.info["cuda_visible_devices"] == "1"  # cuda:1 pinned in the worker's environment
        assert e.info["warmup_s"] >= 0
        red, blue = Image.new("RGB", (32, 32), (250, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 250))
        out = e.yes_no_logprobs([red, blue], yes_no_prompt("qwen2_vl"), 5, timeout_s=30)
        from natix_miner.models.vlm.yesno import p_yes

        assert p_yes(out[0]) > 0.9 and p_yes(out[1]) < 0.1
        assert out[0]["1"] == -9.0  # the fake reports CUDA_VISIBLE_DEVICES as a token
        gens = e.generate([red], yes_no_prompt("qwen2_vl"), 7, stop=["</think>"], timeout_s=30)
        assert gens[0].finish_reason == "length" and gens[0].n_tokens == 7
        assert gens[0].text == "reasoning on 1234"  # engine kwargs reached vllm.LLM
        # a call that times out gives no vote at once; its late answer is dropped, the next call is fine
        slow = Prompt("qwen2_vl", "SLOW question")
        assert e.yes_no_logprobs([red], slow, timeout_s=0.3) == [None]
        assert e.errors["timeout"] == 1
        again = e.yes_no_logprobs([blue], yes_no_prompt("qwen2_vl"), timeout_s=30)
        assert p_yes(again[0]) < 0.1
    finally:
        e.close()
    assert not e._proc.is_alive()
    e.close()  # idempotent


def test_worker_start_failure_is_a_clear_adapter_error(fake_vllm):
    e = _engine(model="fail/model")
    with pytest.raises(AdapterError, match="failed to start: RuntimeError: CUDA out of memory"):
        e.load()
    assert not e._proc.is_alive()


def test_nvfp4_refused_before_any_process_starts(fake_vllm):
    e = _engine(quantization="nvfp4")
    with pytest.raises(AdapterError, match="Blackwell"):
        e.load()
    assert e._proc is None
