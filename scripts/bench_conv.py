#!/usr/bin/env python3
"""Direct 3x3 convolution against im2col + one matrix product at SD UNet shapes (CPU fp32,
2 threads): the measurement behind `layers::Conv2d`'s small-map rule (BENCHMARKS.md,
"Small feature maps"). Needs only torch (scripts/env.sh's pinned one).

    python3 scripts/bench_conv.py
"""
import time, torch, sys
import torch.nn.functional as F
torch.set_num_threads(2)
def bench(f, n=5):
    f(); best=1e9
    for _ in range(n):
        t=time.perf_counter(); f(); best=min(best,time.perf_counter()-t)
    return best
def im2col_conv(x, w, b):
    N, C, H, W = x.shape; O = w.shape[0]
    cols = F.unfold(x, 3, padding=1)           # [N, C*9, L]
    out = torch.matmul(w.view(O, -1), cols)    # [N, O, L]
    out = out.view(N, O, H, W)
    if b is not None: out += b.view(1, -1, 1, 1)
    return out
def im2col_conv_t(x, w, b):
    # rows = pixels: cols^T [N*L, C*9] @ w^T [C*9, O] -> [N*L, O] -> permute
    N, C, H, W = x.shape; O = w.shape[0]
    cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(N*H*W, C*9)
    out = torch.addmm(b, cols, w.view(O, -1).t()) if b is not None else cols @ w.view(O,-1).t()
    return out.view(N, H, W, O).permute(0, 3, 1, 2).contiguous()
shapes = [(2,1280,4,4,1280),(2,2560,4,4,1280),(2,1280,8,8,1280),(2,2560,8,8,1280),(2,640,8,8,1280),(2,1280,16,16,1280),(2,640,16,16,640),(2,1280,16,16,640),
          (2,640,32,32,640),(2,320,32,32,320),(2,640,32,32,320),(2,320,64,64,320)]
with torch.inference_mode():
  for (N,C,H,W,O) in shapes:
    x = torch.randn(N,C,H,W); w = torch.randn(O,C,3,3)*(1/(C*9))**.5; b = torch.randn(O)
    ref = F.conv2d(x, w, b, padding=1)
    td = bench(lambda: F.conv2d(x, w, b, padding=1))
    ti = bench(lambda: im2col_conv(x, w, b)); e1 = (im2col_conv(x,w,b)-ref).abs().max().item()
    tt = bench(lambda: im2col_conv_t(x, w, b)); e2 = (im2col_conv_t(x,w,b)-ref).abs().max().item()
    fl = 2*N*H*W*C*O*9
    print(f"{(N,C,H,W,O)} direct {td*1e3:.1f} ms ({fl/td/1e9:.0f} GF/s) | im2col {ti*1e3:.1f} ({fl/ti/1e9:.0f}) err {e1:.1e} | im2col-t {tt*1e3:.1f} ({fl/tt/1e9:.0f}) err {e2:.1e}", flush=True)
