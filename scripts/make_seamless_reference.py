#!/usr/bin/env python3
"""Record the reference for seamless (`tiling = true`) output on the tiny SD 1.x model.

    python3 scripts/make_seamless_reference.py [--out tests/data/sd1-tiny]

Loads the diffusers folder that make_sd1_reference.py wrote under --out, sets
padding_mode='circular' on every Conv2d of the UNet and the VAE (what A1111's "Tiling"
option does to the whole model), and runs the same two-pass A1111 hires fix with
k-diffusion's Euler sampler as reference.safetensors' run.* tensors, except that the latent
is upscaled as a tile: hiresfix pads it circularly by p cells per side (the least p >= 4
with p * new / old whole), upscales the padded latent bilinearly, and crops the padding
(p * new / old cells) off again, so the hires pass has no seam either.  Writes:
  seamless.safetensors   run.latent1, run.latent2, run.image_u8 of the circular-padded run
Deterministic, CPU, float32, offline.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as base  # noqa: E402  (sets up the offline environment)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402


def make_circular(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "circular"
            # nn.Conv2d keeps the padding circular mode applies in this field.
            m._reversed_padding_repeated_twice = [p for p in reversed(m.padding) for _ in range(2)]
            n += 1
    return n


def wrapped_bilinear(lat: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear upscale of a tile: circular context, upscaled, context cropped."""
    def pad(old: int, new: int) -> int:
        return next((p for p in range(min(4, old), old) if p * new % old == 0), old)
    ph, pw = pad(lat.shape[2], h), pad(lat.shape[3], w)
    padded = F.pad(lat, (pw, pw, ph, ph), mode="circular")
    oh, ow = ph * h // lat.shape[2], pw * w // lat.shape[3]
    up = F.interpolate(padded, size=(h + 2 * oh, w + 2 * ow), mode="bilinear", antialias=False)
    return up[:, :, oh : oh + h, ow : ow + w]


def edge_ratio(image: torch.Tensor) -> float:
    """Mean |first - last| column and row difference over the mean neighbour difference."""
    edge = ((image[..., 0] - image[..., -1]).abs().mean() + (image[..., 0, :] - image[..., -1, :]).abs().mean()) / 2
    inner = ((image[..., 1:] - image[..., :-1]).abs().mean() + (image[..., 1:, :] - image[..., :-1, :]).abs().mean()) / 2
    return (edge / inner).item()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/sd1-tiny")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    ddir = os.path.join(args.out, "diffusers")
    tok = CLIPTokenizer.from_pretrained(os.path.join(ddir, "tokenizer"), local_files_only=True)
    te = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(ddir, "unet"), local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(ddir, "vae"), local_files_only=True).eval()
    n = make_circular(unet) + make_circular(vae)
    ckpt = load_file(os.path.join(args.out, "sd1-tiny.safetensors"))
    text_p = te(input_ids=base.tokenize(tok, base.PROMPT)).last_hidden_state
    text_n = te(input_ids=base.tokenize(tok, base.NEGATIVE)).last_hidden_state
    model_wrap = base.UNetEpsDenoiser(unet, ckpt["alphas_cumprod"], quantize=False)
    size = {"width1": base.WIDTH1, "height1": base.HEIGHT1, "width2": base.WIDTH2, "height2": base.HEIGHT2}
    conds = (text_p, text_n)
    run = base.hires_run(model_wrap, base.CFGDenoiser(model_wrap), conds, conds, size, base.SCALING_FACTOR, vae,
                         upscale=wrapped_bilinear)
    out = {k: run[k].contiguous() for k in ("lat1", "lat2", "image_u8")}
    refs = {"run.latent1": out["lat1"], "run.latent2": out["lat2"], "run.image_u8": out["image_u8"]}
    path = os.path.join(args.out, "seamless.safetensors")
    save_file(refs, path, metadata={
        "generator": "scripts/make_seamless_reference.py",
        "what": f"reference.safetensors' hires run with padding_mode='circular' on all {n} Conv2d of UNet and VAE",
    })
    print(f"edge/neighbour difference ratio of the image: {edge_ratio(run['image']):.3f}")
    print(f"{n} convolutions circular; run.latent2 mean/std {refs['run.latent2'].mean():.4f}/"
          f"{refs['run.latent2'].std():.4f}; wrote {path}")


if __name__ == "__main__":
    main()
