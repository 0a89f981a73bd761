"""SDXL pipelines built from configs with random weights: ``tiny`` (tests: seconds on a CPU at 32–64 px) and
``full`` (the SDXL base 1.0 architecture: same compute as the real model, so images/s measured with it is the real
throughput; the images are noise). Nothing is downloaded; the tokenizers are byte-level CLIP tokenizers built from
a local vocabulary (prompts cost more tokens than with the real BPE vocabulary, capped at 77 either way)."""

from __future__ import annotations

from typing import Any

ARCHS = {
    "tiny": dict(
        unet=dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                  addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                  projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=16),
        vae=dict(block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, sample_size=64, norm_num_groups=16),
        te1=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
        te2=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, projection_dim=32),
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 (unet/, vae/, text_encoder/, text_encoder_2/ config.json)
    "full": dict(
        unet=dict(block_out_channels=(320, 640, 1280), layers_per_block=2, sample_size=128,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=(5, 10, 20), addition_time_embed_dim=256,
                  transformer_layers_per_block=(1, 2, 10), projection_class_embeddings_input_dim=2816,
                  cross_attention_dim=2048, norm_num_groups=32),
        vae=dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                 up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024, norm_num_groups=32,
                 scaling_factor=0.13025, layers_per_block=2),
        te1=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 projection_dim=768, hidden_act="quick_gelu"),
        te2=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
                 projection_dim=1280, hidden_act="gelu"),
    ),
}


def byte_clip_tokenizer() -> Any:
    """A CLIP tokenizer over the 256 byte-level symbols (+ end-of-word forms), no merges: offline, any text."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    chars = sorted(ByteLevel.alphabet())
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_random_sdxl(arch: str = "tiny", *, seed: int = 0, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(img2img, text2img) pipelines sharing one set of random-init components of the given architecture."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}: {', '.join(ARCHS)}")
    a = ARCHS[arch]
    torch.manual_seed(seed)
    tok = byte_clip_tokenizer()
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, use_linear_projection=True,
                                addition_embed_type="text_time", **a["unet"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **a["vae"])
    common = dict(bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-05, vocab_size=len(tok))
    te1 = CLIPTextModel(CLIPTextConfig(**{"hidden_act": "gelu", **common, **a["te1"]}))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**{"hidden_act": "gelu", **common, **a["te2"]}))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    i2i = StableDiffusionXLImg2ImgPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                           tokenizer_2=tok, unet=unet, scheduler=scheduler,
                                           requires_aesthetics_score=False)
    if dtype is not None or device != "cpu":
        i2i = i2i.to(device=device, dtype=dtype)
    return i2i, StableDiffusionXLPipeline.from_pipe(i2i)
