#!/usr/bin/env python3
"""Record a 2-pass run that hands an SD 1.x image over to SDXL through pixels.

    python3 scripts/make_cross_family_reference.py [--out tests/data/cross_family]

Writes run.safetensors (float32 tensors) and run.json under --out. The run is a ComfyUI-style
"SD 1.5 composes, SDXL refines" hires fix, done by hand with the reference libraries:

  pass 1  tests/data/sd1-tiny (diffusers folder), txt2img W1 x H1, k-diffusion Euler over
          A1111's CompVisDenoiser (make_sd1_reference.UNetEpsDenoiser, quantize=False), CFG,
          noise torch.manual_seed(SEED); randn  (as make_sd1_reference.hires_run)
  hand-off decode with sd1-tiny's VAE (latent / 0.18215), clamp to [-1, 1], PIL Image.resize
          LANCZOS on mode "F" per channel to W2 x H2, clamp to [-1, 1], encode with
          sdxl-tiny's VAE (posterior mean x 0.13025)  -- A1111's "Lanczos" upscaler, with the
          decode by the earlier pass's model as A1111 decodes pass 1 before loading the hires
          checkpoint (processing.py sample -> decode_latent_batch -> reload_model_weights)
  pass 2  tests/data/sdxl-tiny, img2img over the last STEPS2 + 1 of int(STEPS2 / DENOISE)
          sigmas of its own table, noise manual_seed(SEED) at W2 x H2, A1111's SDXL
          conditioning: cat(CLIP-L, bigG) penultimate hidden states, bigG pooled, size
          embeddings of (H2, W2), crop (0, 0), target (H2, W2)

Prompt and negative are plain (no emphasis, one chunk), so A1111's emphasis is the identity.
CPU, float32, offline, deterministic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import k_diffusion.sampling  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import make_sd1_reference as sd1  # noqa: E402  (sets the offline environment first)
import make_family_reference as fam  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer  # noqa: E402

SEED = 1234
CFG = 5.0
STEPS1, STEPS2, DENOISE = 6, 4, 0.5
W1, H1, W2, H2 = 32, 32, 64, 64
F_LAT = sd1.VAE_FACTOR
SD1_SCALING, SDXL_SCALING = 0.18215, 0.13025
PROMPT = "a red boat on the sea"
NEGATIVE = "lowres"


def pil_lanczos(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, C, H, W] float32 -> PIL mode "F" LANCZOS resize of every channel."""
    out = np.empty(image.shape[:2] + (height, width), dtype=np.float32)
    for b, c in np.ndindex(*image.shape[:2]):
        plane = Image.fromarray(image[b, c].numpy().astype(np.float32), mode="F")
        out[b, c] = np.asarray(plane.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(out)


def sdxl_cond(te1, te2, tok, text: str, height: int, width: int) -> dict:
    ids_l = sd1.tokenize(tok, text)
    ids_g = ids_l.clone()
    first_eos = int((ids_g[0] == fam.EOS).nonzero()[0])
    ids_g[0, first_eos + 1 :] = fam.OPEN_CLIP_PAD
    z_l = te1(input_ids=ids_l, output_hidden_states=True).hidden_states[-2]
    out_g = te2(input_ids=ids_g, output_hidden_states=True)
    y, time_ids = fam.sdxl_vector(out_g.text_embeds, height, width)
    return {
        "crossattn": torch.cat([z_l, out_g.hidden_states[-2]], dim=2),
        "text_embeds": y[:, : fam.SDXL_POOLED],
        "time_ids": time_ids,
    }


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/cross_family")
    ap.add_argument("--data", default="tests/data")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    def load(family: str, what: str, cls):
        return cls.from_pretrained(os.path.join(args.data, family, "diffusers", what), local_files_only=True, torch_dtype=torch.float32).eval()

    # Pass 1: SD 1.x.
    tok1 = CLIPTokenizer.from_pretrained(os.path.join(args.data, "sd1-tiny/diffusers/tokenizer"), local_files_only=True)
    te = load("sd1-tiny", "text_encoder", CLIPTextModel)
    unet1 = load("sd1-tiny", "unet", UNet2DConditionModel)
    vae1 = load("sd1-tiny", "vae", AutoencoderKL)
    ac1 = load_file(os.path.join(args.data, "sd1-tiny/sd1-tiny.safetensors"))["alphas_cumprod"]
    wrap1 = sd1.UNetEpsDenoiser(unet1, ac1, quantize=False)
    cond1 = te(input_ids=sd1.tokenize(tok1, PROMPT)).last_hidden_state
    uncond1 = te(input_ids=sd1.tokenize(tok1, NEGATIVE)).last_hidden_state
    sig1 = wrap1.get_sigmas(STEPS1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([4, H1 // F_LAT, W1 // F_LAT]).unsqueeze(0)
    extra1 = {"uncond": uncond1, "cond": cond1, "cond_scale": CFG}
    lat1 = k_diffusion.sampling.sample_euler(sd1.CFGDenoiser(wrap1), noise1 * sig1[0], sig1, extra_args=extra1, disable=True)

    # The hand-off through pixels.
    decoded = vae1.decode(lat1 / SD1_SCALING).sample.clamp(-1.0, 1.0)
    resized = pil_lanczos(decoded, H2, W2).clamp(-1.0, 1.0)
    vae2 = load("sdxl-tiny", "vae", AutoencoderKL)
    up = vae2.encode(resized).latent_dist.mean * SDXL_SCALING

    # Pass 2: SDXL img2img.
    tok2 = CLIPTokenizer.from_pretrained(os.path.join(args.data, "sdxl-tiny/diffusers/tokenizer"), local_files_only=True)
    te1 = load("sdxl-tiny", "text_encoder", CLIPTextModel)
    te2 = load("sdxl-tiny", "text_encoder_2", CLIPTextModelWithProjection)
    unet2 = load("sdxl-tiny", "unet", UNet2DConditionModel)
    betas = (torch.linspace(sd1.BETA_START**0.5, sd1.BETA_END**0.5, sd1.NUM_TRAIN_T, dtype=torch.float64) ** 2).numpy()
    ac2 = torch.asarray(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)
    wrap2 = fam.UNetEpsDenoiser(unet2, ac2, quantize=False)
    cond2 = sdxl_cond(te1, te2, tok2, PROMPT, H2, W2)
    uncond2 = sdxl_cond(te1, te2, tok2, NEGATIVE, H2, W2)
    sig2 = wrap2.get_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1) :]
    torch.manual_seed(SEED)
    noise2 = torch.randn([4, H2 // F_LAT, W2 // F_LAT]).unsqueeze(0)
    extra2 = {"cond": cond2, "uncond": uncond2, "cond_scale": CFG}
    lat2 = k_diffusion.sampling.sample_euler(fam.CFGDenoiser(wrap2), up + noise2 * sig2[0], sig2, extra_args=extra2, disable=True)

    tensors = {
        "latent1": lat1, "decoded": decoded, "resized": resized, "upscaled": up, "latent2": lat2,
        "sigmas1": sig1, "sigmas2": sig2,
    }
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, os.path.join(args.out, "run.safetensors"))
    doc = {
        "generator": "scripts/make_cross_family_reference.py",
        "torch": torch.__version__,
        "settings": {
            "seed": SEED, "cfg": CFG, "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "width1": W1, "height1": H1, "width2": W2, "height2": H2, "prompt": PROMPT,
            "negative": NEGATIVE, "sampler": "euler", "schedule": "normal", "upscaler": "Lanczos",
            "pass1": "tests/data/sd1-tiny", "pass2": "tests/data/sdxl-tiny",
        },
        "tensors": {
            "latent1": "pass-1 result (sd1-tiny)",
            "decoded": "sd1-tiny VAE decode of latent1 / 0.18215, clamped to [-1, 1]",
            "resized": "PIL LANCZOS (mode F, per channel) of decoded to W2 x H2, clamped to [-1, 1]",
            "upscaled": "sdxl-tiny VAE encode of resized: posterior mean x 0.13025",
            "latent2": "pass-2 result (sdxl-tiny) from upscaled + noise2 * sigmas2[0]",
            "sigmas1": "sd1-tiny get_sigmas(STEPS1)",
            "sigmas2": "sdxl-tiny: last STEPS2 + 1 of get_sigmas(int(STEPS2 / DENOISE))",
        },
    }
    with open(os.path.join(args.out, "run.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print({k: tuple(v.shape) for k, v in tensors.items()}, "latent2 std", float(lat2.std()))


if __name__ == "__main__":
    main()
