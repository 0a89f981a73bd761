"""scripts/download_data.py up to the Hub boundary: the hub call is replaced, its real exceptions are raised."""

from __future__ import annotations

import importlib.util
import sys

import huggingface_hub
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from natix_miner.profile import REPO_ROOT
from natix_miner.training.download import (
    DATASET,
    DownloadConfig,
    DownloadError,
    download_dataset,
)


def _response(status: int):
    import importlib

    for mod in ("httpx2", "httpx"):
        try:
            h = importlib.import_module(mod)
            return h.Response(status, request=h.Request("GET", f"https://huggingface.co/api/datasets/{DATASET}"))
        except ImportError:
            continue
    pytest.skip("no httpx module to build a response")


def _script():
    spec = importlib.util.spec_from_file_location("download_data", REPO_ROOT / "scripts" / "download_data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["download_data"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_downloads_the_dataset_with_token_and_patterns(tmp_path, monkeypatch):
    calls = []

    def fake(repo_id, **kw):
        calls.append((repo_id, kw))
        (tmp_path / "out" / "data").mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / "data" / "train-0.parquet").write_bytes(b"x" * 10)
        return str(kw["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    path = download_dataset(DownloadConfig(out=str(tmp_path / "out"), token="hf_abc"))
    assert path == tmp_path / "out"
    repo, kw = calls[0]
    assert repo == DATASET == "natix-network-org/roadwork" and kw["repo_type"] == "dataset"
    assert kw["token"] == "hf_abc" and kw["local_dir"] == tmp_path / "out" and "*.parquet" in kw["allow_patterns"]
    # HF_TOKEN is used when no --token is given
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    download_dataset(DownloadConfig(out=str(tmp_path / "out")))
    assert calls[1][1]["token"] == "hf_env"


@pytest.mark.parametrize("make", [
    lambda: GatedRepoError("gated", response=_response(401)),
    lambda: GatedRepoError("gated", response=_response(403)),
    lambda: HfHubHTTPError("401 Client Error", response=_response(401)),
    lambda: RepositoryNotFoundError("not found", response=_response(401)),
])
def test_refused_access_prints_how_to_log_in(tmp_path, monkeypatch, capsys, make):
    def fake(repo_id, **kw):
        raise make()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(DownloadError) as ei:
        download_dataset(DownloadConfig(out=str(tmp_path / "o"), token="hf_bad"))
    msg = str(ei.value)
    assert "huggingface-cli login" in msg and "HF_TOKEN" in msg and f"huggingface.co/datasets/{DATASET}" in msg
    assert "terms" in msg
    # the script: one line on stderr, exit code 2, no traceback
    assert _script().main(["--out", str(tmp_path / "o"), "--token", "hf_bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "huggingface-cli login" in err and "Traceback" not in err


@pytest.mark.parametrize("exc, match", [
    (LocalEntryNotFoundError("cannot find the requested files in the cache and outgoing traffic is disabled"),
     "cannot reach huggingface.co"),
    (ConnectionError("Name or service not known"), "cannot reach huggingface.co"),
    (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE"),
])
def test_no_network_is_one_clear_line(tmp_path, monkeypatch, capsys, exc, match):
    def fake(repo_id, **kw):
        raise exc

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert _script().main(["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and err.count("\n") == 0


def test_transport_error_of_the_hubs_http_client(tmp_path, monkeypatch):
    import importlib

    try:
        h = importlib.import_module("httpx2")
    except ImportError:
        h = pytest.importorskip("httpx")

    def fake(repo_id, **kw):
        raise h.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    with pytest.raises(DownloadError, match="cannot reach huggingface.co.*resumes"):
        download_dataset(DownloadConfig(out=str(tmp_path / "o")))


def test_other_http_error_and_unknown_repo(tmp_path, monkeypatch):
    def fake500(repo_id, **kw):
        raise HfHubHTTPError("500 Server Error", response=_response(500))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake500)
    with pytest.raises(DownloadError, match="HTTP 500"):
        download_dataset(DownloadConfig(out=str(tmp_path / "o")))

    def fake404(repo_id, **kw):
        raise RepositoryNotFoundError("nope", response=_response(404))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake404)
    with pytest.raises(DownloadError, match="no such dataset"):
        download_dataset(DownloadConfig(out=str(tmp_path / "o"), repo_id="someone/typo", token="hf_ok"))
