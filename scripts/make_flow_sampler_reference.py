#!/usr/bin/env python3
"""Record reference trajectories and schedules for hiresfix's samplers on a rectified-flow model.

    python3 scripts/make_flow_sampler_reference.py [--out tests/data/samplers]

Writes, under --out:
  flow_reference.safetensors   float64 tensors (names in flow_reference.json)
  flow_reference.json          settings, and per case the sampler, options and reference used

The model is ComfyUI's `ModelSamplingDiscreteFlow` (comfy/model_sampling.py; `CONST`):
x_sigma = (1 - sigma) x0 + sigma eps, sigma(t) = time_snr_shift(shift, t / multiplier), the table
sigma(i / N) for i = 1..N, timestep(sigma) = sigma * multiplier. Two of them: "sd3" (shift 3, N 1000,
multiplier 1000, SD3's) and "flux" (shift exp(1.15), N 10000, multiplier 1: ComfyUI
`ModelSamplingFlux` at Flux's 1024 px shift). Everything is float64 (ComfyUI builds the tables in
float32).

Samplers run on the same toy denoiser as scripts/make_sampler_reference.py,
`x * 0.8 / (1 + 0.2 sigma) + 0.1 tanh(x)`, with the recorded noise. References:
  * k-diffusion (PyPI) sample_euler / _heun / _dpm_2 / _lms / _dpmpp_2m, run unchanged on the flow
    sigmas, as ComfyUI runs them on a flow model (ComfyUI's own lms now ends with x = denoised;
    we keep k-diffusion's);
  * transcriptions of ComfyUI v0.3.75 comfy/k_diffusion/sampling.py for what it does on a CONST
    model: sample_euler_ancestral_RF, sample_dpmpp_2s_ancestral_RF, sample_dpmpp_sde /
    _2m_sde / _3m_sde in half-log-SNR time with offset_first_sigma_for_snr, and sample_lcm with
    CONST noise_scaling.
Sigmas: ComfyUI "normal" on the sd3 model (which is diffusers' FlowMatchEulerDiscreteScheduler
default; checked below against diffusers itself), from sigma 1 (x = x0 * 1, pure noise), and a
hires case: the last 11 sigmas of the 14-step schedule, started from a latent noised as ComfyUI
CONST `noise_scaling` does, `(1 - sigma) latent + sigma noise`.
Schedules: transcriptions of ComfyUI comfy/samplers.py on the flow models (normal, sgm_uniform
with the flow timestep, simple, ddim_uniform, beta, kl_optimal; karras / exponential /
polyexponential from k-diffusion between the table's ends).

Needs torch==2.11.0, k-diffusion, diffusers, scipy, safetensors.
"""

from __future__ import annotations

import math
import os
import sys
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import make_sampler_reference as base  # noqa: E402  (sets float64 as torch's default)
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402

K = base.K
SAMPLER_STEPS = [4, 10]
SCHEDULE_STEPS = [3, 10, 28]
HIRES = (14, 11)  # schedule steps, sigmas kept (denoise ~0.7 of 10 steps)
SHAPE = [1, 4, 8, 8]
NOISE_DRAWS = 24
SEED = 20261207


class FlowModel:
    """ComfyUI ModelSamplingDiscreteFlow / ModelSamplingFlux in float64."""

    def __init__(self, shift: float, timesteps: int, multiplier: float):
        self.shift, self.multiplier = shift, multiplier
        t = torch.arange(1, timesteps + 1, dtype=torch.float64) / timesteps
        self.sigmas = self.shift_t(t)

    def shift_t(self, t):
        if self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    @property
    def sigma_min(self):
        return float(self.sigmas[0])

    @property
    def sigma_max(self):
        return float(self.sigmas[-1])

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return self.shift_t(timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self.shift_t(torch.tensor(1.0 - percent)))


MODELS = {"sd3": FlowModel(3.0, 1000, 1000.0), "flux": FlowModel(math.exp(1.15), 10000, 1.0)}


# ---- schedules (ComfyUI comfy/samplers.py) ----------------------------------------------------


def comfy_normal(m: FlowModel, n: int, sgm=False) -> list[float]:
    start, end = m.timestep(m.sigma_max), m.timestep(m.sigma_min)
    if sgm:
        ts = torch.linspace(start, end, n + 1)[:-1]
    else:
        assert not math.isclose(float(m.sigma(torch.tensor(end))), 0, abs_tol=1e-5)
        ts = torch.linspace(start, end, n)
    return [float(m.sigma(t)) for t in ts] + [0.0]


