#!/usr/bin/env python3
"""Record reference trajectories for hiresfix's sampler and schedule plugins.

    python3 scripts/make_sampler_reference.py [--out tests/data/samplers]

Writes, under --out:
  reference.safetensors   float64 tensors (names listed in reference.json)
  reference.json          settings, and for every case the sampler, options and reference used

Every sampler runs on a FIXED toy denoiser, `denoised = x * 0.8 / (1 + 0.2 sigma) + 0.1 tanh(x)`,
from a fixed start latent, drawing its noise from a fixed list of recorded randn tensors (so
ancestral and SDE samplers are reproducible). For each case and step count it records the
(x, sigma) of every denoiser call and the final x. References:
  * k-diffusion (PyPI `k-diffusion`) for every sampler it has; the churn samplers (euler, heun,
    dpm_2) draw through `torch.randn_like`, which is redirected to the recorded noise the way
    A1111's `TorchHijack` does;
  * diffusers DDIMScheduler / DDPMScheduler / UniPCMultistepScheduler for ddim, ddpm and uni_pc
    (run on their own "leading" timesteps, or on our sigmas for UniPC), in VP space with the
    model's epsilon derived from the toy denoiser;
  * an independent transcription of Luo et al. 2023 (LCM, Algorithm 1) for lcm.
Schedules: k-diffusion `get_sigmas_*` and `DiscreteSchedule.get_sigmas` (in float64), and
transcriptions of ComfyUI `comfy/samplers.py` (simple, ddim_uniform, sgm_uniform, beta with
scipy, kl_optimal), for two sigma tables and three step counts.

Everything is CPU float64 and deterministic. Needs torch==2.11.0, k-diffusion, diffusers, scipy,
safetensors.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os

import numpy as np
import scipy.stats
import torch

torch.set_default_dtype(torch.float64)  # k-diffusion's linspace ramps in float64 too

import diffusers  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as diffusers_ddpm  # noqa: E402
import k_diffusion.sampling as K  # noqa: E402
from diffusers import DDIMScheduler, DDPMScheduler, UniPCMultistepScheduler  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SAMPLER_STEPS = [4, 10]
SCHEDULE_STEPS = [3, 10, 28]
SHAPE = [1, 4, 8, 8]
NOISE_DRAWS = 24
SEED = 20240607


def alphas_cumprod(kind: str) -> torch.Tensor:
    """SD1's scaled_linear table (0.00085-0.012) or DDPM's linear one (0.0001-0.02), 1000 steps."""
    if kind == "sd1":
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    else:
        betas = torch.linspace(0.0001, 0.02, 1000)
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_table(kind: str) -> torch.Tensor:
    ac = alphas_cumprod(kind)
    return ((1 - ac) / ac) ** 0.5


def toy_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return x * (0.8 / (1 + 0.2 * sigma)) + 0.1 * torch.tanh(x)


class Run:
    """The toy denoiser as a k-diffusion model, recording every call, plus the noise stream."""

    def __init__(self, noise: list[torch.Tensor]):
        self.xs: list[torch.Tensor] = []
        self.sigmas: list[float] = []
        self.noise = noise
        self.draws = 0

    def __call__(self, x, sigma, **_):
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        self.xs.append(x.clone())
        self.sigmas.append(s)
        return toy_denoiser(x, s)

    def next_noise(self, *_):
        n = self.noise[self.draws]
        self.draws += 1
        return n.clone()


class TorchHijack:
    """k-diffusion's `torch` with randn_like redirected to the recorded noise (as A1111 does)."""

    def __init__(self, run: Run):
        self.run = run

    def randn_like(self, x, **_):
        return self.run.next_noise()

    def __getattr__(self, item):
        return getattr(torch, item)


def kdiff(name: str, noise_kw: bool):
    def go(run: Run, x, sigmas, options):
        fn = getattr(K, name)
        kwargs = dict(options)
        if noise_kw:
            kwargs["noise_sampler"] = run.next_noise
        saved = K.torch
        K.torch = TorchHijack(run)
        try:
            return fn(run, x, sigmas, disable=True, **kwargs)
        finally:
            K.torch = saved

    return go


