#!/usr/bin/env python3
"""Record img2img and masked-img2img references on the tiny SD 1.x model for hiresfix.

    python3 scripts/make_img2img_reference.py [--out tests/data/img2img]

Reuses tests/data/sd1-tiny (made by make_sd1_reference.py; not changed here) and writes,
under --out:
  init.png, mask.png        a fixed small init image (40x24 RGB) and mask (40x24 L)
  reference.safetensors     reference tensors (see reference.json)
  reference.json            settings of every case and a description of every tensor

A1111's img2img (modules/processing.py StableDiffusionProcessingImg2Img.init and sample,
modules/sd_samplers_kdiffusion.py sample_img2img, modules/sd_samplers_cfg_denoiser.py,
modules/images.py resize_image, modules/masking.py) is transcribed here on diffusers' UNet
and VAE and k-diffusion's Euler:
  * pixels: PIL as A1111 uses it (LANCZOS resizes of the image, the default BICUBIC resize of
    the mask to the latent); create_binary_mask (> 128); the mask blur is cv2.GaussianBlur's
    kernel (2*int(2.5*blur+0.5)+1, BORDER_REFLECT_101) summed in float64 and rounded (cv2 is
    not installed here; its 8-bit fixed point may differ by one level);
  * the VAE posterior MEAN (A1111 samples it; hiresfix uses the mean to be deterministic);
  * sigmas of `steps` from index steps - t_enc - 1 (t_enc + 1 steps, t_enc + 2 sigmas) with
    t_enc = int(min(denoise, 0.999) * steps);
    x = init_latent + noise * sigmas[0], noise = manual_seed(SEED) randn;
  * with a mask: denoised = init_latent * mask + nmask * denoised after CFG each step, and
    samples * nmask + init_latent * mask at the end.
Everything runs on CPU in float32 and is deterministic.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (sets up the offline environment)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402
import k_diffusion.sampling  # noqa: E402

SEED = 1234
CFG = 5.0
WIDTH = HEIGHT = 32
F_VAE = sd1.VAE_FACTOR
STEPS = 6
DENOISE = 0.6
HIRES_STEPS, HIRES_DENOISE = 4, 0.5

CASES = {
    # name: (resize_mode, mask?, mask_blur, inpainting_fill)
    "plain": dict(resize_mode=0, mask=False, blur=0, fill=1),
    "crop": dict(resize_mode=1, mask=False, blur=0, fill=1),
    "masked_blur0": dict(resize_mode=0, mask=True, blur=0, fill=1),
    "masked_blur4": dict(resize_mode=0, mask=True, blur=4, fill=1),
    "masked_nothing": dict(resize_mode=0, mask=True, blur=4, fill=3),
}


def make_inputs(out: str) -> tuple[Image.Image, Image.Image]:
    h, w = 24, 40
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 6 % 256, y * 10 % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    init = Image.fromarray(rgb, "RGB")
    m = np.zeros((h, w), np.uint8)
    m[6:18, 14:30] = 255
    mask = Image.fromarray(m, "L")
    init.save(os.path.join(out, "init.png"))
    mask.save(os.path.join(out, "mask.png"))
    return Image.open(os.path.join(out, "init.png")), Image.open(os.path.join(out, "mask.png"))


def resize_image(resize_mode: int, im: Image.Image, width: int, height: int) -> Image.Image:
    """modules/images.py resize_image with no upscaler (modes 0, 1, 2)."""
    def resize(im, w, h):
        return im.resize((w, h), resample=Image.LANCZOS)

    if resize_mode == 0:
        return resize(im, width, height)
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = resize(im, src_w, src_h)
        res = Image.new(im.mode, (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    raise ValueError(resize_mode)


def masking_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """modules/masking.py fill, transcribed with PIL."""
    from PIL import ImageFilter, ImageOps

    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def create_binary_mask(image: Image.Image) -> Image.Image:
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        return image.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0)
    return image.convert("L").point(lambda x: 255 if x > 128 else 0)


def gaussian_blur(mask: np.ndarray, blur: float) -> np.ndarray:
    """cv2.GaussianBlur(mask, (k, 1), blur) then (1, k): float kernel, BORDER_REFLECT_101."""
    k = 2 * int(2.5 * blur + 0.5) + 1
    xs = np.arange(k) - (k - 1) / 2
    kern = np.exp(-(xs ** 2) / (2 * blur * blur))
    kern /= kern.sum()
    out = mask.astype(np.float64)
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (k // 2, k // 2)
        padded = np.pad(out, pad, mode="reflect")  # numpy "reflect" is cv2 REFLECT_101
        acc = np.zeros_like(out)
        for j in range(k):
            sl = [slice(None), slice(None)]
            sl[axis] = slice(j, j + out.shape[axis])
            acc += kern[j] * padded[tuple(sl)]
        out = np.clip(np.round(acc), 0, 255)
    return out.astype(np.uint8)


@torch.no_grad()
def img2img(case: dict, init: Image.Image, mask_file: Image.Image, vae, model_wrap, conds, rec, name: str):
    image_mask = None
    if case["mask"]:
        image_mask = create_binary_mask(mask_file)
        if case["blur"] > 0:
            image_mask = Image.fromarray(gaussian_blur(np.array(image_mask), case["blur"]))
        image_mask = resize_image(case["resize_mode"], image_mask, WIDTH, HEIGHT)
    image = resize_image(case["resize_mode"], init.convert("RGB"), WIDTH, HEIGHT)
    if image_mask is not None and case["fill"] != 1:
        image = masking_fill(image, image_mask)  # A1111 fills the pixels for 0, 2 and 3
    px = np.array(image).astype(np.float32) / 255.0
    rec.put(f"{name}.pixels", torch.from_numpy(np.array(image)), "uint8 HWC: the image A1111 encodes (resize_image with LANCZOS; masking.fill unless fill is original)")
    source = torch.from_numpy(np.moveaxis(px, 2, 0))[None] * 2 - 1
    init_latent = vae.encode(source).latent_dist.mean * sd1.SCALING_FACTOR
    lh, lw = HEIGHT // F_VAE, WIDTH // F_VAE
    mask = nmask = None
    torch.manual_seed(SEED)
    noise = torch.randn([4, lh, lw]).unsqueeze(0)
    if image_mask is not None:
        latmask = image_mask.convert("RGB").resize((lw, lh))
        latmask = np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0) / 255
        latmask = np.around(latmask[0])
        latmask = np.tile(latmask[None], (4, 1, 1))
        mask = torch.asarray(1.0 - latmask)[None]
        nmask = torch.asarray(latmask)[None]
        rec.put(f"{name}.nmask", nmask[:, :1].contiguous(), "A1111 nmask [1,1,h,w]: round(bicubic resize of the pass-size mask)/255")
        if case["fill"] == 2:
            init_latent = init_latent * mask + noise * nmask
        elif case["fill"] == 3:
            init_latent = init_latent * mask
    rec.put(f"{name}.init_latent", init_latent, "vae.encode(pixels*2-1).latent_dist.mean * scaling (after the latent fill)")
    t_enc = int(min(DENOISE, 0.999) * STEPS)
    sigmas = model_wrap.get_sigmas(STEPS)
    sched = sigmas[STEPS - t_enc - 1:]
    rec.put(f"{name}.sigmas", sched, f"get_sigmas({STEPS})[{STEPS} - t_enc - 1:], t_enc = int(min({DENOISE}, 0.999) * {STEPS})")
    cfg = sd1.CFGDenoiser(model_wrap)

    def denoiser(x, sigma, **extra):
        denoised = cfg(x, sigma, **extra)
        if mask is not None:
            denoised = init_latent * mask + nmask * denoised
        return denoised

    extra = {"cond": conds[0], "uncond": conds[1], "cond_scale": CFG}
    xi = init_latent + noise * sched[0]
    samples = k_diffusion.sampling.sample_euler(denoiser, xi, sched, extra_args=extra, disable=True)
    if mask is not None:
        samples = samples * nmask + init_latent * mask
    rec.put(f"{name}.latent", samples, "pass-1 img2img result (Euler, CFG, mask blend each step and at the end)")
    return samples


@torch.no_grad()
def hires(lat1, model_wrap, conds, rec):
    lh, lw = 2 * HEIGHT // F_VAE, 2 * WIDTH // F_VAE
    up = F.interpolate(lat1, size=(lh, lw), mode="bilinear", antialias=False)
    sig = model_wrap.get_sigmas(int(HIRES_STEPS / HIRES_DENOISE))[-(HIRES_STEPS + 1):]
    torch.manual_seed(SEED)
    noise = torch.randn([4, lh, lw]).unsqueeze(0)
    extra = {"cond": conds[0], "uncond": conds[1], "cond_scale": CFG}
    lat2 = k_diffusion.sampling.sample_euler(sd1.CFGDenoiser(model_wrap), up + noise * sig[0], sig, extra_args=extra, disable=True)
    rec.put("hires.latent2", lat2, f"plain.latent upscaled 2x (latent, bilinear) then {HIRES_STEPS} Euler steps at denoise {HIRES_DENOISE} (hires slicing)")


def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", "tests/data/img2img")
    out = args.out
    os.makedirs(out, exist_ok=True)
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "sd1-tiny")
    ddir = os.path.join(base, "diffusers")
    tok = CLIPTokenizer.from_pretrained(os.path.join(ddir, "tokenizer"), local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), local_files_only=True).eval()
    unet = UNet2DConditionModel.from_pretrained(os.path.join(ddir, "unet"), local_files_only=True).eval()
    vae = AutoencoderKL.from_pretrained(os.path.join(ddir, "vae"), local_files_only=True).eval()
    alphas_cumprod = load_file(os.path.join(base, "sd1-tiny.safetensors"))["alphas_cumprod"]
    model_wrap = sd1.UNetEpsDenoiser(unet, alphas_cumprod, quantize=False)
    with torch.no_grad():
        text_p = text_encoder(input_ids=sd1.tokenize(tok, sd1.PROMPT)).last_hidden_state
        text_n = text_encoder(input_ids=sd1.tokenize(tok, sd1.NEGATIVE)).last_hidden_state
    conds = (text_p, text_n)
    init, mask = make_inputs(out)
    rec = sd1.Recorder()
    results = {name: img2img(case, init, mask, vae, model_wrap, conds, rec, name) for name, case in CASES.items()}
    hires(results["plain"], model_wrap, conds, rec)
    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))
    sd1.write_json(os.path.join(out, "reference.json"), {
        "generator": "scripts/make_img2img_reference.py",
        "settings": {
            "prompt": sd1.PROMPT, "negative": sd1.NEGATIVE, "seed": SEED, "cfg": CFG,
            "width": WIDTH, "height": HEIGHT, "steps": STEPS, "denoise": DENOISE,
            "sampler": "euler", "schedule": "normal",
            "hires": {"scale": 2, "upscaler": "latent", "steps": HIRES_STEPS, "denoise": HIRES_DENOISE},
            "cases": CASES,
            "resize_mode_names": ["just resize", "crop and resize", "resize and fill", "latent upscale"],
            "inpainting_fill_names": ["fill", "original", "latent noise", "latent nothing"],
        },
        "tensors": sd1.tensors_json(rec),
    })
    print("wrote " + ", ".join(f"{k}{list(v.shape)}" for k, v in rec.R.items()))


if __name__ == "__main__":
    main()
