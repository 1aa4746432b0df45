#!/usr/bin/env python3
"""Record 2-pass runs whose hires pass is tiled diffusion, on the tiny SD1 and SDXL models.

    python3 scripts/make_tiled_reference.py [--out tests/data/tiled]

Writes run.safetensors (float32 latents) and run.json under --out. Each case is A1111's hires
fix on tests/data/sd1-tiny (made by scripts/make_sd1_reference.py; its diffusers folder and the
single file's alphas_cumprod buffer): pass 1 txt2img W1 x H1 (untiled), latent (bilinear)
upscale x2, pass 2 img2img over the last STEPS2 + 1 of int(STEPS2 / DENOISE) sigmas, both
passes seeded with SEED, k-diffusion Euler on A1111's CompVisDenoiser, CFG with the rows
[uncond, cond] batched in one call.

The tiling of pass 2 is transcribed from the A1111 extension pkuliyi2015/
multidiffusion-upscaler-for-automatic1111 at 22798f6 (2024-08; tile_methods/abstractdiffusion.py
init_grid_bbox,
tile_utils/utils.py split_bboxes and gaussian_weights, tile_methods/multidiffusion.py
kdiff_forward / sample_one_step, tile_methods/mixtureofdiffusers.py apply_model_hijack):
  * tile_w = min(tile, w), tile_h = min(tile, h); overlap = max(0, min(overlap, tile - 4));
    cols = ceil((w - overlap) / (tile_w - overlap)), dx = (w - tile_w) / (cols - 1) (0 for one
    column), x = min(int(col * dx), w - tile_w); the same for rows; row-major order;
  * tiles in ceil(n / ceil(n / batch)) per call, every CFG row of every tile in one call, the
    conditioning repeated per tile (repeat_cond_dict: SDXL's `vector`, the image's size and crop
    conditioning, too);
  * MultiDiffusion hooks the CompVisDenoiser's forward (the denoised prediction): the sum of the
    tiles' predictions, divided by the count where more than one tile covers a cell;
  * Mixture of Diffusers hooks apply_model (the UNet's eps on the c_in-scaled input): each tile's
    eps times gaussian_weights(tile_w, tile_h) times 1 / (the sum of the tiles' weights at the
    cell), summed; the denoiser then makes `x + eps * c_out` of the merged eps.

SDXL (sdxl.latent2): pass 2 of tests/data/sdxl-tiny's committed run (scripts/
make_family_reference.py: its upscaled latent, noise, sigmas, prompt and zeroed empty negative,
size conditioning of the 96x64 pass) with Mixture of Diffusers; the script checks that the same
pass untiled reproduces that run's committed latent exactly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import k_diffusion.sampling  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import make_sd1_reference as sd1  # noqa: E402

SEED = 1234
CFG = 5.0
PROMPT, NEGATIVE = "a photo of a cat", ""
STEPS1, STEPS2, DENOISE = 6, 4, 0.5
W1, H1 = 48, 40
W2, H2 = 2 * W1, 2 * H1
F_LAT = 2
# name: (method, tile, overlap, batch) in latent cells; pass 2's latent is 48 x 40.
CASES = {
    "multidiffusion": ("multidiffusion", 20, 8, 5),
    "mixture": ("mixture", 20, 8, 5),
}


def split_bboxes(w: int, h: int, tile_w: int, tile_h: int, overlap: int):
    """(x, y, w, h) of each tile, row-major (split_bboxes). A tile as wide as the latent is one
    column (the extension divides by zero there when the overlap equals the latent's side)."""
    cols = math.ceil((w - overlap) / (tile_w - overlap)) if tile_w < w else 1
    rows = math.ceil((h - overlap) / (tile_h - overlap)) if tile_h < h else 1
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    boxes = []
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            boxes.append((x, y, tile_w, tile_h))
    return boxes


def gaussian_weights(tile_w: int, tile_h: int) -> torch.Tensor:
    """Mixture of Diffusers' tile weights, as the extension writes them (x's midpoint
    (tile_w - 1) / 2, y's tile_h / 2, both scaled by tile_w)."""
    var = 0.01

    def f(x, midpoint):
        return np.exp(-(x - midpoint) * (x - midpoint) / (tile_w * tile_w) / (2 * var)) / np.sqrt(2 * np.pi * var)

    x_probs = [f(x, (tile_w - 1) / 2) for x in range(tile_w)]
    y_probs = [f(y, tile_h / 2) for y in range(tile_h)]
    return torch.from_numpy(np.outer(y_probs, x_probs)).to(dtype=torch.float32)


class Grid:
    """init_grid_bbox: the tiles, their batches, and the per-cell weight sum."""

    def __init__(self, w: int, h: int, tile: int, overlap: int, batch: int, gaussian: bool):
        self.w, self.h = w, h
        self.tile_w, self.tile_h = min(tile, w), min(tile, h)
        overlap = max(0, min(overlap, tile - 4))
        self.boxes = split_bboxes(w, h, self.tile_w, self.tile_h, overlap)
        self.tile_weights = gaussian_weights(self.tile_w, self.tile_h) if gaussian else 1.0
        self.weights = torch.zeros((1, 1, h, w), dtype=torch.float32)
        for b in self.boxes:
            self.weights[self.slicer(b)] += self.tile_weights
        n = math.ceil(len(self.boxes) / batch)
        bs = math.ceil(len(self.boxes) / n)
        self.batches = [self.boxes[i * bs:(i + 1) * bs] for i in range(n)]

    @staticmethod
    def slicer(b):
        x, y, w, h = b
        return slice(None), slice(None), slice(y, y + h), slice(x, x + w)

    def run(self, x_in, call, merge):
        """Each batch's tiles through `call(x_tile, n_tiles)`, merged into a buffer by
        `merge(buffer, box, out_rows)`."""
        n_rows = x_in.shape[0]
        buffer = torch.zeros_like(x_in)
        for boxes in self.batches:
            x_tile = torch.cat([x_in[self.slicer(b)] for b in boxes], dim=0)
            out = call(x_tile, len(boxes))
            for i, b in enumerate(boxes):
                merge(buffer, b, out[i * n_rows:(i + 1) * n_rows])
        return buffer


def repeat_cond(cond, n: int):
    """repeat_cond_dict: every conditioning tensor (SDXL's dict: crossattn, text_embeds and
    time_ids, the image's size and crop conditioning among them) repeated per tile."""
    if isinstance(cond, dict):
        return {k: repeat_cond(v, n) for k, v in cond.items()}
    return cond.repeat((n,) + (1,) * (cond.dim() - 1))


class MultiDiffusion(torch.nn.Module):
    """MultiDiffusion.kdiff_forward around the CompVisDenoiser."""

    def __init__(self, model_wrap, grid: Grid):
        super().__init__()
        self.inner, self.grid = model_wrap, grid

    def forward(self, x_in, sigma_in, cond):
        def call(x_tile, n):
            return self.inner(x_tile, sigma_in.repeat(n), cond=repeat_cond(cond, n))

        def merge(buffer, b, out):
            buffer[self.grid.slicer(b)] += out

        buf = self.grid.run(x_in, call, merge)
        return torch.where(self.grid.weights > 1, buf / self.grid.weights, buf)


class MixtureEps(sd1.UNetEpsDenoiser):
    """MixtureOfDiffusers.apply_model_hijack: the CompVisDenoiser with a tiled get_eps."""

    grid: Grid

    def unet(self, x, t, cond):
        return self.inner_model(x, t, encoder_hidden_states=cond).sample

    def get_eps(self, x, t, cond):
        rescale = 1 / self.grid.weights

        def call(x_tile, n):
            return self.unet(x_tile, t.repeat(n), repeat_cond(cond, n))

        def merge(buffer, b, out):
            s = self.grid.slicer(b)
            buffer[s] += out * (self.grid.tile_weights * rescale[s])

        return self.grid.run(x, call, merge)


class MixtureEpsSdxl(MixtureEps):
    def unet(self, x, t, cond):
        import make_family_reference as fam

        return fam.unet_forward(self.inner_model, x, t, cond)


# SDXL: pass 2 of tests/data/sdxl-tiny's committed 2-pass run (its upscaled latent, noise,
# sigmas and conditioning, from scripts/make_family_reference.py), tiled.
SDXL_CASE = ("mixture", 16, 6, 4)


@torch.no_grad()
def sdxl(out: dict, meta: dict) -> None:
    import make_family_reference as fam
    from diffusers import UNet2DConditionModel

    base = "tests/data/sdxl-tiny"
    ref = load_file(os.path.join(base, "reference.safetensors"))
    unet = UNet2DConditionModel.from_pretrained(os.path.join(base, "diffusers", "unet"), local_files_only=True).eval()
    ac = sd1.ldm_schedule_buffers()["alphas_cumprod"]
    h2, w2 = ref["run.upscaled"].shape[2:]
    hp, wp = h2 * F_LAT, w2 * F_LAT
    time_ids = torch.tensor([[hp, wp, 0, 0, hp, wp]], dtype=torch.float32)
    cond = {"crossattn": ref["text.long"], "text_embeds": ref["run.y.cond.pass2"][:, :fam.SDXL_POOLED], "time_ids": time_ids}
    zero = torch.zeros(1, sd1.MAX_LEN, ref["text.long"].shape[2])
    uncond = {"crossattn": zero, "text_embeds": ref["run.y.uncond.pass2"][:, :fam.SDXL_POOLED], "time_ids": time_ids}
    method, tile, overlap, batch = SDXL_CASE
    grid = Grid(w2, h2, tile, overlap, batch, gaussian=True)
    denoiser = MixtureEpsSdxl(unet, ac, quantize=False)
    denoiser.grid = grid
    sig2 = ref["run.sigmas2"]
    x = ref["run.upscaled"] + ref["run.noise2"] * sig2[0]
    extra = {"cond": cond, "uncond": uncond, "cond_scale": CFG}
    lat2 = k_diffusion.sampling.sample_euler(fam.CFGDenoiser(denoiser), x, sig2, extra_args=extra, disable=True)
    plain = k_diffusion.sampling.sample_euler(fam.CFGDenoiser(fam.UNetEpsDenoiser(unet, ac, quantize=False)), x, sig2, extra_args=extra, disable=True)
    print("sdxl untiled vs committed run.latent2", (plain - ref["run.latent2"]).abs().max().item())
    out["sdxl.latent2"] = lat2.contiguous()
    meta["sdxl"] = {
        "method": method, "tile": tile, "overlap": overlap, "batch": batch,
        "model": base, "from": "reference.safetensors run.upscaled + run.noise2 * run.sigmas2[0]",
        "tiles (x, y, w, h)": grid.boxes, "tiles per call": [len(b) for b in grid.batches],
    }
    print("sdxl", len(grid.boxes), "tiles", [len(b) for b in grid.batches])


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/tiled")
    ap.add_argument("--model", default="tests/data/sd1-tiny")
    args = ap.parse_args()
    tok, te, unet, _, ac = sd1.load_tiny(args.model)
    plain = sd1.UNetEpsDenoiser(unet, ac, quantize=False)
    cond = te(input_ids=sd1.tokenize(tok, PROMPT)).last_hidden_state
    uncond = te(input_ids=sd1.tokenize(tok, NEGATIVE)).last_hidden_state
    extra = {"cond": cond, "uncond": uncond, "cond_scale": CFG}

    sig1 = plain.get_sigmas(STEPS1)
    torch.manual_seed(SEED)
    noise1 = torch.randn([4, H1 // F_LAT, W1 // F_LAT]).unsqueeze(0)
    lat1 = k_diffusion.sampling.sample_euler(sd1.CFGDenoiser(plain), noise1 * sig1[0], sig1, extra_args=extra, disable=True)
    h, w = H2 // F_LAT, W2 // F_LAT
    up = F.interpolate(lat1, size=(h, w), mode="bilinear", antialias=False)
    sig2 = plain.get_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1):]
    torch.manual_seed(SEED)
    noise2 = torch.randn([4, h, w]).unsqueeze(0)

    out = {"latent1": lat1.contiguous()}
    meta = {}
    for name, (method, tile, overlap, batch) in CASES.items():
        grid = Grid(w, h, tile, overlap, batch, gaussian=method == "mixture")
        if method == "multidiffusion":
            denoiser = MultiDiffusion(plain, grid)
        else:
            denoiser = MixtureEps(unet, ac, quantize=False)
            denoiser.grid = grid
        lat2 = k_diffusion.sampling.sample_euler(sd1.CFGDenoiser(denoiser), up + noise2 * sig2[0], sig2, extra_args=extra, disable=True)
        out[f"{name}.latent2"] = lat2.contiguous()
        meta[name] = {
            "method": method, "tile": tile, "overlap": overlap, "batch": batch,
            "tiles (x, y, w, h)": grid.boxes,
            "tiles per call": [len(b) for b in grid.batches],
        }
        print(name, len(grid.boxes), "tiles", [len(b) for b in grid.batches])
    untiled = k_diffusion.sampling.sample_euler(sd1.CFGDenoiser(plain), up + noise2 * sig2[0], sig2, extra_args=extra, disable=True)
    out["untiled.latent2"] = untiled.contiguous()
    sdxl(out, meta)
    os.makedirs(args.out, exist_ok=True)
    save_file(out, os.path.join(args.out, "run.safetensors"))
    doc = {
        "generator": "scripts/make_tiled_reference.py",
        "model": args.model,
        "settings": {
            "seed": SEED, "cfg": CFG, "prompt": PROMPT, "negative": NEGATIVE,
            "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "width1": W1, "height1": H1, "width2": W2, "height2": H2,
            "schedule": "normal", "sampler": "euler", "upscaler": "latent (bilinear, no antialias)",
        },
        "cases": meta,
    }
    sd1.write_json(os.path.join(args.out, "run.json"), doc)


if __name__ == "__main__":
    main()
