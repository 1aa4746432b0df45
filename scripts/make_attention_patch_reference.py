#!/usr/bin/env python3
"""Record reference outputs for hiresfix's attention-hook patches: HyperTile and ToMe.

    python3 scripts/make_attention_patch_reference.py [--out tests/data/attention_patches]

Loads the UNets of the committed tiny models (sd1-tiny, sdxl-tiny; diffusers folders) in
float32 and runs the diffusers UNet once per case at sigma = 8.0 on fixed random inputs (the
ones of make_patch_reference.py: same seeds and shapes), with every BasicTransformerBlock's
self-attention (`attn1`) wrapped by the patch.  Writes, under --out:
  reference.safetensors   outputs (float32), names "<family>.<case>"
  reference.json          settings, every case's options and seeds, the tile / merge choices
                          each transformer block made, and each case's difference from plain
  README.md               what each tensor is

* HyperTile: ComfyUI comfy_extras/nodes_hypertile.py transcribed (apply_to by channel count,
  latent tile max(32, tile_size) // 8 (x 2^(C // model_channels - 1) with scale_depth),
  random_divisor), with three documented changes that the Rust patch makes too: the choice
  among the swap_size candidates is `draw(...) % len` (below) instead of Python's `random`
  reseeded from a call counter; the grid (h, w) is the block's real one (ComfyUI's
  find_hw_candidates returns it transposed for a non-square latent); the whole attention
  input is tiled (q, k and v: tfernd's HyperTile), where ComfyUI's node tiles q only.
* ToMe: tomesd (dbolya/tomesd, tomesd/patch.py compute_merge, tomesd/merge.py
  bipartite_soft_matching_random2d) transcribed, merge_attn only; the destination of each
  sy x sx cell is `draw(...) % (sx * sy)` instead of torch.randint from a generator, and
  the src / dst index sets are in ascending token order (tomesd's argsort of -1/0 values is
  not stable; attention is invariant to the order of its tokens).

The draws (patches/builtin/src/seeded.rs): mix = splitmix64's finaliser on u64;
draw(seed, sigma, transformer, n) = mix(mix(mix(mix(seed) ^ bits(sigma)) ^ transformer) ^ n),
seed as two's-complement u64, bits(sigma) the IEEE-754 float64 bits, transformer the block's
index among the UNet's BasicTransformerBlocks in forward order (down, mid, up).  HyperTile:
n = 0 for nh, 1 for nw.  ToMe: n = the cell's row-major index.  The rows of a UNet call are
image-major: with `seeds` of k images, each image's B / k rows use its own seed.

CPU, float32, offline, deterministic.  Needs torch, diffusers, k-diffusion, safetensors.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (sets the offline environment first)
import make_patch_reference as base  # noqa: E402

import torch  # noqa: E402
import diffusers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
import k_diffusion  # noqa: E402
import k_diffusion.external  # noqa: E402

SIGMA = 8.0
SEED = 1234
MASK = (1 << 64) - 1
CASES = {
    # family: [(case, patch, options, seeds)]
    "sd1": [
        ("hypertile", "hypertile", {"tile_size": 64, "swap_size": 2, "max_depth": 0, "scale_depth": False}, [SEED]),
        ("hypertile_two_images", "hypertile", {"tile_size": 64, "swap_size": 2, "max_depth": 0, "scale_depth": False}, [SEED, 99]),
        ("tome", "tome", {"ratio": 0.5, "max_downsample": 1, "sx": 2, "sy": 2, "use_rand": True}, [SEED]),
        ("tome_two_images", "tome", {"ratio": 0.5, "max_downsample": 1, "sx": 2, "sy": 2, "use_rand": True}, [SEED, 99]),
    ],
    "sdxl": [
        ("hypertile", "hypertile", {"tile_size": 32, "swap_size": 2, "max_depth": 1, "scale_depth": False}, [SEED]),
        ("tome", "tome", {"ratio": 0.5, "max_downsample": 2, "sx": 2, "sy": 2, "use_rand": True}, [SEED]),
    ],
}


def mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def draw(seed: int, sigma: float, transformer: int, n: int) -> int:
    bits = struct.unpack("<Q", struct.pack("<d", sigma))[0]
    return mix(mix(mix(mix(seed & MASK) ^ bits) ^ transformer) ^ n)


def images(rows: int, seeds: list[int]) -> list[tuple[int, int, int]]:
    n = len(seeds)
    if n > 1 and rows % n == 0:
        return [(i * (rows // n), rows // n, s) for i, s in enumerate(seeds)]
    return [(0, rows, seeds[0] if seeds else 0)]


# ---------------------------------------------------------------------------- HyperTile
def random_divisor(value: int, min_value: int, max_options: int, pick: int) -> int:
    """ComfyUI random_divisor with `random.randint(0, len(ns) - 1)` replaced by pick % len(ns)."""
    min_value = min(min_value, value)
    divisors = [i for i in range(min_value, value + 1) if value % i == 0]
    ns = [value // i for i in divisors[:max_options]]
    return ns[pick % len(ns)]


def hypertile(opts, model_channels, sigma, seeds, log):
    apply_to = set()
    temp = model_channels
    for _ in range(opts["max_depth"] + 1):
        apply_to.add(temp)
        temp *= 2
    latent_tile_size = max(32, opts["tile_size"]) // 8

    def patch(at, x, n, attn):
        c = n.shape[-1]
        if c not in apply_to:
            return attn(n)
        h, w = at["grid"]
        factor = 2 ** ((c // model_channels) - 1) if opts["scale_depth"] else 1
        outs = []
        for first, rows, seed in images(n.shape[0], seeds):
            q = n[first:first + rows]
            nh = random_divisor(h, latent_tile_size * factor, opts["swap_size"], draw(seed, sigma, at["transformer"], 0))
            nw = random_divisor(w, latent_tile_size * factor, opts["swap_size"], draw(seed, sigma, at["transformer"], 1))
            log.append({"transformer": at["transformer"], "seed": seed, "grid": [h, w], "nh": nh, "nw": nw})
            if nh * nw > 1:
                b = q.shape[0]
                t = q.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, -1, c)
                out = attn(t)
                out = out.reshape(b, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h * w, c)
            else:
                out = attn(q)
            outs.append(out)
        return torch.cat(outs, 0)
    return patch


# ---------------------------------------------------------------------------- ToMe
def bipartite_soft_matching_random2d(metric, w, h, sx, sy, r, pick):
    """tomesd merge.bipartite_soft_matching_random2d; pick(k) replaces torch.randint (None: no_rand)."""
    B, N, _ = metric.shape
    if r <= 0:
        return (lambda x: x), (lambda x: x), None
    hsy, wsx = h // sy, w // sx
    if pick is None:
        rand_idx = torch.zeros(hsy, wsx, 1, dtype=torch.int64)
    else:
        rand_idx = torch.tensor([pick(k) % (sy * sx) for k in range(hsy * wsx)], dtype=torch.int64).reshape(hsy, wsx, 1)
    idx_buffer_view = torch.zeros(hsy, wsx, sy * sx, dtype=torch.int64)
    idx_buffer_view.scatter_(dim=2, index=rand_idx, src=-torch.ones_like(rand_idx, dtype=rand_idx.dtype))
    idx_buffer_view = idx_buffer_view.view(hsy, wsx, sy, sx).transpose(1, 2).reshape(hsy * sy, wsx * sx)
    if (hsy * sy) < h or (wsx * sx) < w:
        idx_buffer = torch.zeros(h, w, dtype=torch.int64)
        idx_buffer[:(hsy * sy), :(wsx * sx)] = idx_buffer_view
    else:
        idx_buffer = idx_buffer_view
    rand_idx = idx_buffer.reshape(1, -1, 1).argsort(dim=1, stable=True)  # stable: ascending order
    num_dst = hsy * wsx
    a_idx = rand_idx[:, num_dst:, :]
    b_idx = rand_idx[:, :num_dst, :]

    def split(x):
        C = x.shape[-1]
        src = x.gather(dim=1, index=a_idx.expand(B, N - num_dst, C))
        dst = x.gather(dim=1, index=b_idx.expand(B, num_dst, C))
        return src, dst

    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = split(metric)
    scores = a @ b.transpose(-1, -2)
    r = min(a.shape[1], r)
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True, stable=True)[..., None]
    unm_idx = edge_idx[..., r:, :]
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)

    def merge(x, mode="mean"):
        src, dst = split(x)
        n, t1, c = src.shape
        unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
        src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
        dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x):
        unm_len = unm_idx.shape[1]
        unm, dst = x[..., :unm_len, :], x[..., unm_len:, :]
        _, _, c = unm.shape
        src = dst.gather(dim=-2, index=dst_idx.expand(B, r, c))
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(dim=-2, index=b_idx.expand(B, num_dst, c), src=dst)
        out.scatter_(dim=-2, index=a_idx.expand(B, a_idx.shape[1], 1).gather(dim=1, index=unm_idx).expand(B, unm_len, c), src=unm)
        out.scatter_(dim=-2, index=a_idx.expand(B, a_idx.shape[1], 1).gather(dim=1, index=src_idx).expand(B, r, c), src=src)
        return out

    dsts = sorted(b_idx.flatten().tolist())
    return merge, unmerge, dsts


def tome(opts, latent_hw, sigma, seeds, log):
    oh, ow = latent_hw

    def patch(at, x, n, attn):
        N = x.shape[1]
        downsample = int(math.ceil(math.sqrt((oh * ow) // N)))
        if downsample > opts["max_downsample"]:
            return attn(n)
        h, w = at["grid"]
        r = int(N * opts["ratio"])
        outs = []
        for first, rows, seed in images(x.shape[0], seeds):
            xi, ni = x[first:first + rows], n[first:first + rows]
            use_rand = False if rows % 2 == 1 else opts["use_rand"]
            pick = (lambda k, s=seed: draw(s, sigma, at["transformer"], k)) if use_rand else None
            m, u, dsts = bipartite_soft_matching_random2d(xi, w, h, opts["sx"], opts["sy"], r, pick)
            log.append({"transformer": at["transformer"], "seed": seed, "grid": [h, w], "r": r, "random": use_rand,
                        "first_dst": dsts[:8] if dsts else []})
            outs.append(u(attn(m(ni))))
        return torch.cat(outs, 0)
    return patch


# ---------------------------------------------------------------------------- wrapping attn1
def transformer_blocks(unet):
    """BasicTransformerBlocks in forward order (down blocks, mid block, up blocks)."""
    parts = list(unet.down_blocks) + [unet.mid_block] + list(unet.up_blocks)
    out = []
    for part in parts:
        for attn in getattr(part, "attentions", None) or []:
            out.extend(attn.transformer_blocks)
    return out


class Attn1(torch.nn.Module):
    """Replaces a block's attn1: the patch gets the block input x (stashed by a pre-hook),
    norm1(x) and the original attn1 as a callable."""

    def __init__(self, inner, at, patch, latent_hw):
        super().__init__()
        self.inner, self.at, self.patch, self.latent_hw = inner, at, patch, latent_hw
        self.x = None

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        if encoder_hidden_states is not None:
            raise AssertionError("attn1 got a context")
        N = hidden_states.shape[1]
        oh, ow = self.latent_hw
        ds = int(round(math.sqrt(oh * ow / N)))
        at = dict(self.at, grid=(-(-oh // ds), -(-ow // ds)))
        if at["grid"][0] * at["grid"][1] != N:
            raise AssertionError(f"grid {at['grid']} for {N} tokens")
        return self.patch(at, self.x, hidden_states, lambda t: self.inner(t, attention_mask=attention_mask))


def patched(unet, patch, latent_hw):
    """Wraps every attn1; returns an undo function."""
    undo = []
    for i, block in enumerate(transformer_blocks(unet)):
        wrapper = Attn1(block.attn1, {"transformer": i}, patch, latent_hw)
        handle = block.register_forward_pre_hook(lambda mod, args, kwargs, w=wrapper: setattr(w, "x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)
        orig = block.attn1
        block.attn1 = wrapper
        undo.append((block, orig, handle))

    def restore():
        for block, orig, handle in undo:
            block.attn1 = orig
            handle.remove()
    return restore


@torch.no_grad()
def run_family(fam: str, rec: sd1.Recorder) -> dict:
    folder, shape, seed = base.FAMILIES[fam]
    unet = base.load_unet(folder)
    sdxl = unet.config.addition_embed_type == "text_time"
    torch.manual_seed(seed)  # the inputs of make_patch_reference.py
    x = torch.randn(shape)
    context = torch.randn(shape[0], 77, unet.config.cross_attention_dim)
    added = None
    if sdxl:
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        text_embeds = torch.randn(shape[0], pooled)
        time_ids = torch.tensor([base.SDXL_TIME_IDS] * shape[0], dtype=torch.float32)
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
    ac32 = sd1.ldm_schedule_buffers()["alphas_cumprod"]
    kwrap = k_diffusion.external.DiscreteEpsDDPMDenoiser(unet, ac32, quantize=False)
    t = kwrap.sigma_to_t(torch.full((shape[0],), SIGMA, dtype=torch.float32))
    kw = {"added_cond_kwargs": added} if sdxl else {}
    latent_hw = tuple(shape[2:])
    mc = unet.config.block_out_channels[0]

    def call():
        return unet(x, t, encoder_hidden_states=context, **kw).sample

    plain = call()
    rec.put(f"{fam}.plain", plain, "unpatched diffusers unet at sigma 8.0")
    cases = {}
    for name, kind, opts, seeds in CASES[fam]:
        log: list = []
        patch = hypertile(opts, mc, SIGMA, seeds, log) if kind == "hypertile" else tome(opts, latent_hw, SIGMA, seeds, log)
        restore = patched(unet, patch, latent_hw)
        out = call()
        again = call()
        restore()
        if not torch.equal(out, again):
            raise AssertionError(f"{fam} {name}: rerun differs")
        if not torch.equal(call(), plain):
            raise AssertionError("restore left the UNet changed")
        diff = base.rel(out, plain)
        print(f"  {fam} {name}: rel diff vs plain {diff:.3e}")
        if not diff > base.CHANGED_TOL:
            raise AssertionError(f"{fam} {name}: the patch changed nothing ({diff:.3e})")
        rec.put(f"{fam}.{name}", out, f"diffusers unet with {kind} ({base.fmt(opts)}), seeds {seeds}, at sigma 8.0")
        cases[name] = {"patch": kind, "options": opts, "seeds": seeds, "rel_diff_vs_plain": diff, "choices": log[: len(log) // 2]}
    return {"model_channels": mc, "latent": list(latent_hw), "cases": cases}


README = """\
# attention_patches: HyperTile and ToMe references

