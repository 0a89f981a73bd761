"""The cascade service on a real local Ray Serve instance (loopback only, 2 CPUs), shared by every
test of this module: same answers as in process, two miner processes with their own hotkeys
sharing it through the wire, a replica killed during a burst, and the lite-cpu profile."""

import asyncio
import base64
import io
import json
import math
import os
import signal
import urllib.request

import pytest
from _helpers import free_port, make_wallet
from PIL import Image
from serve_helpers import COLOR_PROFILE, images, wait_until

from natix_miner.engine.cascade import CascadeEngine
from natix_miner.engine.deadline import Deadline
from natix_miner.engine.remote import RemoteEngine, RemoteOptions
from natix_miner.profile import REPO_ROOT, parse_profile

pytest.importorskip("ray.serve")

DEADLINE_S = 3.0


def _profile(serve: bool = True):
    data = json.loads(json.dumps(COLOR_PROFILE))
    color = data["tiers"][0]["models"][0]
    color["options"].update({"latency_ms": 40, "breaker_cooldown_s": 1.0})
    if serve:
        data["serve"] = {"ingress": {"num_cpus": 0.25}, "defaults": {"num_cpus": 0.25},
                         "models": {"color": {"num_replicas": 2, "batch_wait_ms": 5}}}
    return parse_profile(data)


@pytest.fixture(scope="module")
def service():
    os.environ.pop("RAY_ADDRESS", None)
    import ray
    from ray import serve

    from natix_miner.serve.app import connect_ray, deploy

    connect_ray(None, num_cpus=2)
    prof = _profile()
    svc = deploy(prof, port=free_port(), devices={"cpu": 8000.0})
    yield svc, prof
    serve.shutdown()
    ray.shutdown()


def _remote(url, prof, **kw):
    eng = RemoteEngine(url, prof, options=RemoteOptions(**kw))
    eng.start()
    return eng


async def _infer_all(eng, ims, deadline_s=DEADLINE_S):
    return await asyncio.gather(*[eng.infer(im, deadline=Deadline.after(deadline_s)) for im in ims])


def test_plan_and_deployments(service):
    svc, _ = service
    color = svc.summary["models"]["color"]
    assert color["replicas"] == 2 and color["num_cpus"] == 0.25 and color["num_gpus"] == 0.0
    with urllib.request.urlopen(svc.url + "/health", timeout=10) as r:
        info = json.loads(r.read())
    assert info["ready"] and info["models"] == ["color", "steady"]
    from ray import serve

    app = serve.status().applications["natix-cascade"]
    assert set(app.deployments) == {"cascade", "model-color", "model-steady"}


def test_service_answers_equal_in_process(service):
    svc, _ = service
    ims = images(8)
    local = CascadeEngine(_profile(serve=False))
    local.start()
    try:
        want = local.infer_batch_sync(ims, deadline_s=DEADLINE_S)
    finally:
        local.close()
    eng = _remote(svc.url, _profile(serve=False))
    try:
        got = asyncio.run(_infer_all(eng, ims))
    finally:
        eng.close()
    assert [g.prediction for g in got] == [w.prediction for w in want]
    assert [(g.exit_reason, g.tiers_used) for g in got] == [(w.exit_reason, w.tiers_used) for w in want]
    assert {w.exit_reason for w in want} == {"threshold", "exhausted"}
    assert all(v.error is None for g in got for v in g.votes)


