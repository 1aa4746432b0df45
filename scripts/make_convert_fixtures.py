#!/usr/bin/env python3
"""Write the small torch.save files `hiresfix convert` is tested on (tests/integration/convert.rs).

    python3 scripts/make_convert_fixtures.py [--out tests/data/convert]

The upscaler fixtures (tests/data/upscalers/models) are plain float32 state dicts in torch's
zip format; these cover the rest of what the reader must rebuild exactly:
  mixed.pth             zip format: {"params": <other tensors>, "params_ema": SD} (the reader
                        must take params_ema); SD has every storage dtype the reader allows,
                        a slice that shares its storage at an offset, a transposed (strided)
                        view, a 0-d and an empty tensor, an nn.Parameter and `_metadata`
  mixed-legacy.pth      SD alone in the legacy (pre-1.6) format, pickle protocol 2
  mixed-protocol4.pth   SD alone in the zip format with pickle protocol 4 (FRAME, MEMOIZE,
                        SHORT_BINUNICODE, STACK_GLOBAL)
  mixed.safetensors     torch.load(mixed-legacy.pth), each tensor made contiguous: what every
                        mixed*.pth must convert to, byte for byte
  nested.pth            a tensor and a nested dict of ints: refused
The tensors are seeded; torch.save's storage keys and serialization id vary between runs,
the tensors do not.
"""
import argparse
import collections
import os

import torch
from safetensors.torch import save_file


def state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["conv.bias"] = torch.randn(4, generator=g).half()
    flat = torch.randn(6, 5, generator=g)
    sd["flat"] = flat
    sd["flat.rows"] = flat[2:4]  # same storage, offset 10
    sd["flat.t"] = flat.t()  # strides (1, 5)
    sd["bf16"] = torch.randn(2, 3, generator=g).bfloat16()
    sd["f64"] = torch.randn(3, generator=g).double()
    sd["i64"] = torch.arange(-2, 3)
    sd["i32"] = torch.arange(4, dtype=torch.int32)
    sd["u8"] = torch.arange(250, 256, dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(0.5)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd._metadata = collections.OrderedDict({"": {"version": 1}, "conv": {"version": 1}})
    return sd


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/data/convert")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    sd = state_dict(0)
    torch.save({"params": state_dict(1), "params_ema": sd}, f"{out}/mixed.pth")
    torch.save(sd, f"{out}/mixed-legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(sd, f"{out}/mixed-protocol4.pth", pickle_protocol=4)
    loaded = torch.load(f"{out}/mixed-legacy.pth", weights_only=True)
    save_file({k: v.detach().contiguous().clone() for k, v in loaded.items()}, f"{out}/mixed.safetensors")
    torch.save({"weight": torch.zeros(2), "config": {"nf": 64}}, f"{out}/nested.pth")


if __name__ == "__main__":
    main()
