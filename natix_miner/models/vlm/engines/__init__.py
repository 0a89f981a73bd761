"""VLM engines behind one interface (:class:`~natix_miner.models.vlm.engines.base.VLMEngine`).

``vllm`` (local, optional dependency, one worker process per model), ``openai`` (remote
OpenAI-compatible endpoint over HTTP) and ``transformers`` (in-process, any device). Each module
is imported only when a profile asks for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from natix_miner.models.vlm.engines.base import VLMEngine

ENGINES = ("vllm", "openai", "transformers")


def make_engine(name: str, *, model: str, family: str, device: str, options: dict[str, Any]) -> "VLMEngine":
    """Build (not load) the engine called ``name``."""
    if name == "vllm":
        from natix_miner.models.vlm.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model=model, family=family, device=device, options=options)
    if name == "openai":
        from natix_miner.models.vlm.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(model=model, family=family, device=device, options=options)
    if name == "transformers":
        from natix_miner.models.vlm.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model=model, family=family, device=device, options=options)
    raise ValueError(f"unknown VLM engine {name!r}; use one of {', '.join(ENGINES)}")
