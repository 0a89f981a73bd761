"""scripts/doctor.py: every check against fakes (metagraph, clock, sockets, devices, HF cache); no network."""

import json
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from _helpers import FAKE_COLOR_PROFILE, make_wallet
from natix_miner.ops import doctor as dr
from natix_miner.ops.wallet_files import WalletFiles
from natix_miner.profile import load_profile

PUBLIC_IP = "203.0.113.5"  # TEST-NET-3: never contacted, the connect function is a fake


@dataclass
class FakeAxon:
    ip: str
    port: int

    @property
    def is_serving(self) -> bool:
        return self.ip != "0.0.0.0"


class FakeMetagraph:
    """uid 0 = owner, 1-3 validators, 4 = us (added by the fixture), 5 = another miner."""

    def __init__(self, our_hotkey: str, n_validators=3, block=10_000, last_update_age=50, burn=False,
                 our_ip=PUBLIC_IP, our_port=8091, our_permit=False, our_stake=0.0):
        self.hotkeys = ["owner"] + [f"val{i}" for i in range(n_validators)] + [our_hotkey, "other-miner"]
        n = len(self.hotkeys)
        me = self.hotkeys.index(our_hotkey)
        self.block = np.array(block)
        self.validator_permit = np.array([False] + [True] * n_validators + [our_permit, False])
        self.S = np.array([0.0] + [50_000.0] * n_validators + [our_stake, 0.0])
        self.last_update = np.array([0] + [block - last_update_age] * n_validators + [0, 0])
        self.axons = [FakeAxon("0.0.0.0", 0) for _ in range(n)]
        self.axons[me] = FakeAxon(our_ip, our_port)
        self.axons[n - 1] = FakeAxon("198.51.100.7", 8091)
        W = np.zeros((n, n), dtype=np.float32)
        for v in range(1, 1 + n_validators):
            if burn:
                W[v, 0] = 1.0
            else:
                W[v, me] = 0.6
                W[v, n - 1] = 0.4
        self.W = W


@pytest.fixture
def ctx(tmp_path):
    w = make_wallet(tmp_path / "wallets", "miner")
    prof = tmp_path / "fake.yaml"
    prof.write_text(FAKE_COLOR_PROFILE)
    opts = dr.DoctorOptions(netuid=72, network="finney", wallet_name="miner", wallet_hotkey="default",
                            wallet_path=str(tmp_path / "wallets"), axon_port=8091, profile=str(prof))
    return {"hotkey": w.hotkey.ss58_address, "opts": opts, "tmp": tmp_path, "profile": prof}


def make_env(mg, *, reachable=True, offset=0.3, devices=None, free=None, cached=frozenset(), local_listener=True,
             owner="owner"):
    connects = []

    def connect(host, port, timeout):
        connects.append((host, port))
        if host in ("127.0.0.1", "::1"):
            return local_listener
        return reachable

    def clock(endpoint):
        if isinstance(offset, Exception):
            raise offset
        return offset, "fake NTP"

    env = dr.DoctorEnv(load_metagraph=lambda netuid, endpoint: mg, public_ip=lambda: PUBLIC_IP, connect=connect,
                       clock_offset=clock, devices=lambda: dict(devices or {"cpu": 16_000.0}),
                       free_mb=lambda devs: dict(free or {}), cached_repos=lambda: set(cached),
                       owner_hotkey=lambda netuid, endpoint: owner)
    env.connects = connects
    return env


def by_name(results):
    return {r.name: r for r in results}


def test_healthy_setup_passes(ctx):
    mg = FakeMetagraph(ctx["hotkey"])
    env = make_env(mg)
    res = dr.run_doctor(ctx["opts"], env)
    r = by_name(res)
    for name in ("wallet", "profile", "placement", "weights", "miner port", "registration", "axon published",
                 "port reachable", "clock", "validators active", "subnet halt"):
        assert r[name].status == dr.PASS, (name, r[name])
    # optional since upstream dropped model cards: never presented as required
    assert r["model card"].status == dr.SKIP and "optional" in r["model card"].detail
    assert "NATIX requires a" not in r["model card"].detail and "required" not in r["model card"].detail
    assert "uid 4" in r["registration"].detail
    assert (PUBLIC_IP, 8091) in env.connects
    assert dr.exit_code(res) == 0
    table = dr.format_table(res)
    assert "PASS" in table and "registration" in table


def test_unregistered_hotkey_fails_with_the_register_command(ctx):
    mg = FakeMetagraph("somebody-else")
    res = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))
    assert res["registration"].status == dr.FAIL
    assert "btcli subnets register --netuid 72" in res["registration"].fix
    assert res["axon published"].status == dr.SKIP and res["port reachable"].status == dr.SKIP