def schedules(m: FlowModel, n: int) -> dict[str, list[float]]:
    lo, hi = m.sigma_min, m.sigma_max
    return {
        "normal": comfy_normal(m, n),
        "karras": K.get_sigmas_karras(n, lo, hi).tolist(),
        "exponential": K.get_sigmas_exponential(n, lo, hi).tolist(),
        "polyexponential": K.get_sigmas_polyexponential(n, lo, hi, rho=1.0).tolist(),
        "sgm_uniform": comfy_normal(m, n, sgm=True),
        "simple": base.comfy_simple(m.sigmas, n),
        "ddim_uniform": base.comfy_ddim_uniform(m.sigmas, n),
        "beta": base.comfy_beta(m.sigmas, n),
        "kl_optimal": base.comfy_kl_optimal(n, lo, hi),
    }


def diffusers_checks() -> dict[str, float]:
    """ComfyUI's normal on sd3 is diffusers' FlowMatchEulerDiscreteScheduler(shift=3) default;
    simple on flux is FluxPipeline's sigmas (time_shift(mu, 1, linspace(1, 1/n, n))) where n
    divides the table."""
    out = {}
    for n in SCHEDULE_STEPS:
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(n)
        ours = torch.tensor(comfy_normal(MODELS["sd3"], n))
        err = float((sched.sigmas.double() - ours).abs().max())
        assert err < 1e-6, (n, err)
        out[f"sd3.normal.{n} vs diffusers FlowMatchEulerDiscreteScheduler(shift=3)"] = err
    n = 10
    mu = 1.15
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    sched.set_timesteps(sigmas=[1 - i / n for i in range(n)], mu=mu)
    ours = torch.tensor(base.comfy_simple(MODELS["flux"].sigmas, n))
    err = float((sched.sigmas.double() - ours).abs().max())
    assert err < 1e-6, err
    out[f"flux.simple.{n} vs diffusers FlowMatchEulerDiscreteScheduler(dynamic, mu=1.15), FluxPipeline sigmas"] = err
    return out


# ---- samplers (ComfyUI v0.3.75 comfy/k_diffusion/sampling.py on a CONST model) ----------------


def half_log_snr(sigma):
    return torch.as_tensor(sigma).logit().neg()


def sigma_of_half_log_snr(lam):
    return torch.as_tensor(lam).neg().sigmoid()


def offset_first_sigma(sigmas, m: FlowModel):
    if len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = m.percent_to_sigma(1e-4)
    return sigmas


def euler_ancestral_rf(run, x, sigmas, eta=1.0, s_noise=1.0, **_):
    for i in range(len(sigmas) - 1):
        denoised = run(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
            sigma_down = sigmas[i + 1] * downstep_ratio
            alpha_ip1 = 1 - sigmas[i + 1]
            alpha_down = 1 - sigma_down
            renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
            sigma_down_i_ratio = sigma_down / sigmas[i]
            x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * denoised
            if eta > 0:
                x = (alpha_ip1 / alpha_down) * x + run.next_noise() * s_noise * renoise_coeff
    return x


def dpmpp_2s_ancestral_rf(run, x, sigmas, eta=1.0, s_noise=1.0, **_):
    sigma_fn = lambda lbda: (lbda.exp() + 1) ** -1  # noqa: E731
    lambda_fn = lambda sigma: ((1 - sigma) / sigma).log()  # noqa: E731
    for i in range(len(sigmas) - 1):
        denoised = run(x, sigmas[i])
        downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
        sigma_down = sigmas[i + 1] * downstep_ratio
        alpha_ip1 = 1 - sigmas[i + 1]
        alpha_down = 1 - sigma_down
        renoise_coeff = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_ip1**2 / alpha_down**2) ** 0.5
        if sigmas[i + 1] == 0:
            d = K.to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = torch.tensor(0.9999)
            else:
                t_i, t_down = lambda_fn(sigmas[i]), lambda_fn(sigma_down)
                h = t_down - t_i
                sigma_s = sigma_fn(t_i + 0.5 * h)
            sigma_s_i_ratio = sigma_s / sigmas[i]
            u = sigma_s_i_ratio * x + (1 - sigma_s_i_ratio) * denoised
            D_i = run(u, sigma_s)
            sigma_down_i_ratio = sigma_down / sigmas[i]
            x = sigma_down_i_ratio * x + (1 - sigma_down_i_ratio) * D_i
        if sigmas[i + 1] > 0 and eta > 0:
            x = (alpha_ip1 / alpha_down) * x + run.next_noise() * s_noise * renoise_coeff
    return x


