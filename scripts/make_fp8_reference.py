#!/usr/bin/env python3
"""Record torch's own upcast of fp8 copies of the tiny SD 1.x and SDXL checkpoints.

    python3 scripts/make_fp8_reference.py [--out tests/data/fp8]

The fp8 checkpoints themselves are not committed (about 6 MB): the Rust tests write the
same files at test time (`tests/integration/fp8.rs` of the SD plugin), converting each
tensor with libtorch's own cast, and check them against the checksums recorded here, so
"the same file" is checked, not assumed.  Cases (CASES below):

  sd1-e4m3    tests/data/sd1-tiny/sd1-tiny.safetensors, every model tensor
              (model.diffusion_model., first_stage_model., cond_stage_model.) cast to
              float8_e4m3fn; the schedule buffers stay F32 (as fp8 exports keep them)
  sdxl-e4m3   tests/data/sdxl-tiny/sdxl-tiny.safetensors (F16), every model tensor cast to
              float8_e4m3fn
  sd1-e5m2    sd1-tiny, only the UNet's weights of two or more dimensions cast to
              float8_e5m2 (norms, biases, VAE and text encoder stay F32): a mixed file

For each case the script loads the fp8 file with safetensors, upcasts every tensor to
float32 with torch (`.float()`), converts the UNet with diffusers' own
`convert_ldm_unet_checkpoint` into the family's diffusers UNet (config from the tiny
model's diffusers folder) and records its output for the family reference's `unet.x`,
`unet.t`, `unet.context` (and SDXL `unet.y`), CPU float32.

Writes, under --out:
  reference.safetensors   `<case>.unet.out`, [2,4,16,16] each
  reference.json          per case: source file, rule, fp8 dtype, tensors cast, and the
                          checksum of the fp8 data (see fp8_checksum)

Deterministic (single thread, deterministic algorithms): reruns give identical files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (sets the offline environment)

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

MODEL_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
UNET_PREFIX = "model.diffusion_model."

CASES = [
    {"name": "sd1-e4m3", "family": "sd1-tiny", "file": "sd1-tiny.safetensors", "dtype": "F8_E4M3", "rule": "model"},
    {"name": "sdxl-e4m3", "family": "sdxl-tiny", "file": "sdxl-tiny.safetensors", "dtype": "F8_E4M3", "rule": "model"},
    {"name": "sd1-e5m2", "family": "sd1-tiny", "file": "sd1-tiny.safetensors", "dtype": "F8_E5M2", "rule": "unet-matrices"},
]
TORCH_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def is_cast(rule: str, key: str, t: torch.Tensor) -> bool:
    """Whether the case's rule casts tensor `key` to fp8."""
    if not t.is_floating_point():
        return False
    if rule == "model":
        return key.startswith(MODEL_PREFIXES)
    if rule == "unet-matrices":
        return key.startswith(UNET_PREFIX) and t.dim() >= 2
    raise ValueError(rule)


def fp8_checksum(tensors: dict) -> int:
    """Σ byte·(i mod 251 + 1) over the fp8 tensors' bytes, keys in sorted (byte) order, i
    counting bytes across them; modulo 2^64.  Any byte that rounds differently changes it."""
    total = 0
    offset = 0
    for key in sorted(tensors, key=lambda k: k.encode()):
        data = tensors[key].contiguous().view(torch.uint8).flatten().to(torch.int64)
        weights = (torch.arange(offset, offset + data.numel(), dtype=torch.int64) % 251) + 1
        total = (total + int((data * weights).sum())) % (1 << 64)
        offset += data.numel()
    return total


