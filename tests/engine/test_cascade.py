"""The cascade engine end to end, with fake adapters (no weights, no network)."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_helpers import fake, make_profile, tier

from natix_miner.devices import PlacementError
from natix_miner.engine.cascade import CascadeEngine, EngineError, classify_error
from natix_miner.engine.deadline import Deadline
from natix_miner.models.registry import build_adapter


def engine_for(prof, **kw) -> CascadeEngine:
    kw.setdefault("devices", ["cpu"])
    eng = CascadeEngine(prof, **kw)
    eng.start()
    return eng


def adapter(eng: CascadeEngine, name: str):
    return eng._runners[name].adapter


def two_tier(slow_latency_ms: float = 0.0, **slow_opts):
    return make_profile(
        tier("fast", 0.9, fake("color", p_by_color=True)),
        tier("slow", 0.9, fake("slow", p=0.8, latency_ms=slow_latency_ms, **slow_opts)),
    )


# ------------------------------------------------------------------------------ cascade logic
def test_early_exit_when_confident_and_continue_when_not(red, grey):
    eng = engine_for(two_tier())
    try:
        r_red, r_grey = eng.infer_batch_sync([red, grey])
        assert r_red.exit_reason == "threshold" and r_red.tiers_used == ["fast"]
        assert r_red.prediction > 0.99 and r_red.raw_p > 0.99
        assert [v.model for v in r_red.votes] == ["color"]
        assert r_grey.tiers_used == ["fast", "slow"] and r_grey.exit_reason == "exhausted"
        # pooled: logit(0.5) + logit(0.8) -> 0.8
        assert r_grey.raw_p == pytest.approx(0.8) and r_grey.prediction == pytest.approx(0.8)
        # the slow tier saw only the undecided image, in one call
        assert adapter(eng, "slow").batches == [1]
        assert adapter(eng, "color").batches == [2]
        s = eng.stats()
        assert s["exit_reasons"] == {"threshold": 1, "exhausted": 1}
        assert s["exits_per_tier"] == {"fast": 1, "slow": 1}
        assert s["models"]["slow"]["calls"] == 1 and s["breakers"]["slow"] == "closed"
    finally:
        eng.close()


def test_exit_uses_the_calibrated_probability(grey):
    # p = 0.8 from one model; threshold 0.8 maps it to 0.5 -> class "none", never exactly 0.5
    prof = make_profile(tier("t", 0.6, fake("m", p=0.8)), calibration={"threshold": 0.8})
    eng = engine_for(prof)
    try:
        (r,) = eng.infer_batch_sync([grey])
        assert r.raw_p == pytest.approx(0.8)
        assert r.prediction == pytest.approx(0.4999) and r.prediction < 0.5
        assert r.exit_reason == "exhausted"  # calibrated confidence 0.5 < 0.6
    finally:
        eng.close()


def test_design_legacy_consensus_is_selectable(grey):
    models = [fake(f"yes{i}", p=0.9) for i in range(3)] + [fake("no", p=0.1)]
    for method, positive in (("geometric", True), ("design_legacy", False)):
        eng = engine_for(make_profile(tier("t", 0.99, *models), consensus={"method": method}))
        try:
            (r,) = eng.infer_batch_sync([grey])
            assert (r.prediction > 0.5) is positive, (method, r)
        finally:
            eng.close()


def test_a_tie_is_never_answered_as_half(grey):
    eng = engine_for(make_profile(tier("t", 0.9, fake("m", p=0.5))))
    try:
        (r,) = eng.infer_batch_sync([grey])
        assert r.prediction != 0.5 and r.prediction == pytest.approx(0.4999)
        assert type(r.prediction) is float
    finally:
        eng.close()


def test_chunks_by_batch_size(grey):
    eng = engine_for(make_profile(tier("t", 0.99, fake("m", p=0.7, batch_size=3))))
    try:
        res = eng.infer_batch_sync([grey] * 8)
        assert len(res) == 8 and all(r.prediction == pytest.approx(0.7) for r in res)
        assert adapter(eng, "m").batches == [3, 3, 2]
    finally:
        eng.close()


# ------------------------------------------------------------------------------ deadlines
def test_slow_tier_is_skipped_once_its_latency_is_learned(grey):
    eng = engine_for(two_tier(slow_latency_ms=150))
    try:
        for _ in range(2):  # learn the slow model's latency with a generous deadline
            (r,) = eng.infer_batch_sync([grey], deadline_s=2.0)
            assert r.tiers_used == ["fast", "slow"]
        assert eng.stats()["models"]["slow"]["estimate_ms"] >= 140
        calls = adapter(eng, "slow").calls
        t0 = time.monotonic()
        (r,) = eng.infer_batch_sync([grey], deadline_s=0.1)
        took = time.monotonic() - t0
        assert adapter(eng, "slow").calls == calls  # not even started
        assert r.exit_reason == "deadline" and r.tiers_used == ["fast"]
        assert took < 0.1
        assert r.prediction == pytest.approx(0.4999)  # only the 0.5 vote so far
    finally:
        eng.close()


def test_expired_deadline_answers_without_running(grey):
    eng = engine_for(two_tier())
    try:
        async def main():
            return await eng.infer(grey, deadline=Deadline(time.monotonic() - 0.01))

        r = asyncio.run(main())
        assert r.exit_reason in ("no_votes", "fallback") and r.prediction == pytest.approx(0.4999)
        assert adapter(eng, "color").calls == 0
    finally:
        eng.close()


# ------------------------------------------------------------------------------ fault isolation
def faulty_profile(**top):
    return make_profile(
        tier("t", 0.99,
             fake("good", p=0.9),
             fake("raiser", p=0.9, fail="raise"),
             fake("oomer", p=0.9, fail="oom"),
             fake("nanner", p=0.9, fail="nan"),
             fake("hanger", p=0.9, fail="hang", hang_s=1.0)),
        **top)


def test_faulty_models_lose_their_vote_and_the_answer_comes_by_the_deadline(grey):
    eng = engine_for(faulty_profile())
    try:
        t0 = time.monotonic()
        (r,) = eng.infer_batch_sync([grey], deadline_s=0.3)
        took = time.monotonic() - t0
        assert 0.25 < took < 0.5, took  # waited for the hung model only until the deadline
        assert r.exit_reason == "deadline"
        assert r.prediction == pytest.approx(0.9)  # the good vote alone
        err = {v.model: v.error for v in r.votes}
        assert err["good"] is None
        assert err["raiser"].startswith("error: RuntimeError")
        assert err["oomer"].startswith("oom: MemoryError")
        assert err["nanner"].startswith("invalid p")
        assert err["hanger"] == "deadline"
        assert all(v.p is None for v in r.votes if v.model != "good")
        assert not any(v.p is None for v in r.votes if v.model == "good")

        # the hung worker is not reused: the next request does not wait for it
        t0 = time.monotonic()
        (r2,) = eng.infer_batch_sync([grey], deadline_s=0.3)
        assert time.monotonic() - t0 < 0.15
        assert {v.model: v.error for v in r2.votes}["hanger"].startswith("busy")
        assert r2.prediction == pytest.approx(0.9)
        m = eng.stats()["models"]
        assert m["hanger"]["timeouts"] == 1 and m["hanger"]["busy"] == 1
        assert m["raiser"]["errors"] == {"error": 2} and m["oomer"]["errors"] == {"oom": 2}
        assert m["nanner"]["invalid"] == 2
        # 2 consecutive failures each: not yet open (threshold 3)
        assert set(eng.stats()["breakers"].values()) == {"closed"}
    finally:
        eng.close()


def test_async_infer_survives_faults_and_keeps_the_loop_free(grey):
    eng = engine_for(faulty_profile(batching={"max_batch": 8, "max_wait_ms": 1.0}))
    try:
        async def main():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tk = asyncio.create_task(ticker())
            t0 = time.monotonic()
            r = await eng.infer(grey, deadline=Deadline.after(0.3))
            took = time.monotonic() - t0
            tk.cancel()
            return r, took, ticks

        r, took, ticks = asyncio.run(main())
        assert r.prediction == pytest.approx(0.9) and took < 0.5
        assert ticks >= 10  # the event loop kept running while the engine waited
    finally:
        eng.close()


def test_own_timeout_abandons_a_call_before_the_deadline(grey):
    prof = make_profile(tier("t", 0.99, fake("good", p=0.2),
                             fake("hanger", p=0.9, fail="hang", hang_s=0.5, timeout_s=0.1)))
    eng = engine_for(prof)
    try:
        t0 = time.monotonic()
        (r,) = eng.infer_batch_sync([grey], deadline_s=2.0)
        assert 0.08 < time.monotonic() - t0 < 0.3
        assert r.exit_reason == "exhausted" and r.prediction == pytest.approx(0.2)
        assert "timeout" in {v.model: v.error for v in r.votes}["hanger"]
    finally:
        eng.close()


def test_breaker_trips_on_repeated_timeouts_and_the_model_is_skipped(grey):
    prof = make_profile(tier("t", 0.99, fake("good", p=0.3),
                             fake("hanger", p=0.9, fail="hang", hang_s=0.3, timeout_s=0.05)))
    eng = engine_for(prof)
    try:
        errors = []
        t0 = time.monotonic()
        for _ in range(4):
            (r,) = eng.infer_batch_sync([grey], deadline_s=1.0)
            errors.append({v.model: v.error for v in r.votes}["hanger"])
            assert r.prediction == pytest.approx(0.3)
        assert time.monotonic() - t0 < 0.3  # one 50 ms timeout, then fast failures
        assert "timeout" in errors[0] and errors[1].startswith("busy") and errors[2].startswith("busy")
        assert errors[3] == "breaker_open"
        assert eng.stats()["breakers"]["hanger"] == "open"
        assert adapter(eng, "hanger").calls == 1
    finally:
        eng.close()


def test_breaker_trips_and_recovers(grey):
    prof = make_profile(tier("t", 0.99, fake("good", p=0.3),
                             fake("flaky", p=0.9, fail="raise", fail_first=3, breaker_cooldown_s=0.2)))
    eng = engine_for(prof)
    try:
        for _ in range(3):
            eng.infer_batch_sync([grey])
        assert eng.stats()["breakers"]["flaky"] == "open"
        (r,) = eng.infer_batch_sync([grey])
        assert {v.model: v.error for v in r.votes}["flaky"] == "breaker_open"
        assert adapter(eng, "flaky").calls == 3
        time.sleep(0.25)
        assert eng.stats()["breakers"]["flaky"] == "half_open"
        (r,) = eng.infer_batch_sync([grey])  # the trial call succeeds (4th call)
        assert {v.model: v.error for v in r.votes}["flaky"] is None
        assert eng.stats()["breakers"]["flaky"] == "closed"
        assert r.raw_p > 0.5  # the recovered 0.9 vote counts again
        assert eng.stats()["models"]["flaky"]["breaker"]["times_opened"] == 1
    finally:
        eng.close()


def test_no_vote_at_all_gives_the_neutral_fallback(grey):
    eng = engine_for(make_profile(tier("t", 0.9, fake("a", fail="raise"), fake("b", fail="nan"))))
    try:
        (r,) = eng.infer_batch_sync([grey])
        assert r.exit_reason == "no_votes" and r.raw_p is None
        assert r.prediction == pytest.approx(0.4999) and r.confidence == pytest.approx(0.5001)
    finally:
        eng.close()


def test_oom_is_recognised_by_name():
    class OutOfMemoryError(RuntimeError):  # what torch.cuda.OutOfMemoryError is called
        pass

    assert classify_error(OutOfMemoryError("CUDA out of memory")) == "oom"
    assert classify_error(MemoryError()) == "oom"
    assert classify_error(ValueError()) == "error"


# ------------------------------------------------------------------------------ batching, cache
def test_concurrent_requests_are_micro_batched(red, grey):
    prof = make_profile(tier("t", 0.99, fake("m", p=0.7, latency_ms=5)),
                        batching={"max_batch": 16, "max_wait_ms": 50.0})
    eng = engine_for(prof)
    try:
        async def main():
            return await asyncio.gather(*[eng.infer(red if i % 2 else grey) for i in range(10)])

        res = asyncio.run(main())
        assert len(res) == 10 and all(r.prediction == pytest.approx(0.7) for r in res)
        b = adapter(eng, "m").batches
        assert sum(b) == 10 and len(b) < 10, b
        assert eng.stats()["batcher"]["max_batch_seen"] >= 2
    finally:
        eng.close()


def test_batching_can_be_disabled(grey):
    prof = make_profile(tier("t", 0.99, fake("m", p=0.7)), batching={"max_batch": 1, "max_wait_ms": 50.0})
    eng = engine_for(prof)
    try:
        async def main():
            return await asyncio.gather(*[eng.infer(grey) for _ in range(5)])

        asyncio.run(main())
        assert adapter(eng, "m").batches == [1] * 5
    finally:
        eng.close()


def test_cache_hit_returns_the_same_answer_without_calling_the_model(red):
    eng = engine_for(two_tier())
    try:
        async def main():
            a = await eng.infer(red, key="sha-red")
            b = await eng.infer(red, key="sha-red")
            return a, b

        a, b = asyncio.run(main())
        assert not a.cached and b.cached and b.exit_reason == "cache"
        assert b.prediction == a.prediction and b.tiers_used == a.tiers_used
        assert adapter(eng, "color").calls == 1
        s = eng.stats()
        assert s["cache_hits"] == 1 and s["requests"] == 2
        # the sync path shares the cache
        (c,) = eng.infer_batch_sync([red], keys=["sha-red"])
        assert c.cached and adapter(eng, "color").calls == 1
    finally:
        eng.close()


def test_degraded_answers_are_not_cached(grey):
    eng = engine_for(make_profile(tier("t", 0.99, fake("good", p=0.2), fake("bad", fail="raise"))))
    try:
        eng.infer_batch_sync([grey], keys=["k"])
        assert "k" not in eng.cache
        (r,) = eng.infer_batch_sync([grey], keys=["k"])
        assert not r.cached
    finally:
        eng.close()


# ------------------------------------------------------------------------------ start-up
def test_restricted_licence_is_skipped_without_opt_in(grey):
    prof = make_profile(tier("t", 0.99, fake("open", p=0.2), fake("gated", p=0.9, gated=True, licence="SAM")))
    eng = engine_for(prof)
    try:
        assert set(eng.stats()["models"]) == {"open"}
        assert "gated" in eng.stats()["skipped"] and "allow_restricted" in eng.stats()["skipped"]["gated"]
        (r,) = eng.infer_batch_sync([grey])
        assert [v.model for v in r.votes] == ["open"]
    finally:
        eng.close()
    eng = engine_for(prof, allow_restricted=True)
    try:
        assert set(eng.stats()["models"]) == {"open", "gated"}
    finally:
        eng.close()
    only = make_profile(tier("t", 0.99, fake("nc", p=0.9, noncommercial=True, licence="CC-BY-NC-4.0")))
    with pytest.raises(EngineError, match="restricted"):
        CascadeEngine(only, devices=["cpu"]).start()


def test_a_model_that_fails_to_load_is_dropped_unless_it_is_the_only_one(grey):
    eng = engine_for(make_profile(tier("t", 0.99, fake("ok", p=0.2), fake("broken", load_fail=True))))
    try:
        assert set(eng.stats()["models"]) == {"ok"} and "broken" in eng.stats()["skipped"]
        assert eng.infer_batch_sync([grey])[0].prediction == pytest.approx(0.2)
    finally:
        eng.close()
    with pytest.raises(EngineError, match="only model"):
        CascadeEngine(make_profile(tier("t", 0.99, fake("broken", load_fail=True))), devices=["cpu"]).start()


def test_placement_fails_before_anything_loads():
    prof = make_profile(tier("t", 0.99, fake("small", p=0.2, memory_mb=100),
                             fake("vlm", p=0.9, memory_mb=60000, device="cuda")))
    small = build_adapter(prof.tiers[0].models[0], prof)
    with pytest.raises(PlacementError, match="vlm"):
        CascadeEngine(prof, devices=["cpu"], adapters={"small": small}).start()
    assert not small.loaded


def test_simulated_gpus_receive_their_pinned_models():
    prof = make_profile(tier("t", 0.99, fake("a", memory_mb=50000, device="cuda:1"),
                             fake("b", memory_mb=50000), fake("c", memory_mb=100, device="cpu")))
    eng = engine_for(prof, devices=None, device_memory_mb={"cuda:0": 81559, "cuda:1": 81559, "cpu": 64000})
    try:
        assert eng.stats()["placement"] == {"a": "cuda:1", "b": "cuda:0", "c": "cpu"}
        assert adapter(eng, "a").device == "cuda:1"
        assert eng.plan is not None and "cuda:1" in eng.plan.table()
    finally:
        eng.close()


def test_lifecycle(grey):
    eng = CascadeEngine(two_tier(), devices=["cpu"])
    assert not eng.ready
    with pytest.raises(EngineError, match="not started"):
        eng.infer_batch_sync([grey])
    plan1 = eng.start()
    assert eng.start() is plan1 and eng.ready  # idempotent
    eng.close()
    assert not eng.ready

    async def main():
        return await eng.infer(grey)

    r = asyncio.run(main())  # after close: an answer, not an exception
    assert r.exit_reason == "fallback" and r.prediction == pytest.approx(0.4999)


def test_a_fast_model_still_votes_when_its_slow_tier_mate_does_not_fit(grey):
    prof = make_profile(tier("t", 0.99, fake("fast", p=0.9), fake("slow", p=0.1, latency_ms=150)))
    eng = engine_for(prof)
    try:
        eng.infer_batch_sync([grey], deadline_s=2.0)  # learns the slow model's latency
        slow_calls = adapter(eng, "slow").calls
        t0 = time.monotonic()
        (r,) = eng.infer_batch_sync([grey], deadline_s=0.1)
        assert time.monotonic() - t0 < 0.1
        assert [v.model for v in r.votes] == ["fast"] and r.prediction == pytest.approx(0.9)
        assert adapter(eng, "slow").calls == slow_calls
    finally:
        eng.close()


def test_each_request_in_a_batch_keeps_its_own_deadline(grey):
    prof = make_profile(tier("fast", 0.99, fake("color", p_by_color=True)),
                        tier("slow", 0.99, fake("slow", p=0.9, latency_ms=250)),
                        batching={"max_batch": 16, "max_wait_ms": 30.0})
    eng = engine_for(prof)
    try:
        # one micro-batch holding both requests, as the batcher forms it while the engine is busy
        from natix_miner.engine.batcher import Pending

        got: dict[str, object] = {}
        short = Pending(payload=grey, deadline=Deadline.after(0.15), deliver=lambda r: got.setdefault("a", r))
        long = Pending(payload=grey, deadline=Deadline.after(1.5), deliver=lambda r: got.setdefault("b", r))
        eng._process([short, long])
        a, b = got["a"], got["b"]
        assert adapter(eng, "slow").batches == [2]  # one call for both
        assert a.exit_reason == "deadline" and a.latency_ms < 200
        assert {v.model: v.error for v in a.votes}["slow"] == "deadline"
        assert b.exit_reason == "exhausted" and b.latency_ms >= 250
        assert b.raw_p == pytest.approx(0.9)
    finally:
        eng.close()


def test_adapters_that_accept_a_deadline_get_the_calls_limit():
    """The VLM thinking tier sizes its token budget from the deadline the engine passes."""
    from PIL import Image

    from natix_miner.engine.cascade import CascadeEngine
    from natix_miner.engine.types import Vote
    from natix_miner.models.fake import FakeAdapter
    from natix_miner.profile import parse_profile

    seen = []

    class Budgeted(FakeAdapter):
        accepts_deadline = True

        def predict(self, images, deadline=None):
            seen.append(deadline.remaining() if deadline is not None else None)
            return [Vote(0.9) for _ in images]

    prof = parse_profile({"name": "dl", "deadline_s": 2.0, "tiers": [{"name": "t", "exit_threshold": 0.9, "models": [
        {"name": "b", "type": "fake", "licence": "MIT", "timeout_s": 1.5}]}]})
    eng = CascadeEngine(prof, devices=["cpu"], adapters={"b": Budgeted(prof.tiers[0].models[0], prof)})
    eng.start()
    try:
        eng.infer_batch_sync([Image.new("RGB", (8, 8))], deadline_s=2.0)
    finally:
        eng.close()
    assert len(seen) == 1 and seen[0] is not None and 1.0 < seen[0] <= 1.5


def test_vllm_engines_load_before_in_process_models():
    """vLLM checks at start that its share of the GPU is free, so adapters that pre-allocate load first."""
    from types import SimpleNamespace

    from natix_miner.engine.cascade import load_order

    def ad(name, pre=False):
        return ("tier", SimpleNamespace(spec=SimpleNamespace(name=name), preallocates_gpu=pre))

    built = [ad("vit"), ad("qwen-local"), ad("qwen4b", True), ad("owl"), ad("qwen32b", True)]
    assert [b[1].spec.name for b in load_order(built)] == ["qwen4b", "qwen32b", "vit", "qwen-local", "owl"]


def test_the_vlm_adapter_preallocates_only_with_the_vllm_engine():
    from natix_miner.models.registry import build_adapter
    from natix_miner.profile import ModelSpec

    def vlm(engine):
        opts = {"engine": engine, "family": "qwen2_vl"}
        if engine == "openai":
            opts["base_url"] = "http://127.0.0.1:1/v1"
        return build_adapter(ModelSpec(name=engine, type="vlm", licence="x", model="org/qwen2-vl", options=opts))

    assert vlm("vllm").preallocates_gpu is True
    assert vlm("transformers").preallocates_gpu is False
    assert vlm("openai").preallocates_gpu is False
