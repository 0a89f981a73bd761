"""DDP through ``torchrun``: the launcher's environment read once, process group set up and torn down.

No launcher here: ``torchrun --nproc_per_node N scripts/train.py ...`` (one node) or
``torchrun --nnodes 2 --node_rank R --rdzv_backend c10d --rdzv_endpoint HOST:PORT ...`` (several) start the
processes; each reads RANK / WORLD_SIZE / LOCAL_RANK. gloo on CPU, nccl on CUDA. Without those variables the
run is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> DistEnv:
        env = os.environ if environ is None else environ
        return cls(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                   local_rank=int(env.get("LOCAL_RANK", 0)))


def setup(dist_env: DistEnv, device: str) -> str:
    """Initialise the process group when launched by torchrun; returns this rank's device."""
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{dist_env.local_rank}" if dist_env.enabled else (device if ":" in device else "cuda:0")
        torch.cuda.set_device(torch.device(device))
    if dist_env.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(dist_env: DistEnv) -> None:
    if dist_env.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(dist_env: DistEnv, obj: Any) -> Any:
    """``obj`` from rank 0 on every rank (a picklable value)."""
    if not dist_env.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
