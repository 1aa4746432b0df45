#!/usr/bin/env python3
"""Record tiny ESRGAN-family upscaler models and their reference outputs for hiresfix.

    python3 scripts/make_esrgan_reference.py [--out tests/data/upscalers/models]

Writes, under --out (see README.md there for the details):
  NAME.pth, NAME.safetensors   tiny random-weight models, the same tensors twice
                               (torch.save zip format / safetensors), for
                               esrgan-old-x4      RRDBNet, original ESRGAN keys (model.0, model.1.sub.N.RDBk...)
                               realesrgan-x4      RRDBNet, Real-ESRGAN/BasicSR keys (conv_first, body.N.rdbk...)
                               realesrgan-x2      the same layout, scale 2 (pixel-unshuffle: conv_first takes 12 channels)
                               realesrgan-x1      the same layout, scale 1 (pixel-unshuffle by 4: 48 channels)
                               compact-x4         SRVGGNetCompact (body.N, PReLU, pixel shuffle)
  realesrgan-x4-params-ema.pth realesrgan-x4 wrapped as {"params_ema": state_dict}, as RealESRGAN_x4plus.pth is
  evil-os-system.pth           torch-zip-shaped files whose data.pkl would run a shell command when
  evil-builtins-eval.pth       unpickled (for the converter's refusal test; never loaded here)
  reference.safetensors        `input`, `input_odd` and per model NAME.out / .raw / .tiled / .tiled_raw /
                               .odd_out / .odd_raw
  reference.json               every setting, what Spandrel detected, the tiling rule, sha256 of every file

The RRDB models go through Spandrel's own classes: the old layout is Spandrel's `ESRGAN`
(RRDBNet) module's state dict as is; the BasicSR layout comes from `BasicSRRRDBNet` below (a
transcription of basicsr/archs/rrdbnet_arch.py, whose keys are Real-ESRGAN's), and its forward
is checked against Spandrel's converted model.  Every model is loaded back with
`spandrel.ModelLoader().load_from_state_dict` (from the .pth, the .safetensors and, for
realesrgan-x4, the params_ema wrapper) and the detected architecture / scale / sizes are
asserted.  Spandrel builds RRDB blocks with a fixed growth width of 32 (it does not read it
from the file), so the RRDB models have gc = 32 and are ~1-2 MB each.

Outputs are Spandrel's: `.out` is `ImageModelDescriptor.__call__` (pads to the size
requirements, clamps to [0, 1]); `.raw` is `descriptor.model(x)` (unclamped); `.tiled` blends
descriptor calls on 12x12 input tiles with 4 px overlap and a feathered mask (tiled_upscale()
below; the exact rule is in reference.json "tiling"); `.tiled_raw` the same over `descriptor.model`
(unclamped tiles).

CPU, float32, offline, deterministic: a rerun writes byte-identical files (torch.save's random
`.data/serialization_id` record is overwritten with zeros).  Needs torch==2.11.0, spandrel 0.4.2,
safetensors, numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickletools
import struct
import zipfile
import zlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import spandrel
from spandrel import ImageModelDescriptor, ModelLoader
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)

SEED = 20250611
INPUT_SHAPE = (1, 3, 24, 20)  # H = 24, W = 20: non-square, W not a multiple of 8
ODD_SHAPE = (1, 3, 11, 13)  # odd sizes: exercises padding (x2 pixel-unshuffle)
TILE, OVERLAP = 12, 4  # input pixels
GROW = 32  # Spandrel's RRDBNet hard-codes gc = 32

# name -> spec.  nf = num_feat, nb = RRDB blocks, nc = compact body convs; last_gain /
# last_bias: the last conv's weight gain and bias offset (keeps outputs mostly in [0, 1]).
MODELS = {
    "esrgan-old-x4": dict(kind="rrdb", layout="esrgan-old", scale=4, nf=12, nb=1, seed=SEED + 1, last_gain=0.1, last_bias=0.5),
    "realesrgan-x4": dict(kind="rrdb", layout="basicsr", scale=4, nf=8, nb=2, seed=SEED + 2, last_gain=0.1, last_bias=0.5),
    "realesrgan-x2": dict(kind="rrdb", layout="basicsr", scale=2, nf=8, nb=1, seed=SEED + 3, last_gain=0.3, last_bias=0.5),
    "realesrgan-x1": dict(kind="rrdb", layout="basicsr", scale=1, nf=8, nb=1, seed=SEED + 5, last_gain=0.3, last_bias=0.5),
    "compact-x4": dict(kind="compact", layout="srvgg-compact", scale=4, nf=16, nc=4, seed=SEED + 4, last_gain=0.15, last_bias=0.0),
}
PARAMS_EMA = ("realesrgan-x4", "realesrgan-x4-params-ema.pth")

PWNED = "touch /tmp/hiresfix-pwned"
EVIL = {
    "evil-os-system.pth": "protocol 2; {'conv_first.weight': os.system('%s')} (GLOBAL 'os system', REDUCE inside a dict)" % PWNED,
    "evil-builtins-eval.pth": "protocol 4; builtins.eval(\"__import__('os').system('%s')\") (STACK_GLOBAL, REDUCE at top level)" % PWNED,
}


# --- the Real-ESRGAN / BasicSR RRDBNet, transcribed (basicsr/archs/rrdbnet_arch.py) --------


class ResidualDenseBlock(nn.Module):
    def __init__(self, num_feat, num_grow_ch):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_grow_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * num_grow_ch, num_grow_ch, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x):
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, num_feat, num_grow_ch):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class BasicSRRRDBNet(nn.Module):
    """Keys: conv_first, body.N.rdbK.convJ, conv_body, conv_up1, conv_up2, conv_hr, conv_last."""

    def __init__(self, num_in_ch, num_out_ch, scale, num_feat, num_block, num_grow_ch):
        super().__init__()
        self.scale = scale
        if scale == 2:
            num_in_ch *= 4
        elif scale == 1:
            num_in_ch *= 16
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2)

    def forward(self, x):
        if self.scale == 2:
            x = F.pixel_unshuffle(x, 2)  # basicsr's pixel_unshuffle has the same channel order
        elif self.scale == 1:
            x = F.pixel_unshuffle(x, 4)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


# --- weights --------------------------------------------------------------------------------


def randomize(module: nn.Module, seed: int, last_conv: str, last_gain: float, last_bias: float):
    """Seeded weights, in state-dict order from one generator: conv weights uniform with std
    gain / sqrt(fan_in) (gain 1.4), biases uniform +-0.05, PReLU slopes uniform [0.05, 0.35].
    The last conv gets gain `last_gain` and `last_bias` added to its bias, so that outputs
    mostly stay inside [0, 1] (Spandrel's descriptor clamps)."""
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float64).mul(hi - lo).add(lo).float()

    with torch.no_grad():
        for name, p in module.named_parameters():
            layer = name.rsplit(".", 1)[0]
            if p.dim() == 4:
                gain = last_gain if layer == last_conv else 1.4
                bound = gain / math.sqrt(p.shape[1] * p.shape[2] * p.shape[3]) * math.sqrt(3.0)
                p.copy_(uniform(p.shape, -bound, bound))
            elif p.dim() == 1 and layer == last_conv:
                p.copy_(uniform(p.shape, -0.05, 0.05) + last_bias)
            elif p.dim() == 1 and isinstance(module.get_submodule(layer), nn.PReLU):
                p.copy_(uniform(p.shape, 0.05, 0.35))
            else:
                p.copy_(uniform(p.shape, -0.05, 0.05))


