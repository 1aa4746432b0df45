#!/usr/bin/env python3
"""Build tiny random Flux.1-dev- and schnell-shaped transformers (diffusers
FluxTransformer2DModel) and record reference outputs of one forward call at two latent sizes.

    python3 scripts/make_flux_reference.py [--data tests/data]

Writes, under --data/flux-tiny/{dev,schnell}/ (dev: guidance_embeds=True, schnell: False):
  transformer/config.json, transformer/diffusion_pytorch_model.safetensors
        the model as a diffusers folder (`save_pretrained`, fp32 holding fp16-rounded values)
  flux1-{variant}-tiny.safetensors
        the same weights as a Black Forest Labs single file (`double_blocks.*`, `single_blocks.*`,
        fused qkv / linear1, the reference's shift/scale order in final_layer), written by
        `to_bfl` below: the inverse of diffusers' `convert_flux_transformer_checkpoint_to_diffusers`.
        The script checks that diffusers' converter reads it back to the same state dict (with
        its hard-coded `inner_dim = 3072` replaced by the tiny model's width: `from_single_file`
        itself only converts real-size files).
  flux1-dev-tiny-aio.safetensors (dev only)
        the BFL file under `model.diffusion_model.` (Forge / ComfyUI all-in-one layout; the
        transformer part only)
  reference.safetensors
        per case `square` (latent 16 x 16) and `wide` (latent 16 x 24), batch 2 with different
        timesteps: `{case}.latent` [2, 16, H, W] (dev only), `{case}.packed` (FluxPipeline.
        _pack_latents), `{case}.img_ids`, `{case}.txt_ids` (FluxPipeline's ids), `{case}.context`
        (T5-shaped hidden states), `{case}.pooled`, `{case}.timestep` (sigma in 0..1, as the
        pipeline passes it), `{case}.guidance` (dev only: 3.5) and `{case}.output` (the packed
        velocity) and `{case}.output_unpacked` (FluxPipeline._unpack_latents; dev only), CPU fp32.
Weight files hold fp16 (the values are fp16-rounded, so the fp32 model is the same).

Offline, CPU, fp32, deterministic. Total size under 2 MB.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import FluxPipeline, FluxTransformer2DModel  # noqa: E402
from diffusers.loaders import single_file_utils  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=32,
    pooled_projection_dim=32,
    axes_dims_rope=(4, 6, 6),
)
SEED = 3131
PREFIX = "model.diffusion_model."
# name, latent size (h, w) before packing, text tokens, sigmas
CASES = [
    ("square", (16, 16), 7, [0.9375, 0.25]),
    ("wide", (16, 24), 5, [0.5, 0.0625]),
]
GUIDANCE = 3.5


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter random and non-zero (biases too), rounded to fp16 values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_q.weight") or name.endswith("norm_k.weight") or "norm_added" in name:
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen)
            elif p.ndim == 2:
                v = torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(v.half().float())


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def to_bfl(sd: dict[str, torch.Tensor], num_layers: int, num_single: int) -> dict[str, torch.Tensor]:
    """diffusers → Black Forest Labs names (inverse of convert_flux_transformer_checkpoint_to_diffusers)."""
    out = {}

    def lin(dst: str, src: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"]

    def cat(dst: str, srcs: list[str]) -> None:
        for s in ("weight", "bias"):
            out[f"{dst}.{s}"] = torch.cat([sd[f"{x}.{s}"] for x in srcs], dim=0)

    lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    lin("txt_in", "context_embedder")
    lin("img_in", "x_embedder")
    for i in range(num_layers):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        lin(f"{d}.img_mod.lin", f"{b}.norm1.linear")
        lin(f"{d}.txt_mod.lin", f"{b}.norm1_context.linear")
        cat(f"{d}.img_attn.qkv", [f"{b}.attn.to_{x}" for x in "qkv"])
        cat(f"{d}.txt_attn.qkv", [f"{b}.attn.add_{x}_proj" for x in "qkv"])
        out[f"{d}.img_attn.norm.query_norm.scale"] = sd[f"{b}.attn.norm_q.weight"]
        out[f"{d}.img_attn.norm.key_norm.scale"] = sd[f"{b}.attn.norm_k.weight"]
        out[f"{d}.txt_attn.norm.query_norm.scale"] = sd[f"{b}.attn.norm_added_q.weight"]
        out[f"{d}.txt_attn.norm.key_norm.scale"] = sd[f"{b}.attn.norm_added_k.weight"]
        lin(f"{d}.img_mlp.0", f"{b}.ff.net.0.proj")
        lin(f"{d}.img_mlp.2", f"{b}.ff.net.2")
        lin(f"{d}.txt_mlp.0", f"{b}.ff_context.net.0.proj")
        lin(f"{d}.txt_mlp.2", f"{b}.ff_context.net.2")
        lin(f"{d}.img_attn.proj", f"{b}.attn.to_out.0")
        lin(f"{d}.txt_attn.proj", f"{b}.attn.to_add_out")
    for i in range(num_single):
        b, s = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        lin(f"{s}.modulation.lin", f"{b}.norm.linear")
        cat(f"{s}.linear1", [f"{b}.attn.to_q", f"{b}.attn.to_k", f"{b}.attn.to_v", f"{b}.proj_mlp"])
        out[f"{s}.norm.query_norm.scale"] = sd[f"{b}.attn.norm_q.weight"]
        out[f"{s}.norm.key_norm.scale"] = sd[f"{b}.attn.norm_k.weight"]
        lin(f"{s}.linear2", f"{b}.proj_out")
    lin("final_layer.linear", "proj_out")
    out["final_layer.adaLN_modulation.1.weight"] = swap_halves(sd["norm_out.linear.weight"])
    out["final_layer.adaLN_modulation.1.bias"] = swap_halves(sd["norm_out.linear.bias"])
    return {k: v.contiguous() for k, v in out.items()}


def diffusers_converter(inner_dim: int):
    """diffusers' own BFL → diffusers converter with its hard-coded width (3072) replaced."""
    src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    assert "inner_dim = 3072" in src, "diffusers' converter changed; update this check"
    src = src.replace("inner_dim = 3072", f"inner_dim = {inner_dim}")
    scope = dict(vars(single_file_utils))
    exec(src, scope)  # noqa: S102 - diffusers' own source
    return scope["convert_flux_transformer_checkpoint_to_diffusers"]


