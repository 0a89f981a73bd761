"""zero_shot adapter: prompt maths, views, and tiny random-init CLIP / SigLIP 2 checkpoints built
offline in a temp folder (real tokenizers from a tiny character vocabulary, real processors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from natix_miner.models.base import AdapterError
from natix_miner.models.registry import build_adapter
from natix_miner.models.zero_shot import make_views, prompt_probability, tile_boxes
from natix_miner.profile import ModelSpec

torch = pytest.importorskip("torch")
CHARS = "abcdefghijklmnopqrstuvwxyz"
POS = ["traffic cones on a road", "road works"]
NEG = ["an empty street", "a normal road", "a highway"]


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in CHARS:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|startoftext|>",
                         eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=1, bos_token_id=0,
                         pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(cfg).eval().save_pretrained(d)
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def tiny_siglip2(tmp_path_factory):
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, Siglip2Processor, Siglip2Tokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for c in list(CHARS) + ["▁"]:
        vocab[c] = len(vocab)
    tok = Siglip2Tokenizer(vocab=vocab, merges=[])
    cfg = Siglip2Config(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=32, projection_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           num_patches=16, patch_size=8))
    torch.manual_seed(1)
    model = Siglip2Model(cfg).eval()
    with torch.no_grad():  # random init has scale 1 / bias 0; make the logits non-trivial
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-3.0)
    d = tmp_path_factory.mktemp("tiny-siglip2")
    model.save_pretrained(d)
    Siglip2Processor(image_processor=Siglip2ImageProcessor(patch_size=8, max_num_patches=16),
                     tokenizer=tok).save_pretrained(d)
    return d


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80, 136, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
            Image.new("RGB", (50, 90), (200, 30, 30))]


def _adapter(path, **options):
    batch = options.pop("batch_size", 8)
    opts = {"positive_prompts": POS, "negative_prompts": NEG}
    opts.update(options)
    spec = ModelSpec(name="zs", type="zero_shot", licence="MIT", model=str(path), batch_size=batch, options=opts)
    return build_adapter(spec)


# ---------------------------------------------------------------------------------------------
# maths


def test_softmax_scoring_sums_positive_probabilities():
    z = [2.0, 1.0, 0.5, -1.0]
    e = [math.exp(v) for v in z]
    assert prompt_probability(z, 2, "softmax") == pytest.approx((e[0] + e[1]) / sum(e))
    # a shared shift (SigLIP's bias) changes nothing; a temperature flattens towards the prompt-count prior
    assert prompt_probability([v + 7 for v in z], 2, "softmax") == pytest.approx(prompt_probability(z, 2, "softmax"))
    assert abs(prompt_probability(z, 2, "softmax", 100.0) - 0.5) < 0.01


def test_mean_logit_scoring_compares_ensemble_means():
    z = [3.0, 1.0, 0.0, -2.0, 1.0]
    expect = 1 / (1 + math.exp(-((3.0 + 1.0) / 2 - (0.0 - 2.0 + 1.0) / 3)))
    assert prompt_probability(z, 2, "mean_logit") == pytest.approx(expect)
    assert prompt_probability([v - 12.9 for v in z], 2, "mean_logit") == pytest.approx(expect)
    assert prompt_probability([0.0, 5.0], 1, "mean_logit") < 0.01  # negative prompt wins
    with pytest.raises(ValueError):
        prompt_probability([1.0, 2.0], 2, "mean_logit")
    with pytest.raises(ValueError):
        prompt_probability([1.0, 2.0], 1, "nope")


def test_tile_boxes_cover_image_with_overlap():
    boxes = tile_boxes(1360, 800, 2, 0.2)
    assert len(boxes) == 4
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 1360
    assert min(b[1] for b in boxes) == 0 and max(b[3] for b in boxes) == 800
    left, right = boxes[0], boxes[1]
    assert left[2] > right[0]  # neighbours overlap
    assert (left[2] - right[0]) == pytest.approx(0.2 * (left[2] - left[0]), abs=2)
    assert tile_boxes(100, 100, 0) == [] and len(tile_boxes(90, 60, 3, 0.0)) == 9


def test_views_are_square_and_counted():
    im = Image.new("RGB", (136, 80), (10, 20, 30))
    views = make_views(im, 2, 0.2, "pad", (127, 127, 127))
    assert len(views) == 5 and all(v.width == v.height for v in views)
    assert views[0].size == (136, 136) and views[0].getpixel((0, 0)) == (127, 127, 127)
    assert make_views(im, 0, 0.2, "crop", (0, 0, 0))[0].size == (136, 80)
    assert make_views(im, 0, 0.2, "squash", (0, 0, 0))[0].size == (136, 136)


# ---------------------------------------------------------------------------------------------
# tiny CLIP


def test_clip_matches_reference_softmax(tiny_clip):
    """p equals the softmax of CLIPModel's own logits_per_image summed over the positive prompts."""
    from transformers import AutoProcessor, CLIPModel

    a = _adapter(tiny_clip, square="crop")
    a.load("cpu")
    assert a.scoring == "softmax" and a.kind == "clip"
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = AutoProcessor.from_pretrained(tiny_clip)
    ims = _images()
    votes = a.predict(ims)
    for im, v in zip(ims, votes):
        inputs = proc(text=POS + NEG, images=im, return_tensors="pt", padding=True)
        with torch.no_grad():
            probs = model(**inputs).logits_per_image.softmax(-1)[0]
        assert v.p == pytest.approx(float(probs[: len(POS)].sum()), abs=1e-5)
        assert 0.0 <= v.p <= 1.0 and v.evidence["top_prompt"] in POS + NEG


