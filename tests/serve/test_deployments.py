"""The deployments' own logic without a Ray cluster: the proxy adapter the ingress's CascadeEngine
runs (fan-out, deadline, cancel, missing deployment) and the model replica's health check."""

import threading
import time

import pytest
from serve_helpers import color_profile

pytest.importorskip("ray.serve")

from natix_miner.engine.cascade import CascadeEngine  # noqa: E402
from natix_miner.engine.deadline import Deadline  # noqa: E402
from natix_miner.engine.types import Vote  # noqa: E402
from natix_miner.models.base import AdapterError  # noqa: E402
from natix_miner.serve.deployments import UNHEALTHY_AFTER, ModelServer, ServeModelAdapter  # noqa: E402


class _Response:
    def __init__(self, handle, image):
        self.handle, self.image, self.cancelled = handle, image, False

    def result(self, timeout_s=None):
        if not self.handle.release.wait(timeout_s):
            raise TimeoutError("timed out")
        return Vote(0.25 if self.image == "blue" else 0.9)

    def cancel(self):
        self.cancelled = True


class _Method:
    def __init__(self, handle):
        self.handle = handle

    def remote(self, image):
        r = _Response(self.handle, image)
        self.handle.sent.append(r)
        return r


class FakeHandle:
    """The part of a DeploymentHandle the proxy uses: ``handle.predict.remote(x).result(timeout_s)``."""

    def __init__(self, released=True):
        self.sent: list[_Response] = []
        self.release = threading.Event()
        if released:
            self.release.set()
        self.predict = _Method(self)


def _spec(name="color"):
    return next(m for _, m in color_profile().models() if m.name == name)


def test_proxy_spec_holds_no_weights_and_fans_out_to_every_replica():
    spec = _spec()
    ad = ServeModelAdapter(spec, FakeHandle(), replicas=3)
    assert ad.spec.device == "cpu" and ad.spec.memory_mb == 0.0
    assert ad.spec.batch_size == spec.batch_size * 3 and ad.spec.weight == spec.weight
    assert ad.spec.timeout_s == spec.timeout_s and ad.accepts_deadline


def test_proxy_sends_all_images_before_waiting_and_keeps_order():
    h = FakeHandle(released=False)
    ad = ServeModelAdapter(_spec(), h)
    out = []
    t = threading.Thread(target=lambda: out.extend(ad.predict(["red", "blue", "red"], deadline=Deadline.after(5))))
    t.start()
    assert _wait(lambda: len(h.sent) == 3)  # all three calls are out while none has answered
    h.release.set()
    t.join(5)
    assert [v.p for v in out] == [0.9, 0.25, 0.9]


def test_proxy_gives_up_at_the_deadline_and_cancels_the_rest():
    h = FakeHandle(released=False)
    ad = ServeModelAdapter(_spec(), h)
    with pytest.raises(TimeoutError):
        ad.predict(["red", "blue"], deadline=Deadline.after(0.2))
    assert all(r.cancelled for r in h.sent)


def test_a_model_without_a_deployment_is_dropped_by_the_engine():
    prof = color_profile()
    ads = {"color": ServeModelAdapter(_spec("color"), FakeHandle(), prof),
           "steady": ServeModelAdapter(_spec("steady"), None, prof)}
    with pytest.raises(AdapterError):
        ServeModelAdapter(_spec("steady"), None).load("cpu")
    eng = CascadeEngine(prof, devices=["cpu"], adapters=ads)
    eng.start()
    try:
        assert "steady" in eng.skipped and list(eng.stats()["models"]) == ["color"]
        assert eng.infer_batch_sync(["blue"])[0].votes[0].p == 0.25
    finally:
        eng.close()


def test_model_replica_reports_unhealthy_after_repeated_failures():
    s = ModelServer.__new__(ModelServer)  # no Ray here: only the health rule
    s.spec, s.failed_in_a_row = _spec(), 0
    s.adapter = type("A", (), {"loaded": True})()
    s.check_health()
    s.failed_in_a_row = UNHEALTHY_AFTER
    with pytest.raises(RuntimeError, match="failed batches"):
        s.check_health()
    s.failed_in_a_row, s.adapter.loaded = 0, False
    with pytest.raises(RuntimeError, match="not loaded"):
        s.check_health()


def _wait(cond, timeout=5.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.01)
    return False