def test_axon_not_published_fails(ctx):
    mg = FakeMetagraph(ctx["hotkey"], our_ip="0.0.0.0", our_port=0)
    res = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))
    assert res["axon published"].status == dr.FAIL
    assert res["port reachable"].status == dr.SKIP


def test_axon_ip_and_port_mismatch_warn(ctx):
    mg = FakeMetagraph(ctx["hotkey"], our_ip="198.51.100.99", our_port=9000)
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))["axon published"]
    assert r.status == dr.WARN
    assert "198.51.100.99" in r.detail and PUBLIC_IP in r.detail and "9000" in r.detail


def test_unreachable_port_is_a_warning_mentioning_hairpin_nat(ctx):
    mg = FakeMetagraph(ctx["hotkey"])
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg, reachable=False)))["port reachable"]
    assert r.status == dr.WARN and "hairpin" in r.detail and "nc -vz" in r.fix


def test_permit_holder_with_large_stake_fails(ctx):
    mg = FakeMetagraph(ctx["hotkey"], our_permit=True, our_stake=50_000.0)
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))["registration"]
    assert r.status == dr.FAIL and "40096" in r.detail
    small = FakeMetagraph(ctx["hotkey"], our_permit=True, our_stake=100.0)
    assert by_name(dr.run_doctor(ctx["opts"], make_env(small)))["registration"].status == dr.PASS


@pytest.mark.parametrize("offset, status", [(0.4, dr.PASS), (-1.9, dr.PASS), (2.5, dr.WARN), (-5.0, dr.WARN),
                                            (-20.0, dr.FAIL), (30.0, dr.FAIL)])
def test_clock_skew_thresholds(offset, status):
    r = dr.check_clock(lambda: (offset, "fake NTP"))
    assert r.status == status, r
    if status != dr.PASS:
        assert "timedatectl" in r.fix or "chrony" in r.fix


def test_clock_unmeasurable_is_a_warning(ctx):
    mg = FakeMetagraph(ctx["hotkey"])
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg, offset=OSError("no route"))))["clock"]
    assert r.status == dr.WARN and "no route" in r.detail


def test_inactive_validators_warn(ctx):
    mg = FakeMetagraph(ctx["hotkey"], last_update_age=5000)
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))
    assert r["validators active"].status == dr.WARN
    assert r["subnet halt"].status == dr.SKIP  # no active validator to judge
    opts = ctx["opts"]
    opts.active_blocks = 10_000
    assert by_name(dr.run_doctor(opts, make_env(mg)))["validators active"].status == dr.PASS


def test_burn_to_the_owners_uid_is_reported_as_a_halt(ctx):
    mg = FakeMetagraph(ctx["hotkey"], burn=True)
    r = by_name(dr.run_doctor(ctx["opts"], make_env(mg)))["subnet halt"]
    assert r.status == dr.WARN and "subnet halted: validators burn to the owner's UID 0" in r.detail


def test_halt_follows_the_owner_hotkey_not_uid0(ctx):
    """Upstream burns to the owner's UID; here the owner sits at uid 5 and uid 0 receives nothing."""
    mg = FakeMetagraph(ctx["hotkey"])
    n = len(mg.hotkeys)
    mg.W[:] = 0
    mg.W[1:4, n - 1] = 1.0  # every validator puts all its weight on "other-miner"
    res = by_name(dr.run_doctor(ctx["opts"], make_env(mg, owner="other-miner")))["subnet halt"]
    assert res.status == dr.WARN and f"owner's UID {n - 1}" in res.detail
    # the same weights with the owner at uid 0: validators reward a miner, no halt
    assert by_name(dr.run_doctor(ctx["opts"], make_env(mg)))["subnet halt"].status == dr.PASS
    # burning to uid 0 while the owner is elsewhere is not the upstream halt
    mg0 = FakeMetagraph(ctx["hotkey"], burn=True)
    assert by_name(dr.run_doctor(ctx["opts"], make_env(mg0, owner="other-miner")))["subnet halt"].status == dr.PASS
    # owner unknown (lookup failed): SKIP, never a guess
    env = make_env(mg0)
    env.owner_hotkey = lambda netuid, endpoint: (_ for _ in ()).throw(ConnectionError("down"))
    assert by_name(dr.run_doctor(ctx["opts"], env))["subnet halt"].status == dr.SKIP
    # one small burner among big honest validators is not a halt
    mg2 = FakeMetagraph(ctx["hotkey"])
    mg2.W[1, :] = 0
    mg2.W[1, 0] = 1.0
    mg2.S[1] = 10.0
    r2 = dr.check_burn(mg2, 0)
    assert r2.status == dr.PASS and "1 of 3" in r2.detail
    lite = FakeMetagraph(ctx["hotkey"])
    lite.W = np.zeros((0, 0))
    assert dr.check_burn(lite, 0).status == dr.SKIP


