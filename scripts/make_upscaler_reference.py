#!/usr/bin/env python3
"""Record reference outputs for hiresfix's upscaler plugins.

    python3 scripts/make_upscaler_reference.py [--out tests/data/upscalers]

Writes, under --out:
  reference.safetensors   the inputs and every expected output (float32)
  reference.json          settings and a description of every tensor

Latent modes are torch.nn.functional.interpolate with AUTOMATIC1111's arguments
(modules/shared.py latent_upscale_modes, size= and align_corners left at default) plus
ComfyUI's "area"; bislerp is this file's own transcription of ComfyUI's comfy/utils.py
bislerp.  The pixel modes run through a fake VAE (decode: nearest x2 of the first three
channels plus a +-0.1 checkerboard; encode: 2x2 average pool plus the channel mean as a
fourth channel); what is recorded is the image the upscaler hands to encode: PIL
Image.resize on mode "F" (float32) per channel, LANCZOS or NEAREST, clamped to [-1, 1] like
A1111's 8-bit images.

Runs on CPU, offline, deterministic.  Needs torch==2.11.0, pillow, numpy, safetensors.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

SEED = 20240229
LATENT_SHAPE = (1, 4, 13, 17)  # odd sizes on purpose
TARGETS = [(26, 34), (20, 25), (9, 11)]  # x2, non-integer up, non-integer down
# Pixel modes also get an even latent at x1.5 (as 512 -> 768 px): there PIL's nearest settles
# ties differently from torch's nearest-exact.
EVEN_SHAPE, EVEN_TARGET = (1, 4, 16, 24), (24, 36)
FAKE_VAE_FACTOR = 2

# id -> (A1111 / ComfyUI name, F.interpolate keyword arguments)
INTERPOLATE_MODES = {
    "latent": ("Latent", dict(mode="bilinear", antialias=False)),
    "latent-antialiased": ("Latent (antialiased)", dict(mode="bilinear", antialias=True)),
    "latent-bicubic": ("Latent (bicubic)", dict(mode="bicubic", antialias=False)),
    "latent-bicubic-antialiased": ("Latent (bicubic antialiased)", dict(mode="bicubic", antialias=True)),
    "latent-nearest": ("Latent (nearest)", dict(mode="nearest")),
    "latent-nearest-exact": ("Latent (nearest-exact)", dict(mode="nearest-exact")),
    "latent-area": ("Latent (area)", dict(mode="area")),
}

PIXEL_MODES = {
    "pixel-lanczos": ("Lanczos", Image.Resampling.LANCZOS),
    "pixel-nearest": ("Nearest", Image.Resampling.NEAREST),
}


# --- bislerp: ComfyUI's definition, transcribed -------------------------------------------


def bilinear_taps(old: int, new: int):
    """Left/right source index and right weight per output cell, as bilinear places them."""

    def along(ramp):
        return F.interpolate(ramp.reshape(1, 1, 1, old), size=(1, new), mode="bilinear").reshape(new)

    ramp = torch.arange(old, dtype=torch.float32)
    position = along(ramp)
    ratio = position - position.floor()
    right = along((ramp + 1).clamp(max=old - 1))
    return position.to(torch.int64), right.to(torch.int64), ratio


def slerp(a, b, t):
    """Rows a, b ([..., C]) by t ([..., 1]); near-parallel keeps a, near-opposite lerps."""
    s = 1.0 - t
    a_norm = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    b_norm = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    a_unit = torch.where(a_norm != 0, a / a_norm, 0.0)
    b_unit = torch.where(b_norm != 0, b / b_norm, 0.0)
    dot = (a_unit * b_unit).sum(-1, keepdim=True)
    omega = dot.acos()
    sin_omega = omega.sin()
    direction = (s * omega).sin() / sin_omega * a_unit + (t * omega).sin() / sin_omega * b_unit
    out = direction * (a_norm * s + b_norm * t)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * s + b * t, out)


def bislerp(x, height, width):
    dtype = x.dtype
    x = x.float()
    for dim, size in ((3, width), (2, height)):
        lo, hi, ratio = bilinear_taps(x.shape[dim], size)
        shape = [1, 1, 1, 1]
        shape[dim - 1] = size  # the axis' place once channels are last
        a = x.index_select(dim, lo).movedim(1, 3).contiguous()
        b = x.index_select(dim, hi).movedim(1, 3).contiguous()
        x = slerp(a, b, ratio.reshape(shape)).movedim(3, 1)
    return x.contiguous().to(dtype)


# --- pixel modes ---------------------------------------------------------------------------


def fake_decode(latent):
    """Nearest x2 of the first three channels plus a +-0.1 checkerboard, so neighbouring pixels
    differ (a nearest resize that picks the wrong one of two shows)."""
    rgb = latent[:, :3].repeat_interleave(FAKE_VAE_FACTOR, 2).repeat_interleave(FAKE_VAE_FACTOR, 3)
    h, w = rgb.shape[2:]
    parity = (torch.arange(h).reshape(-1, 1) + torch.arange(w).reshape(1, -1)) % 2
    return rgb + (0.1 - 0.2 * parity).to(rgb.dtype)


def pil_resize(image, height, width, resample):
    """[B, C, H, W] float32 -> PIL mode "F" resize of every channel."""
    out = np.empty(image.shape[:2] + (height, width), dtype=np.float32)
    for b, c in np.ndindex(*image.shape[:2]):
        plane = Image.fromarray(image[b, c].numpy().astype(np.float32), mode="F")
        out[b, c] = np.asarray(plane.resize((width, height), resample=resample), dtype=np.float32)
    out = torch.from_numpy(out)
    assert out.abs().max() < 1.0, "the clamp would hide the resize; use smaller inputs"
    return out.clamp(-1.0, 1.0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests/data/upscalers"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)
    latent = torch.randn(LATENT_SHAPE)
    # Within [-0.5, 0.5] (plus the fake decode's +-0.1) so Lanczos ringing stays inside [-1, 1].
    pixel_latent = torch.rand(LATENT_SHAPE) - 0.5
    pixel_latent_even = torch.rand(EVEN_SHAPE) - 0.5

    tensors = {"latent": latent, "pixel_latent": pixel_latent, "pixel_latent_even": pixel_latent_even}
    cases = []
    for h, w in TARGETS:
        for uid, (name, kwargs) in INTERPOLATE_MODES.items():
            key = f"{uid}/{h}x{w}"
            tensors[key] = F.interpolate(latent, size=(h, w), **kwargs)
            cases.append(dict(upscaler=uid, name=name, height=h, width=w, tensor=key, input="latent",
                              made_by=f"F.interpolate(latent, size=({h}, {w}), {kwargs})"))
        key = f"latent-bislerp/{h}x{w}"
        tensors[key] = bislerp(latent, h, w)
        cases.append(dict(upscaler="latent-bislerp", name="Latent (bislerp)", height=h, width=w,
                          tensor=key, input="latent", made_by="bislerp() in this script (ComfyUI's definition)"))

    pixel_cases = [("pixel_latent", t) for t in TARGETS] + [("pixel_latent_even", EVEN_TARGET)]
    for source, (h, w) in pixel_cases:
        image = fake_decode(tensors[source])
        ph, pw = h * FAKE_VAE_FACTOR, w * FAKE_VAE_FACTOR
        for uid, (name, resample) in PIXEL_MODES.items():
            key = f"{uid}/{h}x{w}"
            tensors[key] = pil_resize(image, ph, pw, resample)
            cases.append(dict(upscaler=uid, name=name, height=h, width=w, tensor=key, input=source,
                              made_by=f"PIL {Image.__version__} Image.resize(({pw}, {ph}), {resample.name}) on mode F, clamp [-1, 1]",
                              records="the image handed to VAE encode"))

    tensors = {k: v.contiguous().float() for k, v in tensors.items()}
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))
    meta = dict(
        torch=torch.__version__,
        pillow=Image.__version__,
        seed=SEED,
        latent=dict(shape=list(LATENT_SHAPE), made_by="torch.manual_seed(seed); torch.randn(shape)"),
        pixel_latent=dict(shape=list(LATENT_SHAPE), made_by="then torch.rand(shape) - 0.5"),
        pixel_latent_even=dict(shape=list(EVEN_SHAPE), made_by="then torch.rand(shape) - 0.5"),
        fake_vae=dict(factor=FAKE_VAE_FACTOR,
                      decode="first 3 channels, nearest x2 (repeat_interleave on H and W), plus 0.1 where x + y is even and -0.1 where odd",
                      encode="2x2 average pool, plus the mean of the 3 channels as a 4th"),
        cases=cases,
    )
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"wrote {len(tensors)} tensors to {args.out}")


if __name__ == "__main__":
    main()
