#!/usr/bin/env python3
"""One call of a real-size SD 3.5 medium transformer, hiresfix against diffusers, same weights.

    python3 scripts/bench_sd35_transformer.py [--layers N] [--side LATENT] [--data DIR]

Config: stabilityai/stable-diffusion-3.5-medium's transformer (24 blocks, 24 heads x 64, joint
attention dim 4096, caption projection 1536, pooled 2048, pos_embed_max_size 384, qk_norm
rms_norm, dual attention in blocks 0-12; diffusers' single_file_utils tells SD 3.5 medium by its
384 x 384 position grid).  Random weights, fp32, CPU, one call at 1024 x 1024 (latent 128 x 128,
333 text tokens = 77 CLIP + 256 T5, timestep 500).

Each side runs in its own process, one after the other (2.5 B parameters are 10 GB in fp32):
  ours    `cargo bench -p hiresfix-flow --bench sd35_transformer` (fill and call time, peak RSS)
  theirs  diffusers' SD3Transformer2DModel built on the meta device, then filled
Both make the weights the same way: tensor i of the sorted diffusers state-dict names is
torch.randn(shape) after torch.manual_seed(i), scaled by `scale` (the bench's rule; libtorch's
CPU generator is the same library on both sides), and the inputs from seeds 1000000 + k.  The
script prints both lines, ours / theirs for time and peak RSS, and the relative difference of
the two outputs (max |ours - theirs| / max |theirs|), which checks that the weights really were
the same.  --layers / --side shrink the model and the latent for a quick check.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TOKENS = 333
INPUT_SEED = 1_000_000


def config(layers: int) -> dict:
    return dict(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=layers,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(i for i in range(13) if i < layers),
        qk_norm="rms_norm",
    )


def scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(factor, offset) of a generated tensor: the bench's `scale`."""
    module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if len(shape) == 1:
        return (0.02, 1.0) if module.startswith("norm_") else (0.02, 0.0)
    if name == "pos_embed.pos_embed":
        return (0.5, 0.0)
    return (1.0 / math.sqrt(math.prod(shape[1:])), 0.0)


def vm_hwm_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1024 * 1024)
    raise SystemExit("no VmHWM")


def theirs(layers: int, side: int, out: str) -> None:
    """Child process: diffusers' transformer, the same weights and inputs; prints one line."""
    import torch
    from diffusers import SD3Transformer2DModel
    from safetensors.torch import save_file

    start = time.perf_counter()
    with torch.device("meta"):
        model = SD3Transformer2DModel(**config(layers))
    model = model.to_empty(device="cpu").eval()
    state = model.state_dict()
    with torch.no_grad():
        for i, name in enumerate(sorted(state)):
            t = state[name]
            torch.manual_seed(i)
            factor, offset = scale(name, tuple(t.shape))
            t.copy_(torch.randn(t.shape).mul_(factor).add_(offset))
    fill = time.perf_counter() - start
    params = sum(t.numel() for t in state.values())

    def seeded(k: int, shape: list[int]) -> torch.Tensor:
        torch.manual_seed(INPUT_SEED + k)
        return torch.randn(shape)

    latent = seeded(0, [1, 16, side, side])
    context = seeded(1, [1, TOKENS, 4096])
    pooled = seeded(2, [1, 2048])
    timestep = torch.tensor([500.0])
    start = time.perf_counter()
    with torch.no_grad():
        output = model(
            hidden_states=latent,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=timestep,
            return_dict=False,
        )[0]
    call = time.perf_counter() - start
    save_file({"output": output.contiguous()}, out)
    print(
        f"sd35m-transformer theirs: {len(state)} tensors, {params} parameters, latent {side}x{side}, "
        f"{TOKENS} tokens, {torch.get_num_threads()} threads; fill {fill:.2f} s, call {call:.2f} s, "
        f"peak RSS {vm_hwm_gib():.2f} GiB",
        flush=True,
    )


def figures(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"(fill|call|peak RSS) ([0-9.]+)", line)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--side", type=int, default=128, help="latent side (128 = 1024 px)")
    parser.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        theirs(args.layers, args.side, args.out)
        return
    os.makedirs(args.data, exist_ok=True)
    ours_out = os.path.join(args.data, "sd35m-transformer-ours.safetensors")
    theirs_out = os.path.join(args.data, "sd35m-transformer-theirs.safetensors")
    shape = ["--layers", str(args.layers), "--side", str(args.side)]

    cmd = ["cargo", "bench", "-q", "-p", "hiresfix-flow", "--bench", "sd35_transformer", "--", *shape, "--out", ours_out]
    ours = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if ours.returncode != 0:
        raise SystemExit(f"ours failed ({ours.returncode}):\n{ours.stderr[-3000:]}")
    ours_line = ours.stdout.strip().splitlines()[-1]
    print(ours_line, flush=True)

    child = [sys.executable, os.path.abspath(__file__), "--child", *shape, "--out", theirs_out]
    their = subprocess.run(child, capture_output=True, text=True)
    if their.returncode != 0:
        raise SystemExit(f"theirs failed ({their.returncode}):\n{their.stderr[-3000:]}")
    their_line = their.stdout.strip().splitlines()[-1]
    print(their_line, flush=True)

    import torch
    from safetensors.torch import load_file

    a, b = load_file(ours_out)["output"].double(), load_file(theirs_out)["output"].double()
    rel = ((a - b).abs().max() / b.abs().max()).item()
    o, t = figures(ours_line), figures(their_line)
    print(
        f"ours/theirs: call {o['call'] / t['call']:.3f}, peak RSS {o['peak RSS'] / t['peak RSS']:.3f}; "
        f"output relative difference {rel:.2e} (torch {torch.__version__})"
    )


if __name__ == "__main__":
    main()
