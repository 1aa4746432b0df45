#!/usr/bin/env python3
"""Build a tiny random SD 1.x model and record reference outputs for hiresfix.

    python3 scripts/make_sd1_reference.py [--out tests/data/sd1-tiny] [--bpe PATH]

Writes, under --out:
  diffusers/               a normal diffusers StableDiffusionPipeline folder
  sd1-tiny.safetensors     the same weights as one original-LDM (CompVis/A1111) checkpoint
  reference.safetensors    reference tensors (see reference.json for the list)
  reference.json           settings, scalars and a description of every reference tensor

Everything runs on CPU in float32, offline, and is deterministic (reruns give
byte-identical files).  Needs torch, diffusers, transformers, k-diffusion, safetensors.

Importing this module (as make_family_reference.py does) also sets up the offline
environment and quiets diffusers/transformers logging; its helpers marked "shared" serve
both scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402
import k_diffusion  # noqa: E402
import k_diffusion.external  # noqa: E402
import k_diffusion.sampling  # noqa: E402

diffusers.utils.logging.set_verbosity_error()
diffusers.utils.logging.disable_progress_bar()
try:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

# ----------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------
PROMPT = "a photo of a cat"
NEGATIVE = ""
EXPECTED_PROMPT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
MAX_LEN = 77
SCALING_FACTOR = 0.18215
BETA_START, BETA_END, NUM_TRAIN_T = 0.00085, 0.012, 1000

MODEL_SEED = 0
SEED = 1234
CFG = 5.0
WIDTH1 = HEIGHT1 = 32  # pass-1 size in pixels
WIDTH2 = HEIGHT2 = 64  # hires size in pixels
VAE_FACTOR = 2  # 2 ** (len(vae block_out_channels) - 1)
STEPS1 = 6
STEPS2 = 4
DENOISE = 0.5
UNET_T = [617.25, 31.5]
SEED_UNET_X, SEED_VAE_LATENT, SEED_VAE_IMAGE = 1, 2, 3


# ----------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------
def build_models():
    torch.manual_seed(MODEL_SEED)
    text_encoder = CLIPTextModel(clip_text_config(32, 64, layers=2, heads=1, act="quick_gelu", pad_id=49407))
    unet = tiny_unet(
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=False,
    )
    vae = make_vae(SCALING_FACTOR, block_out_channels=(32, 64))
    for model in (text_encoder, unet, vae):
        randomize_(model)
        model.eval()
    scheduler = PNDMScheduler(**SCHEDULE_KWARGS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return text_encoder, unet, vae, scheduler


# SD's training noise schedule as diffusers scheduler arguments; shared.
SCHEDULE_KWARGS = dict(
    num_train_timesteps=NUM_TRAIN_T,
    beta_start=BETA_START,
    beta_end=BETA_END,
    beta_schedule="scaled_linear",
)


def clip_text_config(hidden: int, inter: int, layers: int, heads: int, act: str, pad_id: int, **extra) -> CLIPTextConfig:
    """Tiny CLIP text tower on the real 49408-token vocabulary, 77 positions; shared."""
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=MAX_LEN, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_id,
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        hidden_act=act, layer_norm_eps=1e-5, **extra,
    )


def tiny_unet(**layout) -> UNet2DConditionModel:
    """UNet2DConditionModel on 4-channel 16x16 latents, 32 norm groups; layout = blocks,
    attention and conditioning; shared."""
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, norm_num_groups=32, **layout)


def make_vae(scaling: float, block_out_channels: tuple) -> AutoencoderKL:
    """Tiny two-level AutoencoderKL (latent factor 2); shared."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        scaling_factor=scaling,
    )


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)


@torch.no_grad()
def randomize_(model: nn.Module) -> None:
    """Give every parameter a random, non-zero value (so that swapped keys show up):
    norm scales ~ 1 + 0.1 N(0,1), biases ~ 0.1 N(0,1), weights ~ N(0,1)/sqrt(fan_in)."""
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        module = modules[owner]
        if isinstance(module, NORM_TYPES) and leaf == "weight":
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        elif isinstance(module, NORM_TYPES) or leaf == "bias" or p.ndim == 1:
            p.copy_(0.1 * torch.randn_like(p))
        else:
            fan_in = p[0].numel()
            p.copy_(torch.randn_like(p) / fan_in**0.5)