def vp_eps(x_vp: torch.Tensor, sigma: float, run: Run) -> torch.Tensor:
    """Epsilon of the toy denoiser for a VP-space sample (x_sigma = x_vp * sqrt(1 + sigma^2))."""
    x = x_vp * math.sqrt(1 + sigma * sigma)
    return (x - run(x, sigma)) / sigma


def leading_timesteps(n: int) -> list[int]:
    """SD's diffusers config: "leading" spacing with steps_offset 1."""
    ratio = 1000 // n
    return [int(t) + 1 for t in (np.arange(0, n) * ratio)[::-1]]


def with_ac(scheduler, ac: torch.Tensor):
    scheduler.alphas_cumprod = ac.clone()
    scheduler.betas = 1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])
    scheduler.alphas = 1 - scheduler.betas
    return scheduler


def diffusers_ddim(run: Run, x, sigmas, options, ac):
    sched = with_ac(DDIMScheduler(num_train_timesteps=1000, set_alpha_to_one=True, steps_offset=1, clip_sample=False), ac)
    sched.final_alpha_cumprod = torch.tensor(1.0)
    sched.set_timesteps(len(sigmas) - 1)
    eta = options.get("eta", 0.0)
    x_vp = x / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i, t in enumerate(sched.timesteps):
        eps = vp_eps(x_vp, float(sigmas[i]), run)
        noise = run.next_noise() if eta > 0 else None
        x_vp = sched.step(eps, t, x_vp, eta=eta, variance_noise=noise).prev_sample
    return x_vp * math.sqrt(1 + float(sigmas[-1]) ** 2)


def diffusers_ddpm_run(run: Run, x, sigmas, options, ac):
    sched = with_ac(DDPMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False), ac)
    sched.one = torch.tensor(1.0)
    sched.set_timesteps(len(sigmas) - 1)
    saved = diffusers_ddpm.randn_tensor
    diffusers_ddpm.randn_tensor = lambda *a, **k: run.next_noise()
    try:
        x_vp = x / math.sqrt(1 + float(sigmas[0]) ** 2)
        for i, t in enumerate(sched.timesteps):
            eps = vp_eps(x_vp, float(sigmas[i]), run)
            x_vp = sched.step(eps, t, x_vp).prev_sample
    finally:
        diffusers_ddpm.randn_tensor = saved
    return x_vp * math.sqrt(1 + float(sigmas[-1]) ** 2)


def diffusers_unipc(run: Run, x, sigmas, options, ac):
    """ComfyUI's `sample_unipc`: a final sigma of 0 is replaced by 0.001, the result is divided
    by alpha there, i.e. returned in sigma space at sigma = 0.001."""
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    n = len(sigmas) - 1
    sched = with_ac(
        UniPCMultistepScheduler(
            num_train_timesteps=1000,
            solver_order=int(options.get("order", 3)),
            solver_type=options.get("variant", "bh1"),
            predict_x0=True,
            lower_order_final=True,
        ),
        ac,
    )
    sched.set_timesteps(n)
    sched.sigmas = sigmas.clone()
    x_vp = x / math.sqrt(1 + float(sigmas[0]) ** 2)
    for i in range(n):
        if i == 0:
            sched._step_index = 0
        eps = vp_eps(x_vp, float(sigmas[i]), run)
        x_vp = sched.step(eps, sched.timesteps[i], x_vp).prev_sample
    return x_vp * math.sqrt(1 + float(sigmas[-1]) ** 2)


