#!/usr/bin/env python3
"""A random tiny TAESD decoder and diffusers' AutoencoderTiny output for it.

    python3 scripts/make_taesd_reference.py [--out tests/data/live_preview]

TAESD (madebyollin/taesd) is the tiny VAE decoder A1111 ("TAESD" live previews) and ComfyUI
(`--preview-method taesd`) use for previews; diffusers' `AutoencoderTiny` is its reference
implementation. The script builds an `AutoencoderTiny` with the TAESD layout (3, 3, 3, 1
blocks, nearest 2x upsampling, ReLU) but 8 channels instead of 64, seeded random weights
(He-normal times 0.7, biases N(0, 0.1): the signal stays alive through the 20 convolutions),
and decodes a seeded random latent of 1 x 4 x 8 x 12
times 2.5 (so the decoder's `tanh(x / 3) * 3` clamp is exercised), CPU float32.

Writes, under --out:
  taesd_decoder.safetensors   the decoder in the layout of madebyollin's
                              `taesd_decoder.safetensors` (keys `1.weight`, `3.conv.0.weight`,
                              ...: diffusers' `decoder.layers.N` is `N + 1` there, index 0
                              being the clamp)
  diffusers_taesd.safetensors the same weights as diffusers saves them
                              (`decoder.layers.N....`; the encoder left out)
  taesd_reference.safetensors `latent` [1,4,8,12] and `decoded` [1,3,64,96]:
                              `AutoencoderTiny.decode(latent).sample` (range about -1..1)

The test `taesd_matches_diffusers_autoencoder_tiny` (crates/engine/src/live_preview/taesd.rs)
loads both weight files and compares within 1e-4. Deterministic: reruns give identical files.
"""
import argparse
import os

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/data/live_preview"))
    args = ap.parse_args()
    torch.manual_seed(28)
    torch.set_num_threads(1)
    channels = (8, 8, 8, 8)
    vae = AutoencoderTiny(
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
    ).eval()
    # He-normal weights and small biases: PyTorch's default initialisation shrinks the signal
    # through 20 convolutions until the output is flat (-1); these keep it alive.
    g = torch.Generator().manual_seed(28)
    with torch.no_grad():
        for name, p in vae.decoder.named_parameters():
            if p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5 * 0.7)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(5)) * 2.5
    with torch.no_grad():
        decoded = vae.decode(latent).sample
    decoder = {k: v.contiguous() for k, v in vae.decoder.state_dict().items()}
    taesd = {}
    for key, value in decoder.items():
        # layers.N.rest -> (N + 1).rest
        _, n, rest = key.split(".", 2)
        taesd[f"{int(n) + 1}.{rest}"] = value
    os.makedirs(args.out, exist_ok=True)
    save_file(taesd, os.path.join(args.out, "taesd_decoder.safetensors"))
    save_file({f"decoder.{k}": v for k, v in decoder.items()},
              os.path.join(args.out, "diffusers_taesd.safetensors"))
    save_file({"latent": latent.contiguous(), "decoded": decoded.contiguous()},
              os.path.join(args.out, "taesd_reference.safetensors"))
    print(f"decoded {tuple(decoded.shape)} mean {decoded.mean():.4f} std {decoded.std():.4f}")


if __name__ == "__main__":
    main()
