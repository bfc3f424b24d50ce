#!/usr/bin/env python3
"""hf_baseline.py — Hugging Face transformers' Qwen3VLVisionModel (BF16, SDPA) on the same shapes as
bench/bench_encoder.c, for the ratio vitd / HF measured on the same GPU in the same run; and a numerical
comparison of vitd's GPU outputs with HF on the same checkpoint.

Timing (default): the vision tower of the checkpoint given with --model (config.json's vision_config; the weights
are loaded too, so the numbers describe the same model vitd runs), bf16, attn_implementation "sdpa", on cuda:0.
Cases as bench_encoder.c: 448x448x16, 448x448x1, 1024x1024x4, 2048x2048x1, mixed9. Modes:
  eager      pixel_values already on the GPU in bf16, outputs left on the GPU (HF's best case)
  eager_e2e  pixel_values from host float32 (pageable) to the GPU, pooler + deepstack outputs back as host float32
             (what vitd's timing includes)
  compile    torch.compile(model) (default mode), GPU-resident like eager; --compile-cases limits which cases,
             --compile-only skips the eager modes
Per case: --warmup runs, then --iters runs timed with CUDA events (eager, compile) or the host clock after a
synchronize (e2e); median and p10/p90. One line per result, the format of bench_encoder.c:
  hf case=<name> mode=<mode> images=<n> tokens=<T> ms=<median> p10_ms=.. p90_ms=.. img_s=.. tflops=..

Comparison (--compare PIXELS.safetensors VITD.safetensors): PIXELS is `vitd preprocess` output
(image.<i>.pixel_values, image.<i>.grid_thw), VITD is `vitd encode` output (image.<i>.embeddings,
image.<i>.deepstack.<layer>). HF runs the same pixel values in bf16 and in float32 (TF32 off); prints per image and
output the cosine and relative L2 of vitd vs HF-bf16, vitd vs HF-fp32 and HF-bf16 vs HF-fp32:
  compare image=<i> output=<name> vitd_vs_hf_bf16_cos=.. vitd_vs_hf_fp32_cos=.. hf_bf16_vs_fp32_cos=.. (rel_l2 too)

Needs torch, transformers >= 5 and safetensors (the GPU machine's /opt/torch/.venv has them).
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

CASES = {
    "448x448x16": [(1, 28, 28)] * 16,
    "448x448x1": [(1, 28, 28)],
    "1024x1024x4": [(1, 64, 64)] * 4,
    "2048x2048x1": [(1, 128, 128)],
    "mixed9": [(1, 64, 64), (1, 30, 40), (1, 30, 40)] + [(1, 28, 28)] * 4 + [(1, 16, 16)] * 2,
}


def load_model(model_dir, dtype):
    with open(os.path.join(model_dir, "config.json")) as f:
        cj = json.load(f)
    vc = cj.get("vision_config", cj)
    keep = {k: v for k, v in vc.items() if k in Qwen3VLVisionConfig().to_dict()}
    cfg = Qwen3VLVisionConfig(**keep)
    try:
        cfg._attn_implementation = "sdpa"
    except Exception:  # older setter semantics
        pass
    with torch.device("cuda"):
        model = Qwen3VLVisionModel(cfg)
    model = model.to(dtype).eval()
    sd = {}
    for name in sorted(os.listdir(model_dir)):
        if name.endswith(".safetensors"):
            sd.update(load_file(os.path.join(model_dir, name), device="cuda"))
    prefix = "model.visual." if any(k.startswith("model.visual.") for k in sd) else "visual."
    vis = {k[len(prefix):]: v.to(dtype) for k, v in sd.items() if k.startswith(prefix)}
    model.load_state_dict(vis, strict=True)
    impl = getattr(model.config, "_attn_implementation", "?")
    print(f"# HF Qwen3VLVisionModel: depth {cfg.depth} d {cfg.hidden_size} I {cfg.intermediate_size} "
          f"D_out {cfg.out_hidden_size} deepstack {cfg.deepstack_visual_indexes}, {dtype}, attention {impl}, "
          f"{len(vis)} tensors loaded from {model_dir}", flush=True)
    return model, cfg


def flops(grids, cfg):
    d, I, L, D = cfg.hidden_size, cfg.intermediate_size, cfg.depth, cfg.out_hidden_size
    K = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    gd = 4 * d
    f = 0.0
    for t, h, w in grids:
        S = t * h * w
        f += S * (L * (2 * (4 * d * d + 2 * d * I) + 4 * S * d) + 2 * K * d)
        f += S / 4 * (1 + len(cfg.deepstack_visual_indexes)) * 2 * (gd * gd + gd * D)
    return f


def stats(ms):
    ms = sorted(ms)
    n = len(ms)
    return ms[n // 2], ms[n // 10], ms[min(n * 9 // 10, n - 1)]


def time_case(fn, iters, warmup, e2e):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(iters):
        if e2e:
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ms.append((time.perf_counter() - t0) * 1e3)
        else:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ms.append(a.elapsed_time(b))
    return stats(ms)


def bench(args):
    model, cfg = load_model(args.model, torch.bfloat16)
    K = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size ** 2
    gen = torch.Generator().manual_seed(1234)
    names = [c for c in CASES if not args.cases or c in args.cases.split(",")]
    compiled = None
    for name in names:
        grids = CASES[name]
        T = sum(t * h * w for t, h, w in grids)
        host = torch.rand(T, K, generator=gen) * 2 - 1
        pv = host.to("cuda", torch.bfloat16)
        grid = torch.tensor(grids, dtype=torch.int64, device="cuda")
        grid_cpu = torch.tensor(grids, dtype=torch.int64)
        f = flops(grids, cfg)

        def eager():
            with torch.inference_mode():
                return model(pv, grid_thw=grid)

        def e2e():
            with torch.inference_mode():
                out = model(host.to("cuda", torch.bfloat16), grid_thw=grid_cpu.to("cuda"))
                res = [out.pooler_output.float().cpu()] + [t.float().cpu() for t in out.deepstack_features]
            return res

        modes = [] if args.compile_only else [("eager", eager, False), ("eager_e2e", e2e, True)]
        if args.compile and (not args.compile_cases or name in args.compile_cases.split(",")):
            if compiled is None:
                compiled = torch.compile(model)

            def comp():
                with torch.inference_mode():
                    return compiled(pv, grid_thw=grid)
            t0 = time.perf_counter()
            comp()
            torch.cuda.synchronize()
            print(f"# compile {name}: first call {time.perf_counter() - t0:.1f} s", flush=True)
            modes.append(("compile", comp, False))
        for mode, fn, is_e2e in modes:
            med, p10, p90 = time_case(fn, args.iters, args.warmup, is_e2e)
            print(f"hf case={name} mode={mode} images={len(grids)} tokens={T} ms={med:.3f} p10_ms={p10:.3f} "
                  f"p90_ms={p90:.3f} img_s={len(grids) / (med * 1e-3):.1f} tflops={f / (med * 1e-3) / 1e12:.1f}",
                  flush=True)


def cos_rel(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    rel = float((a - b).norm() / b.norm())
    return cos, rel


def compare(args):
    pix = load_file(args.compare[0])
    vout = load_file(args.compare[1])
    n = len([k for k in pix if k.endswith(".pixel_values")])
    pvs = [pix[f"image.{i}.pixel_values"] for i in range(n)]
    grids = [pix[f"image.{i}.grid_thw"].tolist() for i in range(n)]
    pv = torch.cat(pvs).cuda()
    grid = torch.tensor(grids, dtype=torch.int64, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    res = {}
    for dtype in (torch.bfloat16, torch.float32):
        model, cfg = load_model(args.model, dtype)
        with torch.inference_mode():
            out = model(pv.to(dtype), grid_thw=grid)
        res[dtype] = [out.pooler_output.float().cpu()] + [t.float().cpu() for t in out.deepstack_features]
        del model
        torch.cuda.empty_cache()
    layers = list(cfg.deepstack_visual_indexes)
    off = 0
    worst = 1.0
    for i, (t, h, w) in enumerate(grids):
        m = t * h * w // 4
        for j in range(1 + len(layers)):
            key = f"image.{i}.embeddings" if j == 0 else f"image.{i}.deepstack.{layers[j - 1]}"
            if key not in vout:
                print(f"compare image={i} output={key}: missing in {args.compare[1]}")
                continue
            v = vout[key].float()
            hb = res[torch.bfloat16][j][off:off + m]
            hf = res[torch.float32][j][off:off + m]
            c1, r1 = cos_rel(v, hb)
            c2, r2 = cos_rel(v, hf)
            c3, r3 = cos_rel(hb, hf)
            worst = min(worst, c1)
            print(f"compare image={i} grid={t}x{h}x{w} output={'embeddings' if j == 0 else 'deepstack.%d' % layers[j - 1]} "
                  f"vitd_vs_hf_bf16_cos={c1:.6f} rel_l2={r1:.4f} vitd_vs_hf_fp32_cos={c2:.6f} rel_l2={r2:.4f} "
                  f"hf_bf16_vs_fp32_cos={c3:.6f} rel_l2={r3:.4f}", flush=True)
        off += m
    print(f"compare worst vitd_vs_hf_bf16_cos={worst:.6f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint directory (e.g. a vitd demo-model --preset 8b)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cases", default="", help="comma-separated subset of " + ",".join(CASES))
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    ap.add_argument("--compile-cases", default="", help="cases to compile (default: all selected)")
    ap.add_argument("--compile-only", action="store_true", help="with --compile: skip the eager modes")
    ap.add_argument("--compare", nargs=2, metavar=("PIXELS", "VITD"), help="compare vitd outputs with HF")
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
          f"{torch.cuda.get_device_name(0)}", flush=True)
    if args.compare:
        compare(args)
    else:
        bench(args)


if __name__ == "__main__":
    sys.exit(main())
