"""text_segmenter (SAM 3): prompt post-processing maths, and the adapter end to end on a tiny
random-init Sam3Model + Sam3Processor (CLIP tokenizer from a character vocabulary) saved offline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.detection import noisy_or
from natix_miner.models.registry import build_adapter
from natix_miner.models.text_segmenter import combine, prompt_scores
from natix_miner.profile import ModelSpec

torch = pytest.importorskip("torch")
PROMPTS = {"traffic cone": 1.0, "road work sign": 0.5}


def test_prompt_scores_use_presence_and_area_filter():
    logits = torch.tensor([[2.0, 0.0, -1.0], [-3.0, 1.0, 4.0]])
    presence = torch.tensor([[0.0], [10.0]])
    boxes = torch.tensor([[[0.1, 0.1, 0.2, 0.3], [0, 0, 1, 1], [0.5, 0.5, 0.6, 0.6]],
                          [[0, 0, 0.1, 0.1], [0.2, 0.2, 0.4, 0.4], [0.0, 0.0, 0.9, 0.9]]])
    s, b = prompt_scores(logits, presence, boxes)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert s[0] == pytest.approx(sig(2.0) * 0.5, abs=1e-6)
    assert s[1] == pytest.approx(sig(4.0) * sig(10.0), abs=1e-6)
    np.testing.assert_allclose(b[1], [0.0, 0.0, 0.9, 0.9])
    # the 0.81-area box of image 2 is dropped by max_area: the next best admissible instance wins
    s2, b2 = prompt_scores(logits, presence, boxes, max_area=0.5)
    assert s2[1] == pytest.approx(sig(1.0) * sig(10.0), abs=1e-6)
    np.testing.assert_allclose(b2[1], [0.2, 0.2, 0.4, 0.4])
    s3, _ = prompt_scores(logits, None, boxes, min_area=0.9)
    assert s3[0] == pytest.approx(sig(0.0)) and s3[1] == 0.0  # only the full-frame box of image 1 is left


def test_combine_is_weighted_noisy_or_with_min_score():
    scores = {"traffic cone": 0.8, "road work sign": 0.6, "excavator": 0.01}
    weights = {"traffic cone": 1.0, "road work sign": 0.5, "excavator": 1.0}
    assert combine(scores, weights, prior=0.02) == pytest.approx(noisy_or([0.8, 0.3], prior=0.02))
    assert combine({"traffic cone": 0.0}, weights, prior=0.05) == pytest.approx(0.05)


@pytest.fixture(scope="module")
def tiny_sam3(tmp_path_factory):
    from transformers import CLIPTokenizer, Sam3Config, Sam3Model, Sam3Processor
    from transformers.models.sam3.image_processing_sam3 import Sam3ImageProcessor

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    h = 32
    cfg = Sam3Config(
        vision_config=dict(backbone_config=dict(model_type="sam3_vit_model", hidden_size=h, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=2, image_size=56,
                                                patch_size=14, window_size=2, global_attn_indexes=[1],
                                                pretrain_image_size=56),
                           fpn_hidden_size=h, backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]]),
        text_config=dict(model_type="clip_text_model", vocab_size=len(vocab), hidden_size=h, intermediate_size=64,
                         projection_dim=h, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=32,
                         eos_token_id=1, bos_token_id=0, pad_token_id=1),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_decoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64,
                                 num_queries=10),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-sam3")
    Sam3Model(cfg).eval().save_pretrained(d)
    Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": 56, "width": 56}), tokenizer=tok).save_pretrained(d)
    return d


def _spec(path, batch_size=2, **options):
    opts = {"prompts": PROMPTS, "min_score": 0.0}
    opts.update(options)
    return ModelSpec(name="sam", type="text_segmenter", licence="SAM License", model=str(path), gated=True,
                     batch_size=batch_size, options=opts)


def _images():
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in ((120, 80), (60, 90), (64, 64))]


def test_tiny_sam3_matches_reference_forward(tiny_sam3):
    from transformers import Sam3Model, Sam3Processor

    a = build_adapter(_spec(tiny_sam3))
    a.load("cpu")
    assert a.measured_memory_mb > 0
    ims = _images()
    votes = a.predict(ims)
    single = [a.predict([im])[0] for im in ims]
    assert [v.p for v in votes] == pytest.approx([v.p for v in single], abs=1e-5)
    # reference: the model's plain forward with text and pixels for one (image, prompt) pair
    model = Sam3Model.from_pretrained(tiny_sam3).eval()
    proc = Sam3Processor.from_pretrained(tiny_sam3)
    for im, v in zip(ims[:2], votes[:2]):
        ref = {}
        for text in PROMPTS:
            with torch.no_grad():
                out = model(**proc(images=im, text=text, return_tensors="pt"))
            r = proc.post_process_instance_segmentation(out, threshold=0.0, target_sizes=[im.size[::-1]])[0]
            ref[text] = float(r["scores"].max()) if len(r["scores"]) else 0.0
        assert v.evidence["prompt_scores"] == pytest.approx(ref, abs=1e-4)
        assert v.p == pytest.approx(combine(ref, PROMPTS, min_score=0.0), abs=1e-4)
        assert 0.0 <= v.p <= 1.0 and v.evidence["best_prompt"] in PROMPTS


def test_tiny_sam3_options(tiny_sam3):
    ims = _images()[:1]
    strict = build_adapter(_spec(tiny_sam3, min_score=0.999, prior=0.03))
    strict.load("cpu")
    assert strict.predict(ims)[0].p == pytest.approx(0.03)  # random model never reaches 0.999
    with pytest.raises(AdapterError, match="min_area"):
        build_adapter(_spec(tiny_sam3, min_area=0.8, max_area=0.2)).load("cpu")
    with pytest.raises(AdapterError, match="prompts"):
        build_adapter(_spec(tiny_sam3, prompts={"traffic cone": 2.0})).load("cpu")
    with pytest.raises(AdapterError, match="download_models.py"):
        build_adapter(_spec("facebook/sam3-not-cached-here")).load("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_sam3_cuda_bf16(tiny_sam3):
    cpu = build_adapter(_spec(tiny_sam3))
    cpu.load("cpu")
    gpu = build_adapter(_spec(tiny_sam3))
    gpu.load("cuda")
    assert gpu.dtype == torch.bfloat16
    ims = _images()
    assert [v.p for v in gpu.predict(ims)] == pytest.approx([v.p for v in cpu.predict(ims)], abs=5e-2)
