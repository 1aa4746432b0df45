#!/usr/bin/env python3
"""Record reference outputs for hiresfix's UNet patches: FreeU (v1, v2) and Kohya Deep Shrink.

    python3 scripts/make_patch_reference.py [--out tests/data/patches]

Loads the UNets of the committed tiny models (tests/data/sd1-tiny/diffusers, family "sd1";
tests/data/sdxl-tiny/diffusers, family "sdxl") in float32 and runs them on fixed random
inputs at two noise levels, sigma_in = 8.0 (inside Deep Shrink's default window) and
sigma_out = 0.3 (outside it).  Writes, under --out:
  reference.safetensors   inputs and outputs (float32), names "<family>.<what>"
  reference.json          settings, scalars (t, percent_to_sigma), every case's options,
                          self-check errors and each case's difference from the plain output
  README.md               what each tensor is

The patches are hooks of `ldm_forward`, a transcription of ComfyUI's / LDM's
`UNetModel.forward` (comfy/ldm/modules/diffusionmodules/openaimodel.py) over the diffusers
UNet's modules, with its three hook points (input_block_patch, input_block_patch_after_skip,
output_block_patch) and the LDM block numbering:
  * FreeU v1: diffusers `apply_freeu` / `fourier_filter` (utils/torch_utils.py), at up
    block 0 with (b1, s1) and up block 1 with (b2, s2); checked against diffusers'
    own `unet.enable_freeu(...)`.
  * FreeU v2: ComfyUI's FreeU_V2 formula (comfy_extras/nodes_freelunch.py), applied at
    the same places as diffusers (up block 0 and 1), not at ComfyUI's channel-count keys
    (model_channels * 4 / * 2, which no up block of these tiny models has).
  * Deep Shrink: ComfyUI's PatchModelAddDownscale (comfy_extras/nodes_model_downscale.py),
    its sigma window from ModelSamplingDiscrete.percent_to_sigma (comfy/model_sampling.py),
    resizes with comfy/utils.py common_upscale (plain F.interpolate, crop "disabled").
The UNet timestep is k-diffusion's DiscreteSchedule.sigma_to_t (log-sigma interpolation,
not quantised) over the float32 alphas_cumprod, as the other reference scripts do.

Everything runs on CPU in float32, offline, and is deterministic (reruns give
byte-identical files).  Needs torch, diffusers, k-diffusion, safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Importing make_sd1_reference sets the offline environment and quiets diffusers logging,
# so it comes before every Hugging Face import.
import make_sd1_reference as sd1  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import diffusers  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import k_diffusion  # noqa: E402
import k_diffusion.external  # noqa: E402

# ----------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------
FAMILIES = {
    # family: (diffusers folder, x shape, seed)
    "sd1": ("tests/data/sd1-tiny/diffusers", (2, 4, 16, 16), 101),
    "sdxl": ("tests/data/sdxl-tiny/diffusers", (2, 4, 16, 24), 102),
}
SDXL_TIME_IDS = [32, 48, 0, 0, 32, 48]  # (orig h, w, crop top, left, target h, w), pixels of the 16x24 latent
SIGMA_IN, SIGMA_OUT = 8.0, 0.3
FREEU = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
DEEP_SHRINK = {  # ComfyUI PatchModelAddDownscale defaults
    "block_number": 3,
    "downscale_factor": 2.0,
    "start_percent": 0.0,
    "end_percent": 0.35,
    "downscale_after_skip": True,
    "downscale_method": "bicubic",
    "upscale_method": "bicubic",
}
DEEP_SHRINK_B4 = dict(DEEP_SHRINK, block_number=4, downscale_factor=1.5, end_percent=0.5, downscale_method="bilinear")
DEEP_SHRINK_BEFORE_SKIP = dict(DEEP_SHRINK, downscale_after_skip=False)
SELF_CHECK_TOL = 1e-6
CHANGED_TOL = 1e-3


# ----------------------------------------------------------------------------
# ldm_forward: ComfyUI/LDM UNetModel.forward over a diffusers UNet2DConditionModel
# ----------------------------------------------------------------------------
def input_block_layout(unet) -> list[list[str]]:
    """LDM input_blocks as lists of diffusers module names: 0 = conv_in, then per down
    block one entry per resnet (+ its attention), then one for its downsampler."""
    blocks = [["conv_in"]]
    for b, down in enumerate(unet.down_blocks):
        attns = getattr(down, "attentions", None)
        for j in range(len(down.resnets)):
            blocks.append([f"down_blocks.{b}.resnets.{j}"] + ([f"down_blocks.{b}.attentions.{j}"] if attns else []))
        if down.downsamplers is not None:
            blocks.append([f"down_blocks.{b}.downsamplers.0"])
    return blocks


def output_block_layout(unet) -> list[tuple[int, list[str]]]:
    """LDM output_blocks as (stage, diffusers module names); stage = the up block's index
    (diffusers' resolution_idx, 0 = deepest); the upsampler belongs to the last block."""
    blocks = []
    for b, up in enumerate(unet.up_blocks):
        attns = getattr(up, "attentions", None)
        n = len(up.resnets)
        for j in range(n):
            names = [f"up_blocks.{b}.resnets.{j}"] + ([f"up_blocks.{b}.attentions.{j}"] if attns else [])
            if j == n - 1 and up.upsamplers is not None:
                names.append(f"up_blocks.{b}.upsamplers.0")
            blocks.append((b, names))
    return blocks


def time_embedding(unet, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
    """diffusers time_proj -> time_embedding, plus add_embedding(y) (LDM label_emb) for SDXL."""
    emb = unet.time_embedding(unet.time_proj(t.expand(batch)).to(torch.float32))
    if unet.config.addition_embed_type == "text_time":
        emb = emb + unet.add_embedding(y)
    elif y is not None:
        raise ValueError("y given to a UNet without a vector (label_emb) input")
    return emb


@torch.no_grad()
def ldm_forward(unet, x, t, context, y=None, input_patch=None, input_after_skip_patch=None, output_patch=None):
    """The UNet in LDM order with ComfyUI's hooks:
    input_patch(h, block) -> h and input_after_skip_patch(h, block) -> h around `skips.append(h)`
    after each input block; output_patch(h, hsp, block, stage) -> (h, hsp) before each output
    block's concat.  Upsamplers get output_size = the spatial size of the next skip."""
    emb = time_embedding(unet, t, y, x.shape[0])
    skips = []
    h = x
    block = 0
    for down in [None] + list(unet.down_blocks):
        if down is None:
            steps = [lambda h: unet.conv_in(h)]
        else:
            attns = getattr(down, "attentions", None)
            steps = []
            for j, resnet in enumerate(down.resnets):
                attn = attns[j] if attns else None
                steps.append(lambda h, r=resnet, a=attn: _res_attn(r, a, h, emb, context))
            if down.downsamplers is not None:
                steps.append(lambda h, d=down.downsamplers[0]: d(h))
        for step in steps:
            h = step(h)
            if input_patch is not None:
                h = input_patch(h, block)
            skips.append(h)
            if input_after_skip_patch is not None:
                h = input_after_skip_patch(h, block)
            block += 1

    h = unet.mid_block(h, emb, encoder_hidden_states=context)

    block = 0
    for stage, up in enumerate(unet.up_blocks):
        attns = getattr(up, "attentions", None)
        n = len(up.resnets)
        for j, resnet in enumerate(up.resnets):
            hsp = skips.pop()
            if output_patch is not None:
                h, hsp = output_patch(h, hsp, block, stage)
            h = torch.cat([h, hsp], dim=1)
            h = _res_attn(resnet, attns[j] if attns else None, h, emb, context)
            if j == n - 1 and up.upsamplers is not None:
                h = up.upsamplers[0](h, output_size=tuple(skips[-1].shape[-2:]))
            block += 1
    if skips:
        raise AssertionError(f"{len(skips)} skips left over")
    h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)


def _res_attn(resnet, attn, h, emb, context):
    h = resnet(h, emb)
    if attn is not None:
        h = attn(h, encoder_hidden_states=context, return_dict=False)[0]
    return h


# ----------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------
def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """diffusers fourier_filter (= ComfyUI Fourier_filter): centred FFT, the
    2*threshold x 2*threshold low-frequency square multiplied by scale, inverse FFT, real part."""
    x_freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    B, C, H, W = x_freq.shape
    mask = torch.ones((B, C, H, W))
    crow, ccol = H // 2, W // 2
    mask[..., crow - threshold : crow + threshold, ccol - threshold : ccol + threshold] = scale
    x_freq = torch.fft.ifftshift(x_freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(x_freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_stage_params(stage: int, b1, b2, s1, s2):
    return {0: (b1, s1), 1: (b2, s2)}.get(stage)


def freeu_v1_patch(b1, b2, s1, s2):
    """diffusers apply_freeu: first half of h's channels * b, skip Fourier-filtered with s."""
    def patch(h, hsp, block, stage):
        p = freeu_stage_params(stage, b1, b2, s1, s2)
        if p is None:
            return h, hsp
        b, s = p
        half = h.shape[1] // 2
        h = h.clone()  # apply_freeu writes in place; keep the caller's tensor intact
        h[:, :half] = h[:, :half] * b
        return h, fourier_filter(hsp, threshold=1, scale=s)
    return patch


def freeu_v2_patch(b1, b2, s1, s2):
    """ComfyUI FreeU_V2: the backbone factor follows the channel-mean map, min-max
    normalised per sample: h[:, :C/2] *= (b - 1) * mean01 + 1; skip Fourier-filtered with s."""
    def patch(h, hsp, block, stage):
        p = freeu_stage_params(stage, b1, b2, s1, s2)
        if p is None:
            return h, hsp
        b, s = p
        hidden_mean = h.mean(1).unsqueeze(1)  # [B,1,H,W]
        B = hidden_mean.shape[0]
        hmax, _ = torch.max(hidden_mean.view(B, -1), dim=-1, keepdim=True)
        hmin, _ = torch.min(hidden_mean.view(B, -1), dim=-1, keepdim=True)
        hidden_mean = (hidden_mean - hmin.unsqueeze(2).unsqueeze(3)) / (hmax - hmin).unsqueeze(2).unsqueeze(3)
        half = h.shape[1] // 2
        h = h.clone()
        h[:, :half] = h[:, :half] * ((b - 1) * hidden_mean + 1)
        return h, fourier_filter(hsp, threshold=1, scale=s)
    return patch


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """comfy/utils.py common_upscale with crop "disabled": F.interpolate(size=(height, width),
    mode=method), align_corners and antialias left at their defaults (bislerp/lanczos not needed)."""
    if method not in ("bicubic", "bilinear", "nearest-exact", "area"):
        raise ValueError(f"unsupported method {method}")
    return F.interpolate(samples, size=(height, width), mode=method)


class ComfySampling:
    """ComfyUI ModelSamplingDiscrete for the SD "linear" schedule: betas =
    linspace(sqrt(start), sqrt(end), 1000, float64)**2, alphas_cumprod = cumprod(1 - betas) in
    float64, sigmas = sqrt((1 - ac) / ac) then float32, log_sigmas = log(float64 sigmas) then
    float32; sigma(t) interpolates log_sigmas linearly in float32."""

    def __init__(self, beta_start: float, beta_end: float, n: int):
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
        ac = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - ac) / ac) ** 0.5
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(timestep.float(), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


def deep_shrink_patches(opts: dict, sampling: ComfySampling, sigma: float, log: list):
    """ComfyUI PatchModelAddDownscale as (input_patch, input_after_skip_patch, output_patch);
    sigma is ComfyUI's transformer_options["sigmas"][0].item() (a float32 value).
    Each resize done is appended to log as (where, block, from [h, w], to [h, w])."""
    sigma_start = sampling.percent_to_sigma(opts["start_percent"])
    sigma_end = sampling.percent_to_sigma(opts["end_percent"])
    factor = opts["downscale_factor"]

    def input_patch(h, block):
        if block == opts["block_number"] and sigma_end <= sigma <= sigma_start:
            new = common_upscale(h, round(h.shape[-1] * (1.0 / factor)), round(h.shape[-2] * (1.0 / factor)), opts["downscale_method"])
            log.append(("input", block, list(h.shape[-2:]), list(new.shape[-2:])))
            h = new
        return h

    def output_patch(h, hsp, block, stage):
        # ComfyUI compares the height only; the cases here never differ in width alone.
        if (h.shape[2] != hsp.shape[2]) != (h.shape[-2:] != hsp.shape[-2:]):
            raise AssertionError(f"output block {block}: {tuple(h.shape)} vs {tuple(hsp.shape)} differ in width only")
        if h.shape[2] != hsp.shape[2]:
            new = common_upscale(h, hsp.shape[-1], hsp.shape[-2], opts["upscale_method"])
            log.append(("output", block, list(h.shape[-2:]), list(new.shape[-2:])))
            h = new
        return h, hsp

    if opts["downscale_after_skip"]:
        return None, input_patch, output_patch
    return input_patch, None, output_patch


# ----------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------
def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def check(name: str, err: float, tol: float = SELF_CHECK_TOL) -> float:
    print(f"  self-check {name}: max|a-b|/max|b| = {err:.3e}")
    if not err < tol:
        raise AssertionError(f"{name}: relative error {err:.3e} >= {tol:g}")
    return err


def load_unet(folder: str) -> UNet2DConditionModel:
    unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), local_files_only=True, torch_dtype=torch.float32)
    return unet.to(torch.float32).eval()


