#!/usr/bin/env python3
"""Build a tiny random Stable Diffusion 3.5-shaped model (MMDiT with dual-attention layers and
RMS qk-norm, 16-channel VAE, CLIP-L + OpenCLIP-bigG-style + T5 text encoders) and record
reference outputs for the flow backend (issue 30).  The T5 tokenizer is the small T5-shaped
one of tests/data/t5-tiny/tokenizer_3 (scripts/make_t5_reference.py); the transformer's
single-file key names come from scripts/make_mmdit_reference.py.

    python3 scripts/make_sd3_reference.py [--out tests/data/sd3-tiny] [--bpe PATH]
    python3 scripts/make_sd3_reference.py --extras [--out tests/data/sd3-tiny]

--extras writes only extras.safetensors / extras.json (see `extras`) from the model already
under --out, leaving the model files and reference.safetensors as they are (a full run writes
them too).

Writes, under --out:
  diffusers/               a StableDiffusion3Pipeline folder (fp16 weights)
  sd3-tiny.safetensors     the same weights as one single file, the layout Stability AI
                           publishes (model.diffusion_model.*, text_encoders.clip_l/clip_g/
                           t5xxl.transformer.*, first_stage_model.*), fp16
  split/                   ComfyUI's split files: transformer.safetensors
                           (model.diffusion_model.*), clip_l.safetensors, clip_g.safetensors,
                           t5xxl.safetensors (transformers layouts), vae.safetensors (LDM keys)
  reference.safetensors    CPU fp32 reference tensors
  reference.json           settings, conventions and a description of every tensor

References: the text conditioning (diffusers `encode_prompt`: CLIP-L and CLIP-G penultimate
layers concatenated and zero-padded to T5's width, then T5's 256 tokens; pooled = both
projections), one transformer call at two timesteps, VAE decode / encode (shift and scale
factors), and a 2-pass hires run: pass 1 = StableDiffusion3Pipeline's FlowMatchEuler sampling
(checked against the pipeline itself), bilinear latent upscale, pass 2 = the upscaled latent
noised as StableDiffusion3Img2ImgPipeline does (sigma*noise + (1 - sigma)*latent) over the
last STEPS2 + 1 of the flow sigmas of int(STEPS2 / DENOISE) steps (A1111's hires slicing; the
same sigmas as the img2img pipeline with strength DENOISE, checked against it).

Everything runs on CPU in float32, offline and deterministically.  Every parameter is rounded
to fp16 right after randomising, so the fp32 references use exactly the stored values.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (offline environment first)
import make_family_reference as fam  # noqa: E402
import clip_vocab  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)

import make_mmdit_reference as mmdit  # noqa: E402  (diffusers -> original MMDiT key names)

PROMPT = "a photo of a cat"
NEGATIVE = "blurry"
SEED = 1234
MODEL_SEED = 30
CFG = 5.0
SHIFT = 3.0
T5_LEN = 256  # diffusers' max_sequence_length for SD3
WIDTH1 = HEIGHT1 = 32
WIDTH2 = HEIGHT2 = 64
VAE_FACTOR = 2
STEPS1 = 6
STEPS2 = 4
DENOISE = 0.5
SHIFT_FACTOR, SCALING_FACTOR = 0.0609, 1.5305  # SD3's VAE
TRANSFORMER_T = [617.25, 31.5]
SEED_X, SEED_VAE_LATENT, SEED_VAE_IMAGE = 1, 2, 3

# Widths differ as CLIP-L's 768 and bigG's 1280 do (diffusers' single-file loader tells the two
# apart by width), each projection as wide as its encoder (SD3's); one head each, as
# hidden / 64 gives for a single file without config (the real models' rule).
CLIP_L_HIDDEN, CLIP_G_HIDDEN, CLIP_HEADS = 32, 48, 1
T5_WIDTH = 96  # > CLIP_L_HIDDEN + CLIP_G_HIDDEN: the CLIP embeddings are zero-padded as in SD3 (2048 -> 4096)


def build(t5_vocab: int) -> dict:
    torch.manual_seed(MODEL_SEED)
    clip = lambda width, act, pad: sd1.clip_text_config(  # noqa: E731
        width, 64, 2, CLIP_HEADS, act, pad, projection_dim=width
    )
    te1 = CLIPTextModelWithProjection(clip(CLIP_L_HIDDEN, "quick_gelu", fam.EOS))
    te2 = CLIPTextModelWithProjection(clip(CLIP_G_HIDDEN, "gelu", fam.OPEN_CLIP_PAD))
    te3 = T5EncoderModel(
        T5Config(
            vocab_size=t5_vocab, d_model=T5_WIDTH, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
            relative_attention_max_distance=128, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    )
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=T5_WIDTH, caption_projection_dim=32,
        pooled_projection_dim=CLIP_L_HIDDEN + CLIP_G_HIDDEN, out_channels=16, pos_embed_max_size=32,
        dual_attention_layers=(0, 1), qk_norm="rms_norm",
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32,
        scaling_factor=SCALING_FACTOR, shift_factor=SHIFT_FACTOR,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    for m in (te1, te2, te3, transformer, vae):
        randomize_fp16_(m)
    # SD3 pools CLIP-L unprojected (SD3's sd3_impls and ComfyUI: return_projected_pooled=False;
    # diffusers' single-file loader sets CLIP-L's text_projection to the identity): the folder's
    # CLIP-L projection is the identity, as in the published folders.
    with torch.no_grad():
        te1.text_projection.weight.copy_(torch.eye(CLIP_L_HIDDEN))
    return {"text_encoder": te1, "text_encoder_2": te2, "text_encoder_3": te3,
            "transformer": transformer, "vae": vae}


@torch.no_grad()
def randomize_fp16_(model) -> None:
    """make_sd1_reference.randomize_ (RMS norms too: scales ~ 1 + 0.1 N), then fp16 rounding."""
    sd1.randomize_(model)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if leaf == "weight" and p.ndim == 1 and "norm" in type(modules[owner]).__name__.lower():
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
    for p in model.parameters():
        p.copy_(p.half().float())
    model.eval()


def half(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def single_file(m: dict) -> dict:
    """Stability AI's single-file layout."""
    ckpt = {}
    ckpt.update({"model.diffusion_model." + k: v for k, v in mmdit.to_original(m["transformer"].state_dict(), m["transformer"].config.num_layers).items()})
    for key, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        sd = sd1.text_encoder_hf_state_dict(m[key])
        ckpt.update({f"text_encoders.{name}.transformer.{k}": v for k, v in sd.items()})
    # Both names of T5's tied embedding: diffusers' single-file loader leaves a missing
    # `encoder.embed_tokens.weight` unloaded (it does not tie weights after loading).
    t5 = {k: v.detach().clone() for k, v in m["text_encoder_3"].state_dict().items()}
    ckpt.update({f"text_encoders.t5xxl.transformer.{k}": v for k, v in t5.items()})
    ckpt.update(sd1.vae_to_ldm(m["vae"].state_dict(), m["vae"].config))
    return half(ckpt)


