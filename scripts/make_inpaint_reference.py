#!/usr/bin/env python3
"""Build a tiny random SD 1.x *inpainting* model (UNet in_channels 9) and record references.

    python3 scripts/make_inpaint_reference.py [--out tests/data/sd1-inpaint-tiny]

The model is sd1-tiny (tests/data/sd1-tiny: its text encoder, tokenizer, VAE and schedule,
unchanged) with a new random UNet of the same layout whose conv_in takes 9 channels: the
latent, then the mask (1 channel) and the masked image's latent (4), as
runwayml/stable-diffusion-inpainting.  Writes, under --out:

  diffusers/                  a StableDiffusionInpaintPipeline folder: unet/ (fp16 weights)
                              is new; text_encoder, tokenizer, vae and scheduler link to
                              ../../sd1-tiny/diffusers/
  sd1-inpaint-tiny.safetensors  the same weights as one LDM (A1111) checkpoint: sd1-tiny's
                              text encoder, VAE and schedule (fp32) and the UNet (fp16),
                              renamed with make_sd1_reference.py's key map and checked with
                              diffusers' convert_ldm_unet_checkpoint
  init.png, mask.png          the img2img init image and mask of the end-to-end run (32 px)
  reference.safetensors       reference tensors (reference.json describes each)
  reference.json

References:
  (a) unet.*     one denoiser call with image conditioning: k-diffusion
                 DiscreteEpsDDPMDenoiser around a diffusers UNet2DConditionModel called on
                 cat([x * c_in, concat]) (ldm's "hybrid" conditioning: c_concat is
                 concatenated unscaled after the scaled input), for two images and two
                 conditionings;
  (b) inpaint.*  A1111's masked img2img with an inpainting checkpoint, transcribed from
                 modules/processing.py (StableDiffusionProcessingImg2Img.init and
                 inpainting_image_conditioning) and modules/sd_samplers_cfg_denoiser.py
                 (the latent mask blended into `denoised` after each step) and
                 sd_samplers_kdiffusion.py sample_img2img (denoise slicing), for
                 inpainting_mask_weight 1.0 and 0.5;
  (c) txt2img.*  a txt2img run on the inpainting checkpoint with A1111's
                 txt2img_image_conditioning (ones mask, latent of a grey image).

Deviations from A1111, by design: the VAE encodings use the posterior mean (A1111 samples
the posterior with the global torch RNG), and the noise is torch.manual_seed(seed);
torch.randn on the CPU (as every reference of this repository).

Everything runs on CPU in float32, offline, deterministic.  Needs torch, diffusers,
transformers, k-diffusion, safetensors, numpy, pillow.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Sets the offline environment and quiets logging before the Hugging Face imports.
import make_sd1_reference as sd1  # noqa: E402
from make_sd1_reference import (  # noqa: E402
    CFG,
    NEGATIVE,
    PROMPT,
    SCALING_FACTOR,
    SEED,
    UNET_P,
    Recorder,
    apply_module_map,
    assert_same,
    check_finite,
    tensors_json,
    unet_module_map,
    write_json,
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import diffusers  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
import k_diffusion  # noqa: E402
import k_diffusion.external  # noqa: E402
import k_diffusion.sampling  # noqa: E402

MODEL_SEED = 26
SEED_X, SEED_CONCAT, SEED_IMAGE = 261, 262, 263
SIGMA = 2.5  # the denoiser call's sigma
WIDTH = HEIGHT = 32  # the end-to-end run's size in pixels (latent 16x16)
STEPS = 4
DENOISE = 0.75
MASK_WEIGHTS = (1.0, 0.5)
# The masked rectangle (pixels, end exclusive): edges on multiples of 4 px, so that the
# latent mask (a PIL bicubic downscale, rounded) and the conditioning mask (nearest) agree
# whatever resampling an implementation uses.
MASK_BOX = (8, 4, 24, 20)  # x0, y0, x1, y1


def build_unet() -> UNet2DConditionModel:
    """sd1-tiny's UNet layout with a 9-channel conv_in; parameters rounded to fp16 (stored
    in fp16, so the fp32 references use exactly the stored values)."""
    torch.manual_seed(MODEL_SEED)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=9,
        out_channels=4,
        norm_num_groups=32,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=False,
    )
    sd1.randomize_(unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(p.half().float())
    unet.eval()
    return unet


class InpaintEpsDenoiser(k_diffusion.external.DiscreteEpsDDPMDenoiser):
    """A1111's CompVisDenoiser around an inpainting UNet: apply_model(x * c_in, t, cond)
    with ldm's hybrid conditioning, cat([x_scaled] + c_concat, dim=1)."""

    def get_eps(self, x, t, cond, concat):
        return self.inner_model(torch.cat([x, concat], dim=1), t, encoder_hidden_states=cond).sample