def build(variant: str, out_dir: str) -> None:
    dev = variant == "dev"
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED + (0 if dev else 1))
    model = FluxTransformer2DModel(**CONFIG, guidance_embeds=dev).eval()
    randomize(model, gen)
    # Stored as fp16 (the values are fp16-rounded: exact) to keep the files small.
    model.half().save_pretrained(os.path.join(out_dir, "transformer"), safe_serialization=True)
    model.float()

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    bfl = to_bfl(sd, CONFIG["num_layers"], CONFIG["num_single_layers"])
    inner = CONFIG["attention_head_dim"] * CONFIG["num_attention_heads"]
    back = diffusers_converter(inner)({PREFIX + k: v.clone() for k, v in bfl.items()})
    assert set(back) == set(sd), f"round trip keys differ: {set(back) ^ set(sd)}"
    for k in sd:
        assert torch.equal(back[k], sd[k]), f"round trip differs at {k}"
    bfl = {k: v.half() for k, v in bfl.items()}
    save_file(bfl, os.path.join(out_dir, f"flux1-{variant}-tiny.safetensors"))
    if dev:
        save_file({PREFIX + k: v for k, v in bfl.items()},
                  os.path.join(out_dir, f"flux1-{variant}-tiny-aio.safetensors"))

    refs: dict[str, torch.Tensor] = {}
    for case, (h, w), tokens, sigmas in CASES:
        b = len(sigmas)
        latent = torch.randn(b, 16, h, w, generator=gen).half().float()
        packed = FluxPipeline._pack_latents(latent, b, 16, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
        txt_ids = torch.zeros(tokens, 3)
        context = torch.randn(b, tokens, CONFIG["joint_attention_dim"], generator=gen).half().float()
        pooled = torch.randn(b, CONFIG["pooled_projection_dim"], generator=gen).half().float()
        timestep = torch.tensor(sigmas, dtype=torch.float32)
        guidance = torch.full([b], GUIDANCE, dtype=torch.float32) if dev else None
        with torch.no_grad():
            out = model(
                hidden_states=packed,
                encoder_hidden_states=context,
                pooled_projections=pooled,
                timestep=timestep,
                img_ids=img_ids,
                txt_ids=txt_ids,
                guidance=guidance,
                return_dict=False,
            )[0]
        unpacked = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)
        if dev:  # packing is the same for both variants: checked once
            refs[f"{case}.latent"] = latent
            refs[f"{case}.output_unpacked"] = unpacked
        refs.update({
            f"{case}.packed": packed,
            f"{case}.img_ids": img_ids,
            f"{case}.txt_ids": txt_ids,
            f"{case}.context": context,
            f"{case}.pooled": pooled,
            f"{case}.timestep": timestep,
            f"{case}.output": out,
        })
        if dev:
            refs[f"{case}.guidance"] = guidance
        print(f"{variant} {case}: latent {h}x{w} -> {packed.shape[1]} tokens, "
              f"|out| mean {out.abs().mean():.4f}", file=sys.stderr)
    save_file({k: v.contiguous() for k, v in refs.items()}, os.path.join(out_dir, "reference.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="tests/data")
    args = ap.parse_args()
    for variant in ("dev", "schnell"):
        build(variant, os.path.join(args.data, "flux-tiny", variant))


if __name__ == "__main__":
    main()