def build(name, spec):
    scale, nf = spec["scale"], spec["nf"]
    if spec["layout"] == "esrgan-old":
        net = ESRGAN(in_nc=3, out_nc=3, num_filters=nf, num_blocks=spec["nb"], scale=scale)
        last = "model.%d" % (3 * int(math.log2(scale)) + 4)
        randomize(net, spec["seed"], last, spec["last_gain"], spec["last_bias"])
    elif spec["layout"] == "basicsr":
        net = BasicSRRRDBNet(3, 3, scale, nf, spec["nb"], GROW)
        randomize(net, spec["seed"], "conv_last", spec["last_gain"], spec["last_bias"])
    else:
        net = Compact(num_in_ch=3, num_out_ch=3, num_feat=nf, num_conv=spec["nc"], upscale=scale, act_type="prelu")
        randomize(net, spec["seed"], "body.%d" % (2 * spec["nc"] + 2), spec["last_gain"], spec["last_bias"])
    net.eval()
    return net, {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


# --- files ----------------------------------------------------------------------------------


def fix_serialization_id(path):
    """torch.save writes a random 40-digit `.data/serialization_id`; set it to zeros (same
    length; CRC32 patched in its data descriptor, or local header, and central directory) so
    that reruns are byte-identical."""
    data = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.filename.endswith("/.data/serialization_id")]
    assert len(infos) == 1, "torch.save layout changed"
    info = infos[0]
    assert info.compress_type == zipfile.ZIP_STORED
    new = b"0" * info.file_size
    crc = zlib.crc32(new) & 0xFFFFFFFF
    local = info.header_offset
    assert data[local:local + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack_from("<HH", data, local + 26)
    start = local + 30 + name_len + extra_len
    data[start:start + info.file_size] = new
    if info.flag_bits & 0x08:  # CRC in the data descriptor after the data (torch's writer)
        end = start + info.file_size
        assert data[end:end + 4] == b"PK\x07\x08"
        struct.pack_into("<I", data, end + 4, crc)
    else:
        struct.pack_into("<I", data, local + 14, crc)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        n_len, e_len, c_len = struct.unpack_from("<HHH", data, central + 28)
        if bytes(data[central + 46:central + 46 + n_len]).decode() == info.filename:
            struct.pack_into("<I", data, central + 16, crc)
            break
        central = data.find(b"PK\x01\x02", central + 46 + n_len + e_len + c_len)
    else:
        raise AssertionError("central directory entry not found")
    with open(path, "wb") as f:
        f.write(bytes(data))
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None


def torch_save(obj, path):
    torch.save(obj, path)
    fix_serialization_id(path)


def zip_entry(name):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o644 << 16
    return info


def evil_pickles():
    """Hand-made pickle bytes (nothing here is ever unpickled)."""

    def binunicode(s):  # protocol 2 'X'
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b

    def short_binunicode(s):  # protocol 4 '\x8c'
        b = s.encode()
        assert len(b) < 256
        return b"\x8c" + bytes([len(b)]) + b

    os_system = (
        b"\x80\x02"  # PROTO 2 (what torch.save writes)
        + b"}"  # EMPTY_DICT
        + b"("  # MARK
        + binunicode("conv_first.weight")
        + b"cos\nsystem\n"  # GLOBAL 'os system'
        + binunicode(PWNED)
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE: os.system(PWNED)
        + b"u"  # SETITEMS
        + b"."  # STOP
    )
    expr = "__import__('os').system('%s')" % PWNED
    builtins_eval = (
        b"\x80\x04"  # PROTO 4
        + short_binunicode("builtins")
        + short_binunicode("eval")
        + b"\x93"  # STACK_GLOBAL
        + short_binunicode(expr)
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE: eval(expr)
        + b"."
    )
    return {"evil-os-system.pth": os_system, "evil-builtins-eval.pth": builtins_eval}


def write_evil(out):
    facts = {}
    for fname, pkl in evil_pickles().items():
        # static check only: walk the opcodes, never execute them
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pkl)]
        names = [o for o, _ in ops]
        assert "REDUCE" in names and ("GLOBAL" in names or "STACK_GLOBAL" in names), ops
        archive = fname[: -len(".pth")]
        path = os.path.join(out, fname)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(zip_entry(archive + "/data.pkl"), pkl)
            z.writestr(zip_entry(archive + "/byteorder"), b"little")
            z.writestr(zip_entry(archive + "/version"), b"3\n")
        facts[fname] = dict(
            payload=EVIL[fname],
            entries=[archive + "/data.pkl", archive + "/byteorder", archive + "/version"],
            opcodes=[o if a is None else "%s %r" % (o, a) for o, a in ops],
        )
    return facts


