"""``ImageSynapse``: the NATIX StreetVision wire type (docs/protocol.md §1).

The bittensor axon routes by class name, so the class must be named exactly ``ImageSynapse``
(requests arrive at ``POST /ImageSynapse``). The three upstream fields keep their names, types
and defaults. Our extra response fields are optional with ``None`` defaults: validators on
bittensor 9.12.x build their own ``ImageSynapse(**json)`` and ignore them (pydantic
``extra="ignore"``).

``Synapse.to_headers`` rebuilds the pydantic JSON schema on every call (docs/protocol.md §11: 65–100 ms
per round trip on 9.12.2); :meth:`ImageSynapse.get_required_fields` caches it per class.

This module imports bittensor (it must: the synapse subclasses ``bt.Synapse``); import it only
where the wire is needed.
"""

from __future__ import annotations

import typing

import bittensor as bt
import pydantic

_REQUIRED_FIELDS_CACHE: dict[type, list[str]] = {}


class _CachedSchemaSynapse(bt.Synapse):
    def get_required_fields(self):  # noqa: D401 - same contract as bittensor's
        cls = self.__class__
        cached = _REQUIRED_FIELDS_CACHE.get(cls)
        if cached is None:
            cached = list(cls.model_json_schema().get("required", []))
            _REQUIRED_FIELDS_CACHE[cls] = cached
        return list(cached)


class ImageSynapse(_CachedSchemaSynapse):
    """A validator's challenge: a base64 JPEG in ``image``; the miner answers ``prediction``.

    ``prediction`` is P(the image shows roadwork) in [0, 1]; -1.0 means "no answer".
    """

    testnet_label: int = -1
    image: str = pydantic.Field(
        default="",
        title="Image",
        description="base64 (standard alphabet, padded) of a JPEG file",
        frozen=False,
    )
    prediction: float = pydantic.Field(
        default=-1.0,
        title="Prediction",
        description="P(roadwork) in [0, 1]; > 0.5 means roadwork; -1.0 = no answer",
        frozen=False,
    )

    # --- natix-miner's optional response fields (ignored by upstream validators) -------------
    confidence: typing.Optional[float] = pydantic.Field(
        default=None, description="max(prediction, 1 - prediction) of the cascade's answer"
    )
    exit_tier: typing.Optional[str] = pydantic.Field(
        default=None, description="name of the last tier the cascade ran"
    )
    model_version: typing.Optional[str] = pydantic.Field(
        default=None, description="natix-miner version and profile name"
    )

    def deserialize(self) -> float:
        return self.prediction


class ExtendedImageSynapse(ImageSynapse):
    """Laggard validators (code older than 2025-11-30) call ``/ExtendedImageSynapse`` (docs/protocol.md §1)."""

    model_url: str = ""
