"""Backbones by name (the training side's view). The network and its factory live in
:mod:`natix_miner.models.binary_net` so that the serving adapter (``timm_classifier``) can rebuild an export
without importing the training package (layer contract: models never import training)."""

from natix_miner.models.binary_net import (  # noqa: F401
    IMAGENET_MEAN,
    IMAGENET_STD,
    LITE_LICENCE,
    LITE_MEAN,
    LITE_NAMES,
    LITE_STD,
    BinaryClassifier,
    ModelError,
    build_from_spec,
    build_model,
    lite_state_for_timm,
    lite_weights_path,
    source_kind,
)
