"""Record what validators send (``--record.dir``), off the request path, for pseudo-labelling and training.

Layout of the record folder::

    DIR/images/<sha256>.<ext>        each distinct image once: the file bytes as received (after base64)
    DIR/requests-<UTC time>.jsonl    one line per answered request (rotated by size)

A request line: ``{"t": arrival unix time, "sha256": ..., "ext": ..., "hotkey": validator hotkey, "prediction":
the answer, "confidence": ..., "exit_tier": ..., "exit_reason": ..., "votes": {model: p}, "latency_ms": ...}``
(``sha256`` is null when the payload was not base64). ``scripts/pseudo_label.py --images DIR/images`` labels the
images; docs/data-recipe.md describes the whole recipe.

The request path only calls :meth:`Recorder.submit`, a non-blocking ``put_nowait`` on a bounded queue; a full
queue drops the item and counts it. One background thread decodes the base64 text, writes the image (once per
sha256, atomically via a temporary file) and appends the line. The folder is kept under ``max_bytes`` by deleting
the oldest files first (images and closed request logs, by modification time). Any ``OSError`` (disk full,
read-only, permissions) turns recording off with ONE warning; answering is never affected.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
          (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif"))
GB = 1024 ** 3


def sniff_ext(raw: bytes) -> str:
    """File extension from the magic bytes (``bin`` when unknown)."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if raw.startswith(magic):
            return ext
    return "bin"


@dataclass
class RecordItem:
    """What the request path hands over (cheap to build: references, no copies)."""

    arrival: float
    image_b64: Any
    sha256: str | None
    hotkey: str | None
    prediction: float
    confidence: float | None = None
    exit_tier: str | None = None
    exit_reason: str | None = None
    votes: dict[str, float | None] = field(default_factory=dict)
    latency_ms: float | None = None


@dataclass
class RecorderStats:
    recorded: int = 0      # request lines written
    images_written: int = 0
    duplicates: int = 0    # requests whose image was already stored
    dropped: int = 0       # queue full (or recording off) when submitted
    evicted: int = 0       # files deleted to respect max_bytes
    undecodable: int = 0   # payloads that were not base64
    bytes: int = 0         # current size of the folder as tracked
    disabled: str | None = None  # why recording is off


