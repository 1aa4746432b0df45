#!/usr/bin/env python3
"""Build a tiny random SDXL refiner beside tests/data/sdxl-tiny and record a diffusers
base -> refiner hires-fix reference.

    python3 scripts/make_refiner_reference.py [--data tests/data]

Writes, under --data/sdxl-refiner-tiny/:
  diffusers/                     the same refiner as a diffusers StableDiffusionXLImg2ImgPipeline folder
                                 (fp16, requires_aesthetics_score, no text_encoder/tokenizer): its
                                 own model_index.json, scheduler/ and unet/; text_encoder_2,
                                 tokenizer_2 and vae are relative symlinks to sdxl-tiny's
  sdxl-refiner-tiny.safetensors  one SGM/A1111 refiner checkpoint (fp16): `model.diffusion_model.`
                                 (with `label_emb`), `first_stage_model.` (sdxl-tiny's VAE),
                                 `conditioner.embedders.0.model.` (sdxl-tiny's bigG, OpenCLIP
                                 layout) -- OpenCLIP-bigG only, no CLIP-L, as the real refiner
  reference.safetensors          CPU fp32 reference tensors
  reference.json                 settings, the switch step, and a description of every tensor
  README.md

The refiner UNet is laid out as the real one (sd_xl_refiner.yaml) in miniature: four levels,
attention at the middle two only, context = bigG's width (16; 1280 in the real model), vector
= pooled bigG text + 5 embedded ids (original h, w, crop top, left, aesthetic score):
16 + 5 * 32 = 176 (1280 + 5 * 256 = 2560).

The reference is diffusers' own base -> refiner hand-off (the "ensemble of expert denoisers"
of the diffusers SDXL docs), then a hires pass on the base:
  pass 1  StableDiffusionXLPipeline(sdxl-tiny, denoising_end=0.8, output_type="latent"), then
          StableDiffusionXLImg2ImgPipeline(refiner, requires_aesthetics_score=True,
          denoising_start=0.8) on that latent -- both over the SAME sigmas (k-diffusion's
          DiscreteEpsDDPMDenoiser.get_sigmas(STEPS1) on A1111's alphas_cumprod, passed as
          `sigmas=`), Euler, CFG 5, latents = A1111's seeded noise (manual_seed(SEED); randn).
          Aesthetic scores are the pipelines' (and A1111's) defaults 6.0 / 2.5.
  pass 2  bilinear latent upscale (no antialias), + A1111's pass-2 noise * sigmas2[0], then
          StableDiffusionXLImg2ImgPipeline(sdxl-tiny components, requires_aesthetics_score=False)
          over sigmas2 = the last STEPS2+1 of get_sigmas(int(STEPS2/DENOISE)) from that latent
          (denoising_start=1e-6: every one of sigmas2 runs and no noise is added by diffusers).
The diffusers switch rule (timesteps t >= 200 on the base, t < 200 on the refiner) and A1111's
(`apply_refiner`: the refiner once (999 - nearest discrete t) / 1000 >= 0.8) are checked to
pick the same step for these sigmas.  Prompts are short and unweighted (diffusers has no
A1111 emphasis or chunking) and the negative is not empty (no zeroing question).

Offline and deterministic (CPU, fp32).  Needs torch, diffusers, transformers, k-diffusion,
safetensors, and the committed tests/data/sdxl-tiny.
"""

from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (sets the offline environment first)
import make_family_reference as fam  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import k_diffusion.external  # noqa: E402
from diffusers import (  # noqa: E402
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from safetensors.torch import load_file, save_file  # noqa: E402

PROMPT = "a red lighthouse on a rocky coast, stormy sky"
NEGATIVE = "blurry, watermark"
SEED = sd1.SEED
CFG = 5.0
STEPS1 = 10
STEPS2 = 4
DENOISE = 0.5
SWITCH_AT = 0.8
WIDTH1, HEIGHT1 = 48, 32
WIDTH2, HEIGHT2 = 96, 64
F_LAT = 2  # VAE factor of the tiny models
REFINER_SEED = 28
TIME_DIM = 32
POOLED = 16
AESTHETIC, NEGATIVE_AESTHETIC = 6.0, 2.5  # A1111 sdxl_refiner_high/low_aesthetic_score, diffusers defaults
REFINER_G_P = "conditioner.embedders.0.model."


def build_refiner_unet():
    torch.manual_seed(REFINER_SEED)
    unet = sd1.tiny_unet(
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1, 1),
        attention_head_dim=(1, 1, 1, 1),  # heads per level: width / 64
        cross_attention_dim=POOLED,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=POOLED + 5 * TIME_DIM,
    )
    fam.randomize_fp16_(unet)
    return unet


