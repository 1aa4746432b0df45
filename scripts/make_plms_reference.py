#!/usr/bin/env python3
"""Record A1111's PLMS on the tiny SD1 model, for tests/integration/sampler_parity.rs.

    python3 scripts/make_plms_reference.py [--out tests/data/plms]

A transcription of AUTOMATIC1111 `modules/sd_samplers_timesteps_impl.py` (`plms`) driven as
`modules/sd_samplers_timesteps.py` drives it: `CompVisSampler.get_timesteps` (every
`1000 // steps`-th timestep + 1), `sample` (txt2img: the sampler starts from the unscaled
noise) and `sample_img2img` (a hires pass: `setup_img2img_steps` with its steps given,
`timesteps[:t_enc]`, the latent noised to `timesteps[t_enc]`), around `CFGDenoiserTimesteps`
(CFG on the UNet's epsilon, integer timesteps, the VP latent fed to the UNet as it is). The
UNet is the tiny SD1 diffusers UNet of tests/data/sd1-tiny, the conditioning its recorded
text.prompt / text.negative, alphas_cumprod the checkpoint's float32 buffer; the noise is
A1111's CPU `randn` after `manual_seed(SEED)` at each pass's latent shape. Writes
reference.safetensors (float32 latents) and reference.json.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "tests", "data", "sd1-tiny")
SEED = 1234
CFG = 5.0
LATENT = 16  # the 32 px pass 1 at the tiny VAE's factor 2
TXT2IMG_STEPS = [10, 8]
HIRES = {"steps1": 10, "steps2": 4, "denoise": 0.5, "scale": 2}


def get_timesteps(steps: int) -> torch.Tensor:
    """CompVisSampler.get_timesteps (no discard)."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


class CFGTimesteps:
    """CFGDenoiserTimesteps around CompVisTimestepsDenoiser: CFG on epsilon."""

    def __init__(self, unet, cond, uncond):
        self.unet, self.cond, self.uncond = unet, cond, uncond

    def __call__(self, x, t):
        x_in = torch.cat([x, x])
        t_in = torch.cat([t, t])
        ctx = torch.cat([self.cond, self.uncond])
        eps_cond, eps_uncond = self.unet(x_in, t_in, encoder_hidden_states=ctx).sample.chunk(2)
        return eps_uncond + (eps_cond - eps_uncond) * CFG


@torch.no_grad()
def plms(model, x, timesteps, alphas_cumprod):
    """sd_samplers_timesteps_impl.plms, transcribed."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]])
    old_eps = []

    def get_x_prev_and_pred_x0(e_t, index):
        a_t = alphas[index].item() * s_in
        a_prev = alphas_prev[index].item() * s_in
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_in
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1. - a_prev).sqrt() * e_t
        x_prev = a_prev.sqrt() * pred_x0 + dir_xt
        return x_prev, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts)
        if len(old_eps) == 0:
            x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = model(x_prev, t_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
    return x


def noise(side: int) -> torch.Tensor:
    torch.manual_seed(SEED)
    return torch.randn([4, side, side]).unsqueeze(0)


@torch.no_grad()
def sample(model, steps, alphas_cumprod):
    """CompVisSampler.sample: txt2img from the unscaled noise."""
    return plms(model, noise(LATENT), get_timesteps(steps), alphas_cumprod)


@torch.no_grad()
def sample_img2img(model, x, steps, denoise, alphas_cumprod):
    """CompVisSampler.sample_img2img with setup_img2img_steps(p, steps) (steps given)."""
    total = int(steps / min(denoise, 0.999)) if denoise > 0 else 0
    t_enc = steps - 1
    timesteps = get_timesteps(total)
    a = alphas_cumprod[timesteps[t_enc]]
    xi = x * torch.sqrt(a) + noise(x.shape[-1]) * torch.sqrt(1 - a)
    return plms(model, xi, timesteps[:t_enc], alphas_cumprod)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "plms"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(TINY, "diffusers", "unet")).eval()
    refs = load_file(os.path.join(TINY, "reference.safetensors"))
    alphas_cumprod = load_file(os.path.join(TINY, "sd1-tiny.safetensors"))["alphas_cumprod"]
    model = CFGTimesteps(unet, refs["text.prompt"], refs["text.negative"])
    out = {}
    for steps in TXT2IMG_STEPS:
        out[f"txt2img{steps}"] = sample(model, steps, alphas_cumprod)
    first = sample(model, HIRES["steps1"], alphas_cumprod)
    side = LATENT * HIRES["scale"]
    up = F.interpolate(first, size=(side, side), mode="bilinear", antialias=False)
    out["hires.pass1"] = first
    out["hires.pass2"] = sample_img2img(model, up, HIRES["steps2"], HIRES["denoise"], alphas_cumprod)
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "reference.safetensors"))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump({
            "generator": "scripts/make_plms_reference.py",
            "reference": "A1111 sd_samplers_timesteps_impl.plms with CompVisSampler.sample / sample_img2img, transcribed",
            "torch": torch.__version__,
            "settings": {
                "seed": SEED, "cfg": CFG, "width": 32, "height": 32, "prompt": "text.prompt of tests/data/sd1-tiny",
                "negative": "text.negative of tests/data/sd1-tiny", "txt2img_steps": TXT2IMG_STEPS, "hires": HIRES,
                "upscaler": "latent (bilinear, no antialias)",
            },
            "tensors": {k: list(v.shape) for k, v in out.items()},
        }, f, indent=1)
        f.write("\n")
    for k, v in out.items():
        print(k, tuple(v.shape), f"{v.abs().max():.4f}")


if __name__ == "__main__":
    main()