class Recorder:
    def __init__(self, directory: str | Path, max_gb: float = 10.0, *, queue_size: int = 256,
                 rotate_bytes: int = 64 * 1024 * 1024):
        self.dir = Path(directory).expanduser()
        self.max_bytes = int(max_gb * GB)
        self.rotate_bytes = max(1, min(int(rotate_bytes), max(1, self.max_bytes // 8)))
        self.stats = RecorderStats()
        self._q: queue.Queue[RecordItem | None] = queue.Queue(maxsize=max(1, queue_size))
        self._files: OrderedDict[Path, int] = OrderedDict()  # oldest first → size
        self._known: set[str] = set()  # sha256 of stored images
        self._log: Path | None = None
        self._log_fh: Any = None
        self._thread: threading.Thread | None = None
        self._off = threading.Event()

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> bool:
        return not self._off.is_set()

    def start(self) -> "Recorder":
        """Index what is already there (a restart keeps deduplicating and evicting) and start the writer."""
        try:
            (self.dir / "images").mkdir(parents=True, exist_ok=True)
            found = []
            for p in list((self.dir / "images").iterdir()) + list(self.dir.glob("requests-*.jsonl")):
                if p.name.endswith(".tmp") and p.is_file():
                    p.unlink()  # a write cut short by a crash
                elif p.is_file():
                    st = p.stat()
                    found.append((st.st_mtime, p, st.st_size))
            for _, p, size in sorted(found):
                self._files[p] = size
                if p.parent.name == "images":
                    self._known.add(p.stem)
            self.stats.bytes = sum(self._files.values())
        except OSError as e:
            self._disable(e)
            return self
        self._thread = threading.Thread(target=self._run, name="request-recorder", daemon=True)
        self._thread.start()
        logger.info(f"recording requests to {self.dir} (cap {self.max_bytes / GB:.2f} GB, "
                    f"{len(self._known)} images already there)")
        return self

    def close(self, timeout: float = 2.0) -> None:
        """Flush what is queued (bounded by ``timeout``) and stop the writer."""
        if self._thread is not None:
            try:
                self._q.put(None, timeout=timeout)
            except queue.Full:
                self._off.set()
            self._thread.join(timeout)
            self._thread = None
        if self._log_fh is not None:
            try:
                self._log_fh.close()
            except OSError:
                pass
            self._log_fh = None

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything submitted so far is written (tests, benchmarks)."""
        t0 = time.monotonic()
        while self._q.unfinished_tasks and time.monotonic() - t0 < timeout and self._thread is not None:
            time.sleep(0.005)

    # ------------------------------------------------------------------------------ request path
    def submit(self, item: RecordItem) -> bool:
        """Never blocks, never raises: False when the item was dropped (queue full or recording off)."""
        if self._off.is_set():
            return False
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            self.stats.dropped += 1
            return False

    # ------------------------------------------------------------------------------ writer thread
    def _disable(self, e: BaseException) -> None:
        if self._off.is_set():
            return
        self._off.set()
        self.stats.disabled = f"{type(e).__name__}: {e}"
        logger.warning(f"request recording turned OFF ({self.stats.disabled}); the miner keeps answering. "
                       f"Fix {self.dir} (space, permissions) and restart to record again.")

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if not self._off.is_set():
                    self._write(item)
            except OSError as e:
                self._disable(e)
            except Exception as e:  # a bug must not kill the thread silently nor the miner
                logger.debug(f"recorder: skipped one item ({type(e).__name__}: {e})")
            finally:
                self._q.task_done()
            if self._off.is_set():  # drain so that flush()/close() return at once
                self._drain()

    def _drain(self) -> None:
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                return
            self.stats.dropped += it is not None
            self._q.task_done()
            if it is None:
                self._q.put_nowait(None)  # keep the stop marker for the loop
                return

    def _write(self, item: RecordItem) -> None:
        from natix_miner.imaging import ImageDecodeError, decode_b64_bytes

        sha, ext = item.sha256, None
        try:
            raw = decode_b64_bytes(item.image_b64)
        except ImageDecodeError:
            raw = None
            self.stats.undecodable += 1
        if raw is not None:
            import hashlib

            sha = sha or hashlib.sha256(raw).hexdigest()
            ext = sniff_ext(raw)
            if sha in self._known:
                self.stats.duplicates += 1
            else:
                path = self.dir / "images" / f"{sha}.{ext}"
                self._make_room(len(raw))
                tmp = path.with_name(path.name + ".tmp")
                with open(tmp, "wb") as fh:
                    fh.write(raw)
                os.replace(tmp, path)
                self._known.add(sha)
                self._add(path, len(raw))
                self.stats.images_written += 1
        line = json.dumps({
            "t": round(item.arrival, 3), "sha256": sha if raw is not None else None, "ext": ext,
            "hotkey": item.hotkey, "prediction": item.prediction, "confidence": item.confidence,
            "exit_tier": item.exit_tier, "exit_reason": item.exit_reason, "votes": item.votes,
            "latency_ms": None if item.latency_ms is None else round(item.latency_ms, 2),
        }, allow_nan=False) + "\n"
        data = line.encode()
        self._make_room(len(data))
        fh = self._log_handle()
        fh.write(data)
        fh.flush()
        self._files[self._log] = self._files.get(self._log, 0) + len(data)
        self.stats.bytes += len(data)
        self.stats.recorded += 1

    def _log_handle(self) -> Any:
        if self._log_fh is not None and self._files.get(self._log, 0) < self.rotate_bytes:
            return self._log_fh
        if self._log_fh is not None:
            self._log_fh.close()
            # a closed log becomes an ordinary file for eviction: move it to its age position (now, newest)
            self._files.move_to_end(self._log)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path, n = self.dir / f"requests-{stamp}.jsonl", 1
        while path.exists() or path in self._files:
            path, n = self.dir / f"requests-{stamp}-{n}.jsonl", n + 1
        self._log_fh = open(path, "ab")
        self._log = path
        self._files[path] = 0
        return self._log_fh

    def _add(self, path: Path, size: int) -> None:
        self._files[path] = size
        self.stats.bytes += size

    def _make_room(self, incoming: int) -> None:
        """Delete the oldest files (never the open request log) until ``incoming`` more bytes fit."""
        while self.stats.bytes + incoming > self.max_bytes and self._files:
            victim = next((p for p in self._files if p != self._log), None)
            if victim is None:
                break
            size = self._files.pop(victim)
            self.stats.bytes -= size
            self._known.discard(victim.stem)
            try:
                victim.unlink()
            except FileNotFoundError:
                pass
            self.stats.evicted += 1

    def snapshot(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self.stats), "enabled": self.enabled, "queued": self._q.qsize(), "dir": str(self.dir)}
