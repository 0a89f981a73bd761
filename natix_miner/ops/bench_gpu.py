"""GPU latency of each tier's real architectures (random weights, batch 1): the logic of ``scripts/bench_gpu.py``.

Its docstring is the user guide (sizes, ``--tiny``, the JSON). Here: :class:`Bench` (a built model and how
to call it), one builder per architecture (embedded approximate configs, nothing downloaded), :data:`MODELS`,
:func:`time_call`, :func:`bench_one` and :func:`run` (the whole CLI for parsed arguments). torch and
transformers are imported inside the functions.
"""


from __future__ import annotations

import functools
import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class Bench:
    """A built model and how to call it at a given (h, w)."""

    model: Any
    call: Callable[[int, int], Any]  # runs one batch-1 inference at (h, w)
    stride: int = 1  # input sides are rounded down to a multiple of this
    native: tuple[int, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    after: Callable[["Bench", dict], None] | None = None  # extra measurements (VLM decode speed)


# ----------------------------------------------------------------------------------------- helpers


def _params_m(model: Any) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _pixels(h: int, w: int, device: str, dtype: Any) -> Any:
    import torch

    return torch.randn(1, 3, h, w, device=device, dtype=dtype)


def _build(cls: Any, config: Any, device: str, dtype: Any) -> Any:
    """Random-init ``cls(config)`` directly on ``device`` in ``dtype`` (fast even for 8B params)."""
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model.to(device=device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------- builders
# Each builder: (tiny, device, dtype) -> Bench. Configs are approximate copies of the named checkpoints.


def vit_b16(tiny: bool, device: str, dtype: Any) -> Bench:
    """ViT-B/16 image classifier (natix-network-org/roadwork size)."""
    import transformers as T

    kw = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64) if tiny else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    cfg = T.ViTConfig(image_size=224, patch_size=16, num_labels=2, **kw)
    m = _build(T.ViTForImageClassification, cfg, device, dtype)
    return Bench(m, lambda h, w: m(pixel_values=_pixels(h, w, device, dtype), interpolate_pos_encoding=True),
                 stride=16)


def rtdetr_v2_r50(tiny: bool, device: str, dtype: Any) -> Bench:
    """RT-DETRv2 with a ResNet-50 backbone (transformers default config)."""
    import transformers as T

    if tiny:
        bb = T.RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
        cfg = T.RTDetrV2Config(backbone_config=bb, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[32, 64, 128],
                               encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, decoder_layers=2,
                               encoder_attention_heads=2, decoder_attention_heads=2, decoder_in_channels=[32, 32, 32])
    else:
        cfg = T.RTDetrV2Config()
    m = _build(T.RTDetrV2ForObjectDetection, cfg, device, dtype)
    return Bench(m, lambda h, w: m(pixel_values=_pixels(h, w, device, dtype)), stride=32, native=(640, 640))


def d_fine_l(tiny: bool, device: str, dtype: Any) -> Bench:
    """D-FINE with its default HGNetV2 backbone (≈ D-FINE-L size)."""
    import transformers as T

    if tiny:
        bb = T.HGNetV2Config(embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                             stem_channels=[3, 8, 16], stage_in_channels=[16, 32, 64, 128],
                             stage_mid_channels=[8, 16, 32, 64], stage_out_channels=[32, 64, 128, 256],
                             stage_num_blocks=[1, 1, 1, 1], stage_numb_of_layers=[2, 2, 2, 2],
                             out_features=["stage2", "stage3", "stage4"])
        cfg = T.DFineConfig(backbone_config=bb, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[64, 128, 256],
                            encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=10, decoder_layers=2,
                            encoder_attention_heads=2, decoder_attention_heads=2, decoder_in_channels=[32, 32, 32])
    else:
        cfg = T.DFineConfig()
    m = _build(T.DFineForObjectDetection, cfg, device, dtype)
    return Bench(m, lambda h, w: m(pixel_values=_pixels(h, w, device, dtype)), stride=32, native=(640, 640))


def owlv2_b16(tiny: bool, device: str, dtype: Any) -> Bench:
    """OWLv2 base/16 open-vocabulary detector, 8 text queries (native input 960×960)."""
    import torch
    import transformers as T

    if tiny:
        cfg = T.Owlv2Config(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2),
                            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2, image_size=64, patch_size=16),
                            projection_dim=32)
        native = (64, 64)
    else:
        cfg = T.Owlv2Config(text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                             num_attention_heads=8),
                            vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                               num_attention_heads=12, image_size=960, patch_size=16),
                            projection_dim=512)
        native = (960, 960)
    m = _build(T.Owlv2ForObjectDetection, cfg, device, dtype)
    ids = torch.randint(0, 1000, (8, 16), device=device)
    mask = torch.ones_like(ids)
    return Bench(m, lambda h, w: m(input_ids=ids, attention_mask=mask, pixel_values=_pixels(h, w, device, dtype),
                                   interpolate_pos_encoding=(h, w) != native), stride=16, native=native)


