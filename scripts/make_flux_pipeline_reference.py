#!/usr/bin/env python3
"""Build tiny random Flux.1-dev- and schnell-shaped pipelines (diffusers FluxPipeline) and record
reference outputs for the Flux backend (issue 31): text embeddings, VAE decode and a full 2-pass
hires run (FluxPipeline, then the latent upscaled and FluxImg2ImgPipeline).

    python3 scripts/make_flux_pipeline_reference.py [--out tests/data/flux-tiny/pipeline]

Flux.1 dev and schnell ship the same text encoders and autoencoder (CLIP-L, T5-XXL, `ae`): so do
the tiny ones, and they are tests/data/sd3-tiny's CLIP-L, T5 and VAE weights (the files are
copied byte for byte, so git stores them once; ComfyUI's `clip_l.safetensors` and
`t5xxl.safetensors` are shared by SD3 and Flux alike). Run scripts/make_sd3_reference.py first.
The VAE's config is Flux's (scaling 0.3611, shift 0.1159); the CLIP-L file keeps SD3's identity
`text_projection`, which Flux's CLIPTextModel does not read.

The transformers are new: one head of dim 32 (RoPE axes (4, 14, 14): Flux.1's (16, 56, 56)
scaled to the head dim, the rule the backend uses for a Black Forest Labs file of another head
dim), T5's width as joint_attention_dim, CLIP-L's as pooled_projection_dim; dev has the guidance
embedding, schnell none.

Writes, under --out:
  clip_l.safetensors, t5xxl.safetensors, ae.safetensors   the split text encoders and the VAE
                        (transformers layouts; the VAE with LDM / BFL `ae` keys)
  {dev,schnell}/diffusers/            a FluxPipeline folder (fp16 weights; schnell's scheduler
                        as the published one: no dynamic shifting, shift 1)
  {dev,schnell}/flux1-{v}-tiny.safetensors   the transformer as a BFL single file
  dev/flux1-dev-tiny-aio.safetensors  the Forge / ComfyUI all-in-one layout:
                        model.diffusion_model.*, text_encoders.clip_l.transformer.*,
                        text_encoders.t5xxl.transformer.*, vae.* (LDM keys)
  {dev,schnell}/reference.safetensors, reference.json   CPU fp32 references:
    text.prompt / text.pooled   FluxPipeline.encode_prompt(PROMPT, max_sequence_length = 512
                        (dev) / 256 (schnell)): T5's last hidden state, CLIP-L's pooler_output
    vae.latent / vae.decoded    vae.decode(latent / 0.3611 + 0.1159)
    run.*                       pass 1: Euler over FluxPipeline's sigmas (linspace(1, 1/n, n),
                        shifted by exp(calculate_shift(tokens))) at WIDTH1 x HEIGHT1, guidance 3.5
                        (dev), checked against FluxPipeline itself; the latent upscaled
                        bilinearly ×2; pass 2: the last STEPS2 + 1 sigmas of int(STEPS2 /
                        DENOISE) steps at the pass-2 size (its own shift), noised as
                        FluxImg2ImgPipeline does, checked against it.

Everything runs on CPU in float32, offline and deterministically.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (offline environment first)
import make_family_reference as fam  # noqa: E402
import make_flux_reference as fluxref  # noqa: E402  (randomize, diffusers -> BFL names)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxImg2ImgPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift  # noqa: E402

PROMPT = "a photo of a cat"
SEED = 1234
MODEL_SEED = 31
GUIDANCE = 3.5
WIDTH1, HEIGHT1 = 48, 32
WIDTH2, HEIGHT2 = 96, 64
VAE_FACTOR = 2
STEPS1 = 4
STEPS2 = 4
DENOISE = 0.5
SHIFT_FACTOR, SCALING_FACTOR = 0.1159, 0.3611  # Flux's ae
T5_LEN = {"dev": 512, "schnell": 256}
SEED_VAE_LATENT = 2
PREFIX = "model.diffusion_model."
SD3 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "sd3-tiny")
# The published schedulers (black-forest-labs/FLUX.1-{dev,schnell} scheduler_config.json).
SCHEDULER = {
    "dev": dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
                shift=3.0, use_dynamic_shifting=True, num_train_timesteps=1000),
    "schnell": dict(base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15,
                    shift=1.0, use_dynamic_shifting=False, num_train_timesteps=1000),
}


def transformer(variant: str, clip_width: int, t5_width: int) -> FluxTransformer2DModel:
    torch.manual_seed(MODEL_SEED)
    gen = torch.Generator().manual_seed(MODEL_SEED + (0 if variant == "dev" else 1))
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=1, joint_attention_dim=t5_width, pooled_projection_dim=clip_width,
        guidance_embeds=variant == "dev", axes_dims_rope=(4, 14, 14),
    ).eval()
    fluxref.randomize(model, gen)
    return model


def bfl(model: FluxTransformer2DModel) -> dict:
    return fluxref.to_bfl({k: v.detach().clone() for k, v in model.state_dict().items()},
                          model.config.num_layers, model.config.num_single_layers)


def half(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def shift_of(pipe, width: int, height: int) -> float:
    """exp(mu) of FluxPipeline at this size (dynamic shifting), else the scheduler's shift."""
    c = pipe.scheduler.config
    if not c.use_dynamic_shifting:
        return float(c.shift)
    tokens = (height // pipe.vae_scale_factor // 2) * (width // pipe.vae_scale_factor // 2)
    mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    return float(np.exp(mu))


def flux_sigmas(pipe, steps: int, width: int, height: int) -> torch.Tensor:
    """The scheduler's sigmas as FluxPipeline sets them (trailing 0)."""
    c = pipe.scheduler.config
    tokens = (height // pipe.vae_scale_factor // 2) * (width // pipe.vae_scale_factor // 2)
    mu = calculate_shift(tokens, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    s = FlowMatchEulerDiscreteScheduler.from_config(c)
    s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return s.sigmas.clone().float()


@torch.no_grad()
def euler(pipe, x: torch.Tensor, sigmas: torch.Tensor, embeds, pooled, guidance) -> torch.Tensor:
    """Euler on the velocity of the packed latent (FlowMatchEulerDiscreteScheduler.step)."""
    b, c, h, w = x.shape
    packed = FluxPipeline._pack_latents(x, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(embeds.shape[1], 3)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = pipe.transformer(hidden_states=packed, timestep=s.expand(b), guidance=guidance,
                             pooled_projections=pooled, encoder_hidden_states=embeds,
                             txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        packed = packed + (s_next - s) * v
    return FluxPipeline._unpack_latents(packed, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor,
                                        pipe.vae_scale_factor)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def decode(vae, latent: torch.Tensor) -> torch.Tensor:
    return vae.decode(latent / SCALING_FACTOR + SHIFT_FACTOR).sample


@torch.no_grad()
def references(pipe, variant: str, rec: sd1.Recorder) -> dict:
    dev = variant == "dev"
    f = VAE_FACTOR
    t5_len = T5_LEN[variant]
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, device="cpu",
                                           max_sequence_length=t5_len)
    rec.put("text.prompt", embeds, f"encode_prompt({PROMPT!r}): T5's last hidden state [1, {t5_len}, width]")
    rec.put("text.pooled", pooled, "CLIP-L's pooler_output (77 tokens, unprojected) [1, width]")
    ids = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=t5_len, truncation=True,
                           return_tensors="pt").input_ids
    rec.put("text.t5_ids", ids.to(torch.int64), f"tokenizer_2({PROMPT!r}), padded to {t5_len}")

    torch.manual_seed(SEED_VAE_LATENT)
    lat = torch.randn(1, 16, 16, 24)
    rec.put("vae.latent", lat, f"randn latent after manual_seed({SEED_VAE_LATENT})")
    rec.put("vae.decoded", decode(pipe.vae, lat), f"vae.decode(latent / {SCALING_FACTOR} + {SHIFT_FACTOR}).sample, raw")

    guidance = torch.full([1], GUIDANCE) if dev else None
    sig1 = flux_sigmas(pipe, STEPS1, WIDTH1, HEIGHT1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([16, HEIGHT1 // f, WIDTH1 // f]).unsqueeze(0)
    lat1 = euler(pipe, noise1 * sig1[0], sig1, embeds, pooled, guidance)
    packed_noise = FluxPipeline._pack_latents(noise1.clone(), 1, 16, HEIGHT1 // f, WIDTH1 // f)
    via_pipe = pipe(prompt=PROMPT, height=HEIGHT1, width=WIDTH1, num_inference_steps=STEPS1,
                    guidance_scale=GUIDANCE, latents=packed_noise, max_sequence_length=t5_len,
                    output_type="latent").images
    via_pipe = FluxPipeline._unpack_latents(via_pipe, HEIGHT1, WIDTH1, pipe.vae_scale_factor)
    checks = {"pass1_vs_FluxPipeline": max_rel(lat1, via_pipe)}

    up = F.interpolate(lat1, size=(HEIGHT2 // f, WIDTH2 // f), mode="bilinear", antialias=False)
    total = int(STEPS2 / DENOISE)
    sig2 = flux_sigmas(pipe, total, WIDTH2, HEIGHT2)[-(STEPS2 + 1):]
    torch.manual_seed(SEED)
    noise2 = torch.randn([16, HEIGHT2 // f, WIDTH2 // f]).unsqueeze(0)
    lat2 = euler(pipe, sig2[0] * noise2 + (1 - sig2[0]) * up, sig2, embeds, pooled, guidance)
    i2i = FluxImg2ImgPipeline(**{k: getattr(pipe, k) for k in pipe.components})
    i2i.set_progress_bar_config(disable=True)
    via_i2i = i2i(prompt=PROMPT, image=up.clone(), strength=DENOISE, height=HEIGHT2, width=WIDTH2,
                  num_inference_steps=total, guidance_scale=GUIDANCE, max_sequence_length=t5_len,
                  generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    via_i2i = FluxPipeline._unpack_latents(via_i2i, HEIGHT2, WIDTH2, pipe.vae_scale_factor)
    checks["pass2_vs_FluxImg2ImgPipeline"] = max_rel(lat2, via_i2i)
    image = torch.clamp((decode(pipe.vae, lat2) + 1) / 2, 0, 1)
    rec.put("run.shift1", torch.tensor([shift_of(pipe, WIDTH1, HEIGHT1)], dtype=torch.float64),
            "exp(calculate_shift(pass-1 tokens)) (dev); the scheduler's shift (schnell)")
    rec.put("run.shift2", torch.tensor([shift_of(pipe, WIDTH2, HEIGHT2)], dtype=torch.float64),
            "the same at the pass-2 size")
    rec.put("run.sigmas1", sig1, f"FluxPipeline's sigmas for {STEPS1} steps at {WIDTH1}x{HEIGHT1}")
    rec.put("run.sigmas2", sig2, f"last {STEPS2 + 1} of FluxImg2ImgPipeline's {total}-step sigmas at {WIDTH2}x{HEIGHT2}")
    rec.put("run.noise1", noise1, f"manual_seed({SEED}); randn([16,{HEIGHT1 // f},{WIDTH1 // f}]).unsqueeze(0)")
    rec.put("run.noise2", noise2, f"manual_seed({SEED}); randn([16,{HEIGHT2 // f},{WIDTH2 // f}]).unsqueeze(0)")
    rec.put("run.latent1", lat1, "pass 1: Euler on the velocity from noise1 (sigma 1)")
    rec.put("run.upscaled", up, "bilinear, align_corners=False, antialias=False")
    rec.put("run.latent2", lat2, "pass 2: Euler from sigmas2[0]*noise2 + (1 - sigmas2[0])*upscaled")
    rec.put("run.image", image, f"clamp((vae.decode(latent2/{SCALING_FACTOR} + {SHIFT_FACTOR}).sample + 1)/2, 0, 1)")
    for k, v in checks.items():
        if v > 1e-5:
            raise AssertionError(f"{variant} {k}: max relative difference {v}")
    return checks


def write_reference(out: str, rec: sd1.Recorder, generator: str, settings, checks: dict) -> None:
    """reference.safetensors and reference.json under `out` (the extra Flux scripts' output)."""
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))
    sd1.write_json(os.path.join(out, "reference.json"), {
        "generator": generator,
        "versions": fam.versions(),
        "settings": settings,
        "checks": checks,
        "tensors": sd1.tensors_json(rec),
    })
    print(json.dumps(checks, indent=1))


def copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)


def build(variant: str, out: str, parts: dict) -> None:
    vdir = os.path.join(out, variant)
    ddir = os.path.join(vdir, "diffusers")
    if os.path.isdir(ddir):
        shutil.rmtree(ddir)
    model = transformer(variant, parts["text_encoder"].config.hidden_size, parts["text_encoder_2"].config.d_model)
    sched = FlowMatchEulerDiscreteScheduler(**SCHEDULER[variant])
    pipe = FluxPipeline(scheduler=sched, transformer=model, **parts)
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(ddir, safe_serialization=True)
    pipe.to(dtype=torch.float32)  # exact: every value was rounded to fp16
    # The text encoders and the VAE as the SD3 tiny files, byte for byte (git stores them once).
    copy(os.path.join(SD3, "diffusers", "text_encoder", "model.safetensors"), os.path.join(ddir, "text_encoder", "model.safetensors"))
    copy(os.path.join(SD3, "diffusers", "text_encoder_3", "model.safetensors"), os.path.join(ddir, "text_encoder_2", "model.safetensors"))
    copy(os.path.join(SD3, "diffusers", "vae", "diffusion_pytorch_model.safetensors"), os.path.join(ddir, "vae", "diffusion_pytorch_model.safetensors"))
    reloaded = FluxPipeline.from_pretrained(ddir, local_files_only=True, dtype=torch.float32)
    reloaded.set_progress_bar_config(disable=True)
    for key in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        sd1.assert_same(f"{variant} {key} reload", dict(getattr(reloaded, key).state_dict()), dict(getattr(pipe, key).state_dict()))
    b = half(bfl(model))
    save_file(b, os.path.join(vdir, f"flux1-{variant}-tiny.safetensors"))
    if variant == "dev":
        aio = {PREFIX + k: v for k, v in b.items()}
        clip = load_file(os.path.join(out, "clip_l.safetensors"))
        aio.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip.items()})
        t5 = load_file(os.path.join(out, "t5xxl.safetensors"))
        aio.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5.items()})
        ae = load_file(os.path.join(out, "ae.safetensors"))
        aio.update({f"vae.{k}": v for k, v in ae.items()})
        save_file(half(aio), os.path.join(vdir, "flux1-dev-tiny-aio.safetensors"))
    rec = sd1.Recorder()
    checks = references(reloaded, variant, rec)
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(vdir, "reference.safetensors"))
    sd1.write_json(os.path.join(vdir, "reference.json"), {
        "generator": "scripts/make_flux_pipeline_reference.py",
        "versions": fam.versions(),
        "settings": {
            "prompt": PROMPT, "seed": SEED, "guidance": GUIDANCE if variant == "dev" else None,
            "t5_tokens": T5_LEN[variant], "width1": WIDTH1, "height1": HEIGHT1, "width2": WIDTH2,
            "height2": HEIGHT2, "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "shift_factor": SHIFT_FACTOR, "scaling_factor": SCALING_FACTOR,
            "scheduler": SCHEDULER[variant],
        },
        "checks": checks,
        "tensors": sd1.tensors_json(rec),
    })
    print(variant, json.dumps(checks))


def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", "tests/data/flux-tiny/pipeline")
    out = args.out
    os.makedirs(out, exist_ok=True)
    d = os.path.join(SD3, "diffusers")
    copy(os.path.join(SD3, "split", "clip_l.safetensors"), os.path.join(out, "clip_l.safetensors"))
    copy(os.path.join(SD3, "split", "t5xxl.safetensors"), os.path.join(out, "t5xxl.safetensors"))
    copy(os.path.join(SD3, "split", "vae.safetensors"), os.path.join(out, "ae.safetensors"))
    vae = AutoencoderKL.from_pretrained(os.path.join(d, "vae"), local_files_only=True)
    vae.register_to_config(scaling_factor=SCALING_FACTOR, shift_factor=SHIFT_FACTOR)
    parts = {
        "text_encoder": CLIPTextModel.from_pretrained(os.path.join(d, "text_encoder"), local_files_only=True).eval(),
        "text_encoder_2": T5EncoderModel.from_pretrained(os.path.join(d, "text_encoder_3"), local_files_only=True).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(os.path.join(d, "tokenizer"), local_files_only=True),
        "tokenizer_2": T5TokenizerFast.from_pretrained(os.path.join(d, "tokenizer_3"), local_files_only=True),
        "vae": vae.eval(),
    }
    for variant in ("dev", "schnell"):
        build(variant, out, parts)


if __name__ == "__main__":
    main()
