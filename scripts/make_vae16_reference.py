#!/usr/bin/env python3
"""A random tiny 16-channel VAE of the SD 3.x / Flux form and diffusers' decode and encode.

    python3 scripts/make_vae16_reference.py [--out tests/data/vae16-tiny]

SD 3.x and Flux use diffusers' `AutoencoderKL` with 16 latent channels, no `quant_conv` /
`post_quant_conv` (`use_quant_conv = use_post_quant_conv = False`) and latents
`(z - shift_factor) * scaling_factor` (SD 3.x: shift 0.0609, scale 1.5305; Flux: shift
0.1159, scale 0.3611), as StableDiffusion3Pipeline / FluxPipeline decode
`vae.decode(latents / scaling_factor + shift_factor)` and their img2img pipelines encode
`(vae.encode(image).latent_dist.mean - shift_factor) * scaling_factor` (the mean: the sample
draws noise). This builds one with 2 levels of 32 channels (32 is the GroupNorm group count),
one ResnetBlock per level, seeded random weights (norm weights 1 + N(0, 0.1), biases
N(0, 0.1)), and runs it on CPU float32.

Writes, under --out:
  diffusers/config.json, diffusers/diffusion_pytorch_model.safetensors
                     the VAE as `save_pretrained` writes it (a diffusers `vae/` folder; the
                     SD 3.x shift and scale in its config)
  ldm.safetensors    the same weights in the original (LDM / SAI single-file) layout under
                     `first_stage_model.` (attention q/k/v/proj_out as 1x1 convs, as LDM
                     stores them); checked here: diffusers' own `convert_ldm_vae_checkpoint`
                     turns it back into exactly the diffusers state dict
  reference.safetensors
                     `latent` [1,16,16,16] and `image` [1,3,32,32] (inputs), and for the SD 3.x
                     and the Flux shift/scale: `decoded_sd3`, `decoded_flux` [1,3,32,32]
                     (decode of `latent`) and `encoded_sd3`, `encoded_flux` [1,16,16,16]
                     (encode of `image`, the posterior mean)

The tests in crates/model-parts/tests/vae16.rs load both weight files and compare within 1e-4
relative. Deterministic: reruns give identical files.
"""
import argparse
import os

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SD3 = (0.0609, 1.5305)
FLUX = (0.1159, 0.3611)


def ldm_key(key: str, levels: int) -> str:
    """diffusers AutoencoderKL key -> LDM key (the table diffusers' converter reads back)."""
    parts = key.split(".")
    coder, rest = parts[0], parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        out = rest
    elif rest[0] == "conv_norm_out":
        out = ["norm_out"] + rest[1:]
    elif rest[0] == "down_blocks":
        i = rest[1]
        if rest[2] == "resnets":
            out = ["down", i, "block", rest[3]] + resnet(rest[4:])
        else:  # downsamplers.0.conv
            out = ["down", i, "downsample", "conv"] + rest[5:]
    elif rest[0] == "up_blocks":
        level = str(levels - 1 - int(rest[1]))
        if rest[2] == "resnets":
            out = ["up", level, "block", rest[3]] + resnet(rest[4:])
        else:  # upsamplers.0.conv
            out = ["up", level, "upsample", "conv"] + rest[5:]
    elif rest[0] == "mid_block" and rest[1] == "resnets":
        out = ["mid", f"block_{int(rest[2]) + 1}"] + resnet(rest[3:])
    elif rest[0] == "mid_block" and rest[1] == "attentions":
        names = {"group_norm": ["norm"], "to_q": ["q"], "to_k": ["k"], "to_v": ["v"]}
        tail = rest[3:]
        if tail[0] == "to_out":
            out = ["mid", "attn_1", "proj_out"] + tail[2:]
        else:
            out = ["mid", "attn_1"] + names[tail[0]] + tail[1:]
    else:
        raise ValueError(key)
    return ".".join([coder] + out)


def resnet(rest):
    return [{"conv_shortcut": "nin_shortcut"}.get(rest[0], rest[0])] + rest[1:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/vae16-tiny"))
    args = ap.parse_args()
    torch.manual_seed(30)
    torch.set_num_threads(1)
    levels = 2
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(32,) * levels,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=32,
        sample_size=32,
        shift_factor=SD3[0],
        scaling_factor=SD3[1],
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    g = torch.Generator().manual_seed(30)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    state = {k: v.contiguous() for k, v in vae.state_dict().items()}
    assert not any("quant_conv" in k for k in state), "the SD 3 form has no quant convs"

    os.makedirs(args.out, exist_ok=True)
    vae.save_pretrained(os.path.join(args.out, "diffusers"), safe_serialization=True)

    ldm = {}
    for k, v in state.items():
        v = v.clone()
        if ".attentions." in k and k.endswith("weight") and v.dim() == 2:
            v = v[:, :, None, None].contiguous()  # LDM's 1x1 conv
        ldm["first_stage_model." + ldm_key(k, levels)] = v
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert sorted(back) == sorted(state), set(back) ^ set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    save_file(ldm, os.path.join(args.out, "ldm.safetensors"))

    latent = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(7))
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(8)) * 2 - 1
    ref = {"latent": latent, "image": image}
    with torch.no_grad():
        for name, (shift, scale) in (("sd3", SD3), ("flux", FLUX)):
            ref[f"decoded_{name}"] = vae.decode(latent / scale + shift).sample
            mean = vae.encode(image).latent_dist.mean
            ref[f"encoded_{name}"] = (mean - shift) * scale
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(args.out, "reference.safetensors"))
    for k, v in ref.items():
        print(f"{k}: {list(v.shape)} mean {v.mean():.4f} std {v.std():.4f}")


if __name__ == "__main__":
    main()
