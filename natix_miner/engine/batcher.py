"""Micro-batching of concurrent requests.

Requests are put on a queue from any thread (the axon's event loop, via :meth:`MicroBatcher.submit`).
A dispatcher thread forms batches and hands each to a small pool of flush threads that run the
engine's ``process(batch)``:

1. take the first waiting request;
2. wait for a free flush thread (at most ``workers`` batches run at once: while they are busy,
   new requests pile up and are then taken together — dynamic batching under load);
3. if no batch is running (the models are idle), dispatch at once with whatever is already
   queued (up to ``max_batch``): a lone request does not pay ``max_wait_ms``. Only while another
   batch is running — when a new batch would wait for the models anyway — gather: add requests
   until ``max_batch`` or until ``max_wait_ms`` after the *first* request arrived (never longer
   than a quarter of that request's remaining deadline);
4. submit the batch to a flush thread.

The batcher records, per batch, how long it waited for company (``stats()``: ``gathered``,
``immediate``, ``last_wait_ms``, ``max_wait_seen_ms``).

``max_batch = 1`` disables batching (each request is flushed alone, still off the event loop).

Deadlines stay per request: the batch carries each request's own :class:`Deadline` and the
cascade decides per image whether a tier still fits, delivering each image's answer as soon as
it is final (so an easy image never waits for a hard neighbour's expensive tier).

Delivery: each :class:`Pending` has a ``deliver`` callback called exactly once (guarded by
:meth:`Pending.resolve`). For asyncio callers :func:`future_deliverer` builds a callback that
sets an ``asyncio.Future`` through ``loop.call_soon_threadsafe``. If ``process`` raises, or the
batcher is closed with requests still queued, ``on_error(items, exc)`` is called with the
requests that were not yet resolved, so that no caller waits forever.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from loguru import logger

from natix_miner.engine.deadline import Deadline

_STOP = object()
_ids = itertools.count(1)


@dataclass
class Pending:
    """One request waiting in (or flowing through) the batcher."""

    payload: Any
    deadline: Deadline
    deliver: Callable[[Any], None]
    key: str | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    id: int = field(default_factory=lambda: next(_ids))
    _done: bool = field(default=False, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def done(self) -> bool:
        return self._done

    def resolve(self, result: Any) -> bool:
        """Deliver ``result`` once; later calls are ignored. Returns whether this call delivered."""
        with self._lock:
            if self._done:
                return False
            self._done = True
        try:
            self.deliver(result)
        except Exception as e:  # a caller that went away must not break the flush
            logger.debug(f"request {self.id}: delivery failed: {type(e).__name__}: {e}")
        return True


def future_deliverer(loop: asyncio.AbstractEventLoop, fut: "asyncio.Future[Any]") -> Callable[[Any], None]:
    """A ``deliver`` callback that completes ``fut`` on its own event loop, from any thread."""

    def _set(result: Any) -> None:
        if not fut.done():  # the awaiting side may have timed out and cancelled it
            fut.set_result(result)

    def deliver(result: Any) -> None:
        try:
            loop.call_soon_threadsafe(_set, result)
        except RuntimeError:  # loop closed: nobody is waiting any more
            pass

    return deliver


class MicroBatcher:
    def __init__(self, process: Callable[[list[Pending]], None], *, max_batch: int = 16,
                 max_wait_ms: float = 4.0, workers: int = 2,
                 on_error: Callable[[list[Pending], BaseException], None] | None = None,
                 name: str = "batcher"):
        if int(max_batch) < 1 or float(max_wait_ms) < 0 or int(workers) < 1:
            raise ValueError(f"{name}: max_batch and workers must be >= 1 and max_wait_ms >= 0, got "
                             f"max_batch={max_batch}, max_wait_ms={max_wait_ms}, workers={workers}")
        self.process = process
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.workers = int(workers)
        self.on_error = on_error
        self.name = name
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots = threading.Semaphore(self.workers)
        self._pool: ThreadPoolExecutor | None = None
        self._dispatcher: threading.Thread | None = None
        self._inflight: dict[Future, list[Pending]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._running = 0  # batches handed to a flush thread and not finished
        self.batches = 0
        self.items = 0
        self.max_seen = 0
        self.gathered = 0  # batches that waited for company (another batch was running)
        self.immediate = 0  # batches dispatched at once (models idle)
        self.last_wait_s = 0.0  # how long the last batch waited for company
        self.max_wait_seen_s = 0.0

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> "MicroBatcher":
        with self._lock:
            if self._dispatcher is not None:
                return self
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-flush")
            self._dispatcher = threading.Thread(target=self._run, name=f"{self.name}-dispatch", daemon=True)
            self._dispatcher.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._q.put(_STOP)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout)
        # requests still queued never reach a flush
        left = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                left.append(item)
        if left:
            self._fail(left, RuntimeError("engine closed"))
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                cancelled = [b for f, b in self._inflight.items() if f.cancelled()]
            for batch in cancelled:
                self._fail(batch, RuntimeError("engine closed"))

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------------------ API
    def submit(self, item: Pending) -> None:
        """Queue one request (thread-safe). After close, it is failed at once via ``on_error``."""
        if self._closed or self._dispatcher is None:
            self._fail([item], RuntimeError("engine not running"))
            return
        self._q.put(item)

    def stats(self) -> dict:
        return {
            "batches": self.batches,
            "items": self.items,
            "mean_batch": (self.items / self.batches) if self.batches else 0.0,
            "max_batch_seen": self.max_seen,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "workers": self.workers,
            "gathered": self.gathered,
            "immediate": self.immediate,
            "last_wait_ms": self.last_wait_s * 1000.0,
            "max_wait_seen_ms": self.max_wait_seen_s * 1000.0,
        }

    # ------------------------------------------------------------------------------ internals
    def _fail(self, items: list[Pending], exc: BaseException) -> None:
        open_items = [i for i in items if not i.done]
        if not open_items:
            return
        if self.on_error is not None:
            try:
                self.on_error(open_items, exc)
                return
            except Exception as e:  # pragma: no cover - defensive
                logger.exception(f"{self.name}: on_error failed: {e}")
        for i in open_items:
            i.resolve(None)

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is _STOP:
                return
            got = False
            while not self._closed:
                got = self._slots.acquire(timeout=0.05)
                if got:
                    break
            if self._closed:
                if got:
                    self._slots.release()
                self._fail([first], RuntimeError("engine closed"))
                continue
            batch = [first]
            stop = False
            with self._lock:
                busy = self._running > 0
            t_take = time.monotonic()
            if busy:  # the models are working: gather while we would wait anyway
                wait_until = first.enqueued_at + min(self.max_wait_s, first.deadline.remaining() / 4.0)
            else:  # idle: take only what is already queued
                wait_until = t_take
            while len(batch) < self.max_batch:
                timeout = wait_until - time.monotonic()
                try:
                    nxt = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            waited = time.monotonic() - t_take
            self.last_wait_s = waited
            self.max_wait_seen_s = max(self.max_wait_seen_s, waited)
            if busy:
                self.gathered += 1
            else:
                self.immediate += 1
            self._dispatch(batch)
            if stop:
                return

    def _dispatch(self, batch: list[Pending]) -> None:
        self.batches += 1
        self.items += len(batch)
        self.max_seen = max(self.max_seen, len(batch))
        assert self._pool is not None
        try:
            with self._lock:
                self._running += 1
                fut = self._pool.submit(self._flush, batch)
                self._inflight[fut] = batch
        except RuntimeError as e:  # pool shut down
            with self._lock:
                self._running -= 1
            self._slots.release()
            self._fail(batch, e)

    def _flush(self, batch: list[Pending]) -> None:
        try:
            self.process(batch)
        except BaseException as e:  # never leave a caller waiting
            logger.exception(f"{self.name}: batch of {len(batch)} failed: {type(e).__name__}: {e}")
            self._fail(batch, e)
        finally:
            self._fail(batch, RuntimeError("request not answered by the flush"))
            with self._lock:
                self._running -= 1
            self._slots.release()
            with self._lock:
                for f, b in list(self._inflight.items()):
                    if b is batch:
                        del self._inflight[f]
                        break