# --- tiling ---------------------------------------------------------------------------------


def tile_origins(size, tile, overlap):
    """0, tile - overlap, 2 (tile - overlap), ... while the tile ends before the border; then one
    last tile clamped to end at the border (size - tile).  A side <= tile is one tile at 0."""
    if size <= tile:
        return [0]
    step = tile - overlap
    origins, o = [], 0
    while o + tile < size:
        origins.append(o)
        o += step
    origins.append(size - tile)
    return origins


def ramp(length, o, lo_interior, hi_interior):
    """1-D feather over `length` output pixels. At an interior edge (one that borders another
    tile) the outermost m = o // 4 pixels get weight 0 (they see the tile's zero padding),
    the next r = o - 2m ramp as (i - m + 0.5) / r, the rest keep 1; a border edge keeps 1.
    With two interior edges the weights multiply."""
    w = torch.ones(length, dtype=torch.float32)
    m, r = o // 4, o - 2 * (o // 4)
    i = torch.arange(min(o, length), dtype=torch.float32)
    edge = torch.where(i < m, torch.zeros_like(i), torch.clamp((i - m + 0.5) / r, max=1.0))
    if lo_interior:
        w[: len(edge)] *= edge
    if hi_interior:
        w[length - len(edge):] *= edge.flip(0)
    return w


