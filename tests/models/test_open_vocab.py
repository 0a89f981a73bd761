"""open_vocab_detector on tiny random-init OWLv2, Grounding DINO and Florence-2 models with tiny
tokenizers, all built in temp folders (no download)."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
import torch
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.detection import Detection
from natix_miner.models.open_vocab import (grounding_caption, infer_arch, match_prompt, nms_detections,
                                           parse_florence, token_prompt_matrix)
from natix_miner.models.registry import build_adapter
from natix_miner.profile import ModelSpec

PROMPTS = {"traffic cone": 1.0, "road barrier": 0.8, "excavator": 0.5}


def _images():
    rng = np.random.default_rng(7)
    ims = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
           for h, w in [(60, 100), (64, 64), (100, 40), (60, 100), (64, 64)]]
    ims.append(ims[1].convert("L"))
    ims.append(ims[0].convert("RGBA"))
    return ims


def _spec(model, **options):
    options.setdefault("prompts", dict(PROMPTS))
    batch_size = options.pop("batch_size", 8)
    return ModelSpec(name="ov", type="open_vocab_detector", licence="Apache-2.0", model=str(model), device="cpu",
                     batch_size=batch_size, options=options)


# ----------------------------------------------------------------------------------------------
# tiny model builders


def _save_owlv2(path):
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    vocab = {"!": 0}  # OWL pads queries with id 0 and treats a query starting with 0 as padding
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!", model_max_length=16)
    torch.manual_seed(0)
    cfg = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32)
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(path)
    ip = Owlv2ImageProcessor(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=ip, tokenizer=tok).save_pretrained(path)


def _save_grounding_dino(path):
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "traffic", "cone", "road", "barrier", "excavator",
             "construction", "worker"]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"))
    torch.manual_seed(0)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=20, encoder_layers=1,
                              encoder_ffn_dim=32, encoder_attention_heads=2, decoder_layers=2, decoder_ffn_dim=32,
                              decoder_attention_heads=2, d_model=32, num_feature_levels=3, encoder_n_points=2,
                              decoder_n_points=2, max_text_len=64, disable_custom_kernels=True)
    GroundingDinoForObjectDetection(cfg).eval().save_pretrained(path)
    (path / "vocab.txt").unlink()
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}),
                           tokenizer=tok).save_pretrained(path)


def _save_florence2(path):
    from transformers import (BartConfig, BartTokenizer, CLIPImageProcessor, Florence2Config,
                              Florence2ForConditionalGeneration, Florence2Processor)
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in string.ascii_lowercase + string.digits + ".,:'-":
        vocab[c] = len(vocab)
        vocab["\u0120" + c] = len(vocab)  # byte-level BPE marks a leading space with 'Ġ'
    vocab["\u0120"] = len(vocab)
    tok = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    tok.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<ground>", "</ground>"])
    ip = CLIPImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                            do_center_crop=False)
    ip.image_seq_length = 5  # 64 px / stride 32 -> 2x2 tokens + 1 pooled token
    proc = Florence2Processor(image_processor=ip, tokenizer=tok, post_processor_config={
        "description_with_bboxes": {}, "phrase_grounding": {"banned_grounding_tokens": []}, "pure_text": {}})
    torch.manual_seed(0)
    vision = Florence2VisionConfig(depths=[1, 1, 1, 1], embed_dim=[8, 16, 32, 32], num_heads=[1, 1, 2, 2],
                                   num_groups=[1, 1, 2, 2], window_size=2, projection_dim=32, drop_path_rate=0.0)
    text = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=300,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0)
    cfg = Florence2Config(vision_config=vision, text_config=text, image_token_id=tok.image_token_id)
    Florence2ForConditionalGeneration(cfg).eval().save_pretrained(path)
    proc.save_pretrained(path)


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny-owlv2")
    _save_owlv2(p)
    return p


@pytest.fixture(scope="module")
def gd_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny-grounding-dino")
    _save_grounding_dino(p)
    return p


@pytest.fixture(scope="module")
def florence_dir(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny-florence2")
    _save_florence2(p)
    return p


def _batch_equals_single(adapter, ims):
    batched = [v.p for v in adapter.predict(ims)]
    single = [adapter.predict([im])[0].p for im in ims]
    assert batched == pytest.approx(single, abs=1e-5)
    assert all(0.0 <= p <= 1.0 for p in batched) and len(batched) == len(ims)
    return batched


# ----------------------------------------------------------------------------------------------
# OWLv2


def test_owlv2_cached_text_path_matches_the_full_forward(owl_dir):
    from transformers import AutoProcessor, Owlv2ForObjectDetection

    a = build_adapter(_spec(owl_dir, threshold=0.0, nms_iou=1.0))
    a.load("cpu")
    assert a.arch == "owlv2"
    ims = _images()[:3]
    got = a.detections(ims)
    model = Owlv2ForObjectDetection.from_pretrained(owl_dir).eval()
    proc = AutoProcessor.from_pretrained(owl_dir)
    texts = list(PROMPTS)
    rgb = [im.convert("RGB") for im in ims]
    with torch.no_grad():
        out = model(**proc(text=[texts] * len(rgb), images=rgb, return_tensors="pt"))
    squares = [(max(im.size),) * 2 for im in rgb]
    ref = proc.post_process_grounded_object_detection(out, threshold=0.0, target_sizes=squares,
                                                      text_labels=[texts] * len(rgb))
    for dets, r in zip(got, ref):
        assert len(dets) == len(r["scores"]) > 0
        assert sorted(d.score for d in dets) == pytest.approx(sorted(r["scores"].tolist()), abs=1e-5)
        assert sorted(d.label for d in dets) == sorted(r["text_labels"])


def test_owlv2_votes_batching_and_nms(owl_dir):
    small = {k: v / 20 for k, v in PROMPTS.items()}  # random scores are high: keep p off the ceiling
    a = build_adapter(_spec(owl_dir, threshold=0.05, batch_size=3, prompts=small))
    a.load("cpu")
    ims = _images()
    ps = _batch_equals_single(a, ims)
    for im, dets in zip(ims, a.detections(ims)):
        assert {d.label for d in dets} <= set(PROMPTS)
        for d in dets:
            assert 0 <= d.box[0] <= d.box[2] <= im.width and 0 <= d.box[1] <= d.box[3] <= im.height
    raw = build_adapter(_spec(owl_dir, threshold=0.05, nms_iou=1.0, prompts=small))
    raw.load("cpu")
    assert sum(map(len, raw.detections(ims))) >= sum(map(len, a.detections(ims)))
    assert a.measured_memory_mb > 0
    assert len({round(p, 4) for p in ps}) > 1


# ----------------------------------------------------------------------------------------------
# Grounding DINO


def test_caption_and_token_to_prompt_map(gd_dir):
    from transformers import AutoProcessor

    caption, spans = grounding_caption(["Traffic  Cone", "road barrier", "excavator"])
    assert caption == "traffic cone. road barrier. excavator."
    assert [caption[a:b] for a, b in spans] == ["traffic cone", "road barrier", "excavator"]
    tok = AutoProcessor.from_pretrained(gd_dir).tokenizer
    enc = tok(caption, return_offsets_mapping=True)
    m = token_prompt_matrix([tuple(o) for o in enc["offset_mapping"]], spans)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert [[toks[j] for j in range(len(toks)) if m[k, j]] for k in range(3)] == [
        ["traffic", "cone"], ["road", "barrier"], ["excavator"]]


def test_grounding_dino_scores_are_the_best_prompt_token(gd_dir):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    a = build_adapter(_spec(gd_dir, threshold=0.0, nms_iou=1.0))
    a.load("cpu")
    assert a.arch == "grounding_dino"
    im = _images()[0]
    dets = a.detections([im])[0]
    model = AutoModelForZeroShotObjectDetection.from_pretrained(gd_dir).eval()
    proc = AutoProcessor.from_pretrained(gd_dir)
    inputs = proc(images=[im], text=["traffic cone. road barrier. excavator."], return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits.sigmoid()[0]
    ids = inputs["input_ids"][0].tolist()
    vocab = proc.tokenizer.get_vocab()
    cols = {p: [ids.index(vocab[w]) for w in p.split()] for p in PROMPTS}  # each word occurs once here
    per_prompt = torch.stack([probs[:, c].max(-1).values for c in cols.values()], -1)  # (Q, K)
    best, k = per_prompt.max(-1)
    assert len(dets) == probs.shape[0]
    assert sorted(d.score for d in dets) == pytest.approx(sorted(best.tolist()), abs=1e-5)
    names = list(PROMPTS)
    assert sorted(d.label for d in dets) == sorted(names[i] for i in k.tolist())


def test_grounding_dino_votes_and_batching(gd_dir):
    small = {k: v / 20 for k, v in PROMPTS.items()}
    a = build_adapter(_spec(gd_dir, threshold=0.3, batch_size=2, prompts=small))
    a.load("cpu")
    ps = _batch_equals_single(a, _images())
    assert len({round(p, 4) for p in ps}) > 1


def test_grounding_dino_prompt_without_tokens_is_an_error(gd_dir):
    with pytest.raises(AdapterError, match="no known tokens"):
        build_adapter(_spec(gd_dir, prompts={"traffic cone": 1.0, "???": 0.5})).load("cpu")


# ----------------------------------------------------------------------------------------------
# Florence-2


def test_parse_florence_scores_by_label_tokens():
    text = ("traffic cone<loc_0><loc_100><loc_499><loc_999>"
            "car<loc_10><loc_10><loc_20><loc_20><loc_30><loc_30><loc_40><loc_40>")
    # tokens: "traffic", " cone", 4 locs, "car", 8 locs
    pieces = ["traffic", " cone"] + [f"<loc_{v}>" for v in (0, 100, 499, 999)] + ["car"] + \
             [f"<loc_{v}>" for v in (10, 10, 20, 20, 30, 30, 40, 40)]
    spans, pos = [], 0
    for p in pieces:
        spans.append((pos, pos + len(p)))
        pos += len(p)
    assert pos == len(text)
    lps = [math.log(0.9), math.log(0.4)] + [0.0] * 4 + [math.log(0.8)] + [0.0] * 8
    dets = parse_florence(text, spans, lps, (200, 100))
    assert [d.label for d in dets] == ["traffic cone", "car", "car"]
    assert dets[0].score == pytest.approx(math.sqrt(0.9 * 0.4))
    assert dets[1].score == pytest.approx(0.8)
    assert dets[0].box == pytest.approx((0.1, 10.05, 99.9, 99.95))
    assert dets[2].box == pytest.approx((6.1, 3.05, 8.1, 4.05))
    assert parse_florence("</s>", [(0, 4)], [0.0], (10, 10)) == []


def test_match_prompt():
    prompts = {"traffic cone": 1.0, "road barrier": 0.9, "construction barrier": 1.0, "road roller": 0.8}
    assert match_prompt("Traffic_Cone", prompts) == "traffic cone"
    assert match_prompt("orange traffic cone", prompts) == "traffic cone"
    assert match_prompt("barrier", prompts) == "road barrier"  # ambiguous: the lightest of the best overlaps
    assert match_prompt("road", prompts) == "road roller"
    assert match_prompt("car", prompts) is None
    assert match_prompt("", prompts) is None


def test_nms_keeps_the_best_of_overlapping_boxes_per_label():
    dets = [Detection("a", 0.9, (0, 0, 10, 10)), Detection("a", 0.5, (1, 1, 10, 10)),
            Detection("b", 0.4, (0, 0, 10, 10)), Detection("a", 0.3, (50, 50, 60, 60)), Detection("a", 0.2)]
    kept = nms_detections(dets, 0.5)
    assert sorted((d.label, d.score) for d in kept) == [("a", 0.2), ("a", 0.3), ("a", 0.9), ("b", 0.4)]


def test_florence2_runs_and_batches(florence_dir):
    a = build_adapter(_spec(florence_dir, max_new_tokens=12, batch_size=3))
    a.load("cpu")
    assert a.arch == "florence2" and a.task == "<OD>"
    _batch_equals_single(a, _images())
    g = build_adapter(_spec(florence_dir, task="<CAPTION_TO_PHRASE_GROUNDING>", max_new_tokens=8))
    g.load("cpu")
    assert len(g.predict(_images()[:2])) == 2


def test_florence2_generation_is_parsed_into_weighted_votes(florence_dir):
    """Force the tiny model to 'generate' a known answer and check the parse + noisy-OR end to end."""
    a = build_adapter(_spec(florence_dir, max_new_tokens=20))
    a.load("cpu")
    tok = a.processor.tokenizer
    answer = tok("cone<loc_0><loc_0><loc_499><loc_499>car<loc_1><loc_1><loc_2><loc_2>",
                 add_special_tokens=False)["input_ids"]
    cone_ids = tok("cone", add_special_tokens=False)["input_ids"]
    real_generate = a.model.generate

    def forced_generate(**kw):
        n = kw["input_ids"].shape[0]
        seq = torch.tensor([[2] + answer + [2]] * n)
        vocab = a.model.config.text_config.vocab_size
        scores = []
        for t in range(1, seq.shape[1]):
            logits = torch.full((n, vocab), -20.0)
            logits[:, seq[0, t]] = 0.0  # p(token) ~ 1 except for the label tokens of "cone"
            if 1 <= t <= len(cone_ids):
                logits[:, 5] = 0.0  # a rival token: p(cone token) = 1/2 (minus a little mass)
            scores.append(logits)
        from transformers.generation.utils import GenerateEncoderDecoderOutput

        return GenerateEncoderDecoderOutput(sequences=seq, scores=tuple(scores))

    a.model.generate = forced_generate
    try:
        a.class_map = {"cone": 1.0, "car": 0.0}
        ims = [Image.new("RGB", (200, 100)), Image.new("RGB", (50, 50))]
        dets = a.detections(ims)
        votes = a.predict(ims)
    finally:
        a.model.generate = real_generate
    assert [d.label for d in dets[0]] == ["cone", "car"]
    assert dets[0][0].score == pytest.approx(0.5, abs=1e-3)
    assert dets[0][0].box == pytest.approx((0.1, 0.05, 99.9, 49.95))
    assert [v.p for v in votes] == pytest.approx([1 - 0.98 * 0.5] * 2, abs=1e-3)


# ----------------------------------------------------------------------------------------------
# common


def test_arch_inference_and_errors(tmp_path, owl_dir, monkeypatch):
    assert infer_arch("google/owlv2-large-patch14-ensemble") == "owlv2"
    assert infer_arch("IDEA-Research/grounding-dino-base") == "grounding_dino"
    assert infer_arch("florence-community/Florence-2-base") == "florence2"
    assert infer_arch("/models/x", "grounding-dino") == "grounding_dino"
    assert infer_arch("/models/x") is None
    with pytest.raises(AdapterError, match="options.arch"):
        build_adapter(_spec(owl_dir, arch="yolo")).load("cpu")
    with pytest.raises(AdapterError, match="not found"):
        build_adapter(_spec(tmp_path / "nope" / "owl")).load("cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="scripts/download_models.py"):
        build_adapter(_spec("google/owlv2-large-patch14-ensemble", cache_dir=str(tmp_path / "empty"))).load("cpu")
    with pytest.raises(AdapterError, match="options.prompts"):
        build_adapter(_spec(owl_dir, prompts={})).load("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_owlv2(owl_dir):
    a = build_adapter(_spec(owl_dir, dtype="fp16"))
    a.load("cuda")
    assert a.model.dtype == torch.float16 and a.measured_memory_mb > 0
    votes = a.predict(_images())
    assert len(votes) == 7 and all(0.0 <= v.p <= 1.0 for v in votes)