def t5_state(te3) -> dict:
    """T5EncoderModel as its files store it: `shared.weight` and `encoder.*` (the tied
    `encoder.embed_tokens.weight` left out, as in the published t5xxl files)."""
    return {k: v.detach().clone() for k, v in te3.state_dict().items() if k != "encoder.embed_tokens.weight"}


def split_files(m: dict, folder: str, ddir: str) -> None:
    os.makedirs(folder, exist_ok=True)
    tr = {"model.diffusion_model." + k: v for k, v in mmdit.to_original(m["transformer"].state_dict(), m["transformer"].config.num_layers).items()}
    save_file(half(tr), os.path.join(folder, "transformer.safetensors"))
    # The CLIP files are the diffusers folder's, byte for byte (git stores them once).
    for sub, name in (("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")):
        shutil.copyfile(os.path.join(ddir, sub, "model.safetensors"), os.path.join(folder, f"{name}.safetensors"))
    save_file(half(t5_state(m["text_encoder_3"])), os.path.join(folder, "t5xxl.safetensors"))
    vae = sd1.vae_to_ldm(m["vae"].state_dict(), m["vae"].config)
    save_file(half({k[len(sd1.VAE_P):]: v for k, v in vae.items()}), os.path.join(folder, "vae.safetensors"))