def schedule_settings(folder: str) -> dict:
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    out = {k: cfg[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    want = {"beta_start": sd1.BETA_START, "beta_end": sd1.BETA_END, "beta_schedule": "scaled_linear", "num_train_timesteps": sd1.NUM_TRAIN_T}
    if out != want:
        raise AssertionError(f"{folder}: scheduler {out} != {want}")
    return out


@torch.no_grad()
def run_family(fam: str, rec: sd1.Recorder) -> dict:
    folder, shape, seed = FAMILIES[fam]
    print(f"{fam}: {folder}")
    sched = schedule_settings(folder)
    unet = load_unet(folder)
    sdxl = unet.config.addition_embed_type == "text_time"

    torch.manual_seed(seed)
    x = torch.randn(shape)
    context = torch.randn(shape[0], 77, unet.config.cross_attention_dim)
    added, y = None, None
    if sdxl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        text_embeds = torch.randn(shape[0], pooled)
        time_ids = torch.tensor([SDXL_TIME_IDS] * shape[0], dtype=torch.float32)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        y = torch.cat([text_embeds, unet.add_time_proj(time_ids.flatten()).reshape(shape[0], -1)], dim=1)
        if y.shape[1] != unet.config.projection_class_embeddings_input_dim:
            raise AssertionError(f"y has {y.shape[1]} columns")

    # sigma -> t as k-diffusion (A1111) does; percent -> sigma as ComfyUI does.
    ac32 = sd1.ldm_schedule_buffers()["alphas_cumprod"]
    kwrap = k_diffusion.external.DiscreteEpsDDPMDenoiser(unet, ac32, quantize=False)
    comfy = ComfySampling(sched["beta_start"], sched["beta_end"], sched["num_train_timesteps"])
    sig = {"in": SIGMA_IN, "out": SIGMA_OUT}
    t = {k: kwrap.sigma_to_t(torch.full((shape[0],), v, dtype=torch.float32)) for k, v in sig.items()}
    sigma32 = {k: torch.tensor(v, dtype=torch.float32).item() for k, v in sig.items()}
    p2s = {p: comfy.percent_to_sigma(p) for p in (0.0, 0.35, 0.5)}
    if not sigma32["out"] < p2s[0.35] < sigma32["in"]:
        raise AssertionError(f"sigma_out {SIGMA_OUT} < percent_to_sigma(0.35) {p2s[0.35]} < sigma_in {SIGMA_IN} fails")
    if not sigma32["in"] < p2s[0.0]:
        raise AssertionError("sigma_in above sigma_start")

    def diffusers_unet(tt):
        kw = {"added_cond_kwargs": added} if sdxl else {}
        return unet(x, tt, encoder_hidden_states=context, **kw).sample

    def ldm(tt, **patches):
        return ldm_forward(unet, x, tt, context, y, **patches)

    put = rec.put
    put(f"{fam}.x", x, f"UNet input latents [B,4,H,W], randn after manual_seed({seed})")
    put(f"{fam}.context", context, "encoder_hidden_states [B,77,cross_attention_dim], randn right after x")
    if sdxl:
        put(
            f"{fam}.y", y,
            "LDM label_emb input [B,adm_in_channels] = cat(text_embeds (randn right after context, [B,"
            f"{y.shape[1] - 6 * unet.config.addition_time_embed_dim}]), unet.add_time_proj(time_ids.flatten()).reshape(B,-1)) "
            f"with time_ids {SDXL_TIME_IDS} per row",
        )

    checks = {}
    cases = {}
    plain = {}
    for k in ("in", "out"):
        plain[k] = diffusers_unet(t[k])
        ldm_plain = ldm(t[k])
        checks[f"ldm_forward_vs_diffusers_plain_{k}"] = check(f"{fam} ldm_forward == diffusers unet (sigma_{k})", rel(ldm_plain, plain[k]))
        put(f"{fam}.plain_{k}", plain[k], f"unpatched diffusers unet(x, t_{k}, context{', added_cond_kwargs' if sdxl else ''}).sample")
        if k == "in":
            ldm_plain_in = ldm_plain

    # FreeU v1: diffusers' own implementation vs the transcription.
    unet.enable_freeu(**FREEU)
    freeu_v1 = diffusers_unet(t["in"])
    unet.disable_freeu()
    if rel(diffusers_unet(t["in"]), plain["in"]) != 0.0:
        raise AssertionError("disable_freeu left the UNet changed")
    ldm_v1 = ldm(t["in"], output_patch=freeu_v1_patch(**FREEU))
    checks["ldm_freeu_v1_vs_diffusers_enable_freeu_in"] = check(f"{fam} ldm_forward+FreeU v1 == diffusers enable_freeu", rel(ldm_v1, freeu_v1))
    put(f"{fam}.freeu_v1_in", freeu_v1, f"diffusers unet.enable_freeu({fmt(FREEU)}) output at t_in")
    cases["freeu_v1_in"] = {"patch": "freeu_v1", "sigma": SIGMA_IN, "options": dict(FREEU), "source": "diffusers enable_freeu"}

    freeu_v2 = ldm(t["in"], output_patch=freeu_v2_patch(**FREEU))
    put(f"{fam}.freeu_v2_in", freeu_v2, f"ldm_forward with the FreeU v2 output patch ({fmt(FREEU)}; up block 0: b1/s1, up block 1: b2/s2) at t_in")
    cases["freeu_v2_in"] = {"patch": "freeu_v2", "sigma": SIGMA_IN, "options": dict(FREEU), "source": "ldm_forward transcription"}

    ds_cases = [
        ("deep_shrink_in", DEEP_SHRINK, "in"),
        ("deep_shrink_out", DEEP_SHRINK, "out"),
        ("deep_shrink_b4_in", DEEP_SHRINK_B4, "in"),
        ("deep_shrink_before_skip_in", DEEP_SHRINK_BEFORE_SKIP, "in"),
    ]
    outs = {"freeu_v1_in": freeu_v1, "freeu_v2_in": freeu_v2}
    for name, opts, k in ds_cases:
        log: list = []
        ip, ia, op = deep_shrink_patches(opts, comfy, sigma32[k], log)
        out = ldm(t[k], input_patch=ip, input_after_skip_patch=ia, output_patch=op)
        outs[name] = out
        put(f"{fam}.{name}", out, f"ldm_forward with Deep Shrink ({fmt(opts)}) at t_{k}")
        cases[name] = {
            "patch": "deep_shrink", "sigma": sig[k], "options": dict(opts),
            "sigma_start": comfy.percent_to_sigma(opts["start_percent"]),
            "sigma_end": comfy.percent_to_sigma(opts["end_percent"]),
            "active": bool(log),
            "resizes": [{"where": w, "block": b, "from": f, "to": to} for w, b, f, to in log],
            "source": "ldm_forward transcription",
        }
        if k == "out":
            if log or not torch.equal(out, ldm(t[k])):
                raise AssertionError(f"{name}: Deep Shrink changed the output outside its window")
            checks["deep_shrink_out_equals_ldm_plain_out"] = True
            checks["deep_shrink_out_vs_diffusers_plain_out"] = check(f"{fam} deep_shrink_out == diffusers plain_out", rel(out, plain["out"]))
        elif not log:
            raise AssertionError(f"{name}: Deep Shrink did not trigger")

    for name, out in outs.items():
        k = name.rsplit("_", 1)[1]
        d = rel(out, plain[k])
        cases[name]["rel_diff_vs_plain"] = d
        print(f"  {name}: max|case - plain_{k}|/max|plain_{k}| = {d:.3e}")
        if k == "in" and not d > CHANGED_TOL:
            raise AssertionError(f"{name} differs from plain_in by only {d:.3e}")
    checks["ldm_plain_in_vs_diffusers_plain_in_bitwise"] = bool(torch.equal(ldm_plain_in, plain["in"]))

    return {
        "model": folder,
        "unet": {
            "block_out_channels": list(unet.config.block_out_channels),
            "layers_per_block": unet.config.layers_per_block,
            "down_block_types": list(unet.config.down_block_types),
            "up_block_types": list(unet.config.up_block_types),
        },
        "input_blocks": input_block_layout(unet),
        "output_blocks": [{"stage": s, "modules": m} for s, m in output_block_layout(unet)],
        "seed": seed,
        "x_shape": list(shape),
        **({"time_ids": SDXL_TIME_IDS} if sdxl else {}),
        "schedule": dict(sched, source=f"{folder}/scheduler/scheduler_config.json"),
        "sigma_in": SIGMA_IN,
        "sigma_out": SIGMA_OUT,
        "t_in": float(t["in"][0].item()),
        "t_out": float(t["out"][0].item()),
        "percent_to_sigma": {"0.0": p2s[0.0], "0.35": p2s[0.35], "0.5": p2s[0.5]},
        "percent_to_sigma_fp32_alphas_cumprod": {
            "0.35": fp32_ac_percent_to_sigma(ac32, 0.35),
            "0.5": fp32_ac_percent_to_sigma(ac32, 0.5),
        },
        "cases": cases,
        "self_checks": checks,
    }


def fp32_ac_percent_to_sigma(ac32: torch.Tensor, percent: float) -> float:
    """The same lookup over sigmas computed from the float32 alphas_cumprod (k-diffusion's
    table), for comparison only."""
    s = comfy_from_sigmas(((1 - ac32) / ac32) ** 0.5)
    return s.percent_to_sigma(percent)


def comfy_from_sigmas(sigmas: torch.Tensor) -> ComfySampling:
    s = ComfySampling.__new__(ComfySampling)
    s.sigmas = sigmas.float()
    s.log_sigmas = sigmas.log().float()
    return s


def fmt(opts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items())


README = """\
# patches: FreeU and Kohya Deep Shrink references

CPU fp32 outputs of the UNets of the committed tiny models (`../sd1-tiny/diffusers` as family `sd1`,
`../sdxl-tiny/diffusers` as `sdxl`, weights loaded as float32) with and without the UNet patches.
`reference.json` has every setting, t for each sigma, ComfyUI's `percent_to_sigma` values, each case's options,
which resizes Deep Shrink did (block, from, to), the self-check errors and each case's
`rel_diff_vs_plain` = max|case - plain| / max|plain|.

The patched outputs come from `ldm_forward` in the generator: the diffusers modules run in ComfyUI's/LDM's
`UNetModel.forward` order with its hooks. Input blocks are numbered as LDM `input_blocks` (0 = conv_in, then one per
resnet [+ attention], one per downsampler); after each: `input_block_patch`, append to the skips,
`input_block_patch_after_skip`. Output blocks are numbered as LDM `output_blocks`; before each: pop the skip,
`output_block_patch(h, skip)`, concat; an upsampler (part of its up block's last output block) resizes to the size
of the next skip (nearest, as ComfyUI passes `output_shape`; with Deep Shrink this can be more than x2, e.g. sdxl
`deep_shrink_in` goes 2x3 -> 8x12 there and needs no output-patch resize). "stage" = the diffusers up block index
(0 = deepest). `input_blocks` / `output_blocks` in reference.json list the diffusers modules of every block.

Tensors (`F` = `sd1` or `sdxl`; shapes `[2,4,16,16]` for sd1, `[2,4,16,24]` for sdxl):

- `F.x` — input latents (randn, seed in reference.json); `F.context` — `[2,77,32]` encoder hidden states (randn).
- `sdxl.y` — `[2,208]` LDM `label_emb` input: cat(text_embeds `[2,16]` (randn), `add_time_proj` of time_ids
  `[32,48,0,0,32,48]` per row); diffusers gets the same as `added_cond_kwargs`.
- `F.plain_in`, `F.plain_out` — unpatched diffusers UNet output at sigma_in = 8.0 / sigma_out = 0.3
  (t = k-diffusion `sigma_to_t`, log-sigma interpolation, not quantised, same t for both rows; values in reference.json).
- `F.freeu_v1_in` — diffusers `unet.enable_freeu(b1=1.3, b2=1.4, s1=0.9, s2=0.2)` at sigma_in: at up block 0 the first
  half of h's channels x b1 and the skip Fourier-filtered (threshold 1, scale s1); up block 1 with b2/s2.
- `F.freeu_v2_in` — ComfyUI `FreeU_V2` formula with the same numbers at the same places (up blocks 0 and 1, NOT
  ComfyUI's channel-count keys): m = mean over channels, min-max normalised per sample;
  `h[:, :C/2] *= (b - 1) * m + 1`; skip Fourier-filtered with s. (`(b - 1)` is a Python double, used as f32.)
- `F.deep_shrink_in`, `F.deep_shrink_out` — ComfyUI `PatchModelAddDownscale` defaults (block 3, factor 2.0,
  start 0.0, end 0.35, downscale after skip, bicubic down and up) at sigma_in (active) and sigma_out (inactive:
  bitwise equal to the unpatched `ldm_forward`; its difference to diffusers' `plain_out` is in reference.json).
- `F.deep_shrink_b4_in` — block 4, factor 1.5, end 0.5, bilinear down, bicubic up, after skip, at sigma_in.
- `F.deep_shrink_before_skip_in` — the defaults with `downscale_after_skip = false` (the skip of block 3 is shrunk
  too), at sigma_in.

Deep Shrink details (ComfyUI): active when `percent_to_sigma(end) <= sigma <= percent_to_sigma(start)`
(ModelSamplingDiscrete: float64 schedule, float32 sigmas/log_sigmas, sigma((1 - p) * 999) log-interpolated;
p <= 0 -> 999999999.9, p >= 1 -> 0.0); the shrunk size is (round(H / f), round(W / f)) with Python's round;
resizes are `F.interpolate(size=..., mode=...)` with default align_corners/antialias; the output patch resizes h to
the skip's size when the heights differ.

Regenerate (offline, deterministic): `python3 scripts/make_patch_reference.py`
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/patches")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)

    rec = sd1.Recorder()
    fams = {fam: run_family(fam, rec) for fam in FAMILIES}
    sd1.check_finite(rec)
    os.makedirs(args.out, exist_ok=True)
    save_file(rec.R, os.path.join(args.out, "reference.safetensors"))
    meta = {
        "generator": "scripts/make_patch_reference.py",
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "k_diffusion": getattr(k_diffusion, "__version__", "unknown"),
        },
        "conventions": {
            "rel": "max|a - b| / max|b| over all elements, float64",
            "self_check_tolerance": SELF_CHECK_TOL,
            "changed_tolerance": CHANGED_TOL,
            "t": "k_diffusion.external.DiscreteEpsDDPMDenoiser(quantize=False).sigma_to_t over float32 alphas_cumprod "
                 "(float64 betas = linspace(sqrt(start), sqrt(end))**2, cumprod, then float32)",
            "percent_to_sigma": "ComfyUI ModelSamplingDiscrete: float64 alphas_cumprod, float32 sigmas and log_sigmas",
            "deep_shrink_sigma": "compared as the float32 sigma (ComfyUI transformer_options['sigmas'][0].item())",
            "freeu_stages": "up block 0: (b1, s1), up block 1: (b2, s2), as diffusers; other up blocks untouched",
            "upsampler_output_size": "spatial size of the next skip (ComfyUI output_shape), nearest",
        },
        "settings": {
            "sigma_in": SIGMA_IN,
            "sigma_out": SIGMA_OUT,
            "freeu": FREEU,
            "deep_shrink": DEEP_SHRINK,
            "deep_shrink_b4": DEEP_SHRINK_B4,
            "deep_shrink_before_skip": DEEP_SHRINK_BEFORE_SKIP,
        },
        "families": fams,
        "tensors": sd1.tensors_json(rec),
    }
    sd1.write_json(os.path.join(args.out, "reference.json"), meta)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print("tensors: " + ", ".join(f"{k}{list(v.shape)}" for k, v in rec.R.items()))
    print(f"wrote {args.out}: {total} bytes")


if __name__ == "__main__":
    main()