def clip_vit_l14(tiny: bool, device: str, dtype: Any) -> Bench:
    """CLIP ViT-L/14 image tower (zero-shot: text embeddings are computed once and cached)."""
    import transformers as T

    if tiny:
        cfg = T.CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2),
                           vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=224, patch_size=14),
                           projection_dim=32)
    else:
        cfg = T.CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12),
                           vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, image_size=224, patch_size=14),
                           projection_dim=768)
    m = _build(T.CLIPModel, cfg, device, dtype)
    return Bench(m, lambda h, w: m.get_image_features(pixel_values=_pixels(h, w, device, dtype),
                                                      interpolate_pos_encoding=True), stride=14)


def dinov2_l(tiny: bool, device: str, dtype: Any) -> Bench:
    """DINOv2-L/14 backbone (feature_probe tier; the head is negligible)."""
    import transformers as T

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else \
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    m = _build(T.Dinov2Model, T.Dinov2Config(patch_size=14, image_size=518, **kw), device, dtype)
    return Bench(m, lambda h, w: m(pixel_values=_pixels(h, w, device, dtype)), stride=14, native=(518, 518))


def depth_anything_v2_s(tiny: bool, device: str, dtype: Any) -> Bench:
    """Depth Anything V2-Small (DINOv2-S backbone + DPT head; transformers default config)."""
    import transformers as T

    if tiny:
        bb = T.Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=56, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
        cfg = T.DepthAnythingConfig(backbone_config=bb, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
                                    head_hidden_size=8, reassemble_hidden_size=32, patch_size=14)
    else:
        cfg = T.DepthAnythingConfig()
    m = _build(T.DepthAnythingForDepthEstimation, cfg, device, dtype)
    return Bench(m, lambda h, w: m(pixel_values=_pixels(h, w, device, dtype)), stride=14, native=(518, 518))


# --- VLMs: approximate configs of the Qwen checkpoints, run through the vlm adapter's engine

_QWEN25_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                      fullatt_block_indexes=[7, 15, 23, 31])
VLM_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2_5_vl_3b": dict(kind="qwen2_5_vl", desc="Qwen2.5-VL-3B-Instruct size",
                          text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                                    num_attention_heads=16, num_key_value_heads=2,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                     "mrope_section": [16, 24, 24]}),
                          vision=dict(_QWEN25_VISION, out_hidden_size=2048), tie=True),
    "qwen2_5_vl_7b": dict(kind="qwen2_5_vl", desc="Qwen2.5-VL-7B-Instruct size",
                          text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                    num_attention_heads=28, num_key_value_heads=4,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                     "mrope_section": [16, 24, 24]}),
                          vision=dict(_QWEN25_VISION, out_hidden_size=3584), tie=False),
    "qwen3_vl_4b": dict(kind="qwen3_vl", desc="Qwen3-VL-4B-Instruct size (approximate)",
                        text=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                                  num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                  rope_parameters={"rope_type": "default", "rope_theta": 5e6,
                                                   "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
                        vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, patch_size=16,
                                    spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2560,
                                    num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]), tie=True),
}