def _b64(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (224, 224), color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def miners(service, tmp_path_factory):
    """Two `neurons/miner.py --mock --engine.remote URL` processes, each with its own hotkey, axon and
    health port, sharing the module's service."""
    from natix_miner.neuron.launcher import MinerProcess

    svc, _ = service
    tmp = tmp_path_factory.mktemp("miners")
    prof = tmp / "p.yaml"
    prof.write_text(json.dumps(COLOR_PROFILE))
    val = make_wallet(tmp, "validator")
    out = []
    try:
        for name in ("hot-a", "hot-b"):
            w = make_wallet(tmp, name)
            port, hport = free_port(), free_port()
            mp = MinerProcess(["--mock", "--mock.validators", val.hotkey.ss58_address, "--wallet.path", str(tmp),
                               "--wallet.name", name, "--profile", str(prof), "--wandb.off", "--engine.remote", svc.url,
                               "--health.port", str(hport)], port, tmp / f"{name}.log")
            out.append({"mp": mp, "wallet": w, "port": port, "hport": hport})
        for m in out:
            m["mp"].wait_ready(timeout=120)
        yield {"miners": out, "validator": val, "tmp": tmp}
    finally:
        for m in out:
            m["mp"].stop(signal.SIGTERM)


def _health(m) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{m['hport']}/health", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_two_miners_with_their_own_hotkeys_share_the_service(miners):
    """Both miners answer a validator's concurrent bursts of ten through the wire: the in-repo
    validator client, a real bt.Dendrite through each real axon (the 9.12.2 client: next test)."""
    from natix_miner.validator.client import make_axon_info, make_dendrite, query

    ms, val = miners["miners"], miners["validator"]

    async def bursts(color):
        d = make_dendrite(val, offline=True)
        try:
            return await asyncio.gather(*[
                query(d, make_axon_info("127.0.0.1", m["port"], m["wallet"].hotkey.ss58_address), _b64(color),
                      n_copies=10) for m in ms])
        finally:
            await d.aclose_session()

    red = asyncio.run(bursts((230, 20, 20)))
    for per_miner in red:
        assert [r.status_code for r in per_miner] == [200] * 10, per_miner
        assert all(0.5 < r.prediction < 1.0 for r in per_miner), per_miner
    blue = asyncio.run(bursts((20, 20, 230)))
    assert all(0.0 < r.prediction < 0.5 for per_miner in blue for r in per_miner)
    hs = [_health(m) for m in ms]
    for h in hs:
        assert h["degraded"] is False and h["engine"]["remote_ok"] >= 2, h
        assert h["engine"]["fallback_answers"] == 0
    assert {h["hotkey"] for h in hs} == {m["wallet"].hotkey.ss58_address for m in ms}


@pytest.mark.wire
def test_two_miners_answer_a_9_12_2_validator(miners):
    """The validators' own bittensor 9.12.2 (scripts/wire/client.py in .venv-wire, or $WIRE_VENV)
    sends bursts of ten to both miners at once."""
    import subprocess

    venv = os.environ.get("WIRE_VENV", str(REPO_ROOT / ".venv-wire"))
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts/wire/make_venv.sh")], capture_output=True, text=True,
                       timeout=900, env={**os.environ, "WIRE_VENV": venv})
    assert r.returncode == 0, f"could not build the 9.12.2 venv:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    procs = [subprocess.Popen([f"{venv}/bin/python", str(REPO_ROOT / "scripts/wire/client.py"),
                               "--axon", f"127.0.0.1:{m['port']}", "--miner-hotkey", m["wallet"].hotkey.ss58_address,
                               "--wallet.path", str(miners["tmp"]), "--wallet.name", "validator", "--n", "10",
                               "--color", "220,30,30", "--offline"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for m in miners["miners"]]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        res = json.loads(out[out.index("{"):])
        assert res["bittensor"] == "9.12.2"
        assert [x["status_code"] for x in res["responses"]] == [200] * 10, res
        assert all(0.5 < x["prediction"] < 1.0 for x in res["responses"]), res


def _replicas(deployment: str) -> list[str]:
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{deployment}#" in a["name"]]


def _kill_one_replica(deployment: str) -> str:
    import ray

    names = _replicas(deployment)
    assert names, "no replica found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    return names[0]


def _healthy(deployment: str, replicas: int) -> bool:
    from ray import serve

    d = serve.status().applications["natix-cascade"].deployments[deployment]
    return d.status == "HEALTHY" and d.replica_states.get("RUNNING", 0) == replicas


def test_killing_a_replica_during_a_burst_leaves_no_request_unanswered(service):
    svc, _ = service
    eng = _remote(svc.url, _profile(serve=False), failure_threshold=100)
    ims = [Image.new("RGB", (32, 32), (200, 10 * i, 30)) for i in range(16)]

    def color_calls() -> int:
        with urllib.request.urlopen(svc.url + "/stats", timeout=10) as r:
            return json.loads(r.read())["models"]["color"]["calls"]

    async def burst():
        before = color_calls()
        tasks = [asyncio.create_task(eng.infer(im, deadline=Deadline.after(DEADLINE_S))) for im in ims]
        # kill once the burst's model calls are running
        while color_calls() == before and not all(t.done() for t in tasks):
            await asyncio.sleep(0.01)
        killed = await asyncio.to_thread(_kill_one_replica, "model-color")
        return killed, await asyncio.gather(*tasks)

    try:
        killed, res = asyncio.run(burst())
        assert len(res) == len(ims)
        for r in res:
            assert math.isfinite(r.prediction) and 0.0 < r.prediction < 1.0 and r.prediction != 0.5
            assert r.latency_ms <= DEADLINE_S * 1000 + 500, r
        # Serve replaces the replica; the cascade's breaker lets the model back in
        assert wait_until(lambda: _healthy("model-color", 2) and killed not in _replicas("model-color"),
                          timeout=90), killed
        assert wait_until(lambda: asyncio.run(eng.infer(images(1)[0])).exit_reason == "threshold", timeout=30)
    finally:
        eng.close()