Made by `scripts/make_attention_patch_reference.py` (its docstring says what is transcribed
from ComfyUI's HyperTile and tomesd, and the seeded draws that replace their random
sources). Inputs are those of `tests/data/patches` (`F.x`, `F.context`, `sdxl.y` there: the
same seeds and shapes), sigma 8.0.

- `F.plain` — the unpatched diffusers UNet.
- `F.<case>` — the UNet with the case's patch on every BasicTransformerBlock's `attn1`;
  options, seeds, and each block's choices (HyperTile `nh`/`nw`, ToMe `r` and the first
  destinations) in reference.json. `*_two_images`: the call's two rows are two images with
  seeds [1234, 99] (one row each: ToMe's odd-row rule turns its random destinations off).

Regenerate: `python3 scripts/make_attention_patch_reference.py`
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/attention_patches")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_grad_enabled(False)
    rec = sd1.Recorder()
    fams = {fam: run_family(fam, rec) for fam in CASES}
    sd1.check_finite(rec)
    os.makedirs(args.out, exist_ok=True)
    save_file(rec.R, os.path.join(args.out, "reference.safetensors"))
    meta = {
        "generator": "scripts/make_attention_patch_reference.py",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "sigma": SIGMA,
        "families": fams,
        "tensors": sd1.tensors_json(rec),
    }
    sd1.write_json(os.path.join(args.out, "reference.json"), meta)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {args.out}: {total} bytes")


if __name__ == "__main__":
    main()
