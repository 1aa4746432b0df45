#!/usr/bin/env python3
"""Build a tiny random SD 3.5-shaped MMDiT (diffusers SD3Transformer2DModel) and record reference
outputs of one forward call.

    python3 scripts/make_mmdit_reference.py [--data tests/data]

Writes, under --data:
  sd3-tiny/transformer/config.json, diffusion_pytorch_model.safetensors
        the model as a diffusers folder (fp32; `save_pretrained`)
  sd3-tiny-transformer.safetensors
        the same weights as one single file in the original SD3 layout (`model.diffusion_model.*`,
        fused q/k/v, the reference's shift/scale order), written by `to_original` below: the
        inverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`.  The script
        checks that diffusers' `from_single_file` reads it back to the same state dict.
  sd3-tiny/transformer/reference.safetensors
        for each case `square` (latent 8 x 8) and `wide` (latent 12 x 16), batch 2 with different
        timesteps: `{case}.latent`, `{case}.timestep`, `{case}.context`, `{case}.pooled` (inputs)
        and `{case}.output` (the transformer's output), CPU fp32.

The model has SD 3.5's q/k RMSNorm, SD 3.5 medium's dual attention (attn2) in block 0, a
pre-only last block, random non-zero biases, and a positional-embedding grid of 16 x 16 patches
(perturbed from its sin-cos values, so a loader that recomputes it instead of reading it fails).
Offline, CPU, fp32, deterministic.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import SD3Transformer2DModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

CONFIG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=4,
    joint_attention_dim=32,
    caption_projection_dim=32,
    pooled_projection_dim=64,
    out_channels=16,
    pos_embed_max_size=16,
    dual_attention_layers=(0,),
    qk_norm="rms_norm",
)
SEED = 3035
PREFIX = "model.diffusion_model."
# name, latent size (h, w), text tokens, timesteps (diffusers units: sigma * 1000)
CASES = [
    ("square", (8, 8), 7, [937.5, 123.25]),
    ("wide", (12, 16), 5, [500.0, 20.0]),
]


def randomize(model: SD3Transformer2DModel) -> None:
    """Every parameter random and non-zero: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm
    scales ~ 1 + N(0, 0.1^2); the positional embedding perturbed by N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if ".norm_" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
        pos = model.pos_embed.pos_embed
        pos.add_(0.1 * torch.randn(pos.shape, generator=gen))


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def to_original(sd: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """diffusers SD3Transformer2DModel keys -> the original SD3 (mmditx.py) keys, prefix-less."""
    sd = dict(sd)
    out: dict[str, torch.Tensor] = {}

    def take(original: str, diffusers: str) -> None:
        for p in ("weight", "bias"):
            if f"{diffusers}.{p}" in sd:
                out[f"{original}.{p}"] = sd.pop(f"{diffusers}.{p}")

    def fuse(original: str, diffusers: list[str]) -> None:
        for p in ("weight", "bias"):
            out[f"{original}.{p}"] = torch.cat([sd.pop(f"{d}.{p}") for d in diffusers], dim=0)

    out["pos_embed"] = sd.pop("pos_embed.pos_embed")
    take("x_embedder.proj", "pos_embed.proj")
    take("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1")
    take("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2")
    take("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1")
    take("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2")
    take("context_embedder", "context_embedder")
    for i in range(num_layers):
        o, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        last = i == num_layers - 1
        fuse(o + "x_block.attn.qkv", [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"])
        fuse(o + "context_block.attn.qkv", [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"])
        take(o + "x_block.attn.proj", d + "attn.to_out.0")
        take(o + "x_block.attn.ln_q", d + "attn.norm_q")
        take(o + "x_block.attn.ln_k", d + "attn.norm_k")
        take(o + "context_block.attn.ln_q", d + "attn.norm_added_q")
        take(o + "context_block.attn.ln_k", d + "attn.norm_added_k")
        if not last:
            take(o + "context_block.attn.proj", d + "attn.to_add_out")
        if d + "attn2.to_q.weight" in sd:
            fuse(o + "x_block.attn2.qkv", [d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"])
            take(o + "x_block.attn2.proj", d + "attn2.to_out.0")
            take(o + "x_block.attn2.ln_q", d + "attn2.norm_q")
            take(o + "x_block.attn2.ln_k", d + "attn2.norm_k")
        take(o + "x_block.adaLN_modulation.1", d + "norm1.linear")
        if last:
            # diffusers' AdaLayerNormContinuous is (scale, shift); the reference's is (shift, scale).
            for p in ("weight", "bias"):
                out[f"{o}context_block.adaLN_modulation.1.{p}"] = swap_halves(sd.pop(f"{d}norm1_context.linear.{p}"))
        else:
            take(o + "context_block.adaLN_modulation.1", d + "norm1_context.linear")
        take(o + "x_block.mlp.fc1", d + "ff.net.0.proj")
        take(o + "x_block.mlp.fc2", d + "ff.net.2")
        if not last:
            take(o + "context_block.mlp.fc1", d + "ff_context.net.0.proj")
            take(o + "context_block.mlp.fc2", d + "ff_context.net.2")
    take("final_layer.linear", "proj_out")
    for p in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{p}"] = swap_halves(sd.pop(f"norm_out.linear.{p}"))
    if sd:
        raise SystemExit(f"to_original: no original name for {sorted(sd)}")
    return out


def check_round_trip(model: SD3Transformer2DModel, single: str, data: str) -> str:
    """diffusers' own single-file loader must give back the same state dict."""
    try:
        back = SD3Transformer2DModel.from_single_file(
            single,
            config=os.path.join(data, "sd3-tiny"),
            subfolder="transformer",
            local_files_only=True,
            torch_dtype=torch.float32,
        )
    except Exception as e:  # noqa: BLE001  report why it could not be checked, keep the files
        return f"not checked: from_single_file failed offline ({type(e).__name__}: {e})"
    want, got = model.state_dict(), back.state_dict()
    if set(want) != set(got):
        raise SystemExit(f"round trip: keys differ: {sorted(set(want) ^ set(got))[:8]}")
    for k in want:
        if not torch.equal(want[k], got[k]):
            raise SystemExit(f"round trip: `{k}` differs")
    return f"ok ({len(want)} tensors identical)"


def references(model: SD3Transformer2DModel) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED + 1)
    out: dict[str, torch.Tensor] = {}
    for name, (h, w), tokens, timesteps in CASES:
        latent = torch.randn(2, CONFIG["in_channels"], h, w, generator=gen)
        context = torch.randn(2, tokens, CONFIG["joint_attention_dim"], generator=gen)
        pooled = torch.randn(2, CONFIG["pooled_projection_dim"], generator=gen)
        timestep = torch.tensor(timesteps, dtype=torch.float32)
        with torch.no_grad():
            output = model(
                hidden_states=latent,
                encoder_hidden_states=context,
                pooled_projections=pooled,
                timestep=timestep,
                return_dict=False,
            )[0]
        for key, t in [("latent", latent), ("timestep", timestep), ("context", context), ("pooled", pooled), ("output", output)]:
            out[f"{name}.{key}"] = t.contiguous()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data"))
    args = parser.parse_args()
    data = os.path.normpath(args.data)
    torch.manual_seed(SEED)
    model = SD3Transformer2DModel(**CONFIG).eval()
    randomize(model)

    folder = os.path.join(data, "sd3-tiny", "transformer")
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    single = os.path.join(data, "sd3-tiny-transformer.safetensors")
    original = to_original(model.state_dict(), CONFIG["num_layers"])
    save_file({PREFIX + k: v.contiguous() for k, v in original.items()}, single, metadata={"format": "pt"})
    print(f"round trip through from_single_file: {check_round_trip(model, single, data)}")

    refs = references(model)
    save_file(refs, os.path.join(folder, "reference.safetensors"), metadata={"script": "make_mmdit_reference.py"})
    params = sum(p.numel() for p in model.parameters())
    print(f"{params} parameters; wrote {folder}/, {single}")
    for name, *_ in CASES:
        o = refs[f"{name}.output"]
        print(f"  {name}: output {tuple(o.shape)}, |output| max {o.abs().max().item():.4f}")


if __name__ == "__main__":
    sys.exit(main())
