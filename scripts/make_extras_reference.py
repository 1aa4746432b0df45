#!/usr/bin/env python3
"""Reference outputs for A1111's Extras upscale with its built-in upscalers, transcribed from
AUTOMATIC1111/stable-diffusion-webui: modules/upscaler.py (Upscaler.upscale: dest sides are
int(side * scale) // 8 * 8; UpscalerLanczos / UpscalerNearest resize to int(side * scale),
then LANCZOS to dest when that differs), scripts/postprocessing_upscale.py (resize_mode 1:
scale = max(w / width, h / height), crop = paste centred on a black canvas; upscaler 2 blended
with Image.blend) — run with PIL. Writes tests/data/extras/{input,*}.png and cases.json, read by
tests/integration/serve_extras.rs (extras_match_a1111s_pil_transcription).

    python3 scripts/make_extras_reference.py
"""
import json
import os

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "extras")
LANCZOS, NEAREST = Image.Resampling.LANCZOS, Image.Resampling.NEAREST


def upscale(img, scale, resample):
    dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
    for _ in range(3):
        shape = (img.width, img.height)
        img = img.resize((int(img.width * scale), int(img.height * scale)), resample=resample)
        if shape == (img.width, img.height) or (img.width >= dest_w and img.height >= dest_h):
            break
    if img.width != dest_w or img.height != dest_h:
        img = img.resize((int(dest_w), int(dest_h)), resample=LANCZOS)
    return img


def extras(img, upscaler_1, upscaler_2="None", visibility=0.0, mode=0, by=2.0, to=(512, 512), crop=True):
    filters = {"Lanczos": LANCZOS, "Nearest": NEAREST}
    scale = by if mode == 0 else max(to[0] / img.width, to[1] / img.height)

    def one(name):
        out = upscale(img, scale, filters[name])
        if mode == 1 and crop:
            canvas = Image.new("RGB", to)
            canvas.paste(out, box=(to[0] // 2 - out.width // 2, to[1] // 2 - out.height // 2))
            out = canvas
        return out

    out = one(upscaler_1)
    if upscaler_2 != "None" and visibility > 0:
        out = Image.blend(out, one(upscaler_2), visibility)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    y, x = np.mgrid[0:60, 0:100]
    rng = np.random.RandomState(0)
    pixels = np.stack([x * 2 + 20, y * 4, (x + y) + 40], -1) + rng.randint(0, 8, (60, 100, 3))
    img = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    img.save(os.path.join(OUT, "input.png"))
    # The same image as a JPEG (the endpoints decode PNG, JPEG and WebP): PIL's decode of it
    # is the reference's input.
    img.save(os.path.join(OUT, "input.jpg"), quality=95)
    jpeg = Image.open(os.path.join(OUT, "input.jpg")).convert("RGB")
    cases = {
        "lanczos-1.5": dict(request={"upscaler_1": "Lanczos", "upscaling_resize": 1.5},
                            out=extras(img, "Lanczos", by=1.5)),
        "nearest-2": dict(request={"upscaler_1": "Nearest", "upscaling_resize": 2},
                          out=extras(img, "Nearest", by=2)),
        "blend-0.4": dict(request={"upscaler_1": "Lanczos", "upscaler_2": "Nearest",
                                   "extras_upscaler_2_visibility": 0.4, "upscaling_resize": 1.5},
                          out=extras(img, "Lanczos", "Nearest", 0.4, by=1.5)),
        "to-128-crop": dict(request={"upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 128,
                                     "upscaling_resize_h": 128, "upscaling_crop": True},
                            out=extras(img, "Lanczos", mode=1, to=(128, 128))),
        "jpeg-nearest-2": dict(request={"upscaler_1": "Nearest", "upscaling_resize": 2},
                               out=extras(jpeg, "Nearest", by=2), input="input.jpg"),
    }
    listing = {}
    for name, case in cases.items():
        case["out"].save(os.path.join(OUT, f"{name}.png"))
        listing[name] = {"request": case["request"], "png": f"{name}.png", "size": list(case["out"].size)}
        if "input" in case:
            listing[name]["input"] = case["input"]
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(listing, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
