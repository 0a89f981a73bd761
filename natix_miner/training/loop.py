"""The training loop for one model: AdamW with layer-wise LR decay, warmup + cosine, gradient accumulation,
bf16 autocast on CUDA, EMA weights, class-balanced sampling, soft targets (distilled with
``distill_temperature``), early stopping on the validation
split's MCC at 50/50, a checkpoint every epoch and ``--resume``, DDP when launched by torchrun.

The LR schedule follows ``epochs`` (``max_steps`` only stops the run early), so a run stopped by
``--max-steps`` and resumed with a larger one continues exactly the schedule of an uninterrupted run.
A resumed run restores model, optimizer, scheduler, EMA, RNG state, epoch, position in the epoch, optimizer
step, best metric and the best weights from ``OUT/checkpoints/last.pt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch.utils.data import DataLoader

from natix_miner.training import checkpoint as ckpt
from natix_miner.training.batches import EpochSampler, ImageDataset, collate, distill_loss
from natix_miner.training.config import TrainConfig
from natix_miner.training.distributed import DistEnv, barrier, broadcast
from natix_miner.training.models import BinaryClassifier
from natix_miner.training.transforms import TransformSpec, parse_mix


class TrainingError(RuntimeError):
    """A run that cannot go on (out of memory, a resume that does not match its checkpoint)."""


@dataclass
class DataAPI:
    """The data/metrics functions of the shared contract (natix_miner.training.data / metrics / splits)."""

    load_image: Callable[[Any], Any]
    sampling_weights: Callable[..., list[float]]
    best_threshold: Callable[..., float]
    evaluate_scores: Callable[..., dict]
    unreadable: tuple[type[BaseException], ...] = (OSError, ValueError)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_metric: float | None
    best_epoch: int
    step: int
    epochs_run: int
    stopped_early: bool
    skipped: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # validation logits of the best weights (rank 0): (logits, readable samples, skipped keys)
    best_val: tuple[np.ndarray, list[Any], list[str]] | None = None


def oom_message(cfg: TrainConfig) -> str:
    return (f"CUDA out of memory at --batch-size {cfg.batch_size}, --image-size {cfg.image_size or 'default'}: "
            f"lower --batch-size (raise --grad-accum to keep the effective batch of "
            f"{cfg.batch_size * cfg.grad_accum}) or lower --image-size")


def transform_spec(cfg: TrainConfig, model: BinaryClassifier) -> TransformSpec:
    return TransformSpec(size=model.image_size, mean=model.mean, std=model.std, resize=cfg.resize,
                         mix=parse_mix(cfg.conditions))


def state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t))
    return f


def loader(ds: ImageDataset, cfg: TrainConfig, sampler=None, batch_size: int | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size or cfg.batch_size, sampler=sampler, shuffle=False,
                      num_workers=cfg.workers, collate_fn=collate, persistent_workers=False,
                      pin_memory=cfg.device.startswith("cuda") and torch.cuda.is_available())


@torch.inference_mode()
def predict_logits(module: torch.nn.Module, samples: Sequence[Any], spec: TransformSpec, api: DataAPI,
                   cfg: TrainConfig, device: str) -> tuple[np.ndarray, list[Any], list[str]]:
    """Logits of the readable ``samples`` (in order), those samples, and the keys skipped as unreadable."""
    if not samples:
        return np.zeros(0), [], []
    ds = ImageDataset(samples, api.load_image, spec, train=False, unreadable=api.unreadable)
    was = module.training
    module.eval()
    out, keys, skipped = [], [], []
    cuda = device.startswith("cuda")
    for batch in loader(ds, cfg):
        skipped += batch["skipped"]
        if not batch["n"]:
            continue
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out.append(module(batch["x"].to(device)).float().cpu())
        keys += batch["key"]
    module.train(was)
    by_key = {s.key: s for s in samples}
    logits = torch.cat(out).numpy() if out else np.zeros(0)
    return logits.astype(np.float64), [by_key[k] for k in keys], skipped


def score(api: DataAPI, logits: np.ndarray, kept: Sequence[Any]) -> float | None:
    """MCC at 50/50 at the best threshold: the early-stopping metric."""
    y = np.array([s.label for s in kept])
    if len(set(y.tolist())) < 2:
        return None
    p = 1 / (1 + np.exp(-np.clip(logits, -60, 60)))
    m = api.evaluate_scores(y, p, api.best_threshold(y, p))
    return float(m["mcc_balanced"] or 0.0)


class _Wandb:
    def __init__(self, cfg: TrainConfig, main: bool):
        self.run = None
        if cfg.wandb_project and main:
            import wandb

            self.run = wandb.init(project=cfg.wandb_project, config=cfg.model_dump(), dir=cfg.out)

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def fit(cfg: TrainConfig, model: BinaryClassifier, train: Sequence[Any], val: Sequence[Any], run_dir: Path,
        api: DataAPI, dist_env: DistEnv, device: str) -> FitResult:
    """Train ``model`` on ``train``, early-stopping on ``val``; returns the best weights (EMA when enabled)."""
    from timm.utils import ModelEmaV3
    from torch.nn.parallel import DistributedDataParallel

    run_dir = Path(run_dir)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed square inputs: let cuDNN pick its fastest kernels
    last = run_dir / "checkpoints" / "last.pt"
    spec = transform_spec(cfg, model)
    if cfg.freeze_backbone:
        model.freeze_backbone()
    model.to(device).train()
    ddp = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None) \
        if dist_env.enabled else None
    net = ddp or model
    groups = model.param_groups(cfg.weight_decay, cfg.layer_decay)
    for g in groups:
        g["lr"] = cfg.lr * g.get("lr_scale", 1.0)
    opt = torch.optim.AdamW(groups, lr=cfg.lr)
    ds = ImageDataset(train, api.load_image, spec, train=True, seed=cfg.seed, unreadable=api.unreadable)
    weights = api.sampling_weights(list(train), class_balanced=cfg.class_balanced)
    if not cfg.class_balanced and len(set(weights)) <= 1:
        weights = None  # uniform: a permutation per epoch (no repeats) instead of draws with replacement
    sampler = EpochSampler(len(train), weights=weights, rank=dist_env.rank, world_size=dist_env.world_size,
                           seed=cfg.seed)
    batches = -(-len(sampler) // cfg.batch_size)
    per_epoch = -(-batches // cfg.grad_accum)
    total = cfg.epochs * per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.05 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(warmup, total))
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    res = FitResult(best_state={}, best_metric=None, best_epoch=-1, step=0, epochs_run=0, stopped_early=False)
    epoch, pos, bad = 0, 0, 0
    skipped: set[str] = set()
    if cfg.resume and last.is_file():
        state = ckpt.load(last)
        if state["fingerprint"] != cfg.fingerprint():
            raise TrainingError(f"--resume: {last} was written by a run with other settings: "
                                f"{state['fingerprint']} vs {cfg.fingerprint()}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        ckpt.set_rng_state(state["rng"])
        epoch, pos, bad = state["epoch"], state["pos"], state["bad_epochs"]
        res.step, res.best_metric, res.best_epoch = state["step"], state["best_metric"], state["best_epoch"]
        res.best_state, res.history, skipped = state["best_state"], state["history"], set(state["skipped"])
        logger.info("resumed {} at epoch {}, item {}, step {} (best val MCC@50/50 {})", last, epoch, pos,
                    res.step, res.best_metric)
    elif cfg.resume:
        logger.warning("--resume: no checkpoint at {}; starting a new run", last)

    def save(epoch_: int, pos_: int) -> None:
        if dist_env.main:
            ckpt.save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                              "scheduler": sched.state_dict(), "ema": ema.state_dict() if ema else None,
                              "rng": ckpt.rng_state(), "epoch": epoch_, "pos": pos_, "bad_epochs": bad,
                              "step": res.step, "best_metric": res.best_metric, "best_epoch": res.best_epoch,
                              "best_state": res.best_state, "history": res.history, "skipped": sorted(skipped),
                              "fingerprint": cfg.fingerprint(), "spec": model.spec()}, last)

    log = _Wandb(cfg, dist_env.main)
    cuda = device.startswith("cuda")
    seen_keys: list[str] = []
    stop = cfg.max_steps is not None and res.step >= cfg.max_steps
    while epoch < cfg.epochs and not stop:
        sampler.set_epoch(epoch, skip=pos)
        ds.epoch = epoch
        losses: list[float] = []
        bar = _progress(dist_env, len(sampler), f"epoch {epoch + 1}/{cfg.epochs}")
        micro = 0
        for batch in loader(ds, cfg, sampler):
            pos += len(batch["skipped"]) + batch["n"]
            bar.update(len(batch["skipped"]) + batch["n"])
            skipped.update(batch["skipped"])
            if cfg.debug_keys and batch["n"]:
                seen_keys += batch["key"]
            micro += 1
            sync = micro % cfg.grad_accum == 0 or pos >= len(sampler) + sampler.skip
            try:
                with (ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext()):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                        if batch["n"]:
                            logits = net(batch["x"].to(device, non_blocking=True)).float()
                            loss = distill_loss(logits, batch["target"].to(device), batch["soft"],
                                                cfg.distill_temperature)
                        else:  # every image unreadable: a zero loss through the (DDP) forward keeps ranks in step
                            blank = torch.zeros(1, 3, model.image_size, model.image_size, device=device)
                            loss = net(blank).float().sum() * 0.0
                    (loss / cfg.grad_accum).backward()
            except torch.cuda.OutOfMemoryError as e:
                raise TrainingError(oom_message(cfg)) from e
            if batch["n"]:
                losses.append(float(loss.detach()))
            if not sync:
                continue
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            res.step += 1
            if ema is not None:
                ema.update(model, step=res.step)
            if losses:
                res.history.append({"step": res.step, "epoch": epoch, "loss": losses[-1],
                                    "lr": sched.get_last_lr()[0]})
                log.log({"train/loss": losses[-1], "train/lr": sched.get_last_lr()[0]}, res.step)
            bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "-", step=res.step)
            if cfg.max_steps is not None and res.step >= cfg.max_steps:
                stop = True
                break
        bar.close()
        if stop and pos < len(sampler) + sampler.skip:  # stopped mid-epoch: resume continues here
            if _improve_on_val(cfg, model, ema, val, spec, api, device, dist_env, res, epoch, log):
                bad = 0
            save(epoch, pos)
            break
        res.epochs_run = epoch + 1
        improved = _improve_on_val(cfg, model, ema, val, spec, api, device, dist_env, res, epoch, log)
        bad = 0 if improved else bad + 1
        epoch, pos = epoch + 1, 0
        save(epoch, pos)
        if broadcast(dist_env, bad >= cfg.patience and bool(val)):
            logger.info("early stop: no better validation MCC@50/50 for {} epochs", bad)
            res.stopped_early = True
            break
    if not res.best_state:  # nothing trained (resumed a finished run) or no validation split
        res.best_state = _cpu_state(ema.module if ema is not None else model)
    res.skipped = sorted(skipped)
    if cfg.debug_keys:
        dbg = Path(cfg.out) / "debug"
        dbg.mkdir(parents=True, exist_ok=True)
        (dbg / f"rank{dist_env.rank}.json").write_text(json.dumps(
            {"rank": dist_env.rank, "keys": seen_keys, "state_hash": state_hash(model)}))
    log.finish()
    barrier(dist_env)
    return res


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _improve_on_val(cfg, model, ema, val, spec, api, device, dist_env, res: FitResult, epoch: int, log) -> bool:
    """Rank 0 scores the (EMA) weights on ``val``; keeps them when MCC@50/50 improved. Same answer on all ranks."""
    improved = False
    if dist_env.main:
        module = ema.module if ema is not None else model
        metric, scored = None, None
        if val:
            scored = predict_logits(module, val, spec, api, cfg, device)
            metric = score(api, scored[0], scored[1])
        if metric is None or res.best_metric is None or metric > res.best_metric:  # no usable validation split: the latest weights are the best
            improved = True
        if improved:
            res.best_metric, res.best_epoch = metric if metric is not None else res.best_metric, epoch
            res.best_state = _cpu_state(module)
            res.best_val = scored
        res.history.append({"step": res.step, "epoch": epoch, "val_mcc_balanced": metric})
        log.log({"val/mcc_balanced": metric}, res.step)
        logger.info("epoch {}: step {}, val MCC@50/50 {} (best {} at epoch {})", epoch + 1, res.step,
                    None if metric is None else round(metric, 4),
                    None if res.best_metric is None else round(res.best_metric, 4), res.best_epoch + 1)
    return bool(broadcast(dist_env, improved))


def _progress(dist_env: DistEnv, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not dist_env.main, leave=False, dynamic_ncols=True)
