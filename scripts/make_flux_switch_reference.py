#!/usr/bin/env python3
"""A hires pass that switches Flux checkpoints: pass 1 on the tiny dev pipeline, pass 2 on the
tiny schnell one (Forge's checkpoint switch for the hires pass, which broke with Flux there).

    python3 scripts/make_flux_switch_reference.py [--out tests/data/flux-tiny/pipeline/schnell/switch]

Pass 1 and the upscaled latent are the dev run of scripts/make_flux_pipeline_reference.py (run
that first; its reference.safetensors `run.upscaled`, `run.noise2`). Pass 2 is
FluxImg2ImgPipeline with the schnell components on that latent: schnell's own T5 length (256)
and scheduler (no shift), no guidance, the last STEPS2 + 1 of int(STEPS2 / DENOISE) sigmas;
the script's Euler loop (make_flux_pipeline_reference.euler) checked against the pipeline.
Writes reference.safetensors (`latent2`) and reference.json. CPU fp32, offline.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (offline environment first)
import make_flux_pipeline_reference as fp  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from diffusers import FluxImg2ImgPipeline, FluxPipeline  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "flux-tiny", "pipeline")


@torch.no_grad()
def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", os.path.join(HERE, "schnell", "switch"))
    os.makedirs(args.out, exist_ok=True)
    dev = load_file(os.path.join(HERE, "dev", "reference.safetensors"))
    pipe = FluxPipeline.from_pretrained(os.path.join(HERE, "schnell", "diffusers"), local_files_only=True,
                                        dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    t5_len = fp.T5_LEN["schnell"]
    embeds, pooled, _ = pipe.encode_prompt(prompt=fp.PROMPT, prompt_2=None, device="cpu", max_sequence_length=t5_len)
    up, noise2 = dev["run.upscaled"], dev["run.noise2"]
    total = int(fp.STEPS2 / fp.DENOISE)
    sig2 = fp.flux_sigmas(pipe, total, fp.WIDTH2, fp.HEIGHT2)[-(fp.STEPS2 + 1):]
    lat2 = fp.euler(pipe, sig2[0] * noise2 + (1 - sig2[0]) * up, sig2, embeds, pooled, None)
    i2i = FluxImg2ImgPipeline(**{k: getattr(pipe, k) for k in pipe.components})
    i2i.set_progress_bar_config(disable=True)
    via = i2i(prompt=fp.PROMPT, image=up.clone(), strength=fp.DENOISE, height=fp.HEIGHT2, width=fp.WIDTH2,
              num_inference_steps=total, guidance_scale=fp.GUIDANCE, max_sequence_length=t5_len,
              generator=torch.Generator().manual_seed(fp.SEED), output_type="latent").images
    via = FluxPipeline._unpack_latents(via, fp.HEIGHT2, fp.WIDTH2, pipe.vae_scale_factor)
    checks = {
        "pass2_vs_FluxImg2ImgPipeline": fp.max_rel(lat2, via),
        "vs_dev_pass2": fp.max_rel(lat2, dev["run.latent2"]),
    }
    if checks["pass2_vs_FluxImg2ImgPipeline"] > 1e-5:
        raise AssertionError(checks)
    rec = sd1.Recorder()
    rec.put("latent2", lat2, "pass 2 on the schnell pipeline from the dev run's upscaled latent and noise2")
    rec.put("sigmas2", sig2, f"schnell's last {fp.STEPS2 + 1} of {total} sigmas (no shift)")
    fp.write_reference(args.out, rec, "scripts/make_flux_switch_reference.py", "pass 1 as ../../dev/reference.json; pass 2 on ../diffusers", checks)


if __name__ == "__main__":
    main()
