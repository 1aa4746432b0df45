#!/usr/bin/env python3
"""Drives a running `hiresfix serve` with the real webuiapi client (pip install webuiapi):
every WebUIApi call except interrogate, face restoration and the extension interfaces
(ControlNet, prompt_gen, ADetailer, ...), as tests/integration/serve_webuiapi.rs does with
the client's request bodies. Not part of CI: run it by hand against a server, e.g.

    hiresfix serve --models tests/data/sd1-tiny --upscalers tests/data/upscalers/models &
    python3 scripts/webuiapi_smoke.py --port 7860 [--img2img]

Prints one line per call and exits 1 if any failed.
"""
import argparse
import sys

import webuiapi
from PIL import Image


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--img2img", action="store_true", help="also the img2img calls")
    args = parser.parse_args()
    api = webuiapi.WebUIApi(host=args.host, port=args.port, steps=3)
    failed = []

    def check(name, fn, test=lambda r: True):
        try:
            result = fn()
            ok = test(result)
        except Exception as e:  # one line per failure, go on
            print(f"FAIL {name}: {str(e)[:200]}")
            failed.append(name)
            return None
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
        if not ok:
            failed.append(name)
        return result

    small = dict(width=64, height=64)
    r = check("txt2img", lambda: api.txt2img(prompt="a cat", seed=1, **small),
              lambda r: r.image.size == (64, 64) and r.info["seed"] == 1)
    check("txt2img enable_hr", lambda: api.txt2img(prompt="a cat", seed=2, enable_hr=True,
                                                   hr_scale=2, hr_upscaler=webuiapi.HiResUpscaler.Latent, **small),
          lambda r: r.image.size == (128, 128))
    image = r.image if r else Image.new("RGB", (64, 64), (120, 80, 40))
    check("png_info", lambda: api.png_info(image), lambda r: r.info.startswith("a cat"))
    check("extra_single_image", lambda: api.extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2),
          lambda r: r.image.size == (128, 128))
    check("extra_batch_images", lambda: api.extra_batch_images([image, image], upscaler_1="Nearest",
                                                               upscaling_resize=1.5),
          lambda r: [i.size for i in r.images] == [(96, 96), (96, 96)])
    if args.img2img:
        check("img2img", lambda: api.img2img(images=[image], prompt="a dog", seed=3, **small),
              lambda r: r.image.size == (64, 64))
        mask = Image.new("RGB", (64, 64), (0, 0, 0))
        mask.paste((255, 255, 255), (16, 16, 48, 48))
        check("img2img mask", lambda: api.img2img(images=[image], mask_image=mask, prompt="a dog", seed=3,
                                                  **small),
              lambda r: r.image.size == (64, 64))
    for name in ["get_options", "get_cmd_flags", "get_progress", "get_samplers", "get_sd_vae",
                 "get_upscalers", "get_latent_upscale_modes", "get_loras", "get_sd_models",
                 "get_hypernetworks", "get_face_restorers", "get_realesrgan_models",
                 "get_prompt_styles", "get_scripts", "get_embeddings", "get_memory",
                 "get_schedulers", "refresh_checkpoints", "interrupt", "skip",
                 "util_get_model_names", "util_get_sampler_names", "util_get_scheduler_names",
                 "util_get_current_model", "util_wait_for_ready"]:
        check(name, getattr(api, name))
    names = api.util_get_model_names()
    check("util_get_model_names has [hash]", lambda: names, lambda n: all(" [" in t for t in n if t.endswith("]") or "." in t))
    check("util_set_model", lambda: api.util_set_model(names[0]),
          lambda _: api.util_get_current_model() == names[0])
    check("set_options", lambda: api.set_options({"send_seed": False}),
          lambda _: api.get_options()["send_seed"] is False)
    api.set_options({"send_seed": True})
    check("unload-checkpoint", lambda: api.custom_post("sdapi/v1/unload-checkpoint", baseurl=False))
    check("reload-checkpoint", lambda: api.custom_post("sdapi/v1/reload-checkpoint", baseurl=False))
    print(f"{len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