def test_skip_network_runs_only_local_checks(ctx):
    def boom(*a, **k):
        raise AssertionError("network used with --skip-network")

    env = dr.DoctorEnv(load_metagraph=boom, public_ip=boom, connect=lambda h, p, t: False, clock_offset=boom,
                       devices=lambda: {"cpu": 16_000.0}, free_mb=lambda d: {}, cached_repos=lambda: set())
    ctx["opts"].skip_network = True
    res = by_name(dr.run_doctor(ctx["opts"], env))
    for n in ("registration", "axon published", "port reachable", "clock", "validators active", "subnet halt"):
        assert res[n].status == dr.SKIP
    assert res["wallet"].status == dr.PASS and res["placement"].status == dr.PASS
    assert res["miner port"].status == dr.WARN  # nothing listens


def test_chain_unreachable_is_a_failure_not_a_crash(ctx):
    def fail(netuid, endpoint):
        raise ConnectionError("endpoint down")

    env = make_env(None)
    env.load_metagraph = fail
    res = by_name(dr.run_doctor(ctx["opts"], env))
    assert res["chain"].status == dr.FAIL and "endpoint down" in res["chain"].detail
    assert res["registration"].status == dr.SKIP and res["clock"].status == dr.PASS


def test_wallet_checks(tmp_path):
    wf = WalletFiles(tmp_path, "nobody", "default")
    r = dr.check_wallet(wf)
    assert r.status == dr.FAIL and "btcli wallet new_hotkey" in r.fix
    w = make_wallet(tmp_path, "miner")
    wf = WalletFiles(tmp_path, "miner", "default")
    assert dr.check_wallet(wf).status == dr.PASS
    os.chmod(wf.hotkey_file, 0o644)
    r = dr.check_wallet(wf)
    assert r.status == dr.WARN and f"chmod 600 {wf.hotkey_file}" in r.fix
    assert w.hotkey.ss58_address in r.detail


def _profile(tmp_path, models_yaml):
    p = tmp_path / "p.yaml"
    p.write_text("name: t\ntiers:\n  - name: a\n    exit_threshold: 0.9\n    models:\n" + models_yaml)
    return load_profile(p)


def test_placement_gpu_and_cpu(tmp_path):
    big = _profile(tmp_path, "      - {name: vlm, type: fake, licence: MIT, memory_mb: 60000, device: cuda}\n"
                             "      - {name: small, type: fake, licence: MIT, memory_mb: 500}\n")
    r = dr.check_placement(big, {"cuda:0": 81_000.0, "cpu": 64_000.0})
    assert r.status == dr.PASS and "cuda:0" in r.detail and "vlm" in r.detail
    r = dr.check_placement(big, {"cuda:0": 24_000.0, "cpu": 64_000.0})
    assert r.status == dr.FAIL and "vlm" in r.detail
    r = dr.check_placement(big, {"cpu": 64_000.0})  # CPU-only box, a GPU-only model
    assert r.status == dr.FAIL and "GPUs: none" in r.detail
    r = dr.check_placement(big, {"cuda:0": 81_000.0, "cpu": 64_000.0}, free_mb={"cuda:0": 30_000.0})
    assert r.status == dr.WARN and "only 30000 MB free" in r.detail
    small = _profile(tmp_path, "      - {name: s, type: fake, licence: MIT, memory_mb: 3000, device: cpu}\n")
    assert dr.check_placement(small, {"cpu": 16_000.0}).status == dr.PASS
    assert "CPU-only" in dr.check_placement(small, {"cpu": 16_000.0}).detail
    assert dr.check_placement(small, {"cpu": 2_000.0}).status == dr.FAIL  # does not fit the RAM


def test_weights_local_and_hub(tmp_path):
    (tmp_path / "head.pt").write_bytes(b"x")
    prof = _profile(tmp_path, "      - {name: a, type: fake, licence: MIT, model: org/roadwork-vit}\n"
                              "      - {name: b, type: fake, licence: MIT, model: head.pt}\n")
    r = dr.check_weights(prof, set())
    assert r.status == dr.FAIL and "org/roadwork-vit" in r.detail and "huggingface-cli download org/roadwork-vit" in r.fix
    r = dr.check_weights(prof, {"org/roadwork-vit"})
    assert r.status == dr.PASS and "HF cache" in r.detail and str(tmp_path / "head.pt") in r.detail
    missing = _profile(tmp_path, "      - {name: c, type: fake, licence: MIT, model: weights/nope.onnx}\n")
    r = dr.check_weights(missing, {"weights/nope.onnx"})
    assert r.status == dr.FAIL and "file weights/nope.onnx not found" in r.detail


