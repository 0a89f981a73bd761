"""Open-vocabulary detectors driven by text prompts (``type: open_vocab_detector``).

Three architectures, chosen by ``options.arch`` (default: inferred from the model id, else from the
config's ``model_type``), each loaded from a local folder or a hub id already in the local cache:

``owlv2`` — OWLv2 (``google/owlv2-large-patch14-ensemble``; OWL-ViT v1 works too)
    The prompts are tokenised and embedded **once** at load (text tower -> projection -> L2 norm, exactly
    what ``Owlv2ForObjectDetection.forward`` does per call), so a request runs only the image tower and the
    class/box heads (``image_embedder`` -> ``class_predictor`` + ``box_predictor``). Each of the patch
    boxes gets ``sigmoid`` of its best prompt logit; the processor's ``post_process_object_detection``
    keeps boxes scoring >= ``threshold`` (default 0.1, the transformers OWLv2 example) and labels each with
    its best prompt. OWLv2 pads images to a square at the bottom/right, so boxes are scaled to that square
    and clipped to the image.

``grounding_dino`` — Grounding DINO (``IDEA-Research/grounding-dino-base``, also MM-Grounding-DINO)
    The prompts are joined into one lowercase caption ``"traffic cone. construction barrier. ..."``.
    The model gives, per query box, a logit per caption token. Using the tokenizer's character offsets,
    every token is assigned to the prompt it came from; a box's score for a prompt is the max sigmoid over
    that prompt's tokens, and the box is labelled with its best prompt (this is the score
    ``post_process_grounded_object_detection`` uses, but tied to whole prompts instead of re-decoding
    token fragments into phrases that may straddle two prompts). Boxes scoring >= ``threshold`` (default
    0.3) are kept. Images are batched only with images of the same size, because the processor pads a
    batch to its largest image.

``florence2`` — Florence-2 (``florence-community/Florence-2-base``, transformers' native Florence2 classes)
    Greedy generation of ``<OD>`` (default; Florence's own object vocabulary, matched against the prompt
    names / ``class_map``) or ``<CAPTION_TO_PHRASE_GROUNDING>`` with the prompts as the caption. The output
    text ``label<loc_x1><loc_y1><loc_x2><loc_y2>...`` is parsed like the processor's post-processing
    (bins 0..999 -> pixels via ``(bin + 0.5) * size / 1000``). Florence gives no box scores, so a
    detection's score is the model's own confidence in its label: the geometric mean of the generated
    probabilities of the label's tokens (from ``compute_transition_scores``). Grounded phrases are mapped
    back to the prompt they came from (:func:`match_prompt`).

How ``p`` is formed (all three)
    Overlapping boxes of the same prompt are suppressed (NMS, IoU ``nms_iou``, default 0.5; OWLv2 and
    Grounding DINO emit many near-duplicates that would otherwise be counted several times), then the
    shared noisy-OR of :mod:`natix_miner.models.detection` runs with each prompt's weight:

        p = 1 - (1 - prior) * Π_i (1 - w_prompt(i) * score_i)

Options
    ``prompts``: ``{prompt: weight}`` or a list (weight 1.0), default
    :data:`~natix_miner.models.detection.ROADWORK_PROMPTS`; ``class_map`` (florence2 ``<OD>`` only: label ->
    weight, default the prompts); ``arch``; ``threshold``; ``nms_iou``; ``prior`` (0.02); ``task``
    (florence2: ``<OD>`` | ``<CAPTION_TO_PHRASE_GROUNDING>``); ``max_new_tokens`` (florence2, default 256);
    ``dtype``: ``auto`` (fp16 on CUDA for owlv2/florence2, fp32 for grounding_dino, fp32 on CPU) | ``fp32``
    | ``fp16`` | ``bf16``; ``revision`` / ``cache_dir`` for hub ids; ``gpu_preprocess``: resize/normalise
    on the GPU when the image processor is a torchvision one (default false; OWLv2's processor pads to a
    square and resizes with anti-aliasing, which costs CPU time on full frames). Thresholds are the models' example
    defaults, not tuned here: calibrate on labelled data.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any, Mapping

import torch
from loguru import logger
from pydantic import Field

from natix_miner.models import _torch_utils as tu
from natix_miner.models.base import AdapterError
from natix_miner.models.detection import ROADWORK_PROMPTS, Detection, normalise_label, roadwork_probability
from natix_miner.models.registry import register
from natix_miner.types import Vote

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

ARCHS = ("owlv2", "grounding_dino", "florence2")
DEFAULT_THRESHOLD = {"owlv2": 0.1, "grounding_dino": 0.3, "florence2": 0.0}
DEFAULT_CUDA_DTYPE = {"owlv2": "fp16", "grounding_dino": "fp32", "florence2": "fp16"}
FLORENCE_TASKS = ("<OD>", "<CAPTION_TO_PHRASE_GROUNDING>")
_MODEL_TYPES = {"owlv2": "owlv2", "owlvit": "owlv2", "grounding-dino": "grounding_dino",
                "mm-grounding-dino": "grounding_dino", "florence2": "florence2"}
_LOC_RUN = re.compile(r"([^<]+)((?:<loc_\d+>){4,})")
_LOC = re.compile(r"<loc_(\d+)>")


def infer_arch(model_id: str, model_type: str | None = None) -> str | None:
    """Architecture from a config ``model_type`` or, failing that, the model id / folder name."""
    if model_type and model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    low = model_id.lower()
    if "owl" in low:
        return "owlv2"
    if "grounding" in low or "gdino" in low:
        return "grounding_dino"
    if "florence" in low:
        return "florence2"
    return None


def grounding_caption(prompts: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a. b. c."`` (lowercase, as Grounding DINO expects) and each prompt's character span in it."""
    caption, spans = "", []
    for i, p in enumerate(prompts):
        p = " ".join(p.lower().split())
        if i:
            caption += " "
        spans.append((len(caption), len(caption) + len(p)))
        caption += p + "."
    return caption, spans


