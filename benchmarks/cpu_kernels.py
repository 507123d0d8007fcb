"""Forward + backward time of the digits DDPM++'s CPU kernels by memory layout and dtype.

The evidence behind ``training.channels_last: auto`` and ``nets.layers.GroupNorm`` (BENCHMARKS.md,
"Training throughput"): one bf16 / float32 convolution at the network's shapes in NCHW and NHWC,
GroupNorm + SiLU in four forms (torch's kernel on NCHW bf16 and on NHWC bf16, scoresde's
GroupNorm on NHWC bf16, which runs torch's float32 kernel), and the weight gradient of an NHWC
bf16 convolution two ways (oneDNN's kernel, and ``nets.layers.conv_weight_grad``, a convolution over
the batch, which the network takes on images of at most ``SMALL_IMAGE_PIXELS`` pixels). Batch 128;
each figure is the minimum over ``--repeats`` timed calls after three untimed ones, in milliseconds.

    OMP_NUM_THREADS=1 python benchmarks/cpu_kernels.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F

from scoresde.nets.layers import GroupNorm, conv_weight_grad

BATCH = 128
#: (in channels, out channels, resolution, kernel) of the digits DDPM++'s convolutions
CONVS = [(32, 32, 8, 3), (64, 32, 8, 3), (32, 64, 8, 3), (96, 32, 8, 3), (64, 64, 8, 3), (64, 32, 8, 1),
         (64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 4, 1), (64, 64, 2, 3), (128, 64, 2, 3)]
#: (channels, resolution) of its GroupNorms
NORMS = [(32, 8), (64, 8), (96, 8), (64, 4)]


def best_ms(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(min(times) * 1e3, 3)


def forward_backward(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        f(x.detach().requires_grad_()).backward(grad)
    return run


def layout(t: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if nhwc else t.contiguous()


def conv_row(cin: int, cout: int, res: int, k: int, repeats: int) -> dict[str, float]:
    row = {}
    for dtype in (torch.bfloat16, torch.float32):
        w = torch.randn(cout, cin, k, k, dtype=dtype, requires_grad=True)
        b = torch.randn(cout, dtype=dtype, requires_grad=True)
        for nhwc in (False, True):
            x = layout(torch.randn(BATCH, cin, res, res, dtype=dtype), nhwc)
            g = layout(torch.randn(BATCH, cout, res, res, dtype=dtype), nhwc)
            key = f"{str(dtype)[6:]}_{'nhwc' if nhwc else 'nchw'}"
            row[key] = best_ms(forward_backward(lambda t: F.conv2d(t, w, b, padding=k // 2), x, g), repeats)
    return row


def norm_row(channels: int, res: int, repeats: int) -> dict[str, float]:
    norm = GroupNorm(min(channels // 4, 32), channels, eps=1e-6)
    x = torch.randn(BATCH, channels, res, res, dtype=torch.bfloat16)
    g = torch.randn_like(x)
    torch_gn = lambda t: F.silu(F.group_norm(t, norm.num_groups, norm.weight, norm.bias, norm.eps))  # noqa: E731
    return {"torch_bf16_nchw": best_ms(forward_backward(torch_gn, x, g), repeats),
            "torch_bf16_nhwc": best_ms(forward_backward(torch_gn, layout(x, True), layout(g, True)), repeats),
            "scoresde_bf16_nhwc": best_ms(forward_backward(lambda t: F.silu(norm(t)), layout(x, True), layout(g, True)),
                                          repeats)}


def weight_grad_row(cin: int, cout: int, res: int, k: int, repeats: int) -> dict[str, float]:
    """Weight and bias gradient of an NHWC bf16 'same' convolution: oneDNN's, and as a convolution."""
    x, w = layout(torch.randn(BATCH, cin, res, res), True).bfloat16(), torch.randn(cout, cin, k, k).bfloat16()
    g = layout(torch.randn(BATCH, cout, res, res), True).bfloat16()
    pad = [k // 2] * 2
    onednn = lambda: torch.ops.aten.convolution_backward(g, x, w, [cout], [1, 1], pad, [1, 1], False, [0, 0], 1,  # noqa: E731
                                                          [False, True, True])
    as_convolution = lambda: (conv_weight_grad(x, g, k // 2), g.sum((0, 2, 3)))  # noqa: E731
    return {"onednn": best_ms(onednn, repeats), "as_convolution": best_ms(as_convolution, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "threads": torch.get_num_threads(),
           "load_avg_1min": os.getloadavg()[0], "batch": BATCH,
           "conv_fwd_bwd_ms": {f"{cin}->{cout} {res}x{res} k{k}": conv_row(cin, cout, res, k, args.repeats)
                               for cin, cout, res, k in CONVS},
           "groupnorm_silu_fwd_bwd_ms": {f"{c} {res}x{res}": norm_row(c, res, args.repeats) for c, res in NORMS},
           "conv_weight_grad_bf16_nhwc_ms": {f"{cin}->{cout} {res}x{res} k{k}": weight_grad_row(cin, cout, res, k, args.repeats)
                                             for cin, cout, res, k in CONVS}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