def a1111_alphas_cumprod() -> torch.Tensor:
    betas = (torch.linspace(sd1.BETA_START**0.5, sd1.BETA_END**0.5, sd1.NUM_TRAIN_T, dtype=torch.float64) ** 2).numpy()
    return torch.asarray(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


def scheduler(alphas_cumprod: torch.Tensor) -> EulerDiscreteScheduler:
    # "linspace" only makes init_noise_sigma = sigmas[0] (the latents given are A1111's unit
    # noise); the sigmas themselves are passed explicitly.  Its sigma -> t table is A1111's.
    s = EulerDiscreteScheduler(**sd1.SCHEDULE_KWARGS, prediction_type="epsilon", timestep_spacing="linspace")
    s.alphas_cumprod = alphas_cumprod.clone()
    return s


def a1111_switch_index(sigmas: torch.Tensor, table: torch.Tensor) -> int:
    """The first step whose sigma A1111's apply_refiner hands to the refiner."""
    for i, s in enumerate(sigmas[:-1]):
        t = int(torch.argmin(torch.abs(table - s)))
        if (999 - t) / 1000 >= SWITCH_AT:
            return i
    return len(sigmas) - 1


SHARED = ("text_encoder_2", "tokenizer_2", "vae")  # symlinked to sdxl-tiny's


def save_diffusers(out: str, base, unet_r) -> None:
    """The refiner as diffusers saves it (StableDiffusionXLImg2ImgPipeline, fp16), its shared
    components replaced by relative symlinks to sdxl-tiny's folders; reloaded and checked."""
    ddir = os.path.join(out, "diffusers")
    if os.path.isdir(ddir):
        shutil.rmtree(ddir)
    comps = dict(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet_r, scheduler=base.scheduler,
    )
    fam.save_fp16_pipeline(
        StableDiffusionXLImg2ImgPipeline, ddir, comps, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    )
    for sub in SHARED:
        shutil.rmtree(os.path.join(ddir, sub))
        os.symlink(os.path.join("..", "..", "sdxl-tiny", "diffusers", sub), os.path.join(ddir, sub))
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(ddir, local_files_only=True, dtype=torch.float32)
    fam.assert_same_values("refiner unet reload", pipe.unet.state_dict(), unet_r.state_dict())
    if not pipe.config.requires_aesthetics_score or pipe.text_encoder is not None:
        raise AssertionError("the refiner folder should require aesthetic scores and hold no CLIP-L")


@torch.no_grad()
def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--data", "tests/data")
    base_dir = os.path.join(args.data, "sdxl-tiny")
    out = os.path.join(args.data, "sdxl-refiner-tiny")
    os.makedirs(out, exist_ok=True)

    base = StableDiffusionXLPipeline.from_pretrained(os.path.join(base_dir, "diffusers"), local_files_only=True, dtype=torch.float32)
    base_ckpt = load_file(os.path.join(base_dir, "sdxl-tiny.safetensors"))
    unet_r = build_refiner_unet()
    te2, vae = base.text_encoder_2, base.vae

    # the single file: refiner UNet, sdxl-tiny's VAE, sdxl-tiny's bigG as embedders.0
    ckpt = fam.unet_vae_ldm(unet_r, vae, sdxl=True)
    ckpt.update(
        fam.openclip_state(
            te2.state_dict(), te2.config.num_hidden_layers, REFINER_G_P,
            te2.text_projection.weight.detach().t(), base_ckpt[fam.SDXL_CLIP_G_P + "logit_scale"].float(),
        )
    )
    for k, v in base_ckpt.items():  # the VAE and bigG are byte-identical to the base's
        if k.startswith(sd1.VAE_P) and not torch.equal(ckpt[k], v):
            raise AssertionError(f"VAE tensor {k} differs from sdxl-tiny's")
        if k.startswith(fam.SDXL_CLIP_G_P) and not torch.equal(ckpt[REFINER_G_P + k[len(fam.SDXL_CLIP_G_P):]], v):
            raise AssertionError(f"bigG tensor {k} differs from sdxl-tiny's")
    fam.verify_unet_vae(ckpt, unet_r, vae)
    path = os.path.join(out, "sdxl-refiner-tiny.safetensors")
    save_file(ckpt, path)
    save_diffusers(out, base, unet_r)

    ac = a1111_alphas_cumprod()
    refiner = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=te2, tokenizer=None, tokenizer_2=base.tokenizer_2,
        unet=unet_r, scheduler=scheduler(ac), requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    base.scheduler = scheduler(ac)
    base_i2i = StableDiffusionXLImg2ImgPipeline(**{**base.components, "scheduler": scheduler(ac)}, requires_aesthetics_score=False, add_watermarker=False)
    for p in (base, refiner, base_i2i):
        p.set_progress_bar_config(disable=True)

    wrap = k_diffusion.external.DiscreteEpsDDPMDenoiser(base.unet, ac, quantize=False)
    sig1 = wrap.get_sigmas(STEPS1)
    sig2 = wrap.get_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1):]
    ts = base.scheduler
    ts.set_timesteps(sigmas=sig1.tolist())
    n_base = sum(1 for t in ts.timesteps if t >= round(1000 - SWITCH_AT * 1000))
    n_a1111 = a1111_switch_index(sig1, wrap.sigmas)
    if n_base != n_a1111 or not 0 < n_base < STEPS1:
        raise AssertionError(f"diffusers switches after {n_base} steps, A1111 after {n_a1111}: pick other steps")
    print(f"pass 1: {n_base} steps on the base, {STEPS1 - n_base} on the refiner; timesteps {ts.timesteps.tolist()}")

    torch.manual_seed(SEED)
    noise1 = torch.randn([4, HEIGHT1 // F_LAT, WIDTH1 // F_LAT]).unsqueeze(0)
    torch.manual_seed(SEED)
    noise2 = torch.randn([4, HEIGHT2 // F_LAT, WIDTH2 // F_LAT]).unsqueeze(0)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=CFG, output_type="latent")

    lat_base = base(**common, height=HEIGHT1, width=WIDTH1, sigmas=sig1.tolist(), latents=noise1, denoising_end=SWITCH_AT).images
    lat1 = refiner(**common, image=lat_base, sigmas=sig1.tolist(), denoising_start=SWITCH_AT).images
    up = F.interpolate(lat1, size=(HEIGHT2 // F_LAT, WIDTH2 // F_LAT), mode="bilinear", antialias=False)
    lat2 = base_i2i(**common, image=up + noise2 * sig2[0], sigmas=sig2.tolist(), denoising_start=1e-6).images

    # the refiner's conditioning as diffusers makes it (checks our conditioner on its own)
    emb, neg_emb, pooled, neg_pooled = refiner.encode_prompt(PROMPT, negative_prompt=NEGATIVE, device="cpu", do_classifier_free_guidance=True)
    ids = torch.tensor([[HEIGHT1, WIDTH1, 0, 0, AESTHETIC], [HEIGHT1, WIDTH1, 0, 0, NEGATIVE_AESTHETIC]])
    time_emb = unet_r.add_time_proj(ids.flatten()).reshape(2, -1)
    y = torch.cat([torch.cat([pooled, neg_pooled]), time_emb], dim=-1)

    rec = sd1.Recorder()
    rec.put("refiner.context", torch.cat([emb, neg_emb]), f"[2,77,16] refiner.encode_prompt: PROMPT's then NEGATIVE's bigG hidden_states[-2]")
    rec.put("refiner.vector", y, f"[2,176] cat(pooled bigG text_embeds, add_time_proj([h={HEIGHT1}, w={WIDTH1}, 0, 0, aesthetic])), "
            f"aesthetic {AESTHETIC} for PROMPT, {NEGATIVE_AESTHETIC} for NEGATIVE")
    rec.put("run.sigmas1", sig1, f"get_sigmas({STEPS1}) of DiscreteEpsDDPMDenoiser over A1111's alphas_cumprod (trailing 0)")
    rec.put("run.sigmas2", sig2, f"last {STEPS2 + 1} of get_sigmas(int({STEPS2}/{DENOISE}))")
    rec.put("run.noise1", noise1, f"manual_seed({SEED}); randn([4,{HEIGHT1 // F_LAT},{WIDTH1 // F_LAT}]).unsqueeze(0)")
    rec.put("run.noise2", noise2, f"manual_seed({SEED}); randn([4,{HEIGHT2 // F_LAT},{WIDTH2 // F_LAT}]).unsqueeze(0)")
    rec.put("run.latent1_base", lat_base, f"the base's latent after its {n_base} steps (denoising_end={SWITCH_AT})")
    rec.put("run.latent1", lat1, f"pass-1 result: the refiner's {STEPS1 - n_base} steps from it (denoising_start={SWITCH_AT})")
    rec.put("run.upscaled", up, "bilinear (no antialias) upscale of run.latent1")
    rec.put("run.latent2", lat2, "pass-2 result: the base's img2img over sigmas2 from upscaled + noise2 * sigmas2[0]")
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))

    meta = {
        "generator": "scripts/make_refiner_reference.py",
        "versions": fam.versions(),
        "settings": {
            "prompt": PROMPT, "negative_prompt": NEGATIVE, "seed": SEED, "cfg": CFG,
            "width1": WIDTH1, "height1": HEIGHT1, "width2": WIDTH2, "height2": HEIGHT2,
            "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE, "sampler": "euler", "schedule": "normal",
            "upscaler": "latent (bilinear, no antialias)", "refiner_switch_at": SWITCH_AT,
            "base_steps": n_base, "refiner_steps": STEPS1 - n_base,
            "aesthetic_score": AESTHETIC, "negative_aesthetic_score": NEGATIVE_AESTHETIC,
            "refiner_model_seed": REFINER_SEED,
        },
        "tensors": sd1.tensors_json(rec),
    }
    sd1.write_json(os.path.join(out, "reference.json"), meta)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(
            "# sdxl-refiner-tiny: tiny random SDXL refiner + base->refiner reference\n\n"
            "- `sdxl-refiner-tiny.safetensors` — SGM/A1111 refiner layout, fp16: OpenCLIP-bigG only "
            "(`conditioner.embedders.0.model.`, the same weights as sdxl-tiny's bigG), sdxl-tiny's VAE, a random "
            "four-level UNet (attention at levels 1-2, context 16, `label_emb` over 16 + 5x32 = 176: pooled text, "
            "original size, crop, aesthetic score).\n"
            "- `diffusers/` — the same refiner as a diffusers `StableDiffusionXLImg2ImgPipeline` folder (fp16, "
            "`requires_aesthetics_score`, no `text_encoder`): its own `unet/` and `scheduler/`; `text_encoder_2`, "
            "`tokenizer_2` and `vae` are relative symlinks to `../../sdxl-tiny/diffusers/`.\n"
            "- `reference.safetensors` + `reference.json` — diffusers base (denoising_end 0.8) -> refiner "
            "(denoising_start 0.8) over the same sigmas, Euler, 48x32, then a latent hires pass on the base to 96x64.\n"
            "- Regenerate (offline, deterministic): `python3 scripts/make_refiner_reference.py`\n"
        )
    print(f"wrote {path} ({os.path.getsize(path)} bytes) and references; |latent2| max {lat2.abs().max():.4f}")


if __name__ == "__main__":
    main()
