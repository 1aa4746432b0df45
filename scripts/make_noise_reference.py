#!/usr/bin/env python3
"""Record A1111's initial and step noise with variation seeds, for tests/integration/noise_parity.rs.

    python3 scripts/make_noise_reference.py [--out tests/data/noise]

A transcription of AUTOMATIC1111 `modules/rng.py` (`slerp`, `ImageRNG.first` / `next`) with its
RNG source "CPU" and the batch seed rule of `modules/processing.py` (`process_images_inner`:
with a variation strength every image keeps the seed, subseeds go up by one). Uses torch only
(CPU float32, as A1111 draws). Writes reference.safetensors (float32) and reference.json (the
settings of every case).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import save_file


def randn(seed, shape, generator=None):
    """A1111 `rng.randn` with randn_source "CPU": reseeds the global generator, draws from
    `generator` when given."""
    torch.manual_seed(seed)
    return torch.randn(shape, device="cpu", generator=generator)


def slerp(val, low, high):
    """A1111 `rng.slerp`, as written (norms along dim 1 of one image's [C, H, W] noise)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)

    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)

    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageRNG:
    """A1111 `rng.ImageRNG` (CPU source), `eta_noise_seed_delta` passed in."""

    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0, eta_noise_seed_delta=0):
        self.shape = shape
        self.seeds = seeds
        self.subseeds = subseeds
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.eta_noise_seed_delta = eta_noise_seed_delta
        self.generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        self.is_first = True

    def first(self):
        noise_shape = self.shape if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0 else (self.shape[0], self.seed_resize_from_h // 8, self.seed_resize_from_w // 8)
        xs = []
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            subnoise = None
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = 0 if i >= len(self.subseeds) else self.subseeds[i]
                subnoise = randn(subseed, noise_shape)
            if noise_shape != self.shape:
                noise = randn(seed, noise_shape)
            else:
                noise = randn(seed, self.shape, generator=generator)
            if subnoise is not None:
                noise = slerp(self.subseed_strength, noise, subnoise)
            if noise_shape != self.shape:
                x = randn(seed, self.shape, generator=generator)
                dx = (self.shape[2] - noise_shape[2]) // 2
                dy = (self.shape[1] - noise_shape[1]) // 2
                w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
                h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
                tx = 0 if dx < 0 else dx
                ty = 0 if dy < 0 else dy
                dx = max(-dx, 0)
                dy = max(-dy, 0)
                x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
                noise = x
            xs.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [torch.Generator("cpu").manual_seed(int(seed + self.eta_noise_seed_delta)) for seed in self.seeds]
        return torch.stack(xs)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])


def batch_seeds(seed, subseed, strength, count):
    """`process_images_inner`'s all_seeds / all_subseeds for `count` images."""
    seeds = [seed + (x if strength == 0 else 0) for x in range(count)]
    subseeds = [subseed + x for x in range(count)]
    return seeds, subseeds


# name: (shape [C, H, W], seed, subseed, strength, resize_from (w, h), images, delta)
CASES = {
    "variation": ([4, 12, 10], 1234, 5678, 0.3, (0, 0), 1, 0),
    "full_subseed": ([4, 8, 8], 1234, 5678, 1.0, (0, 0), 1, 0),
    "same_seeds": ([4, 8, 8], 77, 77, 0.3, (0, 0), 1, 0),
    "resize_smaller": ([4, 12, 10], 1234, 5678, 0.3, (48, 64), 1, 0),
    "resize_larger": ([4, 8, 8], 1234, 5678, 0.0, (104, 88), 1, 0),
    "batch": ([4, 8, 8], 1234, 5678, 0.3, (0, 0), 2, 0),
    "batch_plain": ([4, 8, 8], 1234, 5678, 0.0, (0, 0), 2, 0),
    "delta": ([4, 8, 8], 1234, 5678, 0.3, (0, 0), 1, 31337),
}
STEP_DRAWS = 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "noise"))
    args = parser.parse_args()
    tensors, cases = {}, {}
    for name, (shape, seed, subseed, strength, (rw, rh), count, delta) in CASES.items():
        seeds, subseeds = batch_seeds(seed, subseed, strength, count)
        rng = ImageRNG(tuple(shape), seeds, subseeds=subseeds, subseed_strength=strength, seed_resize_from_h=rh, seed_resize_from_w=rw, eta_noise_seed_delta=delta)
        tensors[f"{name}.initial"] = rng.next().contiguous()
        for k in range(STEP_DRAWS):
            tensors[f"{name}.step{k}"] = rng.next().contiguous()
        cases[name] = {
            "shape": shape, "seed": seed, "subseed": subseed, "subseed_strength": strength,
            "seed_resize_from_w": rw, "seed_resize_from_h": rh, "images": count,
            "seeds": seeds, "subseeds": subseeds, "eta_noise_seed_delta": delta,
        }
    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump({
            "generator": "scripts/make_noise_reference.py",
            "reference": "A1111 modules/rng.py (slerp, ImageRNG with randn_source CPU) and processing.py's batch seed rule, transcribed",
            "torch": torch.__version__,
            "step_draws": STEP_DRAWS,
            "cases": cases,
        }, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