def lcm_transcription(run: Run, x, sigmas, options, ac):
    """Luo et al. 2023, Algorithm 1 (multistep consistency sampling) in VP space: the model's
    x0 prediction, re-noised to the next level with fresh noise."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = run(x, s)
        a_next = 1 / (1 + s_next * s_next)
        if s_next > 0:
            x_vp = a_next**0.5 * x0 + (1 - a_next) ** 0.5 * run.next_noise()
            x = x_vp / a_next**0.5
        else:
            x = x0
    return x


def karras_sd1(n: int) -> torch.Tensor:
    table = sigma_table("sd1")
    return K.get_sigmas_karras(n, float(table[0]), float(table[-1]))


def leading_sigmas(n: int) -> torch.Tensor:
    table = sigma_table("sd1")
    return torch.tensor([float(table[t]) for t in leading_timesteps(n)] + [0.0])


# case -> (sampler id, options, reference runner, reference description, sigmas)
KDIFF_VERSION = importlib.metadata.version("k-diffusion")
KD = "k-diffusion %s sample_%%s" % KDIFF_VERSION
CHURN = {"s_churn": 1.5, "s_tmin": 0.2, "s_tmax": 6.0, "s_noise": 1.003}
CASES = {
    "euler": ("euler", {}, kdiff("sample_euler", False), KD % "euler", karras_sd1),
    "euler_churn": ("euler", CHURN, kdiff("sample_euler", False), KD % "euler", karras_sd1),
    "euler_ancestral": ("euler_ancestral", {}, kdiff("sample_euler_ancestral", True), KD % "euler_ancestral", karras_sd1),
    "euler_ancestral_eta": ("euler_ancestral", {"eta": 0.6, "s_noise": 0.9}, kdiff("sample_euler_ancestral", True), KD % "euler_ancestral", karras_sd1),
    "heun": ("heun", {}, kdiff("sample_heun", False), KD % "heun", karras_sd1),
    "heun_churn": ("heun", CHURN, kdiff("sample_heun", False), KD % "heun", karras_sd1),
    "dpm_2": ("dpm_2", {}, kdiff("sample_dpm_2", False), KD % "dpm_2", karras_sd1),
    "dpm_2_churn": ("dpm_2", CHURN, kdiff("sample_dpm_2", False), KD % "dpm_2", karras_sd1),
    "dpm_2_ancestral": ("dpm_2_ancestral", {}, kdiff("sample_dpm_2_ancestral", True), KD % "dpm_2_ancestral", karras_sd1),
    "dpm_2_ancestral_eta": ("dpm_2_ancestral", {"eta": 0.5, "s_noise": 1.1}, kdiff("sample_dpm_2_ancestral", True), KD % "dpm_2_ancestral", karras_sd1),
    "lms": ("lms", {}, kdiff("sample_lms", False), KD % "lms", karras_sd1),
    "lms_order2": ("lms", {"order": 2}, kdiff("sample_lms", False), KD % "lms", karras_sd1),
    "dpmpp_2s_ancestral": ("dpmpp_2s_ancestral", {}, kdiff("sample_dpmpp_2s_ancestral", True), KD % "dpmpp_2s_ancestral", karras_sd1),
    "dpmpp_sde": ("dpmpp_sde", {}, kdiff("sample_dpmpp_sde", True), KD % "dpmpp_sde", karras_sd1),
    "dpmpp_sde_r": ("dpmpp_sde", {"r": 0.3, "eta": 0.7, "s_noise": 0.95}, kdiff("sample_dpmpp_sde", True), KD % "dpmpp_sde", karras_sd1),
    "dpmpp_2m": ("dpmpp_2m", {}, kdiff("sample_dpmpp_2m", False), KD % "dpmpp_2m", karras_sd1),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, kdiff("sample_dpmpp_2m_sde", True), KD % "dpmpp_2m_sde", karras_sd1),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.8}, kdiff("sample_dpmpp_2m_sde", True), KD % "dpmpp_2m_sde", karras_sd1),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, kdiff("sample_dpmpp_3m_sde", True), KD % "dpmpp_3m_sde", karras_sd1),
    "dpmpp_3m_sde_eta": ("dpmpp_3m_sde", {"eta": 0.5, "s_noise": 0.8}, kdiff("sample_dpmpp_3m_sde", True), KD % "dpmpp_3m_sde", karras_sd1),
    "ddim": ("ddim", {}, diffusers_ddim, "diffusers %s DDIMScheduler (eta=0, leading timesteps)" % diffusers.__version__, leading_sigmas),
    "ddim_eta": ("ddim", {"eta": 0.5}, diffusers_ddim, "diffusers %s DDIMScheduler (eta=0.5, leading timesteps)" % diffusers.__version__, leading_sigmas),
    "ddpm": ("ddpm", {}, diffusers_ddpm_run, "diffusers %s DDPMScheduler (fixed_small, leading timesteps)" % diffusers.__version__, leading_sigmas),
    "uni_pc": ("uni_pc", {}, diffusers_unipc, "diffusers %s UniPCMultistepScheduler (bh1, order 3, x0, sigmas overridden)" % diffusers.__version__, karras_sd1),
    "uni_pc_bh2": ("uni_pc", {"variant": "bh2", "order": 2}, diffusers_unipc, "diffusers %s UniPCMultistepScheduler (bh2, order 2, x0, sigmas overridden)" % diffusers.__version__, karras_sd1),
    "lcm": ("lcm", {}, lcm_transcription, "own transcription of Luo et al. 2023 Algorithm 1", karras_sd1),
}


def run_cases(x0: torch.Tensor, noise: list[torch.Tensor]):
    tensors, cases = {}, {}
    ac = alphas_cumprod("sd1")
    for case, (sampler, options, runner, reference, schedule) in CASES.items():
        entry = {"sampler": sampler, "options": options, "reference": reference, "runs": {}}
        for steps in SAMPLER_STEPS:
            sigmas = schedule(steps)
            run = Run(noise)
            x = x0 * sigmas[0]
            if runner in (diffusers_ddim, diffusers_ddpm_run, diffusers_unipc, lcm_transcription):
                final = runner(run, x, sigmas, options, ac)
            else:
                final = runner(run, x, sigmas, options)
            key = f"{case}.{steps}"
            tensors[f"{key}.sigmas"] = sigmas.clone()
            tensors[f"{key}.xs"] = torch.stack(run.xs)
            tensors[f"{key}.call_sigmas"] = torch.tensor(run.sigmas)
            tensors[f"{key}.final"] = final.clone()
            entry["runs"][str(steps)] = {"calls": len(run.sigmas), "noise_draws": run.draws}
        cases[case] = entry
    return tensors, cases


# ---- schedules ------------------------------------------------------------------------------


def comfy_simple(table: torch.Tensor, n: int) -> list[float]:
    ss = len(table) / n
    return [float(table[-(1 + int(x * ss))]) for x in range(n)] + [0.0]


def comfy_ddim_uniform(table: torch.Tensor, n: int) -> list[float]:
    """ComfyUI `ddim_scheduler`, which yields one sigma per x = 1, 1 + ss, ... below the table
    length. When `n` does not divide the table that is more than n (e.g. 29 for n = 28); hiresfix
    keeps the first n of them (diffusers' "leading" spacing with steps_offset 1)."""
    ss = max(len(table) // n, 1)
    xs = list(range(1, len(table), ss))[:n]
    return [float(table[x]) for x in reversed(xs)] + [0.0]


def t_to_sigma(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """k-diffusion `DiscreteSchedule.t_to_sigma` (log-sigma interpolation) kept in float64:
    k-diffusion casts t to float32 first, which moves SD1 sigmas by up to ~2e-6."""
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * table.log()[low] + w * table.log()[high]).exp()


def normal(table: torch.Tensor, n: int) -> list[float]:
    """k-diffusion `DiscreteSchedule.get_sigmas(n)` (= ComfyUI normal_scheduler for SD tables)."""
    return t_to_sigma(table, torch.linspace(len(table) - 1, 0, n)).tolist() + [0.0]


def comfy_sgm_uniform(table: torch.Tensor, n: int) -> list[float]:
    return t_to_sigma(table, torch.linspace(len(table) - 1, 0, n + 1)[:-1]).tolist() + [0.0]


def comfy_beta(table: torch.Tensor, n: int, alpha=0.6, beta=0.6) -> list[float]:
    ts = 1 - np.linspace(0, 1, n, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * (len(table) - 1))
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(table[int(t)]))
        last = t
    return sigs + [0.0]


def comfy_kl_optimal(n: int, sigma_min: float, sigma_max: float) -> list[float]:
    idx = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (idx * math.atan(sigma_min) + (1 - idx) * math.atan(sigma_max)).tan().tolist() + [0.0]


def schedules(table: torch.Tensor, n: int) -> dict[str, list[float]]:
    lo, hi = float(table[0]), float(table[-1])
    return {
        "normal": normal(table, n),
        "karras": K.get_sigmas_karras(n, lo, hi).tolist(),
        "exponential": K.get_sigmas_exponential(n, lo, hi).tolist(),
        "polyexponential": K.get_sigmas_polyexponential(n, lo, hi, rho=1.0).tolist(),
        "sgm_uniform": comfy_sgm_uniform(table, n),
        "simple": comfy_simple(table, n),
        "ddim_uniform": comfy_ddim_uniform(table, n),
        "beta": comfy_beta(table, n),
        "kl_optimal": comfy_kl_optimal(n, lo, hi),
    }


SCHEDULE_REFERENCES = {
    "normal": "k-diffusion DiscreteSchedule.get_sigmas (ComfyUI normal_scheduler), t_to_sigma in float64",
    "karras": "k-diffusion get_sigmas_karras, rho 7",
    "exponential": "k-diffusion get_sigmas_exponential",
    "polyexponential": "k-diffusion get_sigmas_polyexponential, rho 1 (A1111's default)",
    "sgm_uniform": "transcription of ComfyUI normal_scheduler(sgm=True)",
    "simple": "transcription of ComfyUI simple_scheduler",
    "ddim_uniform": "transcription of ComfyUI ddim_scheduler, first n sigmas (see comfy_ddim_uniform)",
    "beta": "transcription of ComfyUI beta_scheduler (alpha = beta = 0.6, scipy.stats.beta.ppf)",
    "kl_optimal": "transcription of ComfyUI kl_optimal_scheduler",
}


def write_reference(out: str, stem: str, tensors: dict, meta: dict):
    """`<stem>.safetensors` (every tensor float64, names sorted) and `<stem>.json` under `out`."""
    tensors = {k: v.contiguous().to(torch.float64) for k, v in sorted(tensors.items())}
    save_file(tensors, os.path.join(out, f"{stem}.safetensors"))
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=False)
        f.write("\n")


