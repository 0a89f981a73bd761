"""Test-suite guards: everything runs offline.

- Model hubs are switched off before anything imports them.
- A socket guard refuses every connection that is not to loopback (127.0.0.0/8, ::1, localhost)
  or a local unix socket, so a hidden download or an external-IP lookup fails loudly instead of
  passing on a machine that happens to have internet.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-cfg-"))

import pytest  # noqa: E402


class NetworkAccessRefused(OSError):
    pass


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if not isinstance(address, tuple) or not address:
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("localhost", "", "ip6-localhost"):
        return True
    try:
        ip = ipaddress.ip_address(str(host).strip("[]").split("%")[0])
        # bittensor's dendrite rewrites its own external IP to 0.0.0.0, which Linux connects locally
        return ip.is_loopback or ip.is_unspecified
    except ValueError:
        return False  # a hostname other than localhost: refuse


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        raise NetworkAccessRefused(f"test network guard: refused connection to {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address):
        raise NetworkAccessRefused(f"test network guard: refused connection to {address!r}")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def _no_external_ip_lookup():
    """bittensor's Dendrite()/Axon() would ask public services for our IP: pin it to loopback."""
    try:
        from natix_miner.neuron.offline import disable_external_ip_lookup
    except Exception:  # bittensor missing: tests that need it will fail on their own
        yield
        return
    disable_external_ip_lookup("127.0.0.1")
    yield


from _helpers import FAKE_COLOR_PROFILE, free_port, make_wallet  # noqa: E402,F401


@pytest.fixture
def fake_profile_path(tmp_path):
    p = tmp_path / "fake-color.yaml"
    p.write_text(FAKE_COLOR_PROFILE)
    return p
