"""Running one tier's model calls under per-image deadlines (the cascade's executor loop).

:func:`run_tier` submits one call per model of the tier (each on the model's own worker,
:class:`~natix_miner.engine.runner.ModelRunner`), then waits, waking at each image's deadline and at
each call's own limit:

- an image whose deadline passed gets a ``"deadline"`` vote from every model still running for it and
  is finished with its votes so far (``finish(state, "deadline")``);
- a call nobody waits for any more, or past its limit, is abandoned (the runner discards its late
  result and keeps its worker busy until it returns) and recorded as a timeout;
- a finished call's per-image ``(p, error)`` lists become :class:`~natix_miner.types.ModelVote` records.

Which images each model runs on, and when an image exits, is the cascade's decision
(:mod:`natix_miner.engine.cascade`); this module only runs the calls it was handed.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from natix_miner.engine.batcher import Pending
from natix_miner.engine.runner import ModelJob, ModelRunner
from natix_miner.types import CascadeResult, ModelVote


@dataclass
class ImageState:
    """One image on its way through the cascade: its request, votes so far, and whether it is done."""

    req: Pending
    votes: list[ModelVote] = field(default_factory=list)
    tiers_used: list[str] = field(default_factory=list)
    ps: list[float] = field(default_factory=list)
    ws: list[float] = field(default_factory=list)
    done: bool = False
    result: CascadeResult | None = None

    def add(self, mv: ModelVote) -> None:
        self.votes.append(mv)
        if mv.p is not None:
            self.ps.append(mv.p)
            self.ws.append(mv.weight)


def run_tier(tname: str, assign: list[tuple[ModelRunner, list[ImageState]]],
             finish: Callable[[ImageState, str], None]) -> None:
    """Run tier ``tname``: each runner on its images; ``finish(state, "deadline")`` for images whose
    deadline passes meanwhile. Returns when every call has finished or been abandoned."""
    seen: set[int] = set()
    for _, ss in assign:
        for s in ss:
            if id(s) not in seen:
                seen.add(id(s))
                s.tiers_used.append(tname)
    pending: dict[Future, tuple[ModelRunner, ModelJob, list[ImageState]]] = {}
    for r, ss in assign:
        cap = max(s.req.deadline.at for s in ss) - time.monotonic()
        job = r.start([s.req.payload for s in ss], cap if math.isfinite(cap) else 0.0)
        if isinstance(job, str):
            for s in ss:
                s.add(ModelVote(r.name, tname, None, r.spec.weight, 0.0, job))
            continue
        pending[job.future] = (r, job, ss)

    def record(r: ModelRunner, job: ModelJob, ss: list[ImageState], outcome: Any) -> None:
        lat = ((job.finished_at or time.monotonic()) - job.submitted_at) * 1000.0
        for i, s in enumerate(ss):
            if s.done:
                continue
            if isinstance(outcome, str):
                s.add(ModelVote(r.name, tname, None, r.spec.weight, lat, outcome))
            else:
                ps, errs = outcome
                s.add(ModelVote(r.name, tname, ps[i], r.spec.weight, lat, errs[i]))

    while pending:
        now = time.monotonic()
        for r, job, ss in pending.values():
            for s in ss:
                if not s.done and s.req.deadline.at <= now:
                    for r2, job2, ss2 in pending.values():
                        if any(x is s for x in ss2):
                            s.add(ModelVote(r2.name, tname, None, r2.spec.weight,
                                            (now - job2.submitted_at) * 1000.0, "deadline"))
                    finish(s, "deadline")
        for fut, (r, job, ss) in list(pending.items()):
            if fut.done():
                continue
            waiting = any(not s.done for s in ss)
            if not waiting or now >= job.limit_at:
                why = "no request waits for it any more" if not waiting else f"over its {job.limit_s:.3f} s limit"
                if r.abandon(job, why):
                    del pending[fut]
                    record(r, job, ss, f"timeout after {(now - job.submitted_at):.3f} s ({why})")
        if not pending:
            break
        wake = min([s.req.deadline.at for _, _, ss in pending.values() for s in ss if not s.done]
                   + [j.limit_at for _, j, _ in pending.values()])
        done, _ = wait(list(pending), timeout=max(0.0, wake - time.monotonic()), return_when=FIRST_COMPLETED)
        for fut in done:
            r, job, ss = pending.pop(fut)
            record(r, job, ss, r.outcome(job))

