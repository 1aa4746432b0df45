#!/usr/bin/env python3
"""Side-by-side benchmark: the same hires job through hiresfix and through diffusers models
driven by k-diffusion with A1111's algorithm, each in its own process, on this machine.

    scripts/bench [WORKLOAD ...]        (the wrapper builds hiresfix in release first)
    python3 scripts/bench.py [WORKLOAD ...] [--data DIR] [--hiresfix PATH]

Workloads: sd15-cpu (256 -> 512 px, 4 + 2 steps, Euler, CFG 7, fp32, CPU) and, on a CUDA
machine, sd15 (512 -> 1024) and sdxl (1024 -> 2048), 20 + 10 steps, bf16. The first run
builds the real-size architecture with random weights (speed does not depend on weight
values) and saves it once as a diffusers folder and as one original-layout .safetensors file
under --data (default target/bench-data/bench-<family>). hiresfix loads the single file (what
Civitai users have); the reference loads the diffusers folder; the weights are the same.

Workload deep-shrink-cpu runs hiresfix alone: one pass of real-size SD 1.5 at 1024 x 1024 (2x
its native size), 4 steps, Euler, CFG 7, fp32, CPU, with and without the `deep_shrink` patch
(defaults: block 3, factor 2, the first 35 % of the schedule), and prints the pass's time
for each, their ratio and the UNet FLOPs of one call at full and shrunk depth.

Workloads attention-patches-cpu and attention-patches-2048-cpu run hiresfix alone: one pass
of real-size SD 1.5 at 1024 x 1024 (2048 x 2048), 1 step, Euler, CFG 7, fp32, CPU, plain, with
`hypertile` and with `tome` (their defaults), and print each pass time and its ratio to plain.

Workload load-cpu compares loading: the real-size SD 1.5 file (fp32) loaded onto the CPU in fp32
by hiresfix (zero-copy: parameters view the file's mapping; and the copying load,
HIRESFIX_COPY_WEIGHTS=1, as before zero-copy) and by diffusers (`from_pretrained` of the
folder, `low_cpu_mem_usage=True`, and `from_single_file` of the same single file), each in its
own process, then the smallest use of every weight: one 64 x 64 image, 1 Euler step, CFG 7, VAE
decode. Warm: the files in the page cache (best of --repeat); cold: evicted before each run
(posix_fadvise DONTNEED on every file read; mincore checks that they left). It
prints load seconds, load-to-image seconds (in process, from the load on) and peak RSS.

Workload esrgan-cpu compares a super-resolution upscaler: a real-size RRDB-23 x4 (64
features, random weights, saved once as .safetensors) on a 512 x 512 image, tiles of 192 px
overlapping by 32 (one tile per call), CPU fp32: hiresfix's network (`cargo bench -p
hiresfix-upscalers-pixel --bench esrgan`) against Spandrel's model driven by the same tiling
(scripts/make_esrgan_reference.py's transcription), each in its own process: seconds and peak RSS.

Per workload it prints one table: load, text encode, pass 1, upscale, pass 2, VAE decode, PNG,
total (in process), the UNet's seconds per sampling step of each pass and process wall time in
seconds, peak resident memory (VmHWM), and ours / theirs; then each UNet phase's achieved
FLOP/s against the device's peak (CPU: a 4096 x 4096 fp32 matmul timed here; the UNet's FLOPs
are counted with torch's FlopCounterMode on the reference model), and the largest pixel
difference of the PNGs.

A second peer on CPU workloads (sd15-cpu): stable-diffusion.cpp through its Python binding,
in its own process, on the SAME single .safetensors file hiresfix loads (fp32, the file's own
type), with its own hires fix (`hires=True`, `latent` = bilinear upscaler, same seed, prompt,
sizes, steps, Euler, discrete = A1111's normal schedule, CFG; VAE decode-only, as its CLI does
for txt2img; as many threads as torch uses). Its phases come from its own log lines
(get_learned_condition, sampling, hires sampling, hires fix, decode_first_stage); load and PNG
are timed around its Python calls. Two differences it brings, both reported, not corrected:
its RNG differs (the pixel difference against it is information only), and its hires pass
runs one step more than A1111's (it trims the schedule with t_enc = steps * denoise where
A1111 uses steps - 1: hires steps 2 at denoise 0.5 runs 3 UNet steps), so compare its
"pass 2 per step" row, not its "pass 2" row. It is optional and not installed by CI:

    pip install stable-diffusion-cpp-python==0.4.7      # builds stable-diffusion.cpp with CMake

(the sdist vendors stable-diffusion.cpp and ggml: it builds offline given scikit-build-core
and cmake, e.g. `pip install scikit-build-core cmake ninja` then `--no-build-isolation`;
about 25 min on 2 shared cores). Without it its columns are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKLOADS = {
    "sd15-cpu": dict(family="sd15", device="cpu", dtype="fp32", width=256, height=256,
                     scale=2.0, steps1=4, steps2=2, denoise=0.5, cfg=7.0),
    "sd15": dict(family="sd15", device="cuda", dtype="bf16", width=512, height=512,
                 scale=2.0, steps1=20, steps2=10, denoise=0.5, cfg=7.0),
    "sdxl": dict(family="sdxl", device="cuda", dtype="bf16", width=1024, height=1024,
                 scale=2.0, steps1=20, steps2=10, denoise=0.5, cfg=7.0),
    "esrgan-cpu": dict(esrgan=True, side=512, tile=192, overlap=32, blocks=23, nf=64),
    "deep-shrink-cpu": dict(family="sd15", device="cpu", dtype="fp32", width=1024, height=1024,
                            steps1=4, cfg=7.0, patch=True),
    "attention-patches-cpu": dict(family="sd15", device="cpu", dtype="fp32", width=1024, height=1024,
                                  steps1=1, cfg=7.0, patch=True, patches={
                                      "hypertile": 'patches = [{ name = "hypertile" }]\n',
                                      "tome": 'patches = [{ name = "tome" }]\n',
                                  }),
    "attention-patches-2048-cpu": dict(family="sd15", device="cpu", dtype="fp32", width=2048, height=2048,
                                       steps1=1, cfg=7.0, patch=True, patches={
                                           "hypertile": 'patches = [{ name = "hypertile" }]\n',
                                           "tome": 'patches = [{ name = "tome" }]\n',
                                       }),
    "load-cpu": dict(family="sd15", device="cpu", dtype="fp32", width=64, height=64, steps1=1,
                     cfg=7.0, load=True),
}
PROMPT = "a photo of a cat"
NEGATIVE = "blurry"
SEED = 1234
PHASES = ["load", "text encode", "pass 1", "upscale", "pass 2", "vae decode", "png", "total"]


# ----------------------------------------------------------------------------
# Building the real-size models (reference side; imports the parity script's helpers)
# ----------------------------------------------------------------------------
def build_sd15(folder: str) -> None:
    import shutil

    import torch
    sys.path.insert(0, HERE)
    import make_sd1_reference as m
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    text_encoder = CLIPTextModel(m.clip_text_config(768, 3072, layers=12, heads=12, act="quick_gelu", pad_id=49407))
    # The defaults are SD 1.5's UNet but for its 768-wide text (CLIP-L) and 64-cell sample.
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, latent_channels=4, sample_size=512, scaling_factor=m.SCALING_FACTOR,
    )
    for model in (text_encoder, unet, vae):
        m.randomize_(model)
        model.eval()
    ddir = os.path.join(folder, "diffusers")
    tok_dir = os.path.join(ddir, "tokenizer")
    bpe = m.clip_vocab.find_bpe_file(None)
    m.clip_vocab.write_tokenizer_dir(tok_dir, bpe, m.MAX_LEN)
    tok = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    scheduler = PNDMScheduler(**m.SCHEDULE_KWARGS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(ddir, safe_serialization=True)
    shutil.rmtree(tok_dir)
    m.clip_vocab.write_tokenizer_dir(tok_dir, bpe, m.MAX_LEN)
    save_file(m.to_ldm(text_encoder, unet, vae), os.path.join(folder, "model.safetensors"))


def ensure_models(family: str, data: str) -> str:
    folder = os.path.join(data, f"bench-{family}")
    done = os.path.join(folder, "done")
    if not os.path.exists(done):
        if family != "sd15":
            sys.exit(f"building {family} is not written yet; run sd15-cpu")
        print(f"building real-size random {family} in {folder} (once) ...", file=sys.stderr)
        os.makedirs(folder, exist_ok=True)
        build_sd15(folder)
        open(done, "w").close()
    return folder


# ----------------------------------------------------------------------------
# The reference run (its own process): diffusers models + k-diffusion, A1111's algorithm
# ----------------------------------------------------------------------------
def reference(workload: str, folder: str, out_png: str, out_json: str) -> None:
    start = time.perf_counter()
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, HERE)
    import make_sd1_reference as m
    import k_diffusion.sampling
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    w = WORKLOADS[workload]
    device = torch.device(w["device"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[w["dtype"]]
    phases: dict[str, float] = {}

    def timed(name, f):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = f()
        if device.type == "cuda":
            torch.cuda.synchronize()
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
        return out

    ddir = os.path.join(folder, "diffusers")

    def load():
        if os.environ.get("BENCH_SINGLE_FILE"):
            from diffusers import StableDiffusionPipeline
            pipe = StableDiffusionPipeline.from_single_file(
                os.path.join(folder, "model.safetensors"), config=ddir, local_files_only=True,
                torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
            tok, te, unet, vae = pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae
        else:
            tok = CLIPTokenizer.from_pretrained(os.path.join(ddir, "tokenizer"), local_files_only=True)
            lazy = dict(local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=True)
            te = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), **lazy)
            unet = UNet2DConditionModel.from_pretrained(os.path.join(ddir, "unet"), **lazy)
            vae = AutoencoderKL.from_pretrained(os.path.join(ddir, "vae"), **lazy)
        return tok, te.to(device).eval(), unet.to(device).eval(), vae.to(device).eval()

    tok, te, unet, vae = timed("load", load)
    phases["load_peak_rss_mib"] = peak_rss_mib()
    t0 = time.perf_counter()  # in-process total: from the load on, as hiresfix's phases
    t0 -= phases["load"]
    with torch.no_grad():
        def encode():
            ids = [m.tokenize(tok, p).to(device) for p in (PROMPT, NEGATIVE)]
            return [te(i).last_hidden_state for i in ids]
        cond, uncond = timed("text encode", encode)
        betas = torch.linspace(m.BETA_START**0.5, m.BETA_END**0.5, m.NUM_TRAIN_T, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
        model_wrap = m.UNetEpsDenoiser(unet, alphas_cumprod.to(device), quantize=False)
        cfg_model = m.CFGDenoiser(model_wrap)
        f = 8
        h1, w1 = w["height"] // f, w["width"] // f
        extra = {"cond": cond, "uncond": uncond, "cond_scale": w["cfg"]}

        def run_pass(sigmas, x):
            return k_diffusion.sampling.sample_euler(cfg_model, x, sigmas, extra_args=extra, disable=True)

        sig1 = model_wrap.get_sigmas(w["steps1"]).to(device)
        torch.manual_seed(SEED)
        noise1 = torch.randn([4, h1, w1]).unsqueeze(0).to(device, dtype)
        lat1 = timed("pass 1", lambda: run_pass(sig1, noise1 * sig1[0]))
        lat2 = lat1
        if "steps2" in w:  # the hires pass (every workload but load-cpu)
            h2, w2 = int(h1 * w["scale"]), int(w1 * w["scale"])
            up = timed("upscale", lambda: F.interpolate(lat1, size=(h2, w2), mode="bilinear", antialias=False))
            sig2 = model_wrap.get_sigmas(int(w["steps2"] / w["denoise"]))[-(w["steps2"] + 1):].to(device)
            torch.manual_seed(SEED)
            noise2 = torch.randn([4, h2, w2]).unsqueeze(0).to(device, dtype)
            lat2 = timed("pass 2", lambda: run_pass(sig2, up + noise2 * sig2[0]))
        image = timed("vae decode", lambda: vae.decode(lat2 / m.SCALING_FACTOR).sample)

        def png():
            x = torch.clamp((image.float() + 1.0) / 2.0, 0.0, 1.0)
            u8 = (x[0].permute(1, 2, 0) * 255.0).to(torch.uint8).cpu().numpy()
            Image.fromarray(u8).save(out_png)
        timed("png", png)
    phases["total"] = time.perf_counter() - t0
    phases["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        phases["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    phases["import_and_total"] = time.perf_counter() - start
    with open(out_json, "w") as fh:
        json.dump(phases, fh)


# ----------------------------------------------------------------------------
# The second reference (its own process): stable-diffusion.cpp's own hires fix
# ----------------------------------------------------------------------------
SDCPP_PIN = "0.4.7"  # stable-diffusion-cpp-python, the version measured in BENCHMARKS.md
# Its log lines that carry a phase's seconds ("... taking 1.23s"), by phase.
SDCPP_LOG = {
    "text encode": r"get_learned_condition completed, taking ([0-9.]+)s",
    "pass 1": r"- sampling completed, taking ([0-9.]+)s",
    "pass 2": r"hires sampling \d+/\d+ completed, taking ([0-9.]+)s",
    "hires": r"hires fix completed, taking ([0-9.]+)s",
    "vae decode": r"decode_first_stage completed, taking ([0-9.]+)s",
    "pass 2 steps": r"sigma_sched_size=(\d+)",
}


def sdcpp_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("stable_diffusion_cpp") is not None


def sdcpp_reference(workload: str, checkpoint: str, threads: int, out_png: str, out_json: str) -> None:
    start = time.perf_counter()
    import ctypes
    import re

    import stable_diffusion_cpp as sd_cpp

    w = WORKLOADS[workload]
    log: list[str] = []

    @sd_cpp.sd_log_callback
    def on_log(level, text, data):  # replaces the binding's printer: kept, parsed below
        log.append(text.decode("utf-8", errors="replace"))

    sd_cpp.sd_set_log_callback(on_log, ctypes.c_void_p(0))
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    # verbose=False: the binding silences the C library's stdout (progress bars) during its calls.
    sd = sd_cpp.StableDiffusion(model_path=checkpoint, n_threads=threads, vae_decode_only=True, verbose=False)
    phases["load"] = time.perf_counter() - t0
    t = time.perf_counter()
    images = sd.generate_image(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=w["width"], height=w["height"], cfg_scale=w["cfg"],
        sample_method="euler", scheduler="discrete", sample_steps=w["steps1"], seed=SEED,
        hires=True, hires_upscaler="latent", hires_scale=w["scale"], hires_steps=w["steps2"],
        hires_denoising_strength=w["denoise"])
    generate = time.perf_counter() - t
    t = time.perf_counter()
    images[0].save(out_png)
    phases["png"] = time.perf_counter() - t
    phases["total"] = time.perf_counter() - t0
    text = "".join(log)
    for phase, pattern in SDCPP_LOG.items():
        found = re.findall(pattern, text)
        if not found:
            sys.exit(f"stable-diffusion.cpp {sd_cpp.__version__}: no log line /{pattern}/ "
                     f"(this script reads {SDCPP_PIN}'s); its log ends:\n{text[-2000:]}")
        phases[phase] = float(found[-1])
    phases["pass 2 steps"] -= 1  # sigmas, one more than steps
    phases["upscale"] = phases.pop("hires") - phases["pass 2"]  # latent interpolate + noise
    phases["generate"] = generate
    phases["peak_rss_mib"] = peak_rss_mib()
    phases["import_and_total"] = time.perf_counter() - start
    with open(out_json, "w") as fh:
        json.dump(phases, fh)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


# ----------------------------------------------------------------------------
# Device peak and the UNet's FLOPs
# ----------------------------------------------------------------------------
def matmul_peak(device: str) -> float:
    """FLOP/s of a 4096 x 4096 fp32 matmul (CPU) / bf16 (CUDA), best of a few runs."""
    import torch
    n = 4096
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5 if device == "cpu" else 20):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def unet_flops(folder: str, latent_hw: tuple[int, int]) -> float:
    """FLOPs of one CFG UNet call (batch 2) at this latent size, counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = UNet2DConditionModel.load_config(os.path.join(folder, "diffusers", "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        x = torch.empty(2, 4, *latent_hw)
        t = torch.empty(2)
        ctx = torch.empty(2, 77, config["cross_attention_dim"])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(x, t, encoder_hidden_states=ctx)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------
def profile_text(w: dict, checkpoint: str, out_png: str) -> str:
    def block(header: str, values: dict) -> str:
        return header + "\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())

    sampling = {"sampler": "euler", "schedule": "normal"}
    top = {"seed": SEED, "prompt": PROMPT, "negative": NEGATIVE, "cfg": w["cfg"],
           "device": w["device"], "dtype": w["dtype"], "output": out_png}
    blocks = [
        block("", top),
        block("[model]", {"checkpoint": checkpoint}),
        block("[[pass]]", {"width": w["width"], "height": w["height"], "steps": w["steps1"], **sampling}),
    ]
    if "steps2" in w:
        blocks.append(block("[[pass]]", {"scale": w["scale"], "steps": w["steps2"], "denoise": w["denoise"],
                                         "upscaler": "latent", **sampling}))
    return "\n".join(blocks)


def bench_patch(workload: str, data: str, hiresfix: str, repeat: int) -> None:
    """One pass at 2x native size (or more) plain and with each patch: hiresfix against itself."""
    w = WORKLOADS[workload]
    variants = {"plain": "", **w.get("patches", {"deep_shrink": 'patches = [{ name = "deep_shrink" }]\n'})}
    folder = ensure_models(w["family"], data)
    work = os.path.join(data, f"run-{workload}")
    os.makedirs(work, exist_ok=True)
    checkpoint = os.path.abspath(os.path.join(folder, "model.safetensors"))
    times = {}
    for label, patches in variants.items():
        png, timings = os.path.join(work, f"{label}.png"), os.path.join(work, f"{label}.json")
        profile = os.path.join(work, f"{label}.toml")
        with open(profile, "w") as fh:
            fh.write(patches + profile_text(w, checkpoint, os.path.abspath(png)))
        for _ in range(repeat):
            if os.path.exists(png):
                os.remove(png)
            run_child([hiresfix, "-q", "generate", profile], dict(os.environ, HIRESFIX_TIMINGS=timings))
            t = json.load(open(timings))["pass 1"]
            times[label] = min(times.get(label, float("inf")), t)
    f = 8
    lat = (w["height"] // f, w["width"] // f)
    full = unet_flops(folder, lat)
    print(f"\n## {workload}: one pass at {w['width']}x{w['height']}, {w['steps1']} steps, euler, "
          f"CFG {w['cfg']}, {w['dtype']}, {w['device']}; best of {repeat}")
    print("| pass 1 | seconds |")
    print("|---|---|")
    for label, t in times.items():
        print(f"| {label} | {t:.2f} |")
    for label in variants:
        if label != "plain":
            print(f"| {label} / plain | {times[label] / times['plain']:.2f} |")
    print(f"UNet call at full depth: {full / 1e12:.2f} TFLOP (CFG batch of 2)")


def esrgan_model(data: str, w: dict) -> str:
    """A random RRDB-23 x4 in the original ESRGAN layout (Spandrel's module), saved once."""
    path = os.path.join(data, f"esrgan-rrdb{w['blocks']}-x4.safetensors")
    if not os.path.exists(path):
        import torch
        from safetensors.torch import save_file
        from spandrel.architectures.ESRGAN import ESRGAN
        torch.manual_seed(0)
        net = ESRGAN(in_nc=3, out_nc=3, num_filters=w["nf"], num_blocks=w["blocks"], scale=4)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.1)  # random, but tame: the magnitudes stay finite through 23 blocks
        os.makedirs(data, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def esrgan_reference(model: str, side: int, tile: int, overlap: int, out_json: str) -> None:
    """Spandrel's model over the same seeded image with the same tiling (in this process)."""
    import resource
    import torch
    sys.path.insert(0, HERE)
    from make_esrgan_reference import tiled_upscale
    from spandrel import ModelLoader
    torch.set_grad_enabled(False)
    desc = ModelLoader().load_from_file(model).eval()
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    out, _ = tiled_upscale(desc, image, tile, overlap, call=desc.model)
    seconds = time.perf_counter() - t
    assert out.shape[-1] == side * desc.scale
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    json.dump({"seconds": seconds, "peak_rss_mib": peak}, open(out_json, "w"))


def bench_esrgan(workload: str, data: str, repeat: int) -> None:
    w = WORKLOADS[workload]
    model = esrgan_model(data, w)
    work = os.path.join(data, f"run-{workload}")
    os.makedirs(work, exist_ok=True)
    args = [str(w["side"]), str(w["tile"]), str(w["overlap"])]
    ours_json, theirs_json = os.path.join(work, "ours.json"), os.path.join(work, "theirs.json")
    best = {"ours": {}, "theirs": {}}
    for _ in range(repeat):
        run_child(["cargo", "bench", "--quiet", "--manifest-path", os.path.join(ROOT, "Cargo.toml"),
                   "-p", "hiresfix-upscalers-pixel", "--bench", "esrgan", "--", model, *args, ours_json])
        run_child([sys.executable, os.path.abspath(__file__), "--reference", workload, "--model", model,
                   "--json", theirs_json])
        for who, file in (("ours", ours_json), ("theirs", theirs_json)):
            for k, v in json.load(open(file)).items():
                best[who][k] = min(best[who].get(k, float("inf")), v)
    print(f"\n## {workload}: RRDB-{w['blocks']} x4 ({w['nf']} features), {w['side']}x{w['side']} image, "
          f"tiles {w['tile']} / overlap {w['overlap']}, fp32, cpu; best of {repeat}")
    print("| | hiresfix | Spandrel | ours / theirs |")
    print("|---|---|---|---|")
    for key, label in (("seconds", "seconds"), ("peak_rss_mib", "peak RSS MiB")):
        a, b = best["ours"][key], best["theirs"][key]
        print(f"| {label} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


def evict(paths: list[str]) -> str:
    """Takes `paths` out of the page cache: posix_fadvise DONTNEED on each file (pages mapped
    by a live process stay), not drop_caches, which would empty the cache of every other
    process on the machine too. Returns what was done."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise(DONTNEED) on each file read"


def cached_fraction(path: str) -> float:
    """The share of `path`'s pages in the page cache (mincore over a read-only mapping)."""
    import ctypes
    import mmap
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return float("nan")
        vec = (ctypes.c_ubyte * pages)()
        ok = libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) == 0
        libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
        return sum(v & 1 for v in vec) / pages if ok else float("nan")
    finally:
        os.close(fd)


def bench_load(workload: str, data: str, hiresfix: str, repeat: int) -> None:
    """Load only, then the smallest use of every weight, each side in its own process; warm
    and cold page cache."""
    w = WORKLOADS[workload]
    folder = ensure_models(w["family"], data)
    work = os.path.join(data, f"run-{workload}")
    os.makedirs(work, exist_ok=True)
    single = os.path.abspath(os.path.join(folder, "model.safetensors"))
    ddir = os.path.join(folder, "diffusers")
    folder_files = [os.path.join(r, f) for r, _, fs in os.walk(ddir) for f in fs if f.endswith(".safetensors")]
    png = os.path.abspath(os.path.join(work, "out.png"))
    profile = os.path.join(work, "profile.toml")
    with open(profile, "w") as fh:
        fh.write(profile_text(w, single, png))
    out = os.path.join(work, "phases.json")
    ours = [hiresfix, "-q", "generate", profile]
    theirs = [sys.executable, os.path.abspath(__file__), "--reference", workload, "--model", folder,
              "--png", png, "--json", out]
    sides = {
        "hiresfix zero-copy": (ours, {"HIRESFIX_TIMINGS": out}, [single]),
        "hiresfix copying": (ours, {"HIRESFIX_TIMINGS": out, "HIRESFIX_COPY_WEIGHTS": "1"}, [single]),
        "diffusers from_pretrained": (theirs, {}, folder_files),
        "diffusers from_single_file": (theirs, {"BENCH_SINGLE_FILE": "1"}, [single]),
    }
    results: dict[tuple[str, str], dict] = {}
    how = ""
    for cache in ("warm", "cold"):
        for _ in range(repeat):
            for label, (cmd, env, files) in sides.items():
                if cache == "cold":
                    how = evict(files)
                    left = max(cached_fraction(f) for f in files)
                else:
                    for f in files:  # warm it (a first run would do the same)
                        with open(f, "rb") as fh:
                            while fh.read(1 << 24):
                                pass
                    left = min(cached_fraction(f) for f in files)
                if os.path.exists(png):
                    os.remove(png)
                wall = run_child(cmd, dict(os.environ, **env))
                phases = json.load(open(out))
                row = {"load": phases["load"], "to image": phases["total"], "peak": phases["peak_rss_mib"],
                       "wall": wall, "cached": left}
                best = results.setdefault((label, cache), row)
                for k in ("load", "to image", "wall"):
                    best[k] = min(best[k], row[k])
                best["peak"] = max(best["peak"], row["peak"])
                best["cached"] = max(best["cached"], row["cached"]) if cache == "cold" else min(best["cached"], row["cached"])
    size = os.path.getsize(single) / 2**20
    print(f"\n## {workload}: real-size SD 1.5, fp32 file ({size:.0f} MiB) -> fp32 CPU; load, then one "
          f"{w['width']}x{w['height']} image ({w['steps1']} Euler step, CFG {w['cfg']}); best of {repeat}")
    print(f"cold: {how} before each run (largest share of a file still cached: "
          f"{max(r['cached'] for (l, c), r in results.items() if c == 'cold'):.0%}); "
          f"warm: files read first (smallest share cached: "
          f"{min(r['cached'] for (l, c), r in results.items() if c == 'warm'):.0%})")
    print("| side | load warm s | load cold s | load to image warm s | load to image cold s | process wall warm s | peak RSS warm MiB | peak RSS cold MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for label in sides:
        a, b = results[(label, "warm")], results[(label, "cold")]
        print(f"| {label} | {a['load']:.2f} | {b['load']:.2f} | {a['to image']:.2f} | {b['to image']:.2f} | "
              f"{a['wall']:.2f} | {a['peak']:.0f} | {b['peak']:.0f} |")
    zc = results[("hiresfix zero-copy", "warm")]
    for label in sides:
        if label.startswith("diffusers") or label == "hiresfix copying":
            r = results[(label, "warm")]
            print(f"hiresfix zero-copy / {label}, warm: load {zc['load'] / r['load']:.2f}, "
                  f"load to image {zc['to image'] / r['to image']:.2f}, peak RSS {zc['peak'] / r['peak']:.2f}")


def run_child(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def pixel_difference(a: str, b: str) -> int:
    import numpy as np
    from PIL import Image
    x = np.asarray(Image.open(a).convert("RGB")).astype(int)
    y = np.asarray(Image.open(b).convert("RGB")).astype(int)
    return int(np.abs(x - y).max())


def bench(workload: str, data: str, hiresfix: str, repeat: int) -> None:
    w = WORKLOADS[workload]
    if w["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(f"{workload}: skipped (no CUDA device here)")
            return
    import torch
    folder = ensure_models(w["family"], data)
    checkpoint = os.path.abspath(os.path.join(folder, "model.safetensors"))
    work = os.path.join(data, f"run-{workload}")
    os.makedirs(work, exist_ok=True)
    me = os.path.abspath(__file__)
    # The peers, each in its own process: name -> command, its PNG, its timings file.
    peers = {"hiresfix": [hiresfix, "-q", "generate", os.path.join(work, "profile.toml")],
             "diffusers": [sys.executable, me, "--reference", workload, "--model", folder]}
    # stable-diffusion.cpp's binding is a CPU build here: on a CUDA workload it would not compare.
    if w["device"] == "cpu" and sdcpp_available():
        peers["sd.cpp"] = [sys.executable, me, "--reference", workload, "--peer", "sdcpp", "--model", checkpoint,
                           "--threads", str(torch.get_num_threads())]
    elif w["device"] == "cpu":
        print(f"stable-diffusion.cpp: not installed, its columns are left out "
              f"(pip install stable-diffusion-cpp-python=={SDCPP_PIN})")
    png = {name: os.path.join(work, f"{name}.png") for name in peers}
    timings = {name: os.path.join(work, f"{name}.json") for name in peers}
    with open(os.path.join(work, "profile.toml"), "w") as fh:
        fh.write(profile_text(w, checkpoint, os.path.abspath(png["hiresfix"])))
    # Alternating runs, the best of each phase: a shared machine's noise only ever slows down.
    best: dict[str, dict[str, float]] = {name: {} for name in peers}
    for _ in range(repeat):
        for name, cmd in peers.items():
            if os.path.exists(png[name]):
                os.remove(png[name])
            if name == "hiresfix":
                wall = run_child(cmd, dict(os.environ, HIRESFIX_TIMINGS=timings[name]))
            else:
                wall = run_child(cmd + ["--png", png[name], "--json", timings[name]])
            values = json.load(open(timings[name]))
            values["process wall"] = wall
            for phase, value in values.items():
                best[name][phase] = min(best[name].get(phase, float("inf")), value)
    for name, values in best.items():
        steps2 = values.get("pass 2 steps", w["steps2"])  # sd.cpp's hires pass runs one more
        values["pass 1 per step"] = values["pass 1"] / w["steps1"]
        values["pass 2 per step"] = values["pass 2"] / steps2
    peak = matmul_peak(w["device"])
    f = 8
    lat1 = (w["height"] // f, w["width"] // f)
    lat2 = (int(lat1[0] * w["scale"]), int(lat1[1] * w["scale"]))
    call = {"pass 1": unet_flops(folder, lat1), "pass 2": unet_flops(folder, lat2)}

    theirs = [name for name in peers if name != "hiresfix"]
    ours = best["hiresfix"]
    print(f"\n## {workload}: {w['width']}x{w['height']} -> x{w['scale']}, {w['steps1']} + {w['steps2']} steps, "
          f"euler, CFG {w['cfg']}, {w['dtype']}, {w['device']}; best of {repeat} alternating runs")
    if "sd.cpp" in best:
        import stable_diffusion_cpp
        print(f"stable-diffusion.cpp: stable-diffusion-cpp-python {stable_diffusion_cpp.__version__}, "
              f"{torch.get_num_threads()} threads; its pass 2 ran {best['sd.cpp']['pass 2 steps']:.0f} steps")
    print("| phase | hiresfix s | " + " | ".join(f"{n} s" for n in theirs) + " | "
          + " | ".join(f"ours / {n}" for n in theirs) + " |")
    print("|---|---|" + "---|" * (2 * len(theirs)))
    rows = PHASES + ["pass 1 per step", "pass 2 per step", "process wall"]
    for phase, fmt in [(p, ".2f") for p in rows] + [("peak_rss_mib", ".0f")]:
        label = "peak RSS MiB" if phase == "peak_rss_mib" else phase
        a = ours.get(phase, 0.0)
        cells = [f"{best[n].get(phase, 0.0):{fmt}}" for n in theirs]
        ratios = [f"{a / best[n][phase]:.2f}" if best[n].get(phase) else "nan" for n in theirs]
        print(f"| {label} | {a:{fmt}} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    print(f"\ndevice peak (4096² matmul, {'fp32' if w['device'] == 'cpu' else 'bf16'}): {peak / 1e9:.1f} GFLOP/s")
    for phase, n in call.items():
        for name, values in best.items():
            t = values.get(phase)
            if t:
                total = n * values.get(f"{phase} steps", w["steps1" if phase == "pass 1" else "steps2"])
                print(f"{phase} UNet ({total / 1e12:.2f} TFLOP): {name} {total / t / 1e9:.1f} GFLOP/s "
                      f"= {total / t / peak:.0%} of peak")
    print(f"largest pixel difference hiresfix vs diffusers: {pixel_difference(png['hiresfix'], png['diffusers'])} / 255")
    if "sd.cpp" in png:
        print(f"largest pixel difference hiresfix vs sd.cpp (information only: its RNG differs): "
              f"{pixel_difference(png['hiresfix'], png['sd.cpp'])} / 255")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workloads", nargs="*", default=["sd15-cpu"])
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "bench-data"))
    ap.add_argument("--hiresfix", default=os.path.join(ROOT, "target", "release", "hiresfix"))
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs of each side (best kept)")
    ap.add_argument("--reference", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--png", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        w = WORKLOADS[args.reference]
        if args.peer == "sdcpp":
            sdcpp_reference(args.reference, args.model, args.threads, args.png, args.json)
        elif w.get("esrgan"):
            esrgan_reference(args.model, w["side"], w["tile"], w["overlap"], args.json)
        else:
            reference(args.reference, args.model, args.png, args.json)
        return
    for workload in args.workloads:
        if workload not in WORKLOADS:
            sys.exit(f"unknown workload {workload}; choose from {', '.join(WORKLOADS)}")
        if WORKLOADS[workload].get("esrgan"):
            bench_esrgan(workload, args.data, args.repeat)
        elif WORKLOADS[workload].get("load"):
            bench_load(workload, args.data, args.hiresfix, args.repeat)
        elif WORKLOADS[workload].get("patch"):
            bench_patch(workload, args.data, args.hiresfix, args.repeat)
        else:
            bench(workload, args.data, args.hiresfix, args.repeat)


if __name__ == "__main__":
    main()
