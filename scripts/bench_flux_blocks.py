#!/usr/bin/env python3
"""diffusers' side of `cargo bench -p hiresfix-flow --bench flux_blocks`: one real-size Flux.1
block (FluxTransformerBlock or FluxSingleTransformerBlock: hidden 3072, 24 heads x 128, MLP
4 x 3072) with the bench's random weights, one call at 1024 px token counts, fp32 CPU.

    python3 scripts/bench_flux_blocks.py --block double|single [--side 128] [--txt 512] [--ours PATH]

Weights: tensor i of the block's sorted Black Forest Labs names (`double_blocks.0.img_attn.qkv
.weight`, ...) is torch.randn(shape) after torch.manual_seed(i), scaled as the bench does
(weights N(0, 1/fan_in), `.scale` 1 + N(0, 0.02^2), biases N(0, 0.02^2)); they are then renamed
into diffusers' parameters as diffusers' convert_flux_transformer_checkpoint_to_diffusers does
(qkv and linear1 split), one tensor at a time as the bench fills its own. Inputs from seeds 1000000 + k; RoPE from FluxPosEmbed over FluxPipeline's ids.
Prints one line: fill and call time, peak RSS (VmHWM), RSS added since start-up, and with
--ours the relative difference max|ours - theirs| / max|theirs| of the outputs (img and txt).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402
from diffusers.models.transformers.transformer_flux import (  # noqa: E402
    FluxPosEmbed,
    FluxSingleTransformerBlock,
    FluxTransformerBlock,
)

D, HEADS, HEAD_DIM, MLP = 3072, 24, 128, 4 * 3072
INPUT_SEED = 1_000_000


def kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise SystemExit(f"no {field}")


def scale(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(factor, offset) of a generated tensor: the bench's rule."""
    if len(shape) == 1:
        return (0.02, 1.0) if name.endswith(".scale") else (0.02, 0.0)
    return 1.0 / shape[1] ** 0.5, 0.0


def diffusers_names(block: str) -> dict[str, list[str]]:
    """BFL name -> the diffusers names it splits into along dim 0 (diffusers' converter)."""
    m: dict[str, list[str]] = {}
    if block == "double":
        p = "double_blocks.0."
        for s, mod, qkv, norms, proj, ff in (
            ("img", "norm1", ("to_q", "to_k", "to_v"), ("norm_q", "norm_k"), "to_out.0", "ff"),
            ("txt", "norm1_context", ("add_q_proj", "add_k_proj", "add_v_proj"),
             ("norm_added_q", "norm_added_k"), "to_add_out", "ff_context"),
        ):
            for t in ("weight", "bias"):
                m[f"{p}{s}_mod.lin.{t}"] = [f"{mod}.linear.{t}"]
                m[f"{p}{s}_attn.qkv.{t}"] = [f"attn.{n}.{t}" for n in qkv]
                m[f"{p}{s}_attn.proj.{t}"] = [f"attn.{proj}.{t}"]
                m[f"{p}{s}_mlp.0.{t}"] = [f"{ff}.net.0.proj.{t}"]
                m[f"{p}{s}_mlp.2.{t}"] = [f"{ff}.net.2.{t}"]
            m[f"{p}{s}_attn.norm.query_norm.scale"] = [f"attn.{norms[0]}.weight"]
            m[f"{p}{s}_attn.norm.key_norm.scale"] = [f"attn.{norms[1]}.weight"]
    else:
        p = "single_blocks.0."
        for t in ("weight", "bias"):
            m[f"{p}modulation.lin.{t}"] = [f"norm.linear.{t}"]
            m[f"{p}linear1.{t}"] = [f"attn.to_{x}.{t}" for x in "qkv"] + [f"proj_mlp.{t}"]
            m[f"{p}linear2.{t}"] = [f"proj_out.{t}"]
        m[f"{p}norm.query_norm.scale"] = ["attn.norm_q.weight"]
        m[f"{p}norm.key_norm.scale"] = ["attn.norm_k.weight"]
    return m


def fill(model: torch.nn.Module, block: str) -> None:
    """The bench's weights, one BFL tensor at a time, split into diffusers' parameters."""
    params = dict(model.named_parameters())
    names = diffusers_names(block)
    assert sorted(x for v in names.values() for x in v) == sorted(params), "name map incomplete"
    with torch.no_grad():
        for i, name in enumerate(sorted(names)):
            targets = [params[n] for n in names[name]]
            shape = (sum(t.shape[0] for t in targets), *targets[0].shape[1:])
            torch.manual_seed(i)
            factor, offset = scale(name, shape)
            t = torch.randn(shape).mul_(factor).add_(offset)
            for dst, part in zip(targets, torch.split(t, [x.shape[0] for x in targets], dim=0)):
                dst.copy_(part)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block", choices=("double", "single"), required=True)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--txt", type=int, default=512)
    ap.add_argument("--ours")
    args = ap.parse_args()
    baseline = kib("VmRSS:")
    start = time.perf_counter()
    with torch.device("meta"):
        if args.block == "double":
            model = FluxTransformerBlock(dim=D, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
        else:
            model = FluxSingleTransformerBlock(dim=D, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
    model = model.to_empty(device="cpu").eval()
    fill(model, args.block)
    fill_s = time.perf_counter() - start
    params = sum(t.numel() for t in model.state_dict().values())

    def seeded(k: int, shape: list[int]) -> torch.Tensor:
        torch.manual_seed(INPUT_SEED + k)
        return torch.randn(shape)

    tokens = (args.side // 2) ** 2
    img = seeded(0, [1, tokens, D])
    txt = seeded(1, [1, args.txt, D])
    vec = seeded(2, [1, D])
    img_ids = FluxPipeline._prepare_latent_image_ids(1, args.side // 2, args.side // 2, "cpu", torch.float32)
    ids = torch.cat([torch.zeros(args.txt, 3), img_ids], dim=0)
    pe = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(ids)
    start = time.perf_counter()
    with torch.no_grad():
        out_txt, out_img = model(hidden_states=img, encoder_hidden_states=txt, temb=vec, image_rotary_emb=pe)
    call = time.perf_counter() - start
    peak = kib("VmHWM:")
    diff = ""
    if args.ours:
        from safetensors.torch import load_file

        ours = load_file(args.ours)
        diff = f", ours vs theirs img {relative(ours['img'], out_img):.1e} txt {relative(ours['txt'], out_txt):.1e}"
    print(
        f"flux-{args.block} theirs: {params} parameters; fill {fill_s:.2f} s, call {call:.2f} s, "
        f"peak RSS {peak / 2**20:.2f} GiB, added RSS {(peak - baseline) / 2**20:.2f} GiB{diff}",
        flush=True,
    )


if __name__ == "__main__":
    main()