def test_clip_batching_equals_one_by_one_with_tiles(tiny_clip):
    a = _adapter(tiny_clip, tiles=2, batch_size=2)
    a.load("cpu")
    assert a.measured_memory_mb is not None and a.measured_memory_mb > 0
    ims = _images()
    batch = a.predict(ims)
    single = [a.predict([im])[0] for im in ims]
    assert [v.p for v in batch] == pytest.approx([v.p for v in single], abs=1e-5)
    for v in batch:
        assert len(v.evidence["p_tiles"]) == 4
        assert v.p == pytest.approx(max([v.evidence["p_whole"]] + v.evidence["p_tiles"]), abs=1e-4)
    mean = _adapter(tiny_clip, tiles=2, tile_reduce="mean")
    mean.load("cpu")
    for vm, vx in zip(mean.predict(ims), batch):
        assert vm.p <= vx.p + 1e-6
    a.warmup()
    assert a.predict([]) == []


def test_bad_options_and_missing_weights(tiny_clip, tmp_path):
    with pytest.raises(AdapterError, match="tiles"):
        _adapter(tiny_clip, tiles=1.5).load("cpu")
    with pytest.raises(AdapterError, match="negative_prompts"):
        _adapter(tiny_clip, negative_prompts=[]).load("cpu")
    with pytest.raises(AdapterError, match="scoring"):
        _adapter(tiny_clip, scoring="vote").load("cpu")
    with pytest.raises(AdapterError, match="download_models.py"):
        _adapter("openai/clip-vit-large-patch14-not-cached-here").load("cpu")
    with pytest.raises(AdapterError, match="not found"):
        _adapter(tmp_path / "nothing-here").load("cpu")


# ---------------------------------------------------------------------------------------------
# tiny SigLIP 2


def test_siglip2_mean_logit_matches_model_logits(tiny_siglip2):
    from transformers import AutoModel, AutoProcessor

    a = _adapter(tiny_siglip2, batch_size=2)
    a.load("cpu")
    assert a.kind == "siglip2" and a.scoring == "mean_logit"
    assert a.scale == pytest.approx(10.0, rel=1e-5) and a.bias == pytest.approx(-3.0)
    model = AutoModel.from_pretrained(tiny_siglip2).eval()
    proc = AutoProcessor.from_pretrained(tiny_siglip2)
    ims = _images()
    votes = a.predict(ims)
    single = [a.predict([im])[0].p for im in ims]
    assert [v.p for v in votes] == pytest.approx(single, abs=1e-5)
    for im, v in zip(ims, votes):
        view = make_views(im, 0, 0.2, "pad", a._fill)[0]
        inputs = dict(proc.image_processor(images=view, return_tensors="pt"))
        inputs.update(proc.tokenizer(POS + NEG, return_tensors="pt", padding="max_length", max_length=32))
        with torch.no_grad():
            z = model(**inputs).logits_per_image[0]
        expect = torch.sigmoid(z[: len(POS)].mean() - z[len(POS):].mean()).item()
        assert v.p == pytest.approx(expect, abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_clip_on_cuda_fp16_close_to_cpu(tiny_clip):
    cpu = _adapter(tiny_clip)
    cpu.load("cpu")
    gpu = _adapter(tiny_clip, dtype="fp16")
    gpu.load("cuda")
    ims = _images()
    assert [v.p for v in gpu.predict(ims)] == pytest.approx([v.p for v in cpu.predict(ims)], abs=2e-2)
    assert gpu.measured_memory_mb > 0
