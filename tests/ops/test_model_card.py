"""scripts/model_card.py: the card of docs/protocol.md §4.9, the validators' historical checks, the push (faked)."""

import json
import time

import pytest

from _helpers import make_wallet
from natix_miner.ops import model_card as mc

HOTKEY = "5HpQv6veHwyFDCZKDxQfF9CWRBrf3eQcRvv1fkT2gJurkAcw"


def test_build_card_has_the_documented_keys():
    card = mc.build_card("my-roadwork", "1.2.3", HOTKEY, description="d", submission_time=1_750_000_000)
    assert list(card) == ["model_name", "description", "version", "submitted_by", "submission_time"]
    assert card["submission_time"] == 1_750_000_000
    assert mc.validate_card(card, HOTKEY) == []
    now_card = mc.build_card("x", "0.0.1", HOTKEY)
    assert abs(now_card["submission_time"] - time.time()) < 5
    assert isinstance(now_card["submission_time"], int)
    full = mc.build_card("x", "1.0.0", HOTKEY, architecture="EfficientNet-Lite0", notes="n")
    assert full["architecture"] == "EfficientNet-Lite0" and full["notes"] == "n"


@pytest.mark.parametrize("change, needle", [
    ({"submitted_by": "5FtCW4dPZqATyiMsbkcjovDRZFTE9dzP3vwCB7FkxJK5qfLH"}, "does not match"),
    ({"submitted_by": "5Other"}, "SS58"),
    ({"version": "1.0"}, "X.Y.Z"),
    ({"version": "v1.0.0"}, "X.Y.Z"),
    ({"submission_time": 946684799}, "between 2000-01-01 and now"),
    ({"submission_time": 4_000_000_000}, "between 2000-01-01 and now"),
    ({"submission_time": "2025-01-01T00:00:00Z"}, "unix timestamp"),
    ({"model_name": ""}, "model_name"),
])
def test_invalid_cards_are_rejected(change, needle):
    card = mc.build_card("m", "1.0.0", HOTKEY, submission_time=1_700_000_000)
    card.update(change)
    errors = mc.validate_card(card, HOTKEY)
    assert any(needle in e for e in errors), errors


def test_missing_keys_and_milliseconds():
    card = mc.build_card("m", "1.0.0", HOTKEY, submission_time=1_700_000_000)
    del card["submitted_by"]
    assert any("missing required keys ['submitted_by']" in e for e in mc.validate_card(card, HOTKEY))
    ms = mc.build_card("m", "1.0.0", HOTKEY, submission_time=1_700_000_000_123)  # milliseconds were accepted
    assert mc.validate_card(ms, HOTKEY) == []
    assert mc.validate_card([], HOTKEY)  # not an object
    assert mc.is_valid_timestamp(1_700_000_000, now=1_800_000_000)
    assert not mc.is_valid_timestamp(1_900_000_000, now=1_800_000_000)


def test_sanitize_repo_id_like_the_validator():
    assert mc.sanitize_repo_id("https://huggingface.co/user/model/") == "user/model"
    assert mc.sanitize_repo_id("/user/model/") == "user/model"
    assert mc.sanitize_repo_id("user/model/sub") == "user/model/sub"
    assert mc.sanitize_repo_id(" user-1/road_work ") == "user-1/road_work"
    for bad in ("model", "user/mo del", "user/model?x=1", "https://evil.com/user/model"):
        with pytest.raises(ValueError):
            mc.sanitize_repo_id(bad)


def test_cli_writes_a_valid_card_from_the_wallet(tmp_path, capsys):
    w = make_wallet(tmp_path / "wallets", "miner")
    out_dir = tmp_path / "hf_model"
    rc = mc.main(["--model-dir", str(out_dir), "--name", "natix-cascade", "--version", "1.0.0",
                  "--description", "roadwork cascade", "--wallet.name", "miner", "--wallet.hotkey", "default",
                  "--wallet.path", str(tmp_path / "wallets")])
    assert rc == 0
    card = json.loads((out_dir / "model_card.json").read_text())
    assert card["submitted_by"] == w.hotkey.ss58_address
    assert card["model_name"] == "natix-cascade" and card["version"] == "1.0.0"
    assert card["description"] == "roadwork cascade"
    assert mc.validate_card(card, w.hotkey.ss58_address) == []


def test_cli_refuses_a_bad_version_and_writes_nothing(tmp_path, capsys):
    rc = mc.main(["--model-dir", str(tmp_path / "m"), "--name", "n", "--version", "1", "--hotkey", HOTKEY])
    assert rc == 1
    assert not (tmp_path / "m" / "model_card.json").exists()
    assert "X.Y.Z" in capsys.readouterr().out


class FakeHfApi:
    calls: list = []

    def create_repo(self, repo_id, **kw):
        FakeHfApi.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        FakeHfApi.calls.append(("upload_folder", kw["repo_id"], kw))


def test_push_uploads_the_folder_publicly(tmp_path, monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)  # the default factory is looked up at call time
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    out_dir = tmp_path / "hf"
    rc = mc.main(["--model-dir", str(out_dir), "--name", "n", "--version", "2.0.1", "--hotkey", HOTKEY,
                  "--push", "https://huggingface.co/someone/roadwork/"])
    assert rc == 0
    (c_name, c_repo, c_kw), (u_name, u_repo, u_kw) = FakeHfApi.calls
    assert c_name == "create_repo" and c_repo == "someone/roadwork"
    assert c_kw["private"] is False and c_kw["exist_ok"] is True and c_kw["token"] == "hf_test_token"
    assert u_name == "upload_folder" and u_repo == "someone/roadwork"
    assert u_kw["folder_path"] == str(out_dir) and u_kw["token"] == "hf_test_token"


def test_push_without_token_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    rc = mc.main(["--model-dir", str(tmp_path / "hf"), "--name", "n", "--version", "1.0.0", "--hotkey", HOTKEY,
                  "--push", "someone/roadwork"], api_factory=FakeHfApi)
    assert rc == 1 and "HF_TOKEN" in capsys.readouterr().out
    with pytest.raises(ValueError):
        mc.push_folder(tmp_path / "hf", "someone/roadwork/sub", token="t", api_factory=FakeHfApi)


@pytest.mark.parametrize("bad", ["miner", "default", "5SomeoneElse", "0x1234", ""])
def test_non_ss58_hotkey_is_refused(tmp_path, capsys, bad):
    rc = mc.main(["--model-dir", str(tmp_path / "m"), "--name", "n", "--version", "1.0.0", "--hotkey", bad]
                 if bad else ["--model-dir", str(tmp_path / "m"), "--name", "n", "--version", "1.0.0",
                              "--hotkey", "x y"])
    out = capsys.readouterr().out
    assert rc == 2 and "not an SS58 address" in out
    assert not (tmp_path / "m" / "model_card.json").exists()
    errors = mc.validate_card(mc.build_card("n", "1.0.0", bad or "x", description="d"))
    assert any("SS58" in e for e in errors)
    assert mc.is_ss58(HOTKEY)