def out_dir(doc: str) -> str:
    """The `--out` folder (made if missing), tests/data/samplers by default."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "samplers"))
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    return out


def main():
    out = out_dir(__doc__)

    gen = torch.Generator().manual_seed(SEED)
    x0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    noise = [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(NOISE_DRAWS)]
    tensors, cases = run_cases(x0, noise)
    tensors["x0"] = x0
    tensors["noise"] = torch.stack(noise)

    for kind in ("sd1", "linear"):
        table = sigma_table(kind)
        tensors[f"table.{kind}"] = table.clone()
        for n in SCHEDULE_STEPS:
            for name, sigmas in schedules(table, n).items():
                assert len(sigmas) == n + 1, (kind, name, n, len(sigmas))
                tensors[f"schedule.{kind}.{name}.{n}"] = torch.tensor(sigmas)

    meta = {
        "generator": "scripts/make_sampler_reference.py",
        "versions": {"torch": torch.__version__, "k-diffusion": KDIFF_VERSION, "diffusers": diffusers.__version__, "scipy": scipy.__version__},
        "toy_denoiser": "x * 0.8 / (1 + 0.2 * sigma) + 0.1 * tanh(x)",
        "x0": f"randn {SHAPE} float64, torch.Generator seeded {SEED}; noise: the next {NOISE_DRAWS} draws",
        "start": "x = x0 * sigmas[0]",
        "sampler_steps": SAMPLER_STEPS,
        "sampler_sigmas": "karras on the SD1 table, except ddim/ddpm: the SD1 sigmas at diffusers' leading timesteps, then 0",
        "tensors": "<case>.<steps>.{sigmas, xs (x at every denoiser call), call_sigmas, final}; x0; noise; table.<kind>; schedule.<kind>.<name>.<steps>",
        "cases": cases,
        "schedule_steps": SCHEDULE_STEPS,
        "sigma_tables": {"sd1": "scaled_linear betas 0.00085-0.012, 1000 steps", "linear": "linear betas 0.0001-0.02, 1000 steps"},
        "schedules": SCHEDULE_REFERENCES,
    }
    write_reference(out, "reference", tensors, meta)


if __name__ == "__main__":
    main()
