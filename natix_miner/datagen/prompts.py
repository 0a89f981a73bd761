"""Label-dependent prompts for synthetic images (docs/protocol.md §2.3).

Validators caption a real cached image of the drawn label with BLIP-2, then have an instruction-tuned LLM
rewrite the caption as "Photorealistic dashcam footage ..." that must show roadwork (label 1) or a normal road
(label 0). :class:`CaptionPrompts` does the same with any captioning model and any text-generation model
(configured by model id, loaded lazily; or injected callables). :class:`TemplatePrompts` needs no model and is
the tested default: label templates filled with random scene details.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

_SCENES = ["a city street", "a suburban road", "a two-lane rural road", "a multi-lane highway", "an intersection",
           "a residential street", "a road through an industrial area", "a bridge approach", "a roundabout",
           "a narrow old-town street"]
_LIGHT = ["on a sunny day", "under an overcast sky", "at dusk", "in light rain", "in the early morning",
          "at noon", "after rain with wet asphalt", "on a hazy afternoon"]
_TRAFFIC = ["with light traffic", "with parked cars along the curb", "with a few cars ahead", "with a bus ahead",
            "with cyclists on the side", "with no other vehicles"]
_ROADWORK = ["orange traffic cones closing the right lane", "red and white barriers around an excavated section",
             "a construction crew in high-visibility vests", "a 'road work ahead' sign and a lane closure",
             "an excavator and a dump truck working on the roadside", "temporary yellow lane markings and barriers",
             "a flagger holding a stop/slow paddle", "fresh asphalt being laid by a paving machine"]
_NORMAL = ["clear lane markings", "regular traffic signs", "trees along the sidewalk", "shops and houses",
           "guard rails", "traffic lights", "a clean, open road ahead"]

LABEL_INSTRUCTIONS = {
    1: ("Rewrite the description as one short dashcam-footage description. Begin with 'Photorealistic dashcam "
        "footage' and include clear roadwork: a construction zone, orange cones, barriers, construction vehicles, a "
        "road crew, a lane closure or construction signs."),
    0: ("Rewrite the description as one short dashcam-footage description of a normal road with regular traffic and "
        "no construction. Begin with 'Photorealistic dashcam footage' and keep it factual."),
}


class PromptSource(Protocol):
    """Gives one prompt per requested label. ``images``: a real reference image of that label per item (may be
    None; template sources ignore them)."""

    name: str

    def prompts(self, labels: Sequence[int], images: Sequence[Any | None], rng: random.Random) -> list[str]: ...


class TemplatePrompts:
    name = "templates"

    def prompts(self, labels: Sequence[int], images: Sequence[Any | None], rng: random.Random) -> list[str]:
        out = []
        for label in labels:
            scene, light, traffic = rng.choice(_SCENES), rng.choice(_LIGHT), rng.choice(_TRAFFIC)
            if label == 1:
                a, b = rng.sample(_ROADWORK, 2)
                out.append(f"Photorealistic dashcam footage of {scene} {light} {traffic}, with active roadwork: "
                           f"{a} and {b}")
            else:
                a, b = rng.sample(_NORMAL, 2)
                out.append(f"Photorealistic dashcam footage of {scene} {light} {traffic}, {a} and {b}, "
                           "no construction")
        return out


class CaptionPrompts:
    """Caption a reference image, then rewrite the caption for the label (the validators' method).

    ``captioner(image) -> str`` and ``rewriter(instruction, caption) -> str`` may be given directly (tests, a
    remote service); otherwise they are built from ``caption_model`` (a transformers image-to-text model, e.g.
    ``Salesforce/blip2-opt-2.7b-coco``) and ``rewrite_model`` (a chat text-generation model, e.g.
    ``meta-llama/Llama-3.1-8B-Instruct``) on first use. Without ``rewrite_model`` the caption is used with a
    label phrase appended. A failed rewrite or a missing image falls back to a template prompt.
    """

    name = "captions"

    def __init__(self, caption_model: str | None = None, rewrite_model: str | None = None, *, device: str = "cpu",
                 captioner: Callable[[Any], str] | None = None,
                 rewriter: Callable[[str, str], str] | None = None, max_new_tokens: int = 80):
        if captioner is None and caption_model is None:
            raise ValueError("CaptionPrompts needs caption_model or a captioner")
        self.caption_model, self.rewrite_model, self.device = caption_model, rewrite_model, device
        self._captioner, self._rewriter = captioner, rewriter
        self.max_new_tokens = max_new_tokens
        self._fallback = TemplatePrompts()

    def _load(self) -> None:
        from transformers import pipeline

        if self._captioner is None:
            cap = pipeline("image-to-text", model=self.caption_model, device=self.device)
            self._captioner = lambda im: cap(im, max_new_tokens=40)[0]["generated_text"]
        if self._rewriter is None and self.rewrite_model:
            gen = pipeline("text-generation", model=self.rewrite_model, device=self.device)

            def rewrite(instruction: str, caption: str) -> str:
                msgs = [{"role": "system", "content": instruction}, {"role": "user", "content": caption}]
                out = gen(msgs, max_new_tokens=self.max_new_tokens, return_full_text=False)
                return str(out[0]["generated_text"])

            self._rewriter = rewrite

    def prompts(self, labels: Sequence[int], images: Sequence[Any | None], rng: random.Random) -> list[str]:
        self._load()
        out = []
        for label, image in zip(labels, images):
            if image is None:
                out += self._fallback.prompts([label], [None], rng)
                continue
            caption = (self._captioner(image) or "").strip().rstrip(".") + "."
            if caption == ".":
                caption = "Dashcam view of a road scene."
            if self._rewriter is not None:
                try:
                    text = self._rewriter(LABEL_INSTRUCTIONS[int(label)], caption).strip()
                except Exception as e:  # the validators keep the caption when the rewrite fails
                    from loguru import logger

                    logger.warning(f"prompt rewrite failed ({type(e).__name__}: {e}); using the caption")
                    text = ""
                out.append(text or caption)
            else:
                suffix = "with active roadwork, cones and barriers" if label == 1 else "a normal road, no construction"
                out.append(f"Photorealistic dashcam footage: {caption} {suffix}")
        return out


def make_prompt_source(caption_model: str | None = None, rewrite_model: str | None = None,
                       device: str = "cpu") -> PromptSource:
    """Templates unless a captioning model is configured."""
    if caption_model:
        return CaptionPrompts(caption_model, rewrite_model, device=device)
    return TemplatePrompts()
