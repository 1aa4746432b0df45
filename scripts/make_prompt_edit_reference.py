#!/usr/bin/env python3
"""Record 2-pass runs with prompt editing and alternation on the tiny SD1 model.

    python3 scripts/make_prompt_edit_reference.py [--out tests/data/prompt_schedule]

Writes run.safetensors (float32 latents) and run.json under --out. Each case is A1111's hires
fix on tests/data/sd1-tiny (made by scripts/make_sd1_reference.py; its diffusers folder and
the single file's alphas_cumprod buffer): pass 1 txt2img 32 px, latent (bilinear) upscale to
64 px, pass 2 img2img over the last STEPS2 + 1 of int(STEPS2 / DENOISE) sigmas, both passes
seeded with SEED (as make_sd1_reference.hires_run), k-diffusion samplers on A1111's
CompVisDenoiser.

The conditioning of every denoiser call comes from A1111's rules, transcribed:
  * each prompt's schedule is `schedules()` of scripts/make_prompt_schedule_reference.py
    (A1111's get_learned_conditioning_prompt_schedules), pass 1 with base_steps = its steps
    times the sampler's step multiplier (2 for A1111's "second_order" samplers: Heun), the
    hires pass with hires_steps = its own steps times its multiplier (calculate_hr_conds);
  * CFGDenoiser picks, for its call counter `self.step` (0 at the start of each pass, +1 on
    EVERY call, so Heun advances it twice a step), the first segment with
    step <= end_at_step, else segment 0 (reconstruct_cond_batch);
  * each distinct text is encoded by the CLIP text encoder (padded with EOS to 77, last
    hidden state: clip_skip 1; all weights 1, so A1111's emphasis is the identity).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import k_diffusion.sampling  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import make_prompt_schedule_reference as msr  # noqa: E402
import make_sd1_reference as sd1  # noqa: E402

SEED = 1234
CFG = 5.0
STEPS1, STEPS2, DENOISE = 6, 4, 0.5
W1, H1, W2, H2 = 32, 32, 64, 64
F_LAT = 2

SECOND_ORDER = {"heun": 2, "euler": 1}
SAMPLE = {"euler": k_diffusion.sampling.sample_euler, "heun": k_diffusion.sampling.sample_heun}

# name: (pass-1 prompt, negative, sampler1, pass-2 prompt (None: the same), sampler2)
CASES = {
    "edit": ("[red:blue:0.5]", "", "euler", None, "euler"),
    "alternate": ("[red|blue]", "[ugly::3]", "heun", "[red:blue:1.5]", "euler"),
}


class ScheduledCFG(torch.nn.Module):
    """A1111's CFGDenoiser with schedules: (uncond, cond) chosen by the call counter."""

    def __init__(self, model, cond_sched, uncond_sched):
        super().__init__()
        self.model = model
        self.cond_sched = cond_sched
        self.uncond_sched = uncond_sched
        self.step = 0
        self.picked = []

    @staticmethod
    def pick(sched, step):
        target = 0
        for i, (end, _) in enumerate(sched):
            if step <= end:
                target = i
                break
        return target

    def forward(self, x, sigma, cond_scale):
        ci, ui = self.pick(self.cond_sched, self.step), self.pick(self.uncond_sched, self.step)
        self.picked.append((ui, ci))
        ctx = torch.cat([self.uncond_sched[ui][1], self.cond_sched[ci][1]])
        out_uncond, out_cond = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=ctx).chunk(2)
        self.step += 1
        return out_uncond + (out_cond - out_uncond) * cond_scale


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/prompt_schedule")
    ap.add_argument("--model", default="tests/data/sd1-tiny")
    args = ap.parse_args()
    tok, te, unet, vae, ac = sd1.load_tiny(args.model)
    model_wrap = sd1.UNetEpsDenoiser(unet, ac, quantize=False)

    cache: dict[str, torch.Tensor] = {}

    def encode(text: str) -> torch.Tensor:
        if text not in cache:
            cache[text] = te(input_ids=sd1.tokenize(tok, text)).last_hidden_state
        return cache[text]

    def conds(prompt: str, base: int, hires):
        sched = msr.schedules([prompt], base, hires)[0]
        return [(end, encode(text)) for end, text in sched], sched

    out: dict[str, torch.Tensor] = {}
    meta: dict = {}
    for name, (p1, neg, s1, p2, s2) in CASES.items():
        p2 = p1 if p2 is None else p2
        base = STEPS1 * SECOND_ORDER[s1]
        hires = STEPS2 * SECOND_ORDER[s2]
        c1, sc1 = conds(p1, base, None)
        u1, su1 = conds(neg, base, None)
        c2, sc2 = conds(p2, base, hires)
        u2, su2 = conds(neg, base, hires)
        sig1 = model_wrap.get_sigmas(STEPS1)
        torch.manual_seed(SEED)
        noise1 = torch.randn([4, H1 // F_LAT, W1 // F_LAT]).unsqueeze(0)
        cfg1 = ScheduledCFG(model_wrap, c1, u1)
        lat1 = SAMPLE[s1](cfg1, noise1 * sig1[0], sig1, extra_args={"cond_scale": CFG}, disable=True)
        up = F.interpolate(lat1, size=(H2 // F_LAT, W2 // F_LAT), mode="bilinear", antialias=False)
        sig2 = model_wrap.get_sigmas(int(STEPS2 / DENOISE))[-(STEPS2 + 1):]
        torch.manual_seed(SEED)
        noise2 = torch.randn([4, H2 // F_LAT, W2 // F_LAT]).unsqueeze(0)
        cfg2 = ScheduledCFG(model_wrap, c2, u2)
        lat2 = SAMPLE[s2](cfg2, up + noise2 * sig2[0], sig2, extra_args={"cond_scale": CFG}, disable=True)
        out[f"{name}.latent1"] = lat1.contiguous()
        out[f"{name}.latent2"] = lat2.contiguous()
        meta[name] = {
            "prompt": p1, "negative": neg, "hires_prompt": p2,
            "sampler1": s1, "sampler2": s2,
            "schedule1": {"prompt": sc1, "negative": su1},
            "schedule2": {"prompt": sc2, "negative": su2},
            "calls1 (negative, prompt) segment": cfg1.picked,
            "calls2 (negative, prompt) segment": cfg2.picked,
        }
        print(name, "pass 1 calls", cfg1.picked, "pass 2 calls", cfg2.picked)
    os.makedirs(args.out, exist_ok=True)
    save_file(out, os.path.join(args.out, "run.safetensors"))
    doc = {
        "generator": "scripts/make_prompt_edit_reference.py",
        "model": args.model,
        "settings": {
            "seed": SEED, "cfg": CFG, "steps1": STEPS1, "steps2": STEPS2, "denoise": DENOISE,
            "width1": W1, "height1": H1, "width2": W2, "height2": H2,
            "schedule": "normal", "upscaler": "latent (bilinear, no antialias)",
        },
        "cases": meta,
    }
    with open(os.path.join(args.out, "run.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
