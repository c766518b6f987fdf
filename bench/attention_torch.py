#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention at the shapes of bench/attention.cpp, for the
same-call comparison of our attention kernel (benchmarks only; PyTorch is never a
dependency of the product).

16k tokens per call (B = 16384 / T), width 2048 (H = 2048 / dh), causal; FLOPs
forward 4 B T^2 H dh / 2, backward 2.5x forward; median of 10 timed runs (CUDA events)
after 3 untimed ones. Prints one line per (T, dh) in bench_attention's layout.

  python3 bench/attention_torch.py [--dtype bf16|fp32]
"""
import argparse

import torch
import torch.nn.functional as F


def median_ms(fn):
    times = []
    for i in range(13):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = p.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"sdpa  causal attention, {args.dtype}, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for dh in (64, 128):
        for T in (512, 1024, 2048, 4096, 8192):
            B, H = 16384 // T, 2048 // dh
            q, k, v = (torch.randn(B, H, T, dh, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
            dout = torch.randn(B, H, T, dh, device="cuda", dtype=dtype)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            f_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            b_ms = median_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True))
            flops = 4.0 * B * T * T * H * dh / 2
            print(f"sdpa  dh={dh:<4d} T={T:<5d} B={B:<3d} H={H:<3d} | fwd {f_ms:8.3f} ms {flops / f_ms / 1e9:6.1f} TFLOP/s"
                  f" | bwd {b_ms:8.3f} ms {2.5 * flops / b_ms / 1e9:6.1f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