def tiled_upscale(desc, image, tile, overlap, call=None):
    """Weighted sum of the tile outputs of `call` (default: the descriptor, which clamps)
    divided by the sum of the weights, tiles in row-major order (y outer, x inner), float32."""
    call = call or desc
    _, c, h, w = image.shape
    s = desc.scale
    acc = torch.zeros(1, desc.output_channels, h * s, w * s, dtype=torch.float32)
    wsum = torch.zeros(1, 1, h * s, w * s, dtype=torch.float32)
    tiles = []
    th, tw = min(tile, h), min(tile, w)
    for y in tile_origins(h, tile, overlap):
        for x in tile_origins(w, tile, overlap):
            with torch.inference_mode():
                out = call(image[:, :, y:y + th, x:x + tw].contiguous())
            assert out.shape == (1, desc.output_channels, th * s, tw * s)
            wy = ramp(th * s, overlap * s, y > 0, y + th < h)
            wx = ramp(tw * s, overlap * s, x > 0, x + tw < w)
            mask = wy[:, None] * wx[None, :]
            acc[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += out * mask
            wsum[:, :, y * s:(y + th) * s, x * s:(x + tw) * s] += mask
            tiles.append(dict(y=y, x=x, h=th, w=tw,
                              interior=dict(top=y > 0, bottom=y + th < h, left=x > 0, right=x + tw < w)))
    assert wsum.min() > 0
    return acc / wsum, tiles


# --- main -----------------------------------------------------------------------------------


def make_input(shape, seed):
    """Smooth colour field (low-frequency cosines) plus uniform noise, clamped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    _, c, h, w = shape
    yy = torch.arange(h, dtype=torch.float64).reshape(h, 1) / h
    xx = torch.arange(w, dtype=torch.float64).reshape(1, w) / w
    planes = []
    for ch in range(c):
        a, b, p = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        plane = 0.5 + 0.25 * torch.cos(2 * math.pi * (a * 1.5 * yy + b * 1.5 * xx + p)) + 0.1 * (yy - xx) * (ch - 1)
        planes.append(plane)
    smooth = torch.stack(planes).unsqueeze(0)
    noise = (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5) * 0.16
    return (smooth + noise).clamp(0, 1).float().contiguous()


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def describe(desc):
    hp = dict(desc.model.hyperparameters)
    return dict(
        architecture=desc.architecture.id,
        architecture_name=desc.architecture.name,
        scale=desc.scale,
        input_channels=desc.input_channels,
        output_channels=desc.output_channels,
        tags=list(desc.tags),
        size_requirements=dict(minimum=desc.size_requirements.minimum,
                               multiple_of=desc.size_requirements.multiple_of,
                               square=desc.size_requirements.square),
        hyperparameters={k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool, type(None)))},
    )


def check(desc, spec, label):
    arch = "Compact" if spec["kind"] == "compact" else "ESRGAN"
    assert isinstance(desc, ImageModelDescriptor), label
    assert desc.architecture.id == arch, (label, desc.architecture.id)
    assert desc.scale == spec["scale"], (label, desc.scale)
    assert (desc.input_channels, desc.output_channels) == (3, 3), label
    hp = desc.model.hyperparameters
    if arch == "ESRGAN":
        assert hp["num_filters"] == spec["nf"] and hp["num_blocks"] == spec["nb"], (label, hp)
        # BasicSR x2 is a x4 net behind a 2x pixel-unshuffle; Spandrel reports scale 2
        assert hp["shuffle_factor"] == {1: 4, 2: 2}.get(spec["scale"]), (label, hp)
        assert hp["scale"] == 4, (label, hp)
    else:
        assert hp["num_feat"] == spec["nf"] and hp["num_conv"] == spec["nc"], (label, hp)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests/data/upscalers/models"))
    args = parser.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)

    image = make_input(INPUT_SHAPE, SEED)
    image_odd = make_input(ODD_SHAPE, SEED + 100)
    tensors = {"input": image, "input_odd": image_odd}
    loader = ModelLoader(device="cpu")
    models = {}

    for name, spec in MODELS.items():
        net, sd = build(name, spec)
        pth, st = name + ".pth", name + ".safetensors"
        torch_save(sd, os.path.join(out, pth))
        save_file(sd, os.path.join(out, st))

        # load back: the in-memory state dict, the .pth (weights_only) and the .safetensors
        desc = loader.load_from_state_dict(sd)
        check(desc, spec, name)
        from_pth = torch.load(os.path.join(out, pth), map_location="cpu", weights_only=True)
        from_st = load_file(os.path.join(out, st))
        for label, other in (("pth", from_pth), ("safetensors", from_st)):
            assert list(other) == list(sd) or sorted(other) == sorted(sd), label
            assert all(torch.equal(other[k], sd[k]) for k in sd), label
            check(loader.load_from_state_dict(other), spec, name + " " + label)
        for f in (pth, st):  # Spandrel's own file path (RestrictedUnpickle for .pth)
            check(loader.load_from_file(os.path.join(out, f)), spec, name + " load_from_file " + f)
        files = [pth, st]

        if name == PARAMS_EMA[0]:
            torch_save({"params_ema": sd}, os.path.join(out, PARAMS_EMA[1]))
            wrapped = torch.load(os.path.join(out, PARAMS_EMA[1]), map_location="cpu", weights_only=True)
            check(loader.load_from_state_dict(wrapped), spec, name + " params_ema")
            check(loader.load_from_file(os.path.join(out, PARAMS_EMA[1])), spec, name + " params_ema file")
            files.append(PARAMS_EMA[1])

        desc.model.eval()
        with torch.inference_mode():
            raw = desc.model(image.clone())
            odd_raw = desc.model(image_odd.clone())
            own = net(image.clone())
        whole = desc(image.clone())
        odd = desc(image_odd.clone())
        tiled, tiles = tiled_upscale(desc, image, TILE, OVERLAP)
        tiled_raw, _ = tiled_upscale(desc, image, TILE, OVERLAP, call=desc.model)
        s = spec["scale"]
        assert whole.shape == (1, 3, INPUT_SHAPE[2] * s, INPUT_SHAPE[3] * s)
        assert odd.shape == (1, 3, ODD_SHAPE[2] * s, ODD_SHAPE[3] * s) == odd_raw.shape
        outputs = (("out", whole), ("raw", raw), ("tiled", tiled), ("tiled_raw", tiled_raw),
                   ("odd_out", odd), ("odd_raw", odd_raw))
        for suffix, t in outputs:
            tensors[f"{name}.{suffix}"] = t.float().contiguous()

        first = [k for k in sd if k.startswith(("model.1.sub.0.", "body.0."))]
        models[name] = dict(
            files=files,
            layout=spec["layout"],
            made_with=dict(spec, grow_channels=GROW if spec["kind"] == "rrdb" else None),
            spandrel=describe(desc),
            keys={k: list(v.shape) for k, v in sd.items()},
            first_block_keys=first,
            num_parameters=sum(v.numel() for v in sd.values()),
            outputs=[f"{name}.{x}" for x, _ in outputs],
            tiles=tiles,
            stats=dict(
                raw_min=raw.min().item(), raw_max=raw.max().item(),
                clamped_fraction=((raw < 0) | (raw > 1)).float().mean().item(),
                max_abs_tiled_minus_out_255=(tiled - whole).abs().max().item() * 255,
                mean_abs_tiled_minus_out_255=(tiled - whole).abs().mean().item() * 255,
                max_abs_tiled_raw_minus_raw_255=(tiled_raw - raw).abs().max().item() * 255,
                max_abs_tiled_minus_tiled_raw_255=(tiled - tiled_raw).abs().max().item() * 255,
                max_abs_odd_out_minus_odd_raw_clamped_255=(odd - odd_raw.clamp(0, 1)).abs().max().item() * 255,
                max_abs_own_forward_minus_spandrel=(own - raw).abs().max().item(),
            ),
        )
        if spec["layout"] == "basicsr":
            # the transcribed BasicSR forward and Spandrel's converted model agree
            assert (own - raw).abs().max().item() < 1e-5, name

    evil = write_evil(out)

    ref = os.path.join(out, "reference.safetensors")
    save_file(tensors, ref)
    files = sorted(f for m in models.values() for f in m["files"]) + sorted(evil)
    meta = dict(
        torch=torch.__version__.split("+")[0],
        spandrel=spandrel.__version__,
        seed=SEED,
        input=dict(shape=list(INPUT_SHAPE), made_by="make_input(shape, seed): 0.5 + 0.25 cos(smooth) + ramp, + uniform noise +-0.08, clamp [0, 1]"),
        input_odd=dict(shape=list(ODD_SHAPE), made_by="make_input(shape, seed + 100)"),
        outputs={
            "NAME.out": "ImageModelDescriptor(input): pads to size_requirements (reflect, bottom/right), model, clamp [0, 1], crop",
            "NAME.raw": "descriptor.model(input): no descriptor padding, no clamp",
            "NAME.tiled": "tiled_upscale(descriptor, input, 12, 4): see tiling (tile outputs clamped to [0, 1] by the descriptor)",
            "NAME.tiled_raw": "the same with descriptor.model as the tile call (tile outputs not clamped)",
            "NAME.odd_out": "ImageModelDescriptor(input_odd)",
            "NAME.odd_raw": "descriptor.model(input_odd)",
        },
        tiling=dict(
            tile=TILE, overlap=OVERLAP, units="input pixels; masks in output pixels (x scale)",
            origins="per axis: 0, step, 2 step, ... (step = tile - overlap) while origin + tile < size, then size - tile (the last tile ends at the border); size <= tile: one tile [0, size)",
            origins_y=tile_origins(INPUT_SHAPE[2], TILE, OVERLAP), origins_x=tile_origins(INPUT_SHAPE[3], TILE, OVERLAP),
            order="row-major: y origins outer, x origins inner",
            tile_output="ImageModelDescriptor(input[:, :, y:y+th, x:x+tw]) (clamped to [0, 1]), placed at (y*scale, x*scale)",
            mask="wy[:, None] * wx[None, :]; per axis of L = t*scale output pixels with o = overlap*scale, m = o // 4, r = o - 2m: edge(i) = 0 for i < m, else min(1, (i - m + 0.5)/r); w = 1, and for i in 0..min(o, L): w[i] *= edge(i) if the low edge is interior (origin > 0), w[L-1-i] *= edge(i) if the high edge is interior (origin + t < size); border edges keep 1",
            blend="acc += tile_out * mask, wsum += mask (float32, in tile order); result = acc / wsum",
        ),
        models=models,
        params_ema=dict(file=PARAMS_EMA[1], wraps=PARAMS_EMA[0],
                        spandrel_unwraps=True,
                        how="spandrel canonicalize_state_dict (called by ModelLoader.load_from_state_dict via the registry) unwraps the first of model_state_dict, state_dict, params_ema, params-ema, params, model, net whose value is a dict; ESRGAN's own _to_old_arch also checks params_ema"),
        evil=evil,
        files={f: dict(bytes=os.path.getsize(os.path.join(out, f)), sha256=sha256(os.path.join(out, f))) for f in files + ["reference.safetensors"]},
        tensors={k: list(v.shape) for k, v in tensors.items()},
    )
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    for name, m in models.items():
        st = m["stats"]
        print(f"{name}: {m['spandrel']['architecture']} x{m['spandrel']['scale']} tags={m['spandrel']['tags']} "
              f"raw [{st['raw_min']:.3f}, {st['raw_max']:.3f}] clamped {st['clamped_fraction']:.4f} "
              f"max|tiled-out|*255 {st['max_abs_tiled_minus_out_255']:.3f}")
    print(f"wrote {len(files) + 2} files, {len(tensors)} tensors to {out}")


if __name__ == "__main__":
    main()
