#!/usr/bin/env python3
"""Copy ComfyUI's latent-to-RGB preview factors for SD 1.x and SDXL into a data file.

    python3 scripts/make_latent_rgb_reference.py COMFYUI/comfy/latent_formats.py \
        [--commit SHA] [--out tests/data/live_preview/latent_rgb_factors.json]

ComfyUI's `comfy/latent_formats.py` (comfyanonymous/ComfyUI; the committed file was made from
commit 040a3243468ecefd1f2802592d90458f1ce4d65f) defines, per latent format, the 4 x 3 matrix
`latent_rgb_factors` (rows: latent channels, columns: R, G, B) and an optional
`latent_rgb_factors_bias` that its `Latent2RGBPreviewer` (latent_preview.py) applies as
`torch.nn.functional.linear(x0[0].movedim(0, -1), factors.T, bias)` to the sampler's denoised
latent (process_in space: the VAE latent times its scale factor), then `preview_to_image`:
clamp to [-1, 1], `(x + 1) * 127.5`, rounded to 8 bits.

The script imports that file (it needs only torch) and writes each class's values as the
instances hold them: `SD15` (hiresfix families sd1, sd2) and `SDXL` (sdxl), with the TAESD
decoder name and the scale factor. Only the two classes are read, so a checkout of any commit
that still defines them works; the test `latent_rgb_factors_are_comfyuis` in
crates/engine/src/live_preview/latent_rgb.rs compares hiresfix's constants with the file.
"""
import argparse
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("latent_formats", help="ComfyUI's comfy/latent_formats.py")
    ap.add_argument("--commit", default="040a3243468ecefd1f2802592d90458f1ce4d65f")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/live_preview/latent_rgb_factors.json"))
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("comfy_latent_formats", args.latent_formats)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    formats = {}
    for name in ("SD15", "SDXL"):
        f = getattr(module, name)()
        formats[name] = {
            "latent_rgb_factors": f.latent_rgb_factors,
            "latent_rgb_factors_bias": f.latent_rgb_factors_bias,
            "taesd_decoder_name": f.taesd_decoder_name,
            "scale_factor": f.scale_factor,
        }
    out = {
        "source": "comfyanonymous/ComfyUI comfy/latent_formats.py",
        "commit": args.commit,
        "formats": formats,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
