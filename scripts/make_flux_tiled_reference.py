#!/usr/bin/env python3
"""A Flux hires pass as tiled diffusion (MultiDiffusion), on the tiny dev pipeline.

    python3 scripts/make_flux_tiled_reference.py [--out tests/data/flux-tiny/pipeline/dev/tiled]

The 2-pass run of scripts/make_flux_pipeline_reference.py (dev: 48x32 px, Euler, 4 steps;
latent bilinear x2, 4 steps at denoise 0.5; guidance 3.5, seed 1234; run that first), its
pass 2 (a 32 x 48 latent) denoised over tiles as the A1111 extension pkuliyi2015/
multidiffusion-upscaler-for-automatic1111 tiles it (split_bboxes of scripts/
make_tiled_reference.py; MultiDiffusion: the mean of the tiles' denoised predictions where
more than one covers a cell). Each tile is an image of its own to the transformer, as in
ComfyUI's and the extension's tiling: packed on its own, RoPE ids (0, row, column) counted from
the tile's corner. A tile of odd side is first padded to even sides with circular padding and
the prediction cropped back (ComfyUI's comfy/ldm/common_dit.py pad_to_patch_size, which its
Flux model applies to every input).

Cases (latent cells): `even` tile 16, overlap 4 (12 tiles, some at odd offsets); `odd` tile
15, overlap 4 (15 x 15 tiles, each padded to 16 x 16); `mixture` as `even` with Mixture of
Diffusers' Gaussian weights (make_tiled_reference.gaussian_weights, the extension's). Writes reference.safetensors
(`{case}.latent2`, `{case}.tiles` as (x, y, w, h) rows) and reference.json.

Everything runs on CPU in float32, offline and deterministically.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (offline environment first)
import make_flux_pipeline_reference as fp  # noqa: E402
from make_tiled_reference import gaussian_weights, split_bboxes  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "flux-tiny", "pipeline", "dev")
CASES = {"even": (16, 4, False), "odd": (15, 4, False), "mixture": (16, 4, True)}


@torch.no_grad()
def velocity(pipe, x: torch.Tensor, s: torch.Tensor, embeds, pooled, guidance) -> torch.Tensor:
    """The transformer's velocity for one latent tile, padded to even sides as ComfyUI does."""
    _, _, h, w = x.shape
    padded = F.pad(x, (0, w % 2, 0, h % 2), mode="circular")
    b, c, ph, pw = padded.shape
    packed = FluxPipeline._pack_latents(padded, b, c, ph, pw)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, ph // 2, pw // 2, "cpu", torch.float32)
    txt_ids = torch.zeros(embeds.shape[1], 3)
    v = pipe.transformer(hidden_states=packed, timestep=s.expand(b), guidance=guidance,
                         pooled_projections=pooled, encoder_hidden_states=embeds,
                         txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
    f = pipe.vae_scale_factor
    v = FluxPipeline._unpack_latents(v, ph * f, pw * f, f)
    return v[:, :, :h, :w]


@torch.no_grad()
def tiled_euler(pipe, x, sigmas, embeds, pooled, guidance, tile: int, overlap: int, mixture: bool = False):
    """Euler on the merge of the tiles' denoised predictions x - sigma * v: MultiDiffusion's
    mean, or (mixture) Mixture of Diffusers' Gaussian-weighted sum over the weights' sum at
    each cell (the extension weights the UNet's eps, the same merge here: the weights at a
    cell add up to 1, and x is shared)."""
    _, _, h, w = x.shape
    overlap = max(0, min(overlap, tile - 4))
    tw, th = min(tile, w), min(tile, h)
    boxes = split_bboxes(w, h, tw, th, overlap)
    weight = gaussian_weights(tw, th) if mixture else torch.ones(th, tw)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        total, count = torch.zeros_like(x), torch.zeros_like(x)
        for bx, by, bw, bh in boxes:
            xt = x[:, :, by:by + bh, bx:bx + bw]
            total[:, :, by:by + bh, bx:bx + bw] += weight * (xt - s * velocity(pipe, xt, s, embeds, pooled, guidance))
            count[:, :, by:by + bh, bx:bx + bw] += weight
        denoised = total / count
        x = x + (s_next - s) * (x - denoised) / s
    return x, boxes


def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", os.path.join(HERE, "tiled"))
    os.makedirs(args.out, exist_ok=True)
    pipe = FluxPipeline.from_pretrained(os.path.join(HERE, "diffusers"), local_files_only=True, dtype=torch.float32)
    base = load_file(os.path.join(HERE, "reference.safetensors"))
    embeds, pooled = base["text.prompt"], base["text.pooled"]
    guidance = torch.full([1], fp.GUIDANCE)
    sig2, noise2, up = base["run.sigmas2"], base["run.noise2"], base["run.upscaled"]
    x = sig2[0] * noise2 + (1 - sig2[0]) * up
    # The untiled pass through this script's tile code (one tile covering the latent) is the
    # committed pass 2.
    whole, _ = tiled_euler(pipe, x, sig2, embeds, pooled, guidance, 1000, 0)
    checks = {"one_tile_vs_run.latent2": fp.max_rel(whole, base["run.latent2"])}
    if checks["one_tile_vs_run.latent2"] > 1e-5:
        raise AssertionError(checks)
    rec = sd1.Recorder()
    for case, (tile, overlap, mixture) in CASES.items():
        lat, boxes = tiled_euler(pipe, x, sig2, embeds, pooled, guidance, tile, overlap, mixture)
        method = "Mixture of Diffusers" if mixture else "MultiDiffusion"
        rec.put(f"{case}.latent2", lat, f"pass 2 over tiles of {tile} cells, overlap {overlap} ({method})")
        rec.put(f"{case}.tiles", torch.tensor(boxes, dtype=torch.int64), "(x, y, w, h) of each tile, row-major")
        checks[f"{case}.tiles"] = len(boxes)
        checks[f"{case}_vs_untiled"] = fp.max_rel(lat, base["run.latent2"])
    fp.write_reference(args.out, rec, "scripts/make_flux_tiled_reference.py", {"cases": {k: {"tile": t, "overlap": o, "mixture": m} for k, (t, o, m) in CASES.items()},
                     "run": "as ../reference.json (make_flux_pipeline_reference.py, dev)"}, checks)


if __name__ == "__main__":
    main()