def test_model_card_check(tmp_path, ctx):
    from natix_miner.ops.model_card import build_card, write_card

    hk = ctx["hotkey"]
    write_card(tmp_path / "m", build_card("n", "1.0.0", hk, description="d"), hk)
    assert dr.check_model_card(str(tmp_path / "m"), hk).status == dr.PASS
    r = dr.check_model_card(str(tmp_path / "m"), "5FtCW4dPZqATyiMsbkcjovDRZFTE9dzP3vwCB7FkxJK5qfLH")
    assert r.status == dr.FAIL and "does not match" in r.detail
    assert dr.check_model_card(str(tmp_path / "nothing"), hk).status == dr.FAIL
    assert dr.check_model_card(None, hk, "not a repo").status == dr.FAIL


def test_main_prints_a_table_writes_json_and_fails_on_fail(ctx, capsys):
    mg = FakeMetagraph("somebody-else")
    out = ctx["tmp"] / "doctor.json"
    o = ctx["opts"]
    rc = dr.main(["--netuid", "72", "--wallet.name", "miner", "--wallet.hotkey", "default", "--wallet.path",
                  o.wallet_path, "--profile", o.profile, "--json", str(out)], env=make_env(mg))
    assert rc == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "registration" in text and "fix:" in text
    data = json.loads(out.read_text())
    assert {r["name"]: r["status"] for r in data["results"]}["registration"] == dr.FAIL


def test_sntp_offset_against_a_local_fake_server():
    """A UDP NTP server on 127.0.0.1 whose clock runs 5 s ahead."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def ntp_ts(t):
        t += dr.NTP_EPOCH_OFFSET
        return struct.pack("!II", int(t), int((t % 1) * 2**32))

    def serve():
        data, addr = srv.recvfrom(512)
        now = time.time() + 5.0
        reply = bytes([0x1c]) + bytes(31) + ntp_ts(now) + ntp_ts(now)
        srv.sendto(reply, addr)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        off = dr.sntp_offset("127.0.0.1", port, timeout=2.0)
    finally:
        th.join(2)
        srv.close()
    assert off == pytest.approx(5.0, abs=0.2)


def test_fix_texts_point_to_commands_that_exist(ctx):
    """No `make run` (no such target); missing weights point to scripts/download_models.py with the profile."""
    from natix_miner.profile import REPO_ROOT

    mg = FakeMetagraph(ctx["hotkey"])
    res = by_name(dr.run_doctor(ctx["opts"], make_env(mg, local_listener=False)))
    fix = res["miner port"].fix
    assert "make run" not in fix and "pm2 start ecosystem.config.js" in fix and "neurons/miner.py" in fix
    assert (REPO_ROOT / "ecosystem.config.js").exists() and (REPO_ROOT / "neurons/miner.py").exists()
    prof = ctx["tmp"] / "missing.yaml"
    prof.write_text(ctx["profile"].read_text().replace("type: fake", "type: fake\n        model: ./nope/weights.pt", 1))
    from natix_miner.profile import load_profile

    r = dr.check_weights(load_profile(prof), set())
    assert r.status == dr.FAIL and f"scripts/download_models.py --profile {prof}" in r.fix
    assert (REPO_ROOT / "scripts/download_models.py").exists()
    for r in res.values():
        assert "make run" not in (r.fix + r.detail)


def test_doctor_reads_the_env_file(ctx, tmp_path, monkeypatch):
    """A value in .env reaches doctor (MINER_ENV_FILE names the file; the shell still wins)."""
    envf = tmp_path / "doctor.env"
    envf.write_text("NETUID=323\nMINER_AXON_PORT=9123  # comment\n")
    monkeypatch.setenv("MINER_ENV_FILE", str(envf))
    for k in ("NETUID", "MINER_AXON_PORT"):
        monkeypatch.setenv(k, "")  # records the original state so teardown restores it
        monkeypatch.delenv(k)
    seen = {}

    def fake_run(opts, env=None):
        seen["opts"] = opts
        return []

    monkeypatch.setattr(dr, "run_doctor", fake_run)
    dr.main(["--skip-network"])
    assert seen["opts"].netuid == 323 and seen["opts"].axon_port == 9123