@torch.no_grad()
def run_case(case: dict, scratch: str) -> tuple[torch.Tensor, dict]:
    data = os.path.join("tests", "data", case["family"])
    source = load_file(os.path.join(data, case["file"]))
    fp8 = TORCH_DTYPES[case["dtype"]]
    out = {}
    cast = {}
    for key, t in source.items():
        if is_cast(case["rule"], key, t):
            q = t.to(fp8)
            if not torch.isfinite(q.float()).all():
                raise AssertionError(f"{case['name']}: {key} does not fit {case['dtype']}")
            cast[key] = q
            out[key] = q
        else:
            out[key] = t
    # The file as a user would have it, read back as torch reads it.
    path = os.path.join(scratch, f"{case['name']}.safetensors")
    save_file(out, path)
    stored = load_file(path)
    if fp8_checksum({k: stored[k] for k in cast}) != fp8_checksum(cast):
        raise AssertionError("safetensors round trip changed the fp8 data")
    ref = dict(load_file(os.path.join(data, "reference.safetensors")))
    original = ref["unet.out"] if "unet.out" in ref else ref["unet.eps"]
    # The call itself, checked on the unquantized file against the family reference.
    check = rel(unet_call(source, data, ref), original)
    if check > 1e-6:
        raise AssertionError(f"{case['name']}: the unquantized UNet call is {check:.3e} off the family reference")
    upcast = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
    res = unet_call(upcast, data, ref)
    info = {
        "source": f"tests/data/{case['family']}/{case['file']}",
        "fp8_dtype": case["dtype"],
        "rule": case["rule"],
        "tensors_cast": len(cast),
        "tensors_total": len(source),
        "fp8_checksum": str(fp8_checksum(cast)),
        "unet_out_relative_change_from_unquantized": rel(res, original),
        "inputs": f"unet.x, unet.t, unet.context{', unet.y' if 'unet.y' in ref else ''} of tests/data/{case['family']}/reference.safetensors",
    }
    return res, info


def unet_call(ckpt: dict, data: str, ref: dict) -> torch.Tensor:
    """The diffusers UNet of `ckpt` (LDM keys, upcast to float32), called on the family
    reference's inputs."""
    ckpt = {k: v.float() if v.is_floating_point() else v for k, v in ckpt.items()}
    config = UNet2DConditionModel.load_config(os.path.join(data, "diffusers", "unet"))
    unet = UNet2DConditionModel.from_config(config).to(torch.float32).eval()
    unet.load_state_dict(sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config)))
    kw = {}
    if "unet.y" in ref:
        y = ref["unet.y"]
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kw["added_cond_kwargs"] = {"text_embeds": y[:, :pooled], "time_ids": sdxl_time_ids(data)}
    return unet(ref["unet.x"], ref["unet.t"], encoder_hidden_states=ref["unet.context"], **kw).sample


def sdxl_time_ids(data: str) -> torch.Tensor:
    """SDXL time_ids [h, w, 0, 0, h, w] of the family reference's pass-1 size, per batch row."""
    settings = json.load(open(os.path.join(data, "reference.json")))
    size = settings["settings"]["unet_y_size"]
    h, w = size["height"], size["width"]
    return torch.tensor([[h, w, 0, 0, h, w]] * 2, dtype=torch.float32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/data/fp8")
    ap.add_argument("--scratch", default=None, help="where the fp8 files are written (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    import tempfile

    os.makedirs(args.out, exist_ok=True)
    rec = {}
    cases = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or tmp
        for case in CASES:
            res, info = run_case(case, scratch)
            rec[f"{case['name']}.unet.out"] = res.contiguous()
            cases[case["name"]] = info
            print(f"{case['name']}: {info['tensors_cast']} tensors as {case['dtype']}, "
                  f"UNet output moves {info['unet_out_relative_change_from_unquantized']:.3e} (relative) from the unquantized model")
    save_file(rec, os.path.join(args.out, "reference.safetensors"))
    doc = {
        "script": "scripts/make_fp8_reference.py",
        "torch": torch.__version__,
        "cases": cases,
        "tensors": {k: {"shape": list(v.shape), "description": "diffusers UNet output (CPU fp32) on the torch-upcast (.float()) fp8 file"} for k, v in rec.items()},
    }
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