def test_killing_the_ingress_during_a_burst_answers_every_request_then_reconnects(service):
    svc, _ = service
    eng = _remote(svc.url, _profile(serve=False), cooldown_s=0.5)
    ims = [Image.new("RGB", (32, 32), (20, 10 * i, 200)) for i in range(12)]

    async def burst():
        tasks = [asyncio.create_task(eng.infer(im, deadline=Deadline.after(DEADLINE_S))) for im in ims]
        await asyncio.sleep(0.05)
        killed = await asyncio.to_thread(_kill_one_replica, "cascade")
        more = [asyncio.create_task(eng.infer(im, deadline=Deadline.after(DEADLINE_S))) for im in images(4)]
        return killed, await asyncio.gather(*tasks, *more)

    try:
        killed, res = asyncio.run(burst())
        assert len(res) == len(ims) + 4
        for r in res:
            assert math.isfinite(r.prediction) and 0.0 < r.prediction < 1.0
            assert r.latency_ms <= DEADLINE_S * 1000 + 500, r
        assert wait_until(lambda: _healthy("cascade", 1) and killed not in _replicas("cascade"), timeout=90)
        assert wait_until(lambda: asyncio.run(eng.infer(images(1)[0])).exit_reason != "fallback", timeout=30)
        assert not eng.degraded
    finally:
        eng.close()


@pytest.mark.slow
def test_lite_cpu_profile_served_equals_in_process(service):
    """The embedded lite-cpu profile (EfficientNet-Lite0 + head) as a second application: the
    service's answers on the GTSDB samples equal the in-process engine's."""
    from natix_miner.imaging import decode_image_bytes
    from natix_miner.profile import load_profile
    from natix_miner.serve.app import deploy

    svc, _ = service
    prof = load_profile(REPO_ROOT / "configs" / "lite-cpu.yaml").replace(
        serve={"ingress": {"num_cpus": 0.25}, "defaults": {"num_cpus": 0.5}})
    port = int(svc.url.rsplit(":", 1)[1].split("/")[0])
    lite = deploy(prof, port=port, devices={"cpu": 8000.0}, name="lite", route_prefix="/lite")
    files = sorted((REPO_ROOT / "natix_miner" / "assets" / "samples").glob("*/*.jpg"))[:4]
    ims = [decode_image_bytes(f.read_bytes()).image for f in files]
    local = CascadeEngine(prof)
    local.start()
    try:
        want = local.infer_batch_sync(ims, deadline_s=None)
        eng = _remote(lite.url, prof)
        try:
            got = asyncio.run(_infer_all(eng, ims, deadline_s=6.0))
        finally:
            eng.close()
    finally:
        local.close()
        lite.shutdown()
    assert [g.exit_reason for g in got] == [w.exit_reason for w in want]
    assert [g.prediction for g in got] == pytest.approx([w.prediction for w in want], abs=1e-6)


def test_app_builder_for_serve_run_and_kuberay(service, tmp_path):
    from ray.serve import Application

    from natix_miner.serve.app import app_builder

    p = tmp_path / "p.yaml"
    p.write_text(json.dumps({**COLOR_PROFILE, "serve": {"models": {"color": {"num_replicas": 3}}}}))
    app = app_builder({"profile": str(p)})
    assert isinstance(app, Application)
    ing = app._bound_deployment  # what `serve run natix_miner.serve.app:app_builder profile=...` deploys
    _, handles, replicas, allow = ing.init_args
    assert ing.name == "cascade" and replicas == {"color": 3, "steady": 1} and allow is False
    color = handles["color"]._bound_deployment
    assert color.name == "model-color" and color.num_replicas == 3
    assert color.ray_actor_options["num_gpus"] == 0.0 and color.ray_actor_options["num_cpus"] == 1.0