def token_prompt_matrix(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> "torch.Tensor":
    """``(n_prompts, n_tokens)`` bool: token j lies inside prompt k's character span."""
    m = torch.zeros((len(spans), len(offsets)), dtype=torch.bool)
    for j, (a, b) in enumerate(offsets):
        if b <= a:  # special tokens have (0, 0)
            continue
        for k, (s, e) in enumerate(spans):
            if a >= s and b <= e:
                m[k, j] = True
    return m


def match_prompt(phrase: str, prompts: Mapping[str, float]) -> str | None:
    """The prompt a generated phrase refers to: exact (normalised) match, else the heaviest prompt whose
    words all occur in the phrase, else the lightest prompt sharing the most words (None if no word is shared).
    """
    norm = {normalise_label(p): p for p in prompts}
    ph = normalise_label(phrase)
    if ph in norm:
        return norm[ph]
    words = set(ph.split())
    if not words:
        return None
    contained = [p for n, p in norm.items() if set(n.split()) <= words]
    if contained:
        return max(contained, key=lambda p: (prompts[p], len(p)))
    overlap = {p: len(words & set(n.split())) for n, p in norm.items()}
    best = max(overlap.values())
    if best == 0:
        return None
    return min((p for p, o in overlap.items() if o == best), key=lambda p: prompts[p])


def nms_detections(dets: list[Detection], iou: float) -> list[Detection]:
    """Per-label non-maximum suppression (detections without boxes are kept as they are)."""
    import torchvision

    boxed = [d for d in dets if d.box is not None]
    if len(boxed) < 2 or iou >= 1.0:
        return dets
    labels = sorted({d.label for d in boxed})
    lid = {lbl: i for i, lbl in enumerate(labels)}
    boxes = torch.tensor([d.box for d in boxed], dtype=torch.float32)
    scores = torch.tensor([d.score for d in boxed], dtype=torch.float32)
    idx = torch.tensor([lid[d.label] for d in boxed])
    keep = torchvision.ops.batched_nms(boxes, scores, idx, iou).tolist()
    return [boxed[i] for i in keep] + [d for d in dets if d.box is None]


def parse_florence(text: str, token_spans: list[tuple[int, int]], token_logprobs: list[float],
                   image_size: tuple[int, int]) -> list[Detection]:
    """Florence-2 ``label<loc_..>x4 ...`` output -> detections scored by their label tokens' probability.

    ``token_spans[i]`` is token i's character span in ``text``; ``token_logprobs[i]`` its generated
    log-probability. ``image_size`` is ``(width, height)``.
    """
    w, h = image_size
    out: list[Detection] = []
    for m in _LOC_RUN.finditer(text):
        label = m.group(1).strip()
        if not label:
            continue
        a, b = m.span(1)
        lps = [lp for (s, e), lp in zip(token_spans, token_logprobs) if s < b and e > a and math.isfinite(lp)]
        score = math.exp(sum(lps) / len(lps)) if lps else 1.0
        bins = [int(v) for v in _LOC.findall(m.group(2))]
        for k in range(0, len(bins) - 3, 4):
            x1, y1, x2, y2 = bins[k:k + 4]
            box = ((x1 + 0.5) * w / 1000, (y1 + 0.5) * h / 1000, (x2 + 0.5) * w / 1000, (y2 + 0.5) * h / 1000)
            out.append(Detection(label=label, score=min(1.0, score), box=box))
    return out


class OpenVocabOptions(tu.TorchFamilyOptions):
    """``options:`` of ``type: open_vocab_detector`` (see the module docstring), parsed once at build."""

    arch: str | None = None  # owlv2 | grounding_dino | florence2 (checked at load); None: inferred
    prompts: Any = None  # {prompt: weight} or a list of prompts (checked at load); None/true: the defaults
    class_map: Any = None  # florence2 <OD>: {label: weight}; None: the prompts
    task: str = "<OD>"  # florence2 task (checked at load)
    threshold: float | None = Field(None, ge=0.0, le=1.0)  # None: the arch's default
    nms_iou: float = Field(0.5, ge=0.0, le=1.0)
    prior: float = Field(0.02, ge=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1)  # florence2 generation


@register("open_vocab_detector")
class OpenVocabAdapter(tu.TorchAdapter):
    released_attrs = ("model", "processor", "_query_embeds")
    options_model = OpenVocabOptions
    opts: OpenVocabOptions

    def __init__(self, spec, profile=None):
        super().__init__(spec, profile)
        self.arch = ""
        self.model: Any = None
        self.processor: Any = None
        self.dtype = torch.float32
        self.prompts: dict[str, float] = {}
        self.class_map: dict[str, float] = {}
        self._query_embeds: Any = None
        self._query_mask: Any = None
        self._caption = ""
        self._token_prompt: Any = None
        self.task = "<OD>"
        self._pre: dict[str, Any] = {}

    @property
    def threshold(self) -> float:
        """``options.threshold``, else the architecture's default."""
        t = self.opts.threshold
        return DEFAULT_THRESHOLD[self.arch] if t is None else t

    # -- loading ---------------------------------------------------------------------------
    def _prompt_weights(self) -> dict[str, float]:
        prompts = self.opts.prompts
        if prompts is None or prompts is True:
            return dict(ROADWORK_PROMPTS)
        return tu.weight_map(self, prompts, "prompts")

    def _arch(self, source: str, is_local: bool) -> str:
        arch = self.opts.arch
        if arch is None:
            arch = infer_arch(source)
        if arch is None:
            from transformers import AutoConfig

            cfg = tu.hf_load(self, AutoConfig, source, is_local, what="config")
            arch = infer_arch(source, getattr(cfg, "model_type", None))
        if arch not in ARCHS:
            raise AdapterError(f"{self.name}: options.arch must be one of {', '.join(ARCHS)} "
                               f"(could not infer it from {source!r}), got {arch!r}")
        return arch

    def load(self, device: str) -> None:
        from transformers import AutoProcessor

        device = tu.resolve_device(self.name, device)
        source, is_local = tu.model_source(self)
        self.arch = self._arch(source, is_local)
        self.dtype = tu.resolve_dtype(self.name, self.opts.dtype, device, DEFAULT_CUDA_DTYPE[self.arch])
        self.prompts = self._prompt_weights()
        t0 = time.perf_counter()
        before = tu.cuda_allocated(device)
        self.processor = tu.hf_load(self, AutoProcessor, source, is_local, what="processor")
        if self.arch == "florence2":
            from transformers import AutoModelForImageTextToText as Auto
        else:
            from transformers import AutoModelForZeroShotObjectDetection as Auto
        model = tu.hf_load(self, Auto, source, is_local, what="model", dtype=self.dtype)
        self.model = model.to(device).eval()
        self._pre = tu.preprocess_kwargs(self, self.processor, device)
        self.device = device
        if self.arch == "owlv2":
            self._prepare_owl()
        elif self.arch == "grounding_dino":
            self._prepare_grounding()
        else:
            self._prepare_florence()
        self.loaded = True
        self.measured_memory_mb = tu.loaded_memory_mb(device, before, self.model)
        logger.info("{}: {} ({}) on {} ({}) in {:.2f}s; {} prompts", self.name, source, self.arch, device,
                    str(self.dtype).replace("torch.", ""), time.perf_counter() - t0, len(self.prompts))

    @torch.inference_mode()
    def _prepare_owl(self) -> None:
        """Embed the prompts once (what the model's forward does per call)."""
        texts = list(self.prompts)
        tok = self.processor(text=[texts], return_tensors="pt")
        input_ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        clip = getattr(self.model, "owlv2", None) or getattr(self.model, "owlvit")
        out = clip.get_text_features(input_ids=input_ids, attention_mask=mask)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        emb = emb / torch.linalg.norm(emb, ord=2, dim=-1, keepdim=True)
        self._query_embeds = emb  # (n_prompts, dim)
        self._query_mask = input_ids[:, 0] > 0  # a query starting with the pad id (0) is padding

    def _prepare_grounding(self) -> None:
        caption, spans = grounding_caption(list(self.prompts))
        enc = self.processor.tokenizer(caption, return_offsets_mapping=True)
        self._caption = caption
        self._token_prompt = token_prompt_matrix([tuple(o) for o in enc["offset_mapping"]], spans)
        unk = self.processor.tokenizer.unk_token_id
        ids = enc["input_ids"]
        empty = [p for p, row in zip(self.prompts, self._token_prompt)
                 if all(ids[j] == unk for j in row.nonzero().flatten().tolist())]
        if empty:
            raise AdapterError(f"{self.name}: prompts {empty} produce no known tokens with this tokenizer")
        max_len = getattr(self.model.config, "max_text_len", 256)
        if len(enc["input_ids"]) > max_len:
            raise AdapterError(f"{self.name}: the caption of {len(self.prompts)} prompts is "
                               f"{len(enc['input_ids'])} tokens; Grounding DINO takes at most {max_len}")

    def _prepare_florence(self) -> None:
        task = self.opts.task
        if task not in FLORENCE_TASKS:
            raise AdapterError(f"{self.name}: options.task must be one of {', '.join(FLORENCE_TASKS)}, got {task!r}")
        self.task = task
        cmap = self.opts.class_map
        self.class_map = tu.weight_map(self, cmap, "class_map") if cmap is not None else dict(self.prompts)

    # -- inference -------------------------------------------------------------------------
    @torch.inference_mode()
    def detections(self, images: "list[Image.Image]") -> list[list[Detection]]:
        """Detections per image (labels are prompts, or Florence ``<OD>`` labels), after NMS."""
        if self.model is None:
            raise AdapterError(f"{self.name}: predict before load")
        rgb = [tu.to_rgb(im) for im in images]
        run = {"owlv2": self._owl, "grounding_dino": self._grounding, "florence2": self._florence}[self.arch]
        groups = (tu.size_groups(rgb, self.spec.batch_size) if self.arch == "grounding_dino"
                  else tu.chunks(len(rgb), self.spec.batch_size))
        out: list[list[Detection]] = [[] for _ in rgb]
        iou = self.opts.nms_iou
        for idx in groups:
            for i, dets in zip(idx, run([rgb[i] for i in idx])):
                out[i] = nms_detections(dets, iou) if self.arch != "florence2" else dets
        return out

    def _owl(self, batch: "list[Image.Image]") -> list[list[Detection]]:
        from transformers.models.owlv2.modeling_owlv2 import Owlv2ObjectDetectionOutput

        pv = tu.move_inputs(self.processor.image_processor(images=batch, return_tensors="pt", **self._pre),
                            self.device, self.dtype)["pixel_values"]
        feature_map = self.model.image_embedder(pixel_values=pv)[0]
        b, gh, gw, d = feature_map.shape
        feats = feature_map.reshape(b, gh * gw, d)
        q = self._query_embeds.to(feats.dtype).unsqueeze(0).expand(b, -1, -1)
        qmask = self._query_mask.unsqueeze(0).expand(b, -1)
        logits, _ = self.model.class_predictor(feats, q, qmask)
        boxes = self.model.box_predictor(feats, feature_map)
        outputs = Owlv2ObjectDetectionOutput(logits=logits.float(), pred_boxes=boxes.float())
        sizes = [(max(im.size), max(im.size)) for im in batch]  # boxes are relative to the padded square
        results = self.processor.image_processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=sizes)
        names = list(self.prompts)
        out = []
        for im, r in zip(batch, results):
            dets = []
            for s, lbl, box in zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist()):
                x1, y1, x2, y2 = box
                clipped = (min(max(x1, 0.0), im.width), min(max(y1, 0.0), im.height),
                           min(max(x2, 0.0), im.width), min(max(y2, 0.0), im.height))
                dets.append(Detection(label=names[int(lbl)], score=float(s), box=clipped))
            out.append(dets)
        return out

    def _grounding(self, batch: "list[Image.Image]") -> list[list[Detection]]:
        inputs = tu.move_inputs(self.processor(images=batch, text=[self._caption] * len(batch), return_tensors="pt",
                                               **self._pre), self.device, self.dtype)
        outputs = self.model(**inputs)
        n_tok = self._token_prompt.shape[1]
        if inputs["input_ids"].shape[1] != n_tok:
            raise AdapterError(f"{self.name}: processor tokenised the caption to {inputs['input_ids'].shape[1]} "
                               f"tokens, expected {n_tok}")
        probs = outputs.logits.float().sigmoid()[:, :, :n_tok]  # (B, Q, T)
        tp = self._token_prompt.to(probs.device)  # (K, T)
        per_prompt = torch.where(tp[None, None], probs[:, :, None, :], torch.zeros((), device=probs.device))
        per_prompt = per_prompt.amax(-1)  # (B, Q, K)
        score, k = per_prompt.max(-1)
        threshold = self.threshold
        names = list(self.prompts)
        out = []
        for b, im in enumerate(batch):
            cx, cy, w, h = outputs.pred_boxes[b].float().unbind(-1)
            boxes = torch.stack([(cx - w / 2) * im.width, (cy - h / 2) * im.height,
                                 (cx + w / 2) * im.width, (cy + h / 2) * im.height], -1)
            keep = (score[b] >= threshold).nonzero().flatten().tolist()
            out.append([Detection(label=names[int(k[b, q])], score=float(score[b, q]),
                                  box=tuple(float(v) for v in boxes[q].tolist())) for q in keep])
        return out

    def _florence(self, batch: "list[Image.Image]") -> list[list[Detection]]:
        prompt = self.task if self.task == "<OD>" else self.task + grounding_caption(list(self.prompts))[0]
        inputs = tu.move_inputs(self.processor(text=[prompt] * len(batch), images=batch, return_tensors="pt",
                                               **self._pre), self.device, self.dtype)
        gen = self.model.generate(**inputs, max_new_tokens=self.opts.max_new_tokens,
                                  num_beams=1, do_sample=False, output_scores=True, return_dict_in_generate=True)
        trans = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
        seqs = gen.sequences[:, -trans.shape[1]:]  # the generated tokens (drop the decoder start token)
        tok = self.processor.tokenizer
        stop = {tok.eos_token_id, tok.pad_token_id}
        out = []
        for b, im in enumerate(batch):
            ids, lps = [], []
            for t, lp in zip(seqs[b].tolist(), trans[b].float().tolist()):
                if t in stop:
                    break
                ids.append(t)
                lps.append(lp)
            text, spans = self._decode_with_spans(ids)
            dets = parse_florence(text, spans, lps, im.size)
            if self.task != "<OD>":
                mapped = []
                for d in dets:
                    p = match_prompt(d.label, self.prompts)
                    if p is not None:
                        mapped.append(Detection(label=p, score=d.score, box=d.box))
                dets = mapped
            out.append(dets)
        return out

    def _decode_with_spans(self, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
        tok = self.processor.tokenizer
        special = set(tok.all_special_tokens)
        text, spans = "", []
        for piece in tok.convert_ids_to_tokens(ids):
            sub = piece if piece in special or _LOC.fullmatch(piece or "") else tok.convert_tokens_to_string([piece])
            spans.append((len(text), len(text) + len(sub)))
            text += sub
        return text, spans

    def predict(self, images: "list[Image.Image]") -> list[Vote]:
        if not images:
            return []
        weights = self.class_map if (self.arch == "florence2" and self.task == "<OD>") else self.prompts
        prior, threshold = self.opts.prior, self.threshold
        votes = []
        for dets in self.detections(images):
            p, used = roadwork_probability(dets, weights, min_score=threshold, prior=prior)
            votes.append(Vote(p, {"detections": [d.to_dict() for d in used[:5]], "n_roadwork": len(used),
                                  "n_all": len(dets)}))
        return votes
