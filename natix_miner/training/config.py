"""The typed training configuration (built by :mod:`natix_miner.training.cli` from ``scripts/train.py`` flags)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: list[str] = Field(min_length=1)
    model: str
    out: str
    pretrained: bool = True
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps over the whole run (resume counts on)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    image_size: int | None = Field(None, ge=16)  # None: the model's default input size
    resize: str = "squash"  # squash | letterbox (model input)
    conditions: str = "fullres=0.5,aug-2026-01=0.35,letterbox-2026-04=0.15"
    device: str = "auto"  # auto | cpu | cuda
    freeze_backbone: bool = False
    resume: bool = False
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    layer_decay: float | None = Field(0.75, gt=0, le=1)
    warmup_steps: int | None = Field(None, ge=0)  # None: 5 % of the optimizer steps
    ema: float | None = Field(0.999, gt=0, lt=1)  # None: no EMA weights
    class_balanced: bool = True
    val_frac: float = Field(0.2, ge=0, lt=1)  # carved from training data: early stopping, threshold, temperature
    test_frac: float = Field(0.2, ge=0, lt=1)  # held out: metrics.json only
    cv_folds: int = Field(0, ge=0)  # > 1: grouped K-fold CV metrics (each fold: its own val split), then a final model
    cv_repeats: int = Field(1, ge=1)  # repeats of the K-fold CV (new fold seed each): metrics are mean and _sd
    patience: int = Field(5, ge=1)  # epochs without a better val MCC at 50/50 before stopping
    seed: int = 0
    workers: int = Field(2, ge=0)
    min_confidence: float = Field(0.0, ge=0, le=1)
    distill_temperature: float = Field(1.0, gt=0)  # T of the distillation loss on soft targets (1: plain BCE)
    data_weight: dict[str, float] = Field(default_factory=dict)
    wandb_project: str | None = None
    debug_keys: bool = False  # write the sample keys each rank trained on (tests of the distributed sampler)

    @field_validator("resize")
    @classmethod
    def _resize(cls, v: str) -> str:
        from natix_miner.training.transforms import RESIZE_MODES

        if v not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}")
        return v

    @field_validator("conditions")
    @classmethod
    def _mix(cls, v: str) -> str:
        from natix_miner.training.transforms import parse_mix

        parse_mix(v)
        return v

    def fingerprint(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return self.model_dump(include={"data", "model", "batch_size", "grad_accum", "image_size", "resize",
                                        "seed", "val_frac", "test_frac", "cv_folds", "cv_repeats",
                                        "freeze_backbone", "distill_temperature"})
