"""Fetch the NATIX roadwork dataset (parquet) from the Hugging Face Hub, with progress and resume.

``huggingface_hub.snapshot_download`` does the work: it shows per-file progress bars, skips files already
complete in ``--out`` and resumes partial ones, so running the same command again after an interruption continues
where it stopped. The dataset needs a token since mid-2026: log in once (``huggingface-cli login``) or set
``HF_TOKEN``, and accept the dataset's terms on its page. Errors become one clear :class:`DownloadError` line.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from loguru import logger

DATASET = "natix-network-org/roadwork"

__all__ = ["DATASET", "DownloadConfig", "DownloadError", "download_dataset", "login_help"]


class DownloadError(RuntimeError):
    """A download that cannot go on; the message says what to do."""


@dataclass
class DownloadConfig:
    out: str
    repo_id: str = DATASET
    token: str | None = None  # None: HF_TOKEN or the stored `huggingface-cli login` token
    revision: str | None = None
    include: list[str] = field(default_factory=lambda: ["*.parquet", "*.md", "*.json"])
    max_workers: int = 8


def login_help(repo_id: str, status: int | None = None) -> str:
    code = f" (HTTP {status})" if status else ""
    return (f"{repo_id}: access refused{code}. The dataset needs a Hugging Face token: run `huggingface-cli login` "
            f"(or `export HF_TOKEN=hf_...`, or pass --token), and accept the dataset's terms at "
            f"https://huggingface.co/datasets/{repo_id} with the same account.")


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    return getattr(resp, "status_code", None)


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    out: list[type[BaseException]] = [ConnectionError, TimeoutError, OfflineModeIsEnabled, LocalEntryNotFoundError]
    for mod in ("httpx2", "httpx"):  # whichever HTTP client this huggingface_hub uses
        try:
            out.append(importlib.import_module(mod).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def download_dataset(cfg: DownloadConfig) -> Path:
    """Download (or complete) ``cfg.repo_id`` into ``cfg.out``; returns the folder. Raises :class:`DownloadError`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    out = Path(cfg.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    token = cfg.token or os.environ.get("HF_TOKEN") or None
    logger.info("downloading {} ({}) into {}", cfg.repo_id, ", ".join(cfg.include) or "all files", out)
    try:
        path = snapshot_download(cfg.repo_id, repo_type="dataset", revision=cfg.revision, local_dir=out,
                                 token=token, allow_patterns=cfg.include or None, max_workers=cfg.max_workers)
    except GatedRepoError as e:
        raise DownloadError(login_help(cfg.repo_id, _status(e))) from None
    except RepositoryNotFoundError as e:  # the Hub answers 401 for a private or gated repo without a token too
        if _status(e) in (401, 403) or token is None:
            raise DownloadError(login_help(cfg.repo_id, _status(e))) from None
        raise DownloadError(f"{cfg.repo_id}: no such dataset on the Hub (check the name)") from None
    except HfHubHTTPError as e:
        if _status(e) in (401, 403):
            raise DownloadError(login_help(cfg.repo_id, _status(e))) from None
        raise DownloadError(f"{cfg.repo_id}: the Hub answered HTTP {_status(e)}: {str(e).splitlines()[0]}") from None
    except OfflineModeIsEnabled:
        raise DownloadError("HF_HUB_OFFLINE is set: unset it (`unset HF_HUB_OFFLINE`) to download") from None
    except _network_errors() as e:
        raise DownloadError(f"cannot reach huggingface.co ({type(e).__name__}); check the network and run the "
                            f"same command again, it resumes") from None
    path = Path(path)
    files = sorted(path.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)
    logger.info("{}: {} parquet files, {:.1f} GB; train with: scripts/train.py --data {}", path, len(files),
                size / 1e9, path)
    return path