class InpaintCFGDenoiser(torch.nn.Module):
    """sd_samplers_cfg_denoiser.CFGDenoiser for one image and one prompt: the cond row, then
    the uncond row, each with the image conditioning; `denoised` blended with the init
    latent by the latent mask after the model call (mask_before_denoising False)."""

    def __init__(self, model, init_latent, mask, nmask):
        super().__init__()
        self.model, self.init_latent, self.mask, self.nmask = model, init_latent, mask, nmask

    def forward(self, x, sigma, cond, uncond, cond_scale, image_cond):
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        ctx = torch.cat([cond, uncond])
        image_cond_in = torch.cat([image_cond, image_cond])
        out = self.model(x_in, sigma_in, cond=ctx, concat=image_cond_in)
        out_cond, out_uncond = out[:1], out[1:]
        denoised = out_uncond + (out_cond - out_uncond) * cond_scale
        return denoised * self.nmask + self.init_latent * self.mask


def make_init_image() -> Image.Image:
    """A smooth gradient with a few random blocks, RGB uint8, WIDTH x HEIGHT."""
    torch.manual_seed(SEED_IMAGE)
    ys = torch.linspace(0, 1, HEIGHT)[:, None].expand(HEIGHT, WIDTH)
    xs = torch.linspace(0, 1, WIDTH)[None, :].expand(HEIGHT, WIDTH)
    rgb = torch.stack([xs, ys, 1 - 0.5 * (xs + ys)], dim=-1)
    blocks = torch.rand(HEIGHT // 8, WIDTH // 8, 3).repeat_interleave(8, 0).repeat_interleave(8, 1)
    img = (0.6 * rgb + 0.4 * blocks).clamp(0, 1)
    return Image.fromarray((img * 255).round().to(torch.uint8).numpy(), "RGB")


def make_mask() -> Image.Image:
    """White (inpaint) rectangle MASK_BOX on black, mode L."""
    m = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    x0, y0, x1, y1 = MASK_BOX
    m[y0:y1, x0:x1] = 255
    return Image.fromarray(m, "L")


def create_binary_mask(image: Image.Image) -> Image.Image:
    """processing.py create_binary_mask."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0)
    else:
        image = image.convert("L")
    return image


@torch.no_grad()
def vae_encode(vae, image: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latent, posterior mean (A1111 samples it)."""
    return vae.encode(image).latent_dist.mean * SCALING_FACTOR


@torch.no_grad()
def inpainting_image_conditioning(vae, source_image, latent_image, image_mask, weight):
    """processing.py inpainting_image_conditioning: the rounded full-size mask, the
    source lerped towards its masked copy by inpainting_mask_weight, VAE-encoded; the
    mask resized (nearest) to the latent; cat([mask, masked latent])."""
    conditioning_mask = np.array(image_mask.convert("L")).astype(np.float32) / 255.0
    conditioning_mask = torch.round(torch.from_numpy(conditioning_mask[None, None]))
    conditioning_image = torch.lerp(source_image, source_image * (1.0 - conditioning_mask), weight)
    conditioning_image = vae_encode(vae, conditioning_image)
    conditioning_mask = F.interpolate(conditioning_mask, size=latent_image.shape[-2:])
    conditioning_mask = conditioning_mask.expand(conditioning_image.shape[0], -1, -1, -1)
    return torch.cat([conditioning_mask, conditioning_image], dim=1)


@torch.no_grad()
def inpaint_run(model_wrap, vae, text_p, text_n, init_img, mask_img, weight) -> dict:
    """StableDiffusionProcessingImg2Img with mask_blur 0, inpainting_fill 1 ("original"),
    inpaint_full_res False, resize_mode 0 at the image's own size, then sample()."""
    image_mask = create_binary_mask(mask_img)
    # resize_image(0, ...) to the image's own size is a copy.
    latent_mask = image_mask
    image = np.array(init_img.convert("RGB")).astype(np.float32) / 255.0
    image = torch.from_numpy(np.moveaxis(image, 2, 0)[None])
    init_latent = vae_encode(vae, image * 2 - 1)
    h, w = init_latent.shape[2], init_latent.shape[3]
    latmask = latent_mask.convert("RGB").resize((w, h))  # PIL's default resample (bicubic)
    latmask = np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0) / 255
    latmask = np.around(latmask[0])
    latmask = np.tile(latmask[None], (4, 1, 1))
    mask = torch.asarray(1.0 - latmask)
    nmask = torch.asarray(latmask)
    image_cond = inpainting_image_conditioning(vae, image * 2 - 1, init_latent, image_mask, weight)

    # sample(): rng.next(), then KDiffusionSampler.sample_img2img (img2img_fix_steps off).
    torch.manual_seed(SEED)
    noise = torch.randn([4, h, w]).unsqueeze(0)
    t_enc = int(min(DENOISE, 0.999) * STEPS)
    sigmas = model_wrap.get_sigmas(STEPS)
    sigma_sched = sigmas[STEPS - t_enc - 1 :]
    xi = init_latent + noise * sigma_sched[0]
    cfg_model = InpaintCFGDenoiser(model_wrap, init_latent, mask, nmask)
    extra = {"cond": text_p, "uncond": text_n, "cond_scale": CFG, "image_cond": image_cond}
    samples = k_diffusion.sampling.sample_euler(cfg_model, xi, sigma_sched, extra_args=extra, disable=True)
    samples = samples * nmask + init_latent * mask
    return {
        "image": image * 2 - 1,
        "init_latent": init_latent,
        "nmask": nmask[None],
        "image_cond": image_cond,
        "noise": noise,
        "sigmas": sigma_sched,
        "latent": samples,
    }


