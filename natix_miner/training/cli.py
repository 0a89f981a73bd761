"""``scripts/train.py``: flags -> :class:`~natix_miner.training.config.TrainConfig` -> :func:`pipeline.run`.

Parsing imports nothing heavy (``--help`` is fast); torch loads when the run starts.
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/train.py",
        description="Fine-tune a roadwork classifier end to end (or only its head with --freeze-backbone), "
                    "evaluate it on a held-out split and export OUT/model/ + OUT/metrics.json. "
                    "Multi-GPU / multi-node: launch the same command with torchrun (docs/training.md).")
    a = p.add_argument
    a("--data", action="append", required=True, metavar="DIR[=W]",
      help="data folder (labelled folders, NATIX parquet or soft_labels.jsonl); repeat to mix; =W weights it")
    a("--data-weight", action="append", default=[], metavar="NAME=W", help="source mixing weight by source name")
    a("--model", required=True, help="lite0|lite1|lite2 (offline ImageNet weights), a timm name "
                                     "(convnextv2_base.fcmae_ft_in22k_in1k, ...), or hf:ID / a transformers folder")
    a("--out", required=True, help="output folder: model/ (export), metrics.json, checkpoints/")
    a("--no-pretrained", dest="pretrained", action="store_false", help="random init (tests, debugging)")
    a("--epochs", type=int, default=10)
    a("--max-steps", type=int, default=None, help="stop after N optimizer steps (the LR schedule follows --epochs)")
    a("--batch-size", type=int, default=32)
    a("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    a("--image-size", type=int, default=None, help="square model input side (default: the model's)")
    a("--resize", choices=("squash", "letterbox"), default="squash", help="how an image becomes the model input")
    a("--conditions", default="fullres=0.5,aug-2026-01=0.35,letterbox-2026-04=0.15",
      help="training mix of validator conditions: fullres, aug-2026-01, letterbox-2026-04 (NAME=W,...)")
    a("--device", default="auto", help="auto | cpu | cuda")
    a("--freeze-backbone", action="store_true", help="train only the classifier head")
    a("--resume", action="store_true", help="continue OUT/checkpoints/last.pt (same settings)")
    a("--lr", type=float, default=3e-4)
    a("--weight-decay", type=float, default=0.05)
    a("--layer-decay", type=float, default=0.75, help="layer-wise LR decay (1 = off)")
    a("--warmup-steps", type=int, default=None, help="default: 5%% of the optimizer steps")
    a("--ema", type=float, default=0.999, help="EMA decay of the evaluated/exported weights (0 = off)")
    a("--no-class-balance", dest="class_balanced", action="store_false", help="sample uniformly")
    a("--val-frac", type=float, default=0.2, help="validation split carved from training data")
    a("--test-frac", type=float, default=0.2, help="held-out test split (metrics only)")
    a("--cv-folds", type=int, default=0, help="nested grouped K-fold CV metrics (training.cv.nested_cv, inner "
                                              "holdout of --val-frac), then a final model")
    a("--cv-repeats", type=int, default=1, help="repeat the K-fold CV R times with new folds: metrics.json gives the "
                                                "mean and the spread (_sd) per source, condition and view")
    a("--patience", type=int, default=5, help="early stopping: epochs without a better val MCC@50/50")
    a("--seed", type=int, default=0)
    a("--workers", type=int, default=2, help="DataLoader worker processes")
    a("--min-confidence", type=float, default=0.0, help="drop pseudo labels below this confidence")
    a("--distill-temperature", type=float, default=1.0, metavar="T",
      help="distillation temperature for soft targets (pseudo labels): loss T^2 * BCE(logit/T, sigmoid(logit(p)/T)); "
           "1 = plain BCE on the probabilities")
    a("--wandb-project", default=None, help="log to Weights & Biases (off unless given)")
    a("--push-to-hub", default=None, metavar="REPO", help="upload OUT/model/ to this Hugging Face model repo")
    a("--debug-keys", action="store_true", help=argparse.SUPPRESS)
    return p


def config_from_args(args: argparse.Namespace):
    from natix_miner.training.config import TrainConfig

    weights = {}
    for item in args.data_weight:
        name, _, w = item.partition("=")
        weights[name] = float(w)
    return TrainConfig(
        data=args.data, model=args.model, out=args.out, pretrained=args.pretrained, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        image_size=args.image_size, resize=args.resize, conditions=args.conditions, device=args.device,
        freeze_backbone=args.freeze_backbone, resume=args.resume, lr=args.lr, weight_decay=args.weight_decay,
        layer_decay=args.layer_decay if args.layer_decay < 1 else None, warmup_steps=args.warmup_steps,
        ema=args.ema or None, class_balanced=args.class_balanced, val_frac=args.val_frac,
        test_frac=args.test_frac, cv_folds=args.cv_folds, cv_repeats=args.cv_repeats, patience=args.patience,
        seed=args.seed,
        workers=args.workers, min_confidence=args.min_confidence, data_weight=weights,
        distill_temperature=args.distill_temperature,
        wandb_project=args.wandb_project, debug_keys=args.debug_keys)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pydantic import ValidationError

    try:
        cfg = config_from_args(args)
    except (ValidationError, ValueError) as e:
        print(f"train.py: invalid options: {e}", file=sys.stderr)
        return 2
    from natix_miner.training.distributed import DistEnv
    from natix_miner.training.loop import TrainingError
    from natix_miner.training.models import ModelError
    from natix_miner.training.pipeline import data_modules, run

    data_error = data_modules()[0].DataError
    try:
        metrics = run(cfg)
    except (data_error, ModelError, TrainingError) as e:
        print(f"train.py: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if args.push_to_hub and DistEnv.from_env().main:
        from natix_miner.training.export import push_to_hub

        print(f"pushed to {push_to_hub(f'{cfg.out}/model', args.push_to_hub)}")
    if DistEnv.from_env().main:
        print(json.dumps({k: metrics.get(k) for k in ("n", "mcc", "mcc_balanced", "accuracy", "auc", "threshold",
                                                       "temperature")}))
    return 0