# ----------------------------------------------------------------------------
# diffusers -> original LDM key mapping (written for this SD1 layout)
# ----------------------------------------------------------------------------
# Per-module renames of the leaf names inside one block.
RESNET_UNET = {  # diffusers ResnetBlock2D -> LDM ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
RESNET_VAE = {"conv_shortcut": "nin_shortcut"}  # other names (norm1/conv1/norm2/conv2) are equal
VAE_ATTN = {  # diffusers Attention (VAE mid block) -> LDM AttnBlock
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
SAME: dict[str, str] = {}  # transformer blocks, convs: leaf names are identical


def unet_module_map(cfg) -> list[tuple[str, str, dict]]:
    """(diffusers module prefix, LDM module prefix, leaf rename table)."""
    n = len(cfg.block_out_channels)
    L = cfg.layers_per_block
    has_attn_down = ["CrossAttn" in t for t in cfg.down_block_types]
    has_attn_up = ["CrossAttn" in t for t in cfg.up_block_types]
    m = [
        ("conv_in", "input_blocks.0.0", SAME),
        ("time_embedding.linear_1", "time_embed.0", SAME),
        ("time_embedding.linear_2", "time_embed.2", SAME),
        ("conv_norm_out", "out.0", SAME),
        ("conv_out", "out.2", SAME),
        ("mid_block.resnets.0", "middle_block.0", RESNET_UNET),
        ("mid_block.attentions.0", "middle_block.1", SAME),
        ("mid_block.resnets.1", "middle_block.2", RESNET_UNET),
    ]
    k = 1
    for b in range(n):
        for j in range(L):
            m.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{k}.0", RESNET_UNET))
            if has_attn_down[b]:
                m.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{k}.1", SAME))
            k += 1
        if b != n - 1:
            m.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{k}.0.op", SAME))
            k += 1
    k = 0
    for b in range(n):
        for j in range(L + 1):
            m.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{k}.0", RESNET_UNET))
            if has_attn_up[b]:
                m.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{k}.1", SAME))
            if j == L and b != n - 1:
                slot = 2 if has_attn_up[b] else 1
                m.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{k}.{slot}.conv", SAME))
            k += 1
    return m


def vae_module_map(cfg) -> list[tuple[str, str, dict]]:
    n = len(cfg.block_out_channels)
    L = cfg.layers_per_block
    m = [("quant_conv", "quant_conv", SAME), ("post_quant_conv", "post_quant_conv", SAME)]
    for side in ("encoder", "decoder"):
        m += [
            (f"{side}.conv_in", f"{side}.conv_in", SAME),
            (f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", RESNET_VAE),
            (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", VAE_ATTN),
            (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", RESNET_VAE),
            (f"{side}.conv_norm_out", f"{side}.norm_out", SAME),
            (f"{side}.conv_out", f"{side}.conv_out", SAME),
        ]
    for i in range(n):
        for j in range(L):
            m.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", RESNET_VAE))
        if i != n - 1:
            m.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", SAME))
    for i in range(n):
        r = n - 1 - i  # LDM decoder.up.r is resolution level r (0 = full size); diffusers up_blocks run low->high
        for j in range(L + 1):
            m.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{r}.block.{j}", RESNET_VAE))
        if i != n - 1:
            m.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{r}.upsample.conv", SAME))
    return m


def apply_module_map(sd: dict, mapping, ldm_prefix: str, conv1x1_for=None) -> dict:
    """Rename every key of a diffusers state dict; fail if a key is unmapped or mapped twice."""
    out = {}
    for key, tensor in sd.items():
        hits = [(d, l, ren) for d, l, ren in mapping if key.startswith(d + ".")]
        if len(hits) != 1:
            raise KeyError(f"{key}: {len(hits)} module mappings match")
        d, l, ren = hits[0]
        rest = key[len(d) + 1 :]
        leaf_hits = [(a, b) for a, b in ren.items() if rest.startswith(a + ".")]
        if len(leaf_hits) > 1:
            raise KeyError(f"{key}: ambiguous leaf rename")
        if leaf_hits:
            a, b = leaf_hits[0]
            rest = b + rest[len(a) :]
        new_key = f"{ldm_prefix}{l}.{rest}"
        if conv1x1_for is not None and conv1x1_for(new_key) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM AttnBlock uses 1x1 convs
        if new_key in out:
            raise KeyError(f"{new_key} produced twice")
        out[new_key] = tensor.detach().clone().contiguous()
    return out


def ldm_schedule_buffers() -> dict:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_T, dtype=torch.float64) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    return {
        "betas": betas.float(),
        "alphas_cumprod": ac.float(),
        "alphas_cumprod_prev": ac_prev.float(),
    }


UNET_P, VAE_P, CLIP_P = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."


def to_ldm(text_encoder, unet, vae) -> dict:
    ckpt = {}
    ckpt.update(apply_module_map(unet.state_dict(), unet_module_map(unet.config), UNET_P))
    ckpt.update(vae_to_ldm(vae.state_dict(), vae.config))
    ckpt.update(clip_to_ldm(text_encoder, CLIP_P))
    ckpt.update(ldm_schedule_buffers())
    return ckpt


def vae_to_ldm(vae_sd: dict, vae_config) -> dict:
    """diffusers VAE state dict -> LDM 'first_stage_model.' keys (mid-block attention
    weights as 1x1 convs); shared."""
    return apply_module_map(
        vae_sd,
        vae_module_map(vae_config),
        VAE_P,
        conv1x1_for=lambda k: ".mid.attn_1." in k and k.endswith(".weight") and not k.endswith("norm.weight"),
    )


def clip_to_ldm(text_encoder, prefix: str, dtype=None) -> dict:
    """A CLIP-L style text encoder as LDM/SGM keys: prefix + classic HF names, plus the
    (int64) CLIP position_ids buffer that real SD 1.x / SDXL checkpoints carry; shared."""
    ckpt = {prefix + k: v for k, v in text_encoder_hf_state_dict(text_encoder, dtype).items()}
    ckpt[prefix + "text_model.embeddings.position_ids"] = torch.arange(MAX_LEN, dtype=torch.int64)[None]
    return ckpt


def text_encoder_hf_state_dict(model: nn.Module, dtype=None) -> dict:
    """CLIP text weights under the classic 'text_model.' names (transformers 5 dropped the
    wrapper module of CLIPTextModel; every released SD checkpoint uses the prefix), plus
    CLIPTextModelWithProjection's text_projection.weight as is; position_ids left out;
    floating tensors cast to dtype when given.  Shared."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("position_ids"):
            continue
        if not (k.startswith("text_model.") or k.startswith("text_projection.")):
            k = "text_model." + k
        v = v.detach().clone().contiguous()
        out[k] = v.to(dtype) if (dtype is not None and v.is_floating_point()) else v
    return out


# ----------------------------------------------------------------------------
# Verification of the LDM file with diffusers' own converters
# ----------------------------------------------------------------------------
def assert_same(name: str, got: dict, want: dict, got_dtype=None, cast: bool = False) -> None:
    """Same keys, same shapes, same values and dtypes.  cast=True compares got cast to
    want's dtype (got may be the fp16 twin of an fp32 want); got_dtype, when given, is the
    dtype every floating tensor of got must have.  Shared."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise AssertionError(f"{name}: missing {missing[:5]} (+{len(missing)}), extra {extra[:5]} (+{len(extra)})")
    for k in want:
        a, b = got[k], want[k]
        if got_dtype is not None and a.is_floating_point() and a.dtype != got_dtype:
            raise AssertionError(f"{name}: {k} has dtype {a.dtype}, expected {got_dtype}")
        if cast:
            a = a.to(b.dtype)
        if a.shape != b.shape or a.dtype != b.dtype or not torch.equal(a, b):
            raise AssertionError(f"{name}: tensor {k} differs ({tuple(a.shape)} vs {tuple(b.shape)})")


def model_sd(model: nn.Module) -> dict:
    """A model's state dict without the position_ids buffers; shared."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}


def verify_ldm(path: str, diffusers_dir: str, text_encoder, unet, vae) -> int:
    ckpt = load_file(path)
    n_unet = sum(k.startswith(UNET_P) for k in ckpt)
    n_vae = sum(k.startswith(VAE_P) for k in ckpt)
    n_clip = sum(k.startswith(CLIP_P) and not k.endswith("position_ids") for k in ckpt)
    extra = sorted(k for k in ckpt if not k.startswith((UNET_P, VAE_P, CLIP_P)))
    if extra != ["alphas_cumprod", "alphas_cumprod_prev", "betas"]:
        raise AssertionError(f"unexpected top-level keys {extra}")

    # 1) diffusers' low-level converters, key by key.
    unet_sd = {k: v for k, v in unet.state_dict().items()}
    vae_sd = {k: v for k, v in vae.state_dict().items()}
    clip_sd = text_encoder_hf_state_dict(text_encoder)
    got_unet = sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    got_vae = sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config))
    got_clip = {
        k: v for k, v in sfu.convert_ldm_clip_checkpoint(ckpt).items() if not k.endswith("position_ids")
    }
    assert_same("unet", got_unet, unet_sd)
    assert_same("vae", got_vae, vae_sd)
    assert_same("text_encoder", got_clip, clip_sd)
    # every LDM tensor must have been consumed exactly once (counts match 1:1)
    if (n_unet, n_vae, n_clip) != (len(unet_sd), len(vae_sd), len(clip_sd)):
        raise AssertionError(f"LDM key counts {(n_unet, n_vae, n_clip)} != diffusers {(len(unet_sd), len(vae_sd), len(clip_sd))}")

    # 2) the public single-file loader, configured from our diffusers folder.
    pipe = StableDiffusionPipeline.from_single_file(
        path, config=diffusers_dir, local_files_only=True, torch_dtype=torch.float32
    )
    assert_same("from_single_file unet", pipe.unet.state_dict(), unet.state_dict())
    assert_same("from_single_file vae", pipe.vae.state_dict(), vae.state_dict())
    assert_same("from_single_file text_encoder", model_sd(pipe.text_encoder), model_sd(text_encoder))
    return len(ckpt)


# ----------------------------------------------------------------------------
# A1111-style sampling on top of k-diffusion
# ----------------------------------------------------------------------------
class UNetEpsDenoiser(k_diffusion.external.DiscreteEpsDDPMDenoiser):
    """A1111's CompVisDenoiser for a diffusers UNet (eps prediction, fractional t)."""

    def get_eps(self, x, t, cond):
        return self.inner_model(x, t, encoder_hidden_states=cond).sample


class CFGDenoiser(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma, uncond, cond, cond_scale):
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        ctx = torch.cat([uncond, cond])
        out_uncond, out_cond = self.model(x_in, sigma_in, cond=ctx).chunk(2)
        return out_uncond + (out_cond - out_uncond) * cond_scale


def load_tiny(model: str):
    """(tokenizer, text encoder, UNet, VAE, alphas_cumprod) of tests/data/sd1-tiny-like folder
    `model` (its diffusers folder and the single file's buffer), single-threaded and
    deterministic, as the run scripts use them.  Shared."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    ddir = os.path.join(model, "diffusers")
    tok = CLIPTokenizer.from_pretrained(os.path.join(ddir, "tokenizer"), local_files_only=True)
    te = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(ddir, "unet"), local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(ddir, "vae"), local_files_only=True).eval()
    ac = load_file(os.path.join(model, "sd1-tiny.safetensors"))["alphas_cumprod"]
    return tok, te, unet, vae, ac


def tokenize(tok, text: str) -> torch.Tensor:
    ids = tok(text, padding="max_length", max_length=MAX_LEN, truncation=True, return_tensors="pt").input_ids
    return ids.to(torch.int64)


class Recorder:
    """Reference tensors (detached, contiguous) and their descriptions, in insertion order; shared."""

    def __init__(self):
        self.R: dict[str, torch.Tensor] = {}
        self.D: dict[str, str] = {}

    def put(self, name: str, t: torch.Tensor, desc: str) -> None:
        if name in self.R:
            raise KeyError(name)
        self.R[name] = t.detach().contiguous()
        self.D[name] = desc


def unet_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """UNet probe inputs (x [2,4,16,16], fractional t); shared."""
    torch.manual_seed(SEED_UNET_X)
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor(UNET_T, dtype=torch.float32)
    return x, t


@torch.no_grad()
def put_vae_refs(rec: Recorder, vae, scaling: float) -> None:
    """vae.latent / vae.decoded / vae.image / vae.encoded_mean; shared."""
    torch.manual_seed(SEED_VAE_LATENT)
    lat = torch.randn(1, 4, 16, 16)
    rec.put("vae.latent", lat, f"randn latent after manual_seed({SEED_VAE_LATENT})")
    rec.put("vae.decoded", vae.decode(lat / scaling).sample, f"vae.decode(vae.latent / {scaling}).sample, raw (unclamped)")
    torch.manual_seed(SEED_VAE_IMAGE)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    rec.put("vae.image", img, f"uniform image in [-1,1): rand*2-1 after manual_seed({SEED_VAE_IMAGE})")
    rec.put("vae.encoded_mean", vae.encode(img).latent_dist.mean * scaling, f"vae.encode(vae.image).latent_dist.mean * {scaling}")


@torch.no_grad()
def bilinear(lat: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(lat, size=(h, w), mode="bilinear", antialias=False)


@torch.no_grad()
def hires_run(model_wrap, cfg_model, conds1, conds2, size: dict, scaling: float, vae, upscale=bilinear) -> dict:
    """A1111 hires fix with k-diffusion: pass 1 txt2img (Euler), latent upscale (bilinear,
    no antialias, unless `upscale(latent, h, w)` says otherwise), pass 2 img2img over the last
    STEPS2 + 1 of int(STEPS2 / DENOISE) sigmas, both passes seeded with SEED; conds* =
    (cond, uncond) given to cfg_model.  Shared."""
    f = VAE_FACTOR
    w1, h1, w2, h2 = size["width1"], size["height1"], size["width2"], size["height2"]
    sig1 = model_wrap.get_sigmas(STEPS1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([4, h1 // f, w1 // f]).unsqueeze(0)
    extra1 = {"cond": conds1[0], "uncond": conds1[1], "cond_scale": CFG}
    lat1 = k_diffusion.sampling.sample_euler(cfg_model, noise1 * sig1[0], sig1, extra_args=extra1, disable=True)
    up = upscale(lat1, h2 // f, w2 // f)
    sig2 = model_wrap.get_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1) :]
    torch.manual_seed(SEED)
    noise2 = torch.randn([4, h2 // f, w2 // f]).unsqueeze(0)
    extra2 = {"cond": conds2[0], "uncond": conds2[1], "cond_scale": CFG}
    lat2 = k_diffusion.sampling.sample_euler(cfg_model, up + noise2 * sig2[0], sig2, extra_args=extra2, disable=True)
    image = torch.clamp((vae.decode(lat2 / scaling).sample + 1.0) / 2.0, 0.0, 1.0)
    image_u8 = (image[0].permute(1, 2, 0) * 255.0).to(torch.uint8)  # truncation toward zero, HWC
    return {
        "sig1": sig1, "sig2": sig2, "noise1": noise1, "noise2": noise2,
        "lat1": lat1, "up": up, "lat2": lat2, "image": image, "image_u8": image_u8,
    }


def put_run(rec: Recorder, run: dict, size: dict, scaling: float, sampler: str = "sample_euler(CFG)", u8_note: str = "") -> None:
    """The run.* tensors of hires_run; sampler and u8_note only word the descriptions
    (the committed sd1-tiny reference.json says "sample_euler" and notes numpy's astype).  Shared."""
    f = VAE_FACTOR
    w1, h1, w2, h2 = size["width1"], size["height1"], size["width2"], size["height2"]
    rec.put("run.sigmas1", run["sig1"], f"pass-1 sigmas: model_wrap.get_sigmas({STEPS1}) (normal schedule, trailing 0)")
    rec.put("run.sigmas2", run["sig2"], f"pass-2 sigmas: last {STEPS2 + 1} of get_sigmas(int({STEPS2}/{DENOISE}))")
    rec.put("run.noise1", run["noise1"], f"manual_seed({SEED}); randn([4,{h1 // f},{w1 // f}]).unsqueeze(0)")
    rec.put("run.noise2", run["noise2"], f"manual_seed({SEED}); randn([4,{h2 // f},{w2 // f}]).unsqueeze(0)")
    rec.put("run.latent1", run["lat1"], f"pass-1 result: {sampler} from noise1*sigmas1[0]")
    rec.put("run.upscaled", run["up"], f"interpolate(run.latent1, ({h2 // f},{w2 // f}), bilinear, align_corners=False, antialias=False)")
    rec.put("run.latent2", run["lat2"], f"pass-2 result: {sampler} from upscaled + noise2*sigmas2[0]")
    rec.put("run.image", run["image"], f"clamp((vae.decode(latent2/{scaling}).sample + 1)/2, 0, 1) [1,3,{h2},{w2}]")
    rec.put("run.image_u8", run["image_u8"], f"uint8 HWC [{h2},{w2},3] = (run.image*255) truncated toward zero{u8_note}")


@torch.no_grad()
def make_references(tok, text_encoder, unet, vae, alphas_cumprod) -> Recorder:
    rec = Recorder()
    put = rec.put

    ids_p, ids_n = tokenize(tok, PROMPT), tokenize(tok, NEGATIVE)
    if ids_p[0, : len(EXPECTED_PROMPT_IDS)].tolist() != EXPECTED_PROMPT_IDS or ids_p[0, 7:].ne(49407).any():
        raise AssertionError(f"unexpected token ids for {PROMPT!r}: {ids_p[0, :10].tolist()}")
    put("tokens.prompt", ids_p, f"int64 CLIP ids of PROMPT {PROMPT!r}, BOS..EOS then padded with EOS (49407) to 77")
    put("tokens.negative", ids_n, "int64 CLIP ids of NEGATIVE '' (BOS, EOS, EOS padding) [1,77]")

    out_p = text_encoder(input_ids=ids_p, output_hidden_states=True)
    out_n = text_encoder(input_ids=ids_n)
    text_p, text_n = out_p.last_hidden_state, out_n.last_hidden_state
    skip2 = text_encoder.final_layer_norm(out_p.hidden_states[-2])
    put("text.prompt", text_p, "text_encoder(tokens.prompt).last_hidden_state (final layer norm; clip_skip=1)")
    put("text.negative", text_n, "text_encoder(tokens.negative).last_hidden_state (clip_skip=1)")
    put("text.prompt.skip2", skip2, "final_layer_norm(hidden state after the penultimate layer) of tokens.prompt (A1111 clip_skip=2)")

    x, t = unet_inputs()
    ctx = torch.cat([text_n, text_p])
    put("unet.x", x, f"UNet input latents, randn after manual_seed({SEED_UNET_X})")
    put("unet.t", t, "UNet timesteps (fractional, float32)")
    put("unet.context", ctx, "cat(text.negative, text.prompt) along batch")
    put("unet.eps", unet(x, t, encoder_hidden_states=ctx).sample, "unet(unet.x, unet.t, encoder_hidden_states=unet.context).sample")

    put_vae_refs(rec, vae, SCALING_FACTOR)

    model_wrap = UNetEpsDenoiser(unet, alphas_cumprod, quantize=False)
    put("sigmas.model", model_wrap.sigmas, "model sigma table sqrt((1-ac)/ac), ascending, ac = float32 alphas_cumprod buffer")

    # pass 1: txt2img; pass 2: latent upscale + img2img (same prompts in both passes)
    size = {"width1": WIDTH1, "height1": HEIGHT1, "width2": WIDTH2, "height2": HEIGHT2}
    conds = (text_p, text_n)  # (cond, uncond)
    run = hires_run(model_wrap, CFGDenoiser(model_wrap), conds, conds, size, SCALING_FACTOR, vae)
    put_run(rec, run, size, SCALING_FACTOR, sampler="sample_euler", u8_note=" (numpy astype(uint8))")
    return rec


def tensor_summary(t: torch.Tensor) -> dict:
    f = t.double()
    return {"min": f.min().item(), "max": f.max().item(), "mean": f.mean().item(), "std": f.std().item() if t.numel() > 1 else 0.0}


def tensors_json(rec: Recorder) -> dict:
    """reference.json's "tensors": shape, dtype, description and (floating) summary; shared."""
    return {
        k: {
            "shape": list(v.shape),
            "dtype": str(v.dtype).replace("torch.", ""),
            "desc": rec.D[k],
            **(tensor_summary(v) if v.is_floating_point() else {}),
        }
        for k, v in rec.R.items()
    }


def check_finite(rec: Recorder) -> None:
    for k, v in rec.R.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise AssertionError(f"{k} has non-finite values")


def write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------
def parse_args_and_setup(doc: str, folder_flag: str, folder_default: str) -> argparse.Namespace:
    """Command line (folder_flag DIR, --bpe PATH), then single-threaded deterministic torch; shared."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument(folder_flag, default=folder_default)
    ap.add_argument("--bpe", default=None, help="path to OpenAI bpe_simple_vocab_16e6.txt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return args


def main() -> None:
    args = parse_args_and_setup(__doc__, "--out", "tests/data/sd1-tiny")
    out = args.out
    ddir = os.path.join(out, "diffusers")
    tok_dir = os.path.join(ddir, "tokenizer")
    if os.path.isdir(ddir):
        shutil.rmtree(ddir)
    os.makedirs(out, exist_ok=True)

    # 1. tokenizer
    bpe = clip_vocab.find_bpe_file(args.bpe)
    clip_vocab.write_tokenizer_dir(tok_dir, bpe, MAX_LEN)
    tok = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    print(f"tokenizer: {bpe} -> {tok_dir} ({len(tok)} tokens)")

    # 2. models + diffusers folder
    text_encoder, unet, vae, scheduler = build_models()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(ddir, safe_serialization=True)
    # Keep the tokenizer folder in the classic SD 1.x form (vocab.json + merges.txt, no tokenizer.json).
    shutil.rmtree(tok_dir)
    clip_vocab.write_tokenizer_dir(tok_dir, bpe, MAX_LEN)
    # transformers 5 saves CLIPTextModel without the 'text_model.' wrapper; rewrite it the way
    # every published SD 1.x diffusers repo has it (transformers 5 still loads it).
    te_file = os.path.join(ddir, "text_encoder", "model.safetensors")
    save_file(text_encoder_hf_state_dict(text_encoder), te_file, metadata={"format": "pt"})
    tok = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    te2 = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), local_files_only=True)
    assert_same("text_encoder reload", te2.state_dict(), text_encoder.state_dict())
    print(f"diffusers pipeline saved to {ddir}")

    # 3. single-file LDM checkpoint + independent verification
    ldm_path = os.path.join(out, "sd1-tiny.safetensors")
    ckpt = to_ldm(text_encoder, unet, vae)
    save_file(ckpt, ldm_path)
    n = verify_ldm(ldm_path, ddir, text_encoder, unet, vae)
    print(f"LDM round trip matched: {n} tensors in {ldm_path} == diffusers weights "
          "(convert_ldm_*_checkpoint and StableDiffusionPipeline.from_single_file)")

    # 4. references
    alphas_cumprod = ckpt["alphas_cumprod"]
    rec = make_references(tok, text_encoder, unet, vae, alphas_cumprod)
    check_finite(rec)
    R = rec.R
    ref_path = os.path.join(out, "reference.safetensors")
    save_file(R, ref_path)
    meta = {
        "generator": "scripts/make_sd1_reference.py",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "k_diffusion": getattr(k_diffusion, "__version__", "unknown"),
        },
        "settings": {
            "prompt": PROMPT,
            "negative": NEGATIVE,
            "seed": SEED,
            "cfg": CFG,
            "cfg_batch_order": "uncond first: cat([uncond_ctx, cond_ctx])",
            "width1": WIDTH1, "height1": HEIGHT1,
            "width2": WIDTH2, "height2": HEIGHT2,
            "latent_factor": VAE_FACTOR,
            "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "sampler": "euler", "schedule": "normal",
            "upscaler": "latent", "upscale_mode": "bilinear", "antialias": False,
            "clip_skip": 1,
            "model_seed": MODEL_SEED,
            "unet_t": UNET_T,
            "seeds": {"unet.x": SEED_UNET_X, "vae.latent": SEED_VAE_LATENT, "vae.image": SEED_VAE_IMAGE},
            "denoiser": "k_diffusion.external.DiscreteEpsDDPMDenoiser(quantize=False) over alphas_cumprod buffer of sd1-tiny.safetensors",
        },
        "scalars": {
            "scaling_factor": SCALING_FACTOR,
            "beta_start": BETA_START, "beta_end": BETA_END, "num_train_timesteps": NUM_TRAIN_T,
            "sigma_min": R["sigmas.model"][0].item(), "sigma_max": R["sigmas.model"][-1].item(),
            "text_hidden": 32, "text_heads": 1, "unet_heads": 8,
        },
        "tensors": tensors_json(rec),
    }
    write_json(os.path.join(out, "reference.json"), meta)

    # summary
    total = 0
    files = []
    for root, _, names in os.walk(out):
        for nm in names:
            p = os.path.join(root, nm)
            files.append((os.path.relpath(p, out), os.path.getsize(p)))
    files.sort()
    for rel, size in files:
        total += size
    print("references: " + ", ".join(f"{k}{list(v.shape)}" for k, v in R.items()))
    print(f"run.latent2 mean/std {R['run.latent2'].mean():.4f}/{R['run.latent2'].std():.4f}; "
          f"run.image_u8 mean {R['run.image_u8'].float().mean():.2f}")
    print(f"wrote {len(files)} files under {out}: {total} bytes total")


if __name__ == "__main__":
    main()