def dpmpp_sde_const(run, x, sigmas, m, eta=1.0, s_noise=1.0, r=0.5, **_):
    sigmas = offset_first_sigma(sigmas, m)
    for i in range(len(sigmas) - 1):
        denoised = run(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            lambda_s_1 = lambda_s + r * h
            fac = 1 / (2 * r)
            sigma_s_1 = sigma_of_half_log_snr(lambda_s_1)
            alpha_s = sigmas[i] * lambda_s.exp()
            alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            sd, su = K.get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
            h_ = sd.log().neg() - lambda_s
            x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
            if eta > 0 and s_noise > 0:
                x_2 = x_2 + alpha_s_1 * run.next_noise() * s_noise * su
            denoised_2 = run(x_2, sigma_s_1)
            sd, su = K.get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
            h_ = sd.log().neg() - lambda_s
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
            if eta > 0 and s_noise > 0:
                x = x + alpha_t * run.next_noise() * s_noise * su
    return x


def dpmpp_msde_const(run, x, sigmas, m, order, eta=1.0, s_noise=1.0, solver_type="midpoint", **_):
    """sample_dpmpp_2m_sde (order 2) and sample_dpmpp_3m_sde (order 3), which share all but
    the correction."""
    sigmas = offset_first_sigma(sigmas, m)
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = run(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if order == 3 and h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif order == 3 and h_1 is not None:
                x = x + (alpha_t * phi_2) * ((denoised - denoised_1) / (h_1 / h))
            elif h_1 is not None:
                r = h_1 / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - denoised_1)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - denoised_1)
            if eta > 0 and s_noise > 0:
                x = x + run.next_noise() * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def lcm_const(run, x, sigmas, **_):
    for i in range(len(sigmas) - 1):
        x = run(x, sigmas[i])
        if sigmas[i + 1] > 0:
            s = sigmas[i + 1]
            x = s * run.next_noise() + (1.0 - s) * x  # CONST noise_scaling
    return x


def kd(name):
    go = base.kdiff(name, False)
    return lambda run, x, sigmas, m, **options: go(run, x, sigmas, options)


def comfy(fn):
    return lambda run, x, sigmas, m, **options: fn(run, x, sigmas, m=m, **options)


KDV = "k-diffusion %s sample_%%s on the flow sigmas (as ComfyUI runs it)" % base.KDIFF_VERSION
CV = "transcription of ComfyUI v0.3.75 %s on a CONST model"
CHURN = {"s_churn": 1.5, "s_tmin": 0.2, "s_tmax": 0.9, "s_noise": 1.003}
# case -> (sampler id, options, runner, reference)
CASES = {
    "euler": ("euler", {}, kd("sample_euler"), KDV % "euler"),
    "euler_churn": ("euler", CHURN, kd("sample_euler"), KDV % "euler"),
    "heun": ("heun", {}, kd("sample_heun"), KDV % "heun"),
    "dpm_2": ("dpm_2", {}, kd("sample_dpm_2"), KDV % "dpm_2"),
    "lms": ("lms", {}, kd("sample_lms"), KDV % "lms"),
    "dpmpp_2m": ("dpmpp_2m", {}, kd("sample_dpmpp_2m"), KDV % "dpmpp_2m"),
    "euler_ancestral": ("euler_ancestral", {}, comfy(euler_ancestral_rf), CV % "sample_euler_ancestral_RF"),
    "euler_ancestral_eta": ("euler_ancestral", {"eta": 0.6, "s_noise": 0.9}, comfy(euler_ancestral_rf), CV % "sample_euler_ancestral_RF"),
    "dpmpp_2s_ancestral": ("dpmpp_2s_ancestral", {}, comfy(dpmpp_2s_ancestral_rf), CV % "sample_dpmpp_2s_ancestral_RF"),
    "dpmpp_2s_ancestral_eta": ("dpmpp_2s_ancestral", {"eta": 0.5, "s_noise": 1.1}, comfy(dpmpp_2s_ancestral_rf), CV % "sample_dpmpp_2s_ancestral_RF"),
    "dpmpp_sde": ("dpmpp_sde", {}, comfy(dpmpp_sde_const), CV % "sample_dpmpp_sde"),
    "dpmpp_sde_r": ("dpmpp_sde", {"r": 0.3, "eta": 0.7, "s_noise": 0.95}, comfy(dpmpp_sde_const), CV % "sample_dpmpp_sde"),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}, comfy(partial(dpmpp_msde_const, order=2)), CV % "sample_dpmpp_2m_sde"),
    "dpmpp_2m_sde_heun": ("dpmpp_2m_sde", {"solver_type": "heun", "eta": 0.8}, comfy(partial(dpmpp_msde_const, order=2)), CV % "sample_dpmpp_2m_sde"),
    "dpmpp_3m_sde": ("dpmpp_3m_sde", {}, comfy(partial(dpmpp_msde_const, order=3)), CV % "sample_dpmpp_3m_sde"),
    "lcm": ("lcm", {}, comfy(lcm_const), CV % "sample_lcm"),
}
# Cases that also run as a hires pass (the tail of a longer schedule, from a noised latent).
HIRES_CASES = ["euler", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "lcm"]
REFUSED = ["dpm_2_ancestral", "ddim", "ddpm", "uni_pc", "plms"]


