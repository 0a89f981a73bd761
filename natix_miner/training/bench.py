"""Training throughput (images/s) of a backbone at an image size and batch size: ``scripts/bench_train.py``.

Measures one optimizer step = forward + backward + AdamW step on random input batches (model compute only, no
image decoding), after warmup steps, bf16 autocast on CUDA, fp32 on CPU. Random-init weights (``pretrained``
off) unless asked: the speed does not depend on them and nothing is downloaded.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

# The prepared one-H100 run (issue 11): ConvNeXtV2-B and a DINOv2-with-registers ViT-B/14 at 224 and 448, bf16.
GPU_PRESET: list[dict[str, Any]] = [
    {"model": "convnextv2_base.fcmae_ft_in22k_in1k", "image_size": 224, "batch_size": 64},
    {"model": "convnextv2_base.fcmae_ft_in22k_in1k", "image_size": 448, "batch_size": 16},
    {"model": "vit_base_patch14_reg4_dinov2.lvd142m", "image_size": 224, "batch_size": 64},
    {"model": "vit_base_patch14_reg4_dinov2.lvd142m", "image_size": 448, "batch_size": 16},
]
CPU_PRESET: list[dict[str, Any]] = [
    {"model": "lite0", "image_size": 224, "batch_size": 16},
    {"model": "lite0", "image_size": 448, "batch_size": 8},
]


def bench_one(model: str, image_size: int, batch_size: int, *, device: str = "cpu", steps: int = 10,
              warmup: int = 3, pretrained: bool = False, freeze_backbone: bool = False) -> dict[str, Any]:
    import torch

    from natix_miner.training.models import build_model

    torch.manual_seed(0)
    m = build_model(model, pretrained=pretrained and model.startswith("lite"), image_size=image_size)
    if freeze_backbone:
        m.freeze_backbone()
    m.to(device).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    cuda = device.startswith("cuda")
    x = torch.randn(batch_size, 3, m.image_size, m.image_size, device=device)
    y = (torch.rand(batch_size, device=device) > 0.5).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(m(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"model": model, "image_size": m.image_size, "batch_size": batch_size, "device": device,
            "dtype": "bf16-autocast" if cuda else "fp32", "freeze_backbone": freeze_backbone, "steps": steps,
            "images_per_s": round(steps * batch_size / dt, 2), "s_per_step": round(dt / steps, 4),
            "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
            "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
            "torch_threads": torch.get_num_threads()}


def environment(device: str) -> dict[str, Any]:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "cpu_count": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