def link(src_rel: str, dst: str) -> None:
    if os.path.lexists(dst):
        if os.path.isdir(dst) and not os.path.islink(dst):
            shutil.rmtree(dst)
        else:
            os.remove(dst)
    os.symlink(src_rel, dst)


def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", "tests/data/sd1-inpaint-tiny")
    out = args.out
    base = os.path.join(os.path.dirname(os.path.abspath(out)), "sd1-tiny")
    base_ddir = os.path.join(base, "diffusers")
    ddir = os.path.join(out, "diffusers")
    if os.path.isdir(ddir):
        shutil.rmtree(ddir)
    os.makedirs(ddir, exist_ok=True)

    # 1. the model: sd1-tiny's parts and a new 9-channel UNet
    vae = AutoencoderKL.from_pretrained(os.path.join(base_ddir, "vae"), local_files_only=True).eval()
    unet = build_unet()
    with open(os.path.join(base_ddir, "model_index.json"), encoding="utf-8") as f:
        index = json.load(f)
    index["_class_name"] = "StableDiffusionInpaintPipeline"
    write_json(os.path.join(ddir, "model_index.json"), index)
    for part in ("text_encoder", "tokenizer", "vae", "scheduler"):
        link(os.path.join("..", "..", "sd1-tiny", "diffusers", part), os.path.join(ddir, part))
    copy.deepcopy(unet).half().save_pretrained(os.path.join(ddir, "unet"), safe_serialization=True)
    reloaded = UNet2DConditionModel.from_pretrained(os.path.join(ddir, "unet"), local_files_only=True, torch_dtype=torch.float32)
    assert_same("unet reload", reloaded.state_dict(), unet.state_dict())

    # 2. the single file: sd1-tiny's text encoder, VAE and schedule, this UNet in fp16
    ckpt = {k: v for k, v in load_file(os.path.join(base, "sd1-tiny.safetensors")).items() if not k.startswith(UNET_P)}
    half = {k: v.half() for k, v in unet.state_dict().items()}
    ckpt.update(apply_module_map(half, unet_module_map(unet.config), UNET_P))
    ldm_path = os.path.join(out, "sd1-inpaint-tiny.safetensors")
    save_file(ckpt, ldm_path)
    got = sfu.convert_ldm_unet_checkpoint(load_file(ldm_path), dict(unet.config))
    assert_same("LDM unet (convert_ldm_unet_checkpoint)", got, unet.state_dict(), got_dtype=torch.float16, cast=True)
    if tuple(ckpt[UNET_P + "input_blocks.0.0.weight"].shape) != (32, 9, 3, 3):
        raise AssertionError("conv_in is not 9 channels wide")
    print(f"wrote {ldm_path} ({len(ckpt)} tensors) and {ddir}")

    # 3. references
    rec = Recorder()
    ref = load_file(os.path.join(base, "reference.safetensors"))
    text_p, text_n = ref["text.prompt"], ref["text.negative"]
    model_wrap = InpaintEpsDenoiser(unet, ckpt["alphas_cumprod"], quantize=False)

    # (a) one denoiser call: two images, conditionings [negative, prompt]
    torch.manual_seed(SEED_X)
    x = torch.randn(2, 4, 16, 16)
    torch.manual_seed(SEED_CONCAT)
    concat = torch.cat([(torch.rand(2, 1, 16, 16) > 0.5).float(), torch.randn(2, 4, 16, 16)], dim=1)
    sigma = torch.full([2], SIGMA)
    rec.put("unet.x", x, f"denoiser input latents [2 images,4,16,16], randn after manual_seed({SEED_X})")
    rec.put("unet.concat", concat, f"image conditioning [2,5,16,16]: a 0/1 mask then a randn latent, manual_seed({SEED_CONCAT})")
    rec.put("unet.sigma", torch.tensor([SIGMA]), "the call's sigma")
    with torch.no_grad():
        for name, ctx in (("uncond", text_n), ("cond", text_p)):
            den = model_wrap(x, sigma, cond=ctx.expand(2, -1, -1), concat=concat)
            rec.put(f"unet.denoised.{name}", den, f"x + eps * (-sigma), eps = unet(cat([x * c_in, unet.concat]), sigma_to_t(sigma), text.{'negative' if name == 'uncond' else 'prompt'} of sd1-tiny)")

    # (b) A1111 masked img2img with the inpainting model
    init_img, mask_img = make_init_image(), make_mask()
    init_img.save(os.path.join(out, "init.png"))
    mask_img.save(os.path.join(out, "mask.png"))
    for weight in MASK_WEIGHTS:
        run = inpaint_run(model_wrap, vae, text_p, text_n, init_img, mask_img, weight)
        tag = f"w{weight:g}".replace(".", "")
        if weight == MASK_WEIGHTS[0]:
            rec.put("inpaint.image", run["image"], "init.png as float RGB/255*2-1 [1,3,32,32] (the VAE's input)")
            rec.put("inpaint.init_latent", run["init_latent"], "VAE posterior mean of init.png (RGB/255*2-1) * scaling_factor")
            rec.put("inpaint.nmask", run["nmask"], "latent mask (1 = inpaint): mask.png resized to 16x16 by PIL (bicubic), /255, rounded; [1,4,16,16]")
            rec.put("inpaint.noise", run["noise"], f"manual_seed({SEED}); randn([4,16,16]).unsqueeze(0)")
            rec.put("inpaint.sigmas", run["sigmas"], f"get_sigmas({STEPS})[{STEPS} - int({DENOISE}*{STEPS}) - 1:] (A1111 img2img slicing, img2img_fix_steps off)")
        rec.put(f"inpaint.concat.{tag}", run["image_cond"], f"inpainting_image_conditioning with inpainting_mask_weight {weight}: cat([mask, latent of lerp(img, img*(1-mask), {weight})])")
        rec.put(f"inpaint.latent.{tag}", run["latent"], f"final latent: sample_euler over inpaint.sigmas from init_latent + noise*sigmas[0], latent mask blended after each denoise and at the end (weight {weight})")
    # (c) txt2img on the inpainting checkpoint: processing.py txt2img_image_conditioning, a
    # ones mask and the latent of an all-0.5 [0, 1] image (images_tensor_to_samples maps it
    # to 0, grey; older A1111 versions encoded an all-zero one, black), no latent mask.
    with torch.no_grad():
        grey = vae_encode(vae, torch.ones(1, 3, HEIGHT, WIDTH) * 0.5 * 2 - 1)
        txt_concat = F.pad(grey, (0, 0, 0, 0, 1, 0), value=1.0)
        torch.manual_seed(SEED)
        noise = torch.randn([4, HEIGHT // 2, WIDTH // 2]).unsqueeze(0)
        sigmas = model_wrap.get_sigmas(STEPS)
        plain = InpaintCFGDenoiser(model_wrap, torch.zeros_like(noise), torch.zeros_like(noise), torch.ones_like(noise))
        extra = {"cond": text_p, "uncond": text_n, "cond_scale": CFG, "image_cond": txt_concat}
        txt_latent = k_diffusion.sampling.sample_euler(plain, noise * sigmas[0], sigmas, extra_args=extra, disable=True)
    rec.put("txt2img.concat", txt_concat, "txt2img_image_conditioning: cat([ones mask, VAE latent (posterior mean) of a grey image (0.5*2-1)])")
    rec.put("txt2img.sigmas", sigmas, f"get_sigmas({STEPS})")
    rec.put("txt2img.latent", txt_latent, f"sample_euler over txt2img.sigmas from manual_seed({SEED}) randn([4,16,16]) * sigmas[0], CFG {CFG}, image_cond txt2img.concat")
    check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))
    meta = {
        "generator": "scripts/make_inpaint_reference.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__},
        "settings": {
            "prompt": PROMPT, "negative": NEGATIVE, "seed": SEED, "cfg": CFG,
            "width": WIDTH, "height": HEIGHT, "steps": STEPS, "denoise": DENOISE, "sampler": "euler", "schedule": "normal",
            "init_image": "init.png", "mask": "mask.png", "mask_box_px": list(MASK_BOX),
            "mask_blur": 0, "inpainting_fill": "original", "inpaint_full_res": False, "resize_mode": "just resize",
            "inpainting_mask_weights": list(MASK_WEIGHTS), "model_seed": MODEL_SEED, "unet_sigma": SIGMA,
            "vae_encode": "posterior mean (A1111 samples the posterior)",
            "denoiser": "k_diffusion DiscreteEpsDDPMDenoiser(quantize=False) over the alphas_cumprod of sd1-tiny; the UNet gets cat([x*c_in, concat])",
        },
        "tensors": tensors_json(rec),
    }
    write_json(os.path.join(out, "reference.json"), meta)
    for k, v in rec.R.items():
        print(f"{k}{list(v.shape)} mean {v.double().mean():.4f}")
    w1, w05 = rec.R["inpaint.latent.w1"], rec.R["inpaint.latent.w05"]
    keep = rec.R["inpaint.nmask"] == 0
    print(f"w1 vs w0.5 max diff {(w1 - w05).abs().max():.4f}; kept region equals init latent: "
          f"{torch.equal(w1[keep], rec.R['inpaint.init_latent'][keep])}")


if __name__ == "__main__":
    main()