def _vlm(name: str) -> Callable[[bool, str, Any], Bench]:
    spec = VLM_CONFIGS[name]

    def build(tiny: bool, device: str, dtype: Any) -> Bench:
        from natix_miner.models.vlm.engines.transformers_engine import TransformersEngine
        from natix_miner.models.vlm.prompts import yes_no_prompt
        from natix_miner.models.vlm.tiny import build_processor, tiny_config

        kind = spec["kind"]
        patch = 16 if kind == "qwen3_vl" else 14
        if tiny:
            proc = build_processor(min_pixels=(patch * 4) ** 2, max_pixels=(patch * 8) ** 2, patch_size=patch)
            cfg = tiny_config(kind, proc.tokenizer)
        else:
            # the processor keeps a full frame at full resolution (1360×800 → ~1.4k visual tokens)
            proc = build_processor(min_pixels=(patch * 2) ** 2 * 4, max_pixels=1400 * 840, patch_size=patch)
            cfg = tiny_config(kind, proc.tokenizer)  # token ids wired to the processor's tokenizer
            ids = {k: getattr(cfg.text_config, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
            cls_cfg = type(cfg)
            cfg = cls_cfg(text_config=dict(spec["text"], max_position_embeddings=32768, **ids),
                          vision_config=spec["vision"], image_token_id=cfg.image_token_id,
                          video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
                          vision_end_token_id=cfg.vision_end_token_id, tie_word_embeddings=spec["tie"])
        from natix_miner.models.vlm.tiny import model_class

        m = _build(model_class(kind), cfg, device, dtype)
        eng = TransformersEngine.from_components(m, proc, family=kind, device=device)
        prompt = yes_no_prompt(kind)
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        cache: dict[tuple[int, int], Any] = {}

        def image(h: int, w: int) -> Any:
            if (h, w) not in cache:
                cache[(h, w)] = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
            return cache[(h, w)]

        def call(h: int, w: int) -> Any:
            return eng.yes_no_logprobs([image(h, w)], prompt, 20)

        def decode_speed(b: Bench, out: dict) -> None:
            """ms per generated token: (generate N tokens − one forward) / (N − 1), at 224 px."""
            import torch

            n = 4 if tiny else 32
            inputs = eng._cast(eng._inputs([image(224, 224)], prompt))
            kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      pad_token_id=proc.tokenizer.pad_token_id)
            with torch.inference_mode():
                m.generate(**inputs, **kw)  # warm
                _sync(device)
                t0 = time.perf_counter()
                m.generate(**inputs, **kw)
                _sync(device)
                t_gen = time.perf_counter() - t0
            p50 = out["results"].get("224", {}).get("p50_ms", 0.0) / 1000.0
            out["decode_ms_per_token"] = round(max(0.0, t_gen - p50) / max(1, n - 1) * 1000.0, 3)
            out["decode_tokens"] = n

        return Bench(m, call, stride=2 * patch, extra={"description": spec["desc"]}, after=decode_speed)

    build.__doc__ = spec["desc"] + " — yes/no via the vlm transformers engine"
    return build


MODELS: dict[str, Callable[[bool, str, Any], Bench]] = {
    "vit_b16": vit_b16,
    "rtdetr_v2_r50": rtdetr_v2_r50,
    "d_fine_l": d_fine_l,
    "owlv2_b16": owlv2_b16,
    "clip_vit_l14": clip_vit_l14,
    "dinov2_l": dinov2_l,
    "depth_anything_v2_s": depth_anything_v2_s,
    "qwen2_5_vl_3b": _vlm("qwen2_5_vl_3b"),
    "qwen2_5_vl_7b": _vlm("qwen2_5_vl_7b"),
    "qwen3_vl_4b": _vlm("qwen3_vl_4b"),
}


# ----------------------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _round(x: int, stride: int) -> int:
    return max(stride, (x // stride) * stride)


def time_call(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> dict[str, float]:
    import numpy as np
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        _sync(device)
        xs = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            xs.append((time.perf_counter() - t0) * 1000.0)
    a = np.asarray(xs)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3), "n": int(len(a))}


def bench_one(name: str, builder: Callable, *, tiny: bool, device: str, dtype: Any, sizes: dict[str, tuple[int, int]],
              warmup: int, iters: int, native: bool = True, decode: bool = True) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    b: Bench = builder(tiny, device, dtype)
    _sync(device)
    out: dict[str, Any] = {"description": b.extra.get("description", (builder.__doc__ or "").strip().split("\n")[0]),
                           "params_m": round(_params_m(b.model), 3), "build_s": round(time.perf_counter() - t0, 2),
                           "results": {}}
    todo = dict(sizes)
    if b.native is not None and native:
        todo["native"] = b.native if not tiny else (_round(min(b.native[0], 128), b.stride),
                                                    _round(min(b.native[1], 128), b.stride))
    for label, (h, w) in todo.items():
        hh, ww = _round(h, b.stride), _round(w, b.stride)
        r = time_call(functools.partial(b.call, hh, ww), device, warmup, iters)
        out["results"][label] = {"size": [hh, ww], **r}
    if b.after is not None and decode:
        b.after(b, out)
    if cuda:
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del b  # free the model before the next one
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def run(args: Any) -> int:
    """The benchmark for parsed arguments (``scripts/bench_gpu.py``'s flags): prints the JSON report, writes it to
    ``args.out``; 2 for a bad argument or no CUDA, 1 with ``args.strict`` when a model failed, else 0."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # configs are embedded: nothing is ever downloaded
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch
    import transformers

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu --tiny", file=sys.stderr)
        return 2
    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    iters = args.iters if args.iters is not None else (2 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    fw, fh = (int(x) for x in (args.full_res or ("320x192" if args.tiny else "1360x800")).lower().split("x"))
    want_sizes = {x.strip() for x in args.sizes.split(",") if x.strip()}
    bad = want_sizes - {"224", "full", "native"}
    if bad:
        print(f"unknown size(s) {sorted(bad)}; use 224, full, native", file=sys.stderr)
        return 2
    sizes = {k: v for k, v in {"224": (224, 224), "full": (fh, fw)}.items() if k in want_sizes}
    names = list(MODELS)
    if args.only:
        want = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in want if w not in MODELS]
        if unknown:
            print(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}", file=sys.stderr)
            return 2
        names = [n for n in names if n in want]
    if not args.tiny and not device.startswith("cuda"):
        print("warning: real-size models on the CPU are slow; add --tiny for a smoke check", file=sys.stderr)

    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
        else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype).replace("torch.", ""),
        "tiny": bool(args.tiny), "iters": iters, "warmup": warmup, "batch": 1, "models": {}, "errors": {},
    }
    t_all = time.perf_counter()
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            r = bench_one(name, MODELS[name], tiny=args.tiny, device=device, dtype=dtype, sizes=sizes,
                          warmup=warmup, iters=iters, native="native" in want_sizes, decode=not args.no_decode)
        except Exception as e:  # one model failing must not lose the others' numbers
            report["errors"][name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            continue
        report["models"][name] = r
        res = " ".join(f"{k}={v['p50_ms']:.1f}ms" for k, v in r["results"].items())
        print(f"[bench] {name}: {r['params_m']:.1f}M params, p50 {res}", file=sys.stderr, flush=True)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)
    if args.strict and report["errors"]:
        return 1
    return 0