def flow_sigmas(steps: int) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler(shift=SHIFT).set_timesteps(steps).sigmas (trailing 0)."""
    s = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    s.set_timesteps(steps)
    return s.sigmas.clone().float()


@torch.no_grad()
def euler_flow(transformer, x, sigmas, cond, pooled) -> torch.Tensor:
    """Euler on the velocity (FlowMatchEulerDiscreteScheduler.step), CFG over [negative, positive]."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        t = (s * 1000).expand(2)
        v = transformer(hidden_states=torch.cat([x, x]), timestep=t, encoder_hidden_states=cond,
                        pooled_projections=pooled, return_dict=False)[0]
        v_neg, v_pos = v.chunk(2)
        v = v_neg + CFG * (v_pos - v_neg)
        x = x + (s_next - s) * v
    return x


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@torch.no_grad()
def references(pipe, m: dict, rec: sd1.Recorder) -> dict:
    transformer, vae = m["transformer"], m["vae"]
    pe, ne, pp, npool = pipe.encode_prompt(
        prompt=PROMPT, prompt_2=None, prompt_3=None, negative_prompt=NEGATIVE,
        do_classifier_free_guidance=True, max_sequence_length=T5_LEN, device="cpu",
    )
    rec.put("text.prompt", pe, f"encode_prompt({PROMPT!r}): [1, 77 + {T5_LEN}, {T5_WIDTH}] (CLIP-L|CLIP-G penultimate, zero-padded; then T5)")
    rec.put("text.prompt_pooled", pp, "pooled: CLIP-L text_embeds | CLIP-G text_embeds")
    rec.put("text.negative", ne, f"negative {NEGATIVE!r}, same layout")
    rec.put("text.negative_pooled", npool, "negative pooled")
    for i, (name, text) in enumerate((("prompt", PROMPT), ("negative", NEGATIVE))):
        ids = pipe.tokenizer_3(text, padding="max_length", max_length=T5_LEN, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
        rec.put(f"text.{name}_t5_ids", ids.to(torch.int64), f"tokenizer_3({text!r}), padded to {T5_LEN}")
    cond = torch.cat([ne, pe])
    pooled = torch.cat([npool, pp])

    torch.manual_seed(SEED_X)
    x = torch.randn(2, 16, 16, 16)
    t = torch.tensor(TRANSFORMER_T)
    rec.put("transformer.x", x, f"randn after manual_seed({SEED_X})")
    rec.put("transformer.t", t, "timesteps in 0..1000 units (sigma * 1000)")
    rec.put("transformer.out", transformer(hidden_states=x, timestep=t, encoder_hidden_states=cond,
                                           pooled_projections=pooled, return_dict=False)[0],
            "transformer(x, t, [negative, prompt] embeddings, pooled): the velocity")

    torch.manual_seed(SEED_VAE_LATENT)
    lat = torch.randn(1, 16, 16, 16)
    rec.put("vae.latent", lat, f"randn latent after manual_seed({SEED_VAE_LATENT})")
    rec.put("vae.decoded", vae.decode(lat / SCALING_FACTOR + SHIFT_FACTOR).sample,
            f"vae.decode(latent / {SCALING_FACTOR} + {SHIFT_FACTOR}).sample, raw")
    torch.manual_seed(SEED_VAE_IMAGE)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    rec.put("vae.image", img, f"rand*2-1 after manual_seed({SEED_VAE_IMAGE})")
    rec.put("vae.encoded_mean", (vae.encode(img).latent_dist.mean - SHIFT_FACTOR) * SCALING_FACTOR,
            f"(vae.encode(image).latent_dist.mean - {SHIFT_FACTOR}) * {SCALING_FACTOR}")

    # The 2-pass run.
    f = VAE_FACTOR
    sig1 = flow_sigmas(STEPS1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([16, HEIGHT1 // f, WIDTH1 // f]).unsqueeze(0)
    lat1 = euler_flow(transformer, noise1 * sig1[0], sig1, cond, pooled)
    via_pipe = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT1, width=WIDTH1,
                    num_inference_steps=STEPS1, guidance_scale=CFG, latents=noise1.clone(),
                    max_sequence_length=T5_LEN, output_type="latent").images
    checks = {"pass1_vs_StableDiffusion3Pipeline": max_rel(lat1, via_pipe)}
    up = F.interpolate(lat1, size=(HEIGHT2 // f, WIDTH2 // f), mode="bilinear", antialias=False)
    total = int(STEPS2 / DENOISE)
    sig2 = flow_sigmas(total)[-(STEPS2 + 1):]
    torch.manual_seed(SEED)
    noise2 = torch.randn([16, HEIGHT2 // f, WIDTH2 // f]).unsqueeze(0)
    lat2 = euler_flow(transformer, sig2[0] * noise2 + (1 - sig2[0]) * up, sig2, cond, pooled)
    i2i = StableDiffusion3Img2ImgPipeline(**{k: getattr(pipe, k) for k in pipe.components})
    i2i.set_progress_bar_config(disable=True)
    via_i2i = i2i(prompt=PROMPT, negative_prompt=NEGATIVE, image=up.clone(), strength=DENOISE,
                  num_inference_steps=total, guidance_scale=CFG, max_sequence_length=T5_LEN,
                  generator=torch.Generator().manual_seed(SEED), output_type="latent").images
    checks["pass2_vs_StableDiffusion3Img2ImgPipeline"] = max_rel(lat2, via_i2i)
    image = torch.clamp((vae.decode(lat2 / SCALING_FACTOR + SHIFT_FACTOR).sample + 1) / 2, 0, 1)
    rec.put("run.sigmas1", sig1, f"FlowMatchEulerDiscreteScheduler(shift={SHIFT}).set_timesteps({STEPS1}).sigmas")
    rec.put("run.sigmas2", sig2, f"last {STEPS2 + 1} of the flow sigmas of int({STEPS2}/{DENOISE}) steps")
    rec.put("run.noise1", noise1, f"manual_seed({SEED}); randn([16,{HEIGHT1 // f},{WIDTH1 // f}]).unsqueeze(0)")
    rec.put("run.noise2", noise2, f"manual_seed({SEED}); randn([16,{HEIGHT2 // f},{WIDTH2 // f}]).unsqueeze(0)")
    rec.put("run.latent1", lat1, "pass 1: Euler on the velocity with CFG from noise1 * sigmas1[0]")
    rec.put("run.upscaled", up, "bilinear, align_corners=False, antialias=False")
    rec.put("run.latent2", lat2, "pass 2: Euler from sigmas2[0]*noise2 + (1 - sigmas2[0])*upscaled")
    rec.put("run.image", image, f"clamp((vae.decode(latent2/{SCALING_FACTOR} + {SHIFT_FACTOR}).sample + 1)/2, 0, 1)")
    rec.put("run.image_u8", (image[0].permute(1, 2, 0) * 255.0).to(torch.uint8), "uint8 HWC, truncated")
    for k, v in checks.items():
        if v > 1e-5:
            raise AssertionError(f"{k}: max relative difference {v}")
    return checks


PROMPT2 = "a photo of a dog"  # pass 2's own prompt (a hires prompt that differs from pass 1's)
PIXEL_UPSCALER = "Lanczos"
# More than one 75-token CLIP chunk (87 tokens, no comma: A1111's comma backtracking stays out).
LONG_PROMPT = (
    "a photo of a cat sitting on a wooden table next to a window with soft morning light coming "
    "through the curtains and a cup of coffee beside it while a small dog sleeps on the rug and "
    "the walls are painted in warm colors with framed pictures of mountains and rivers and old "
    "maps of distant cities that the owner visited many years ago during long summer holidays "
    "with friends and family in a small house near the sea where the garden was full of roses"
)
CHUNK = 75  # A1111's tokens per CLIP chunk (77 with start and end)


@torch.no_grad()
def a1111_clip_chunks(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's SD3 CLIP conditioning (sd3_cond.Sd3ClipLG through sd_hijack_clip's chunking): the
    prompt's tokens in 75-token chunks, each [start] + chunk + end padding to 76 + [end] (CLIP-G:
    0 after the first end), CLIP-L | CLIP-G penultimate hidden states zero-padded to the
    transformer's width, chunks one after the other; pooled = the first chunk's. Plain prompt:
    emphasis is the identity. Each chunk through diffusers' text encoders."""
    tok = pipe.tokenizer
    ids = tok(text, truncation=False, add_special_tokens=False).input_ids
    start, end = tok.bos_token_id, tok.eos_token_id
    zs, pooled = [], None
    for at in range(0, max(len(ids), 1), CHUNK):
        part = ids[at:at + CHUNK]
        chunk = torch.tensor([[start] + part + [end] * (CHUNK - len(part)) + [end]])
        chunk_g = chunk.clone()
        chunk_g[0, len(part) + 2:] = 0
        lo = pipe.text_encoder(chunk, output_hidden_states=True)
        go = pipe.text_encoder_2(chunk_g, output_hidden_states=True)
        z = torch.cat([lo.hidden_states[-2], go.hidden_states[-2]], dim=-1)
        zs.append(F.pad(z, (0, T5_WIDTH - z.shape[-1])))
        if pooled is None:
            pooled = torch.cat([lo.text_embeds, go.text_embeds], dim=-1)
    return torch.cat(zs, dim=1), pooled


@torch.no_grad()
def euler_flow_apart(transformer, x, sigmas, negative, positive) -> torch.Tensor:
    """euler_flow with the negative and positive conditionings in separate transformer calls
    (their token counts differ; A1111's default without pad_cond_uncond)."""
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        v_neg, v_pos = (
            transformer(hidden_states=x, timestep=(s * 1000).expand(1), encoder_hidden_states=c,
                        pooled_projections=p, return_dict=False)[0]
            for c, p in (negative, positive)
        )
        x = x + (s_next - s) * (v_neg + CFG * (v_pos - v_neg))
    return x


@torch.no_grad()
def pass2(transformer, up, cond, pooled) -> torch.Tensor:
    """Pass 2 of the run from the upscaled latent `up`: noise2 at sigmas2[0], Euler with CFG."""
    f = VAE_FACTOR
    sig2 = flow_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1):]
    torch.manual_seed(SEED)
    noise2 = torch.randn([16, HEIGHT2 // f, WIDTH2 // f]).unsqueeze(0)
    return euler_flow(transformer, sig2[0] * noise2 + (1 - sig2[0]) * up, sig2, cond, pooled)


@torch.no_grad()
def extras(out: str) -> None:
    """Variants of the 2-pass run of `references` (same pass 1: reference run.latent1), each pass 2
    checked against StableDiffusion3Img2ImgPipeline given the same upscaled latent:
      pixel.*   the pixel path on 16-channel latents: decode latent1 (latent / scaling + shift),
                clamp to [-1, 1], PIL LANCZOS on mode "F" per channel to WIDTH2 x HEIGHT2 (A1111's
                "Lanczos", as scripts/make_cross_family_reference.py), clamp, encode (posterior
                mean, (z - shift) * scaling), then pass 2 with PROMPT / NEGATIVE;
      prompt2.* the latent path (bilinear, as run.upscaled) with pass 2 prompted PROMPT2;
      long.*    LONG_PROMPT (two CLIP chunks, A1111's layout: `a1111_clip_chunks`, then T5's 256
                tokens as diffusers) against NEGATIVE (one chunk): the conditioning, and the
                whole 2-pass run (latent path) with the two in separate transformer calls."""
    from make_cross_family_reference import pil_lanczos

    ddir = os.path.join(out, "diffusers")
    pipe = StableDiffusion3Pipeline.from_pretrained(ddir, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    transformer, vae = pipe.transformer, pipe.vae
    ref = load_file(os.path.join(out, "reference.safetensors"))
    lat1 = ref["run.latent1"]
    i2i = StableDiffusion3Img2ImgPipeline(**{k: getattr(pipe, k) for k in pipe.components})
    i2i.set_progress_bar_config(disable=True)

    def conds(prompt: str):
        pe, ne, pp, npool = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, negative_prompt=NEGATIVE,
            do_classifier_free_guidance=True, max_sequence_length=T5_LEN, device="cpu",
        )
        return torch.cat([ne, pe]), torch.cat([npool, pp])

    def via_i2i(prompt: str, up: torch.Tensor) -> torch.Tensor:
        return i2i(prompt=prompt, negative_prompt=NEGATIVE, image=up.clone(), strength=DENOISE,
                   num_inference_steps=int(STEPS2 / DENOISE), guidance_scale=CFG,
                   max_sequence_length=T5_LEN, generator=torch.Generator().manual_seed(SEED),
                   output_type="latent").images

    rec = sd1.Recorder()
    checks = {}
    decoded = vae.decode(lat1 / SCALING_FACTOR + SHIFT_FACTOR).sample.clamp(-1.0, 1.0)
    resized = pil_lanczos(decoded, HEIGHT2, WIDTH2).clamp(-1.0, 1.0)
    up = (vae.encode(resized).latent_dist.mean - SHIFT_FACTOR) * SCALING_FACTOR
    lat2 = pass2(transformer, up, *conds(PROMPT))
    checks["pixel_pass2_vs_StableDiffusion3Img2ImgPipeline"] = max_rel(lat2, via_i2i(PROMPT, up))
    rec.put("pixel.decoded", decoded, f"vae.decode(run.latent1 / {SCALING_FACTOR} + {SHIFT_FACTOR}).sample, clamped to [-1, 1]")
    rec.put("pixel.resized", resized, f"PIL LANCZOS (mode F, per channel) to {WIDTH2}x{HEIGHT2}, clamped to [-1, 1]")
    rec.put("pixel.upscaled", up, f"(vae.encode(resized).latent_dist.mean - {SHIFT_FACTOR}) * {SCALING_FACTOR}")
    rec.put("pixel.latent2", lat2, "pass 2 from pixel.upscaled (as run.latent2 from run.upscaled)")

    up = F.interpolate(lat1, size=(HEIGHT2 // VAE_FACTOR, WIDTH2 // VAE_FACTOR), mode="bilinear", antialias=False)
    lat2 = pass2(transformer, up, *conds(PROMPT2))
    checks["prompt2_pass2_vs_StableDiffusion3Img2ImgPipeline"] = max_rel(lat2, via_i2i(PROMPT2, up))
    rec.put("prompt2.latent2", lat2, f"pass 2 from run.upscaled prompted {PROMPT2!r} (negative {NEGATIVE!r})")

    clip, pooled = a1111_clip_chunks(pipe, LONG_PROMPT)
    t5 = pipe._get_t5_prompt_embeds(prompt=LONG_PROMPT, max_sequence_length=T5_LEN, device="cpu")
    long = (torch.cat([clip, t5], dim=1), pooled)
    # One chunk: A1111's layout equals diffusers' encode_prompt.
    ne, npool = (t[:1] for t in conds(PROMPT))
    checks["a1111_one_chunk_vs_encode_prompt"] = max_rel(torch.cat([a1111_clip_chunks(pipe, NEGATIVE)[0], ne[:, 77:]], 1), ne)
    rec.put("long.prompt", long[0], f"{LONG_PROMPT!r}: [1, 2 * 77 + {T5_LEN}, {T5_WIDTH}] (a1111_clip_chunks, then T5 as encode_prompt)")
    rec.put("long.prompt_pooled", long[1], "the first chunk's CLIP-L | CLIP-G text_embeds")
    sig1 = flow_sigmas(STEPS1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([16, HEIGHT1 // VAE_FACTOR, WIDTH1 // VAE_FACTOR]).unsqueeze(0)
    lat1 = euler_flow_apart(transformer, noise1 * sig1[0], sig1, (ne, npool), long)
    up = F.interpolate(lat1, size=(HEIGHT2 // VAE_FACTOR, WIDTH2 // VAE_FACTOR), mode="bilinear", antialias=False)
    sig2 = flow_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1):]
    torch.manual_seed(SEED)
    noise2 = torch.randn([16, HEIGHT2 // VAE_FACTOR, WIDTH2 // VAE_FACTOR]).unsqueeze(0)
    lat2 = euler_flow_apart(transformer, sig2[0] * noise2 + (1 - sig2[0]) * up, sig2, (ne, npool), long)
    rec.put("long.latent1", lat1, f"pass 1 as run.latent1, prompted {LONG_PROMPT!r}, negative and prompt in separate calls")
    rec.put("long.latent2", lat2, "pass 2 as run.latent2 from long.latent1's bilinear upscale")
    for k, v in checks.items():
        if v > 1e-5:
            raise AssertionError(f"{k}: max relative difference {v}")
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out, "extras.safetensors"))
    sd1.write_json(os.path.join(out, "extras.json"), {
        "generator": "scripts/make_sd3_reference.py --extras",
        "versions": fam.versions(),
        "settings": {"prompt": PROMPT, "prompt2": PROMPT2, "long_prompt": LONG_PROMPT,
                     "negative": NEGATIVE, "seed": SEED,
                     "upscaler": PIXEL_UPSCALER, "width2": WIDTH2, "height2": HEIGHT2,
                     "steps2": STEPS2, "denoise": DENOISE},
        "checks": checks,
        "tensors": sd1.tensors_json(rec),
    })
    print(json.dumps(checks))


def main() -> None:
    extras_only = "--extras" in sys.argv
    if extras_only:
        sys.argv.remove("--extras")
    args = sd1.parse_args_and_setup(__doc__, "--out", "tests/data/sd3-tiny")
    if extras_only:
        extras(args.out)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    t5_tok_dir = os.path.join(here, "..", "tests", "data", "t5-tiny", "tokenizer_3")
    out = args.out
    ddir = os.path.join(out, "diffusers")
    for d in (ddir, os.path.join(out, "split")):
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(out, exist_ok=True)
    bpe = clip_vocab.find_bpe_file(args.bpe)
    tmp = os.path.join(out, "_tok")
    tok1 = fam.write_tokenizer(tmp + "1", bpe, clip_vocab.EOS)
    tok2 = fam.write_tokenizer(tmp + "2", bpe, "!")
    tok3 = T5TokenizerFast.from_pretrained(t5_tok_dir, local_files_only=True)
    m = build(len(tok3))
    sched = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    pipe = StableDiffusion3Pipeline(scheduler=sched, tokenizer=tok1, tokenizer_2=tok2, tokenizer_3=tok3, **m)
    pipe.to(dtype=torch.float16)
    pipe.save_pretrained(ddir, safe_serialization=True)
    pipe.to(dtype=torch.float32)  # exact: every value was rounded to fp16
    for i in (1, 2):
        shutil.rmtree(tmp + str(i))
    # Every published SD3 folder keeps the 'text_model.' level (transformers 5 drops it).
    for sub, key in (("text_encoder", "text_encoder"), ("text_encoder_2", "text_encoder_2")):
        save_file(half(sd1.text_encoder_hf_state_dict(m[key])), os.path.join(ddir, sub, "model.safetensors"),
                  metadata={"format": "pt"})
    single = single_file(m)
    save_file(single, os.path.join(out, "sd3-tiny.safetensors"))
    split_files(m, os.path.join(out, "split"), ddir)
    reloaded = StableDiffusion3Pipeline.from_pretrained(ddir, local_files_only=True, dtype=torch.float32)
    reloaded.set_progress_bar_config(disable=True)
    for key in m:
        sd1.assert_same(f"{key} reload", dict(getattr(reloaded, key).state_dict()), dict(m[key].state_dict()))

    # The single file through diffusers' own single-file conversion gives the same weights.
    from_single = StableDiffusion3Pipeline.from_single_file(
        os.path.join(out, "sd3-tiny.safetensors"), config=ddir, local_files_only=True, dtype=torch.float32
    )
    for key in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        sd1.assert_same(f"{key} from_single_file", dict(getattr(from_single, key).state_dict()), dict(m[key].state_dict()))

    rec = sd1.Recorder()
    checks = references(reloaded, m, rec)
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))
    sd1.write_json(os.path.join(out, "reference.json"), {
        "generator": "scripts/make_sd3_reference.py",
        "versions": fam.versions(),
        "settings": {
            "prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "cfg": CFG, "shift": SHIFT,
            "t5_tokens": T5_LEN, "width1": WIDTH1, "height1": HEIGHT1, "width2": WIDTH2,
            "height2": HEIGHT2, "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "shift_factor": SHIFT_FACTOR, "scaling_factor": SCALING_FACTOR,
        },
        "checks": checks,
        "tensors": sd1.tensors_json(rec),
    })
    print(json.dumps(checks))
    extras(out)


if __name__ == "__main__":
    main()