def run_case(tensors, key, runner, options, sigmas, x, noise):
    m = MODELS["sd3"]
    run = base.Run(noise)
    final = runner(run, x, sigmas, m, **options)
    tensors[f"{key}.sigmas"] = sigmas.clone()
    tensors[f"{key}.xs"] = torch.stack(run.xs)
    tensors[f"{key}.call_sigmas"] = torch.tensor(run.sigmas)
    tensors[f"{key}.final"] = final.clone()
    return {"calls": len(run.sigmas), "noise_draws": run.draws}


def main():
    out = base.out_dir(__doc__)

    gen = torch.Generator().manual_seed(SEED)
    x0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    latent = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    noise = [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(NOISE_DRAWS)]
    tensors = {"x0": x0, "latent": latent, "noise": torch.stack(noise)}

    cases = {}
    for case, (sampler, options, runner, reference) in CASES.items():
        entry = {"sampler": sampler, "options": options, "reference": reference, "runs": {}}
        for steps in SAMPLER_STEPS:
            sigmas = torch.tensor(comfy_normal(MODELS["sd3"], steps))
            x = x0 * sigmas[0]  # CONST noise_scaling of an empty latent
            entry["runs"][str(steps)] = run_case(tensors, f"{case}.{steps}", runner, options, sigmas, x, noise)
        if case in HIRES_CASES:
            total, keep = HIRES
            sigmas = torch.tensor(comfy_normal(MODELS["sd3"], total))[-keep:]
            s0 = sigmas[0]
            x = s0 * x0 + (1.0 - s0) * latent  # CONST noise_scaling of the upscaled latent
            entry["runs"]["hires"] = run_case(tensors, f"{case}.hires", runner, options, sigmas, x, noise)
        cases[case] = entry

    for kind, m in MODELS.items():
        tensors[f"table.{kind}"] = m.sigmas.clone()
        for n in SCHEDULE_STEPS:
            for name, sigmas in schedules(m, n).items():
                assert len(sigmas) == n + 1, (kind, name, n, len(sigmas))
                tensors[f"schedule.{kind}.{name}.{n}"] = torch.tensor(sigmas)

    checks = diffusers_checks()
    meta = {
        "generator": "scripts/make_flow_sampler_reference.py",
        "versions": {"torch": torch.__version__, "k-diffusion": base.KDIFF_VERSION, "diffusers": base.diffusers.__version__},
        "models": {k: {"shift": m.shift, "timesteps": len(m.sigmas), "multiplier": m.multiplier} for k, m in MODELS.items()},
        "toy_denoiser": "x * 0.8 / (1 + 0.2 * sigma) + 0.1 * tanh(x)",
        "x0": f"randn {SHAPE} float64, torch.Generator seeded {SEED}; then latent; then {NOISE_DRAWS} noise draws",
        "start": "x = x0 * sigmas[0]; hires: x = sigmas[0] * x0 + (1 - sigmas[0]) * latent",
        "sampler_sigmas": f"ComfyUI normal on the sd3 model; hires: the last {HIRES[1]} of {HIRES[0]} steps",
        "tensors": "<case>.<steps|hires>.{sigmas, xs, call_sigmas, final}; x0; latent; noise; table.<model>; schedule.<model>.<name>.<steps>",
        "cases": cases,
        "refused_on_flow": REFUSED,
        "schedule_steps": SCHEDULE_STEPS,
        "diffusers_checks": checks,
    }
    base.write_reference(out, "flow_reference", tensors, meta)


if __name__ == "__main__":
    main()
