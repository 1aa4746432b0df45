#!/usr/bin/env python3
"""Write tiny LoRA files in every format users download, for the committed tiny SD 1.x and
SDXL models, and record reference values for hiresfix's LoRA loader.

    python3 scripts/make_lora_reference.py [--data tests/data]

Reads (never writes) tests/data/sd1-tiny/ and tests/data/sdxl-tiny/ (diffusers folders,
single files and reference.safetensors), and writes under --data/loras/:

  sd1-kohya.safetensors       kohya sd-scripts LoRA (networks/lora.py): lora_down/lora_up/alpha
  sd1-locon.safetensors       LyCORIS LoCon: 3x3 convs, one Tucker (lora_mid) module, one module without alpha
  sd1-loha.safetensors        LyCORIS LoHa: hada_w1_a/w1_b/w2_a/w2_b/alpha
  sd1-lokr.safetensors        LyCORIS LoKr: full lokr_w1/lokr_w2, and lokr_w1 + lokr_w2_a/lokr_w2_b + alpha
  sd1-peft.safetensors        diffusers/peft (StableDiffusionPipeline.save_lora_weights): unet.* / text_encoder.*
                              lora_A/lora_B, alpha in the file's lora_adapter_metadata
  sd1-peft-bare.safetensors   the UNet part of sd1-peft without 'unet.' and without metadata (scale 1)
  sdxl-kohya.safetensors      kohya SDXL LoRA (LDM/sgm UNet names, lora_te1_ / lora_te2_), fp16
  sdxl-peft.safetensors       diffusers SDXL (unet. / text_encoder. / text_encoder_2.), fp16
  reference.safetensors       patched weights, UNet outputs, text-encoder outputs, base weights
  reference.json              what every file and reference tensor is, and every convention used
  README.md

Patched weights of kohya and peft files come from diffusers itself (load_lora_weights +
fuse_lora + unload_lora_weights) and are cross-checked against the formulas below; LoCon
with lora_mid, LoHa and LoKr (which diffusers cannot load) use transcriptions of the
LyCORIS / ComfyUI / A1111 formulas.  Everything runs on CPU in float32, offline, and is
deterministic (reruns give byte-identical files).  Needs torch, diffusers, transformers,
peft, open_clip, k-diffusion, safetensors.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# make_sd1_reference sets the offline environment and quiets logging, so it comes first.
import make_sd1_reference as sd1  # noqa: E402
import make_family_reference as fam  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import diffusers  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel  # noqa: E402
import peft  # noqa: E402
from peft import LoraConfig, get_peft_model_state_dict  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402

# ----------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------
TE_MULT = 0.8  # A1111 <lora:name:0.8:0.6>: text-encoder multiplier first ...
UNET_MULT = 0.6  # ... then the UNet multiplier (ComfyUI: strength_clip / strength_model)
PROMPT = "a photo of a cat"
LORA_SEED = 4242  # every file draws from manual_seed(LORA_SEED + index of the file)
TOL_HAND = 1e-6  # hand formula vs diffusers' fused weights, max |diff|

UNET_P = sd1.UNET_P  # "model.diffusion_model."
TE_PREFIX = {  # hiresfix model-key prefix of each text encoder (transformers names below it)
    "te": "cond_stage_model.transformer.",  # SD 1.x CLIP-L
    "te1": "conditioner.embedders.0.transformer.",  # SDXL CLIP-L
    "te2": "conditioner.embedders.1.model.",  # SDXL OpenCLIP bigG (hiresfix splits in_proj into q/k/v)
}
KOHYA_TE = {"te": "lora_te", "te1": "lora_te1", "te2": "lora_te2"}  # sd-scripts LORA_PREFIX_TEXT_ENCODER*
PEFT_PREFIX = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}
DIFFUSERS_COMPONENT = {"unet": "unet", "te": "text_encoder", "te1": "text_encoder", "te2": "text_encoder_2"}


def multiplier(comp: str) -> float:
    return UNET_MULT if comp == "unet" else TE_MULT


# ----------------------------------------------------------------------------
# Module specifications: which layers each file patches, with which algorithm
# ----------------------------------------------------------------------------
# (component, diffusers / transformers module path, parameters).  UNet paths are diffusers
# paths (translated to LDM paths for model keys and SDXL kohya names); text-encoder paths are
# the classic transformers names ('text_model.' included).
def L(comp, path, rank, alpha, **kw):  # LoRA / LoCon
    return {"comp": comp, "path": path, "algo": "lora", "rank": rank, "alpha": alpha, **kw}


def H(comp, path, rank, alpha):  # LoHa
    return {"comp": comp, "path": path, "algo": "loha", "rank": rank, "alpha": alpha}


def K(comp, path, alpha, w1="full", w2="full", rank=None):  # LoKr
    return {"comp": comp, "path": path, "algo": "lokr", "rank": rank, "alpha": alpha, "w1": w1, "w2": w2}


SD1_TB = "transformer_blocks.0"
FILES = [
    {
        "stem": "sd1-kohya", "family": "sd1", "format": "kohya-lora", "dtype": torch.float32,
        "tool": "kohya-ss sd-scripts networks/lora.py (LoRANetwork, SD 1.x UNet with diffusers module names)",
        "metadata": {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
                     "ss_base_model_version": "sd_v1", "ss_v2": "False"},
        "modules": [
            L("unet", f"down_blocks.0.attentions.0.{SD1_TB}.attn1.to_q", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.0.{SD1_TB}.attn1.to_k", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.0.{SD1_TB}.attn1.to_v", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.0.{SD1_TB}.attn1.to_out.0", 4, 2.0),
            L("unet", f"down_blocks.1.attentions.1.{SD1_TB}.attn2.to_k", 4, 2.0),
            L("unet", f"up_blocks.2.attentions.2.{SD1_TB}.ff.net.0.proj", 4, 2.0),
            L("unet", "mid_block.attentions.0.proj_in", 4, 2.0),
            L("unet", "up_blocks.1.attentions.0.proj_out", 4, 2.0),
            L("te", "text_model.encoder.layers.0.self_attn.q_proj", 4, 2.0),
            L("te", "text_model.encoder.layers.0.self_attn.k_proj", 4, 2.0),
            L("te", "text_model.encoder.layers.0.self_attn.v_proj", 4, 2.0),
            L("te", "text_model.encoder.layers.0.self_attn.out_proj", 4, 2.0),
            L("te", "text_model.encoder.layers.1.mlp.fc1", 4, 2.0),
        ],
    },
    {
        "stem": "sd1-locon", "family": "sd1", "format": "lycoris-locon", "dtype": torch.float32,
        "tool": "LyCORIS lycoris/modules/locon.py (LoConModule; kohya names, Conv2d 3x3 down [r,in,k,k] / up [out,r,1,1]; "
        "use_tucker: down [r,in,1,1], lora_mid [r,r,k,k])",
        "metadata": {"ss_network_module": "lycoris.kohya", "ss_network_dim": "4", "ss_network_alpha": "4.0",
                     "ss_network_args": json.dumps({"algo": "locon", "conv_dim": "2", "conv_alpha": "1.0", "use_tucker": "True"}),
                     "ss_base_model_version": "sd_v1", "ss_v2": "False"},
        "modules": [
            L("unet", "down_blocks.0.resnets.0.conv1", 2, 1.0),  # 3x3 conv
            L("unet", "down_blocks.0.resnets.1.conv1", 2, 1.0, mid=True),  # Tucker: lora_mid
            L("unet", "down_blocks.1.resnets.0.conv_shortcut", 2, 1.0),  # 1x1 conv
            L("unet", "down_blocks.0.downsamplers.0.conv", 2, 1.0),  # 3x3 conv, stride 2
            L("unet", "up_blocks.0.upsamplers.0.conv", 2, 1.0),  # 3x3 conv
            L("unet", "mid_block.resnets.0.time_emb_proj", 4, 4.0),  # Linear inside ResnetBlock2D
            L("unet", f"down_blocks.0.attentions.1.{SD1_TB}.attn2.to_v", 4, None),  # no alpha: scale 1
            L("te", "text_model.encoder.layers.1.self_attn.v_proj", 4, 4.0),
            L("te", "text_model.encoder.layers.1.mlp.fc2", 4, 4.0),
        ],
    },
    {
        "stem": "sd1-loha", "family": "sd1", "format": "lycoris-loha", "dtype": torch.float32,
        "tool": "LyCORIS lycoris/modules/loha.py (LohaModule, no Tucker: hada_w*_a [out,r], hada_w*_b [r,in*k*k])",
        "metadata": {"ss_network_module": "lycoris.kohya", "ss_network_dim": "2", "ss_network_alpha": "1.0",
                     "ss_network_args": json.dumps({"algo": "loha", "conv_dim": "2", "conv_alpha": "1.0"}),
                     "ss_base_model_version": "sd_v1", "ss_v2": "False"},
        "modules": [
            H("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn1.to_k", 2, 1.0),  # linear
            H("unet", "down_blocks.0.resnets.1.conv2", 2, 1.0),  # 3x3 conv
            H("te", "text_model.encoder.layers.0.mlp.fc1", 2, 1.0),
        ],
    },
    {
        "stem": "sd1-lokr", "family": "sd1", "format": "lycoris-lokr", "dtype": torch.float32,
        "tool": "LyCORIS lycoris/modules/lokr.py (LokrModule, factor -1; w1 [out_l,in_m], w2 [out_k,in_n(,k,k)])",
        "metadata": {"ss_network_module": "lycoris.kohya", "ss_network_dim": "2", "ss_network_alpha": "1.0",
                     "ss_network_args": json.dumps({"algo": "lokr", "conv_dim": "2", "conv_alpha": "1.0", "factor": "-1"}),
                     "ss_base_model_version": "sd_v1", "ss_v2": "False"},
        "modules": [
            # full w1 and w2: LyCORIS saves alpha = lora_dim and every tool uses scale 1 (the alpha
            # written here, 4, must be ignored)
            K("unet", f"down_blocks.0.attentions.0.{SD1_TB}.ff.net.2", 4.0),
            # full w1, decomposed w2 (3x3 conv: w2_b [r, in_n*3*3]): scale alpha / w2_b.shape[0]
            K("unet", "down_blocks.0.resnets.0.conv2", 1.0, w2="lowrank", rank=2),
            K("te", "text_model.encoder.layers.1.self_attn.out_proj", 1.0, w2="lowrank", rank=2),
        ],
    },
    {
        "stem": "sd1-peft", "family": "sd1", "format": "diffusers-peft", "dtype": torch.float32,
        "tool": "peft LoraConfig + get_peft_model_state_dict, written by StableDiffusionPipeline.save_lora_weights "
        "(with unet_/text_encoder_lora_adapter_metadata = LoraConfig.to_dict())",
        "peft": {"unet": {"r": 4, "lora_alpha": 2}, "te": {"r": 2, "lora_alpha": 1}},
        "modules": [
            L("unet", f"down_blocks.0.attentions.1.{SD1_TB}.attn2.to_q", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.1.{SD1_TB}.attn2.to_v", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.1.{SD1_TB}.attn2.to_out.0", 4, 2.0),
            L("unet", f"up_blocks.2.attentions.0.{SD1_TB}.attn1.to_k", 4, 2.0),
            L("unet", f"down_blocks.0.attentions.1.{SD1_TB}.ff.net.2", 4, 2.0),
            L("unet", "down_blocks.1.attentions.0.proj_in", 4, 2.0),  # 1x1 conv
            L("te", "text_model.encoder.layers.0.self_attn.k_proj", 2, 1.0),
            L("te", "text_model.encoder.layers.1.self_attn.out_proj", 2, 1.0),
            L("te", "text_model.encoder.layers.1.mlp.fc2", 2, 1.0),
        ],
    },
    {
        "stem": "sd1-peft-bare", "family": "sd1", "format": "peft-bare", "dtype": torch.float32,
        "tool": "the UNet part of sd1-peft as get_peft_model_state_dict(unet) gives it, saved with safetensors' "
        "save_file: no 'unet.' prefix and no metadata, so every tool uses scale 1 (alpha = rank)",
        "same_tensors_as": "sd1-peft",
        "modules": None,  # filled in from sd1-peft's UNet modules, with alpha None
    },
    {
        "stem": "sdxl-kohya", "family": "sdxl", "format": "kohya-lora", "dtype": torch.float16,
        "tool": "kohya-ss sd-scripts networks/lora.py on library/sdxl_original_unet.py (LDM/sgm UNet module names), "
        "lora_te1_ (CLIP-L) / lora_te2_ (bigG, transformers names); saved in fp16 (alpha too)",
        "metadata": {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "2.0",
                     "ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"},
        "modules": [
            L("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn1.to_q", 4, 2.0),
            L("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn1.to_k", 4, 2.0),
            L("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn1.to_v", 4, 2.0),
            L("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn1.to_out.0", 4, 2.0),
            L("unet", "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k", 4, 2.0),
            L("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", 4, 2.0),
            L("unet", "up_blocks.0.attentions.0.proj_in", 4, 2.0),  # linear in SDXL
            L("unet", "down_blocks.1.attentions.0.proj_out", 4, 2.0),
            L("te1", "text_model.encoder.layers.0.self_attn.q_proj", 4, 2.0),
            L("te1", "text_model.encoder.layers.0.self_attn.out_proj", 4, 2.0),  # see DISAGREEMENTS (diffusers)
            L("te1", "text_model.encoder.layers.0.mlp.fc1", 4, 2.0),
            L("te2", "text_model.encoder.layers.0.self_attn.k_proj", 4, 2.0),
            L("te2", "text_model.encoder.layers.0.self_attn.out_proj", 4, 2.0),
            L("te2", "text_model.encoder.layers.1.self_attn.v_proj", 4, 2.0),
            L("te2", "text_model.encoder.layers.1.mlp.fc2", 4, 2.0),
        ],
    },
    {
        "stem": "sdxl-peft", "family": "sdxl", "format": "diffusers-peft", "dtype": torch.float16,
        "tool": "peft LoraConfig + get_peft_model_state_dict, written by StableDiffusionXLPipeline.save_lora_weights "
        "(unet / text_encoder / text_encoder_2 adapter metadata), tensors in fp16",
        "peft": {"unet": {"r": 4, "lora_alpha": 8}, "te1": {"r": 2, "lora_alpha": 1}, "te2": {"r": 2, "lora_alpha": 1}},
        "modules": [
            L("unet", f"down_blocks.1.attentions.0.{SD1_TB}.attn2.to_q", 4, 8.0),
            L("unet", "up_blocks.0.attentions.1.transformer_blocks.1.attn1.to_v", 4, 8.0),
            L("unet", "mid_block.attentions.0.proj_out", 4, 8.0),
            L("unet", f"down_blocks.2.attentions.0.{SD1_TB}.ff.net.2", 4, 8.0),
            L("te1", "text_model.encoder.layers.0.self_attn.v_proj", 2, 1.0),
            L("te2", "text_model.encoder.layers.0.self_attn.q_proj", 2, 1.0),
            L("te2", "text_model.encoder.layers.1.mlp.fc1", 2, 1.0),
        ],
    },
]


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
class FamilyModels:
    """The committed tiny model of a family: diffusers pipeline (fp32), single file, references."""

    def __init__(self, name: str, data: str):
        self.name = name
        base = os.path.join(data, f"{name}-tiny")
        self.ddir = os.path.join(base, "diffusers")
        self.single_file = os.path.join(base, f"{name}-tiny.safetensors")
        self.ckpt = load_file(self.single_file)
        self.ref = load_file(os.path.join(base, "reference.safetensors"))
        with open(os.path.join(base, "reference.json"), encoding="utf-8") as f:
            self.ref_json = json.load(f)
        self.pipe_cls = StableDiffusionXLPipeline if name == "sdxl" else StableDiffusionPipeline
        self.pipe = self.load_pipe()
        umap = sd1.unet_module_map(self.pipe.unet.config)
        if name == "sdxl":
            umap = umap + [
                ("add_embedding.linear_1", "label_emb.0.0", sd1.SAME),
                ("add_embedding.linear_2", "label_emb.0.2", sd1.SAME),
            ]
        self.umap = umap
        self.tok = CLIPTokenizer.from_pretrained(os.path.join(self.ddir, "tokenizer"), local_files_only=True)

    def load_pipe(self):
        kw = dict(local_files_only=True, dtype=torch.float32)
        if self.name == "sd1":
            kw.update(safety_checker=None, requires_safety_checker=False)
        pipe = self.pipe_cls.from_pretrained(self.ddir, **kw)
        for m in self.text_encoders(pipe).values():
            m.eval()
        pipe.unet.eval()
        return pipe

    def text_encoders(self, pipe) -> dict:
        if self.name == "sdxl":
            return {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2}
        return {"te": pipe.text_encoder}

    # --- names ---------------------------------------------------------------
    def ldm_module(self, path: str) -> str:
        """diffusers UNet module path -> LDM module path (make_sd1_reference's map)."""
        key = sd1.apply_module_map({path + ".weight": torch.zeros(1)}, self.umap, "")
        (k,) = key
        return k[: -len(".weight")]

    def model_key(self, comp: str, path: str) -> str:
        if comp == "unet":
            return UNET_P + self.ldm_module(path) + ".weight"
        return TE_PREFIX[comp] + path + ".weight"

    def module(self, pipe, comp: str, path: str) -> nn.Module:
        root = pipe.unet if comp == "unet" else self.text_encoders(pipe)[comp]
        return root.get_submodule(hf_path(root, path) if comp != "unet" else path)

    def base_weight(self, comp: str, path: str) -> torch.Tensor:
        return self.module(self.pipe, comp, path).weight.detach().clone()

    def single_file_weight(self, model_key: str) -> torch.Tensor:
        """The weight as the committed single file stores it (bigG: split from OpenCLIP names)."""
        if not model_key.startswith(TE_PREFIX["te2"]) or self.name != "sdxl":
            return self.ckpt[model_key].float()
        rest = model_key[len(TE_PREFIX["te2"]) :]
        layer, part = rest[len("text_model.encoder.layers.") :].split(".", 1)
        o = f"{TE_PREFIX['te2']}transformer.resblocks.{layer}."
        qkv = {"self_attn.q_proj.weight": 0, "self_attn.k_proj.weight": 1, "self_attn.v_proj.weight": 2}
        if part in qkv:
            return self.ckpt[o + "attn.in_proj_weight"].float().chunk(3)[qkv[part]]
        ren = {"self_attn.out_proj.weight": "attn.out_proj.weight", "mlp.fc1.weight": "mlp.c_fc.weight",
               "mlp.fc2.weight": "mlp.c_proj.weight"}
        return self.ckpt[o + ren[part]].float()


def hf_path(root: nn.Module, path: str) -> str:
    """transformers 5 dropped CLIPTextModel's 'text_model' wrapper (CLIPTextModelWithProjection kept it)."""
    if path.startswith("text_model.") and not hasattr(root, "text_model"):
        return path[len("text_model.") :]
    return path


# ----------------------------------------------------------------------------
# LyCORIS helpers (transcribed)
# ----------------------------------------------------------------------------
def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """lycoris/functional/general.py factorization (factor -1): (m, n), m <= n, m*n = dimension."""
    if factor > 0 and (dimension % factor) == 0:
        m, n = factor, dimension // factor
        if m > n:
            n, m = m, n
        return m, n
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    length = m + n
    while m < n:
        new_m = m + 1
        while dimension % new_m != 0:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > length or new_m > factor:
            break
        m, n = new_m, new_n
    if m > n:
        n, m = m, n
    return m, n


# ----------------------------------------------------------------------------
# Random LoRA tensors and the weight difference each algorithm makes
# ----------------------------------------------------------------------------
def randn(*shape, std: float) -> torch.Tensor:
    return torch.randn(*shape) * std


def make_tensors(mod: dict, W: torch.Tensor) -> dict:
    """Random tensors of one module (float32; rounded to the file dtype later).  Sizes: ΔW
    comes out with a standard deviation of about half the base weight's (N(0,1)/sqrt(fan_in))."""
    out_dim, in_dim, k = W.shape[0], W.shape[1], tuple(W.shape[2:])
    kk = math.prod(k) if k else 1
    fan_in = in_dim * kk
    r = mod["rank"]
    conv = len(k) == 2
    if mod["algo"] == "lora":
        if mod.get("mid"):
            return {
                "lora_down.weight": randn(r, in_dim, 1, 1, std=1 / in_dim**0.5),
                "lora_mid.weight": randn(r, r, *k, std=1 / (r * kk) ** 0.5),
                "lora_up.weight": randn(out_dim, r, 1, 1, std=0.5 / r**0.5),
            }
        down = randn(r, in_dim, *k, std=1 / fan_in**0.5)
        up = randn(out_dim, r, *((1, 1) if conv else ()), std=0.5 / r**0.5)
        return {"lora_down.weight": down, "lora_up.weight": up}
    if mod["algo"] == "loha":
        return {
            "hada_w1_a": randn(out_dim, r, std=1 / r**0.5),
            "hada_w1_b": randn(r, fan_in, std=1.0),
            "hada_w2_a": randn(out_dim, r, std=0.5 / r**0.5),
            "hada_w2_b": randn(r, fan_in, std=1 / fan_in**0.5),
        }
    if mod["algo"] == "lokr":
        out_l, out_k = factorization(out_dim)
        in_m, in_n = factorization(in_dim)
        t = {}
        if mod["w1"] == "full":
            t["lokr_w1"] = randn(out_l, in_m, std=0.5)
        else:
            t["lokr_w1_a"] = randn(out_l, r, std=1 / r**0.5)
            t["lokr_w1_b"] = randn(r, in_m, std=1.0)
        w2_std = 0.5 / (in_n * kk) ** 0.5
        if mod["w2"] == "full":
            t["lokr_w2"] = randn(out_k, in_n, *k, std=w2_std)
        else:
            t["lokr_w2_a"] = randn(out_k, r, std=0.5 / r**0.5)
            t["lokr_w2_b"] = randn(r, in_n * kk, std=1 / (in_n * kk) ** 0.5)
        return t
    raise ValueError(mod["algo"])


def delta_and_scale(mod: dict, t: dict, shape) -> tuple[torch.Tensor, float, str]:
    """(ΔW in float64 shaped like the weight, scale, how), per LyCORIS / ComfyUI / A1111."""
    d = {k: v.double() for k, v in t.items()}
    alpha = mod["alpha"]
    if mod["algo"] == "lora":
        up, down = d["lora_up.weight"], d["lora_down.weight"]
        if "lora_mid.weight" in d:
            # LyCORIS LoConModule.make_weight (tucker): einsum('i j k l, p i, j r -> p r k l', mid, up, down)
            dw = torch.einsum("ijkl,pi,jr->prkl", d["lora_mid.weight"], up.flatten(1), down.flatten(1))
            how = "einsum('i j k l, p i, j r -> p r k l', lora_mid, lora_up[:,:,0,0], lora_down[:,:,0,0])"
        else:
            dw = up.flatten(1) @ down.flatten(1)
            how = "lora_up.flatten(1) @ lora_down.flatten(1)"
        rank = down.shape[0]
        scale = 1.0 if alpha is None else alpha / rank
        return dw.reshape(shape), scale, how + (f"; scale = alpha / lora_down.shape[0] = {alpha}/{rank}" if alpha is not None else "; no alpha: scale 1")
    if mod["algo"] == "loha":
        dw = (d["hada_w1_a"] @ d["hada_w1_b"]) * (d["hada_w2_a"] @ d["hada_w2_b"])
        rank = d["hada_w1_b"].shape[0]
        return dw.reshape(shape), alpha / rank, f"(hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b); scale = alpha / hada_w1_b.shape[0] = {alpha}/{rank}"
    if mod["algo"] == "lokr":
        dim = None
        if "lokr_w1" in d:
            w1 = d["lokr_w1"]
        else:
            w1 = d["lokr_w1_a"] @ d["lokr_w1_b"]
            dim = d["lokr_w1_b"].shape[0]
        if "lokr_w2" in d:
            w2 = d["lokr_w2"]
        else:
            w2 = d["lokr_w2_a"] @ d["lokr_w2_b"]
            dim = d["lokr_w2_b"].shape[0]
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        dw = torch.kron(w1, w2).reshape(shape)
        if dim is None:
            return dw, 1.0, "kron(lokr_w1, lokr_w2); full w1 and w2: scale 1 (alpha ignored)"
        return dw, alpha / dim, f"kron(w1, w2) with w1/w2 = a @ b where decomposed; scale = alpha / (lokr_w2_b or lokr_w1_b).shape[0] = {alpha}/{dim}"
    raise ValueError(mod["algo"])


# ----------------------------------------------------------------------------
# File writers
# ----------------------------------------------------------------------------
def kohya_name(fm: FamilyModels, mod: dict) -> str:
    if mod["comp"] == "unet":
        # sd-scripts: SD 1.x trains its diffusers-named UNet (library/original_unet.py), SDXL
        # its LDM-named one (library/sdxl_original_unet.py); lora_name = prefix + "." + module
        # path, then "." -> "_".
        path = mod["path"] if fm.name == "sd1" else fm.ldm_module(mod["path"])
        return "lora_unet_" + path.replace(".", "_")
    return KOHYA_TE[mod["comp"]] + "_" + mod["path"].replace(".", "_")


def write_kohya_style(path: str, fm: FamilyModels, spec: dict, tensors: dict) -> dict:
    """kohya / LyCORIS layout: '<lora_name>.<tensor>' + '<lora_name>.alpha' (0-d, file dtype)."""
    sd = {}
    names = {}
    for mod in spec["modules"]:
        name = kohya_name(fm, mod)
        names[mod["path"] + "@" + mod["comp"]] = name
        for k, v in tensors[id(mod)].items():
            sd[f"{name}.{k}"] = v.to(spec["dtype"]).contiguous()
        if mod["alpha"] is not None:
            sd[f"{name}.alpha"] = torch.tensor(mod["alpha"], dtype=spec["dtype"])
    save_file(sd, path, metadata=spec.get("metadata"))
    return names


def sorted_config(cfg: LoraConfig) -> dict:
    """LoraConfig.to_dict() with sets as sorted lists (diffusers turns sets into lists in set
    order, which changes between runs; sorting keeps reruns byte-identical)."""
    out = {}
    for k, v in cfg.to_dict().items():
        out[k] = sorted(v) if isinstance(v, set) else v
    return out


def write_peft(path: str, fm: FamilyModels, spec: dict, tensors: dict) -> dict:
    """Inject peft LoRA layers into fresh copies of the family's models, copy the random
    tensors into them, and write the file with the pipeline's own save_lora_weights."""
    work = fm.load_pipe()
    layers = {}
    metadata = {}
    for comp, cfg_kw in spec["peft"].items():
        mods = [m for m in spec["modules"] if m["comp"] == comp]
        root = work.unet if comp == "unet" else fm.text_encoders(work)[comp]
        targets = [hf_path(root, m["path"]) if comp != "unet" else m["path"] for m in mods]
        cfg = LoraConfig(r=cfg_kw["r"], lora_alpha=cfg_kw["lora_alpha"], target_modules=targets, init_lora_weights=True)
        if comp == "unet":
            root.add_adapter(cfg)  # diffusers' PeftAdapterMixin
        else:
            # transformers' add_adapter wants peft >= 0.22 (not released); this is what it calls
            peft.inject_adapter_in_model(cfg, root, adapter_name="default")
        with torch.no_grad():
            for m, tgt in zip(mods, targets):
                layer = root.get_submodule(tgt)
                t = tensors[id(m)]
                layer.lora_A["default"].weight.copy_(t["lora_down.weight"].to(spec["dtype"]).float())
                layer.lora_B["default"].weight.copy_(t["lora_up.weight"].to(spec["dtype"]).float())
        sd = get_peft_model_state_dict(root, adapter_name="default")
        if comp != "unet" and not hasattr(root, "text_model"):
            # transformers 5 CLIPTextModel has no 'text_model.' wrapper; every published file
            # (transformers 4) has it, and diffusers strips it again when loading.
            sd = {"text_model." + k: v for k, v in sd.items()}
        sd = {k: v.to(spec["dtype"]).contiguous() for k, v in sd.items()}
        layers[comp] = sd
        metadata[comp] = sorted_config(cfg)
    kw = {}
    if fm.name == "sd1":
        kw = dict(unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["te"],
                  unet_lora_adapter_metadata=metadata["unet"], text_encoder_lora_adapter_metadata=metadata["te"])
    else:
        kw = dict(unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["te1"],
                  text_encoder_2_lora_layers=layers["te2"], unet_lora_adapter_metadata=metadata["unet"],
                  text_encoder_lora_adapter_metadata=metadata["te1"], text_encoder_2_lora_adapter_metadata=metadata["te2"])
    fm.pipe_cls.save_lora_weights(os.path.dirname(path), weight_name=os.path.basename(path), safe_serialization=True, **kw)
    names = {}
    for m in spec["modules"]:
        names[m["path"] + "@" + m["comp"]] = PEFT_PREFIX[m["comp"]] + "." + m["path"]
    return names


def write_peft_bare(path: str, src_path: str) -> dict:
    sd = {k[len("unet.") :]: v for k, v in load_file(src_path).items() if k.startswith("unet.")}
    save_file(sd, path)
    return sd


# ----------------------------------------------------------------------------
# Patched models and outputs
# ----------------------------------------------------------------------------
@torch.no_grad()
def unet_out(fm: FamilyModels, unet) -> torch.Tensor:
    r = fm.ref
    if fm.name == "sdxl":
        size = fm.ref_json["settings"]["unet_y_size"]
        h, w = size["height"], size["width"]
        y = r["unet.y"]
        time_ids = torch.tensor([[h, w, 0, 0, h, w]] * y.shape[0], dtype=torch.float32)
        cond = {"crossattn": r["unet.context"], "text_embeds": y[:, : fam.SDXL_POOLED], "time_ids": time_ids}
        return fam.unet_forward(unet, r["unet.x"], r["unet.t"], cond)
    return unet(r["unet.x"], r["unet.t"], encoder_hidden_states=r["unet.context"]).sample


def sdxl_prompt_ids(tok) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    chunks, _ = fam.build_chunks(tok, PROMPT)
    return fam.chunk_ids(chunks, fam.EOS), fam.chunk_ids(chunks, fam.OPEN_CLIP_PAD), fam.chunk_weights(chunks)


@torch.no_grad()
def text_out(fm: FamilyModels, pipe) -> torch.Tensor:
    if fm.name == "sd1":
        return pipe.text_encoder(input_ids=fm.ref["tokens.prompt"]).last_hidden_state
    te1, te2 = pipe.text_encoder, pipe.text_encoder_2
    ids_l, ids_g, w = sdxl_prompt_ids(fm.tok)
    z_l, _ = fam.a1111_encode(ids_l, w, lambda i: (te1(input_ids=i, output_hidden_states=True).hidden_states[-2], None))
    z_g, _ = fam.a1111_encode(ids_g, w, lambda i: (te2(input_ids=i, output_hidden_states=True).hidden_states[-2], None))
    return torch.cat([z_l, z_g], dim=2)


def max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def max_rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp_min(1e-3)).max().item()


@torch.no_grad()
def hand_patched_pipe(fm: FamilyModels, patched: dict) -> object:
    """A fresh pipeline whose patched weights are replaced by the given values."""
    pipe = fm.load_pipe()
    for (comp, path), w in patched.items():
        fm.module(pipe, comp, path).weight.copy_(w)
    return pipe


@torch.no_grad()
def diffusers_fused(fm: FamilyModels, load) -> object:
    """load(pipe) loads the LoRA; then fuse the UNet at UNET_MULT and the text encoders at
    TE_MULT and drop the LoRA layers (the fused weights stay)."""
    pipe = fm.load_pipe()
    load(pipe)
    pipe.fuse_lora(components=["unet"], lora_scale=UNET_MULT)
    te_names = ["text_encoder", "text_encoder_2"] if fm.name == "sdxl" else ["text_encoder"]
    pipe.fuse_lora(components=te_names, lora_scale=TE_MULT)
    pipe.unload_lora_weights()
    for m in [pipe.unet, *fm.text_encoders(pipe).values()]:
        bad = [k for k in m.state_dict() if "lora" in k or "base_layer" in k]
        if bad:
            raise AssertionError(f"LoRA layers left after unload_lora_weights: {bad[:3]}")
    return pipe


# ----------------------------------------------------------------------------
# Wrong family: which layer names of a file the other family's name table knows
# ----------------------------------------------------------------------------
def name_table(fm: FamilyModels) -> dict:
    """Every layer name a tool may use for each weight of the family (kohya on LDM and
    diffusers paths, peft with and without prefixes), like ComfyUI's model_lora_keys_*."""
    table = {}
    for dkey, w in fm.pipe.unet.state_dict().items():
        if not dkey.endswith(".weight"):
            continue
        d = dkey[: -len(".weight")]
        l = fm.ldm_module(d)
        for alias in ("lora_unet_" + l.replace(".", "_"), "lora_unet_" + d.replace(".", "_"), "unet." + d, d):
            table[alias] = (UNET_P + l + ".weight", tuple(w.shape))
    single = fm.name == "sd1"
    for comp, te in fm.text_encoders(fm.pipe).items():
        for k, w in te.state_dict().items():
            if not k.endswith(".weight"):
                continue
            p = k[: -len(".weight")]
            if not p.startswith("text_model."):
                p = "text_model." + p
            kohya = "lora_te" if single else KOHYA_TE[comp]
            for alias in (kohya + "_" + p.replace(".", "_"), PEFT_PREFIX[comp] + "." + p):
                table[alias] = (TE_PREFIX[comp] + p + ".weight", tuple(w.shape))
    return table


LAYER_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".lora_mid.weight", ".lora_A.weight", ".lora_B.weight",
                  ".alpha", ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".lokr_w1", ".lokr_w2",
                  ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b")


def layer_names(sd: dict) -> list[str]:
    out = set()
    for k in sd:
        for s in LAYER_SUFFIXES:
            if k.endswith(s):
                out.add(k[: -len(s)])
                break
        else:
            raise KeyError(f"unknown LoRA tensor suffix: {k}")
    return sorted(out)


def wrong_family_report(sd: dict, deltas_numel: dict, other: FamilyModels) -> dict:
    table = name_table(other)
    names = layer_names(sd)
    known = [n for n in names if n in table]
    same_numel = [n for n in known if math.prod(table[n][1]) == deltas_numel.get(n, -1)]
    return {
        "layers": len(names),
        "layers_whose_name_the_other_family_knows": known,
        "of_those_with_equal_weight_numel": same_numel,
    }


# ----------------------------------------------------------------------------
def canonicalize_header(path: str) -> None:
    """safetensors (Rust) writes __metadata__ from a hash map, in a different key order each
    run; rewrite the header with sorted metadata keys so reruns are byte-identical (the
    tensors, their offsets and the data bytes are unchanged)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    new = {}
    if meta is not None:
        new["__metadata__"] = dict(sorted(meta.items()))
    new.update(header)
    text = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + blob[8 + n :])
    with safe_open(path, "pt") as f:  # still a valid file with the same metadata
        if (f.metadata() or None) != (meta or None):
            raise AssertionError(f"{path}: metadata changed while sorting")


def file_stats(path: str) -> dict:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
        keys = list(f.keys())
        dtypes = sorted({str(f.get_slice(k).get_dtype()) for k in keys})
    return {"bytes": os.path.getsize(path), "tensors": len(keys), "dtypes": dtypes, "metadata_keys": sorted(meta)}


def versions() -> dict:
    v = fam.versions()
    v["peft"] = importlib.metadata.version("peft")
    return v


def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--data", "tests/data")
    out_dir = os.path.join(args.data, "loras")
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)

    fams = {name: FamilyModels(name, args.data) for name in ("sd1", "sdxl")}
    rec = sd1.Recorder()
    meta_files = {}
    checks = {}

    # base outputs: the unpatched pipelines reproduce the family references
    for name, fm in fams.items():
        got = unet_out(fm, fm.pipe.unet)
        want = fm.ref["unet.eps" if name == "sd1" else "unet.out"]
        d = max_abs(got, want)
        if d > 1e-5:
            raise AssertionError(f"{name}: base UNet output differs from the family reference by {d}")
        checks[f"{name}_base_unet_vs_family_reference_max_abs"] = d
        if name == "sd1":
            d = max_abs(text_out(fm, fm.pipe), fm.ref["text.prompt"])
            if d > 1e-6:
                raise AssertionError(f"sd1: base text differs from text.prompt by {d}")
            checks["sd1_base_text_vs_text.prompt_max_abs"] = d

    peft_modules_unet = peft_tensors_unet = None
    for index, spec in enumerate(FILES):
        fm = fams[spec["family"]]
        other = fams["sdxl" if spec["family"] == "sd1" else "sd1"]
        stem = spec["stem"]
        path = os.path.join(out_dir, stem + ".safetensors")
        torch.manual_seed(LORA_SEED + index)

        if spec["format"] == "peft-bare":
            src = os.path.join(out_dir, spec["same_tensors_as"] + ".safetensors")
            write_peft_bare(path, src)
            spec["modules"] = [dict(m, alpha=None) for m in peft_modules_unet]
            tensors = {id(m): t for m, t in zip(spec["modules"], peft_tensors_unet)}
            names = {m["path"] + "@unet": m["path"] for m in spec["modules"]}
        else:
            tensors = {}
            for mod in spec["modules"]:
                W = fm.base_weight(mod["comp"], mod["path"])
                t = make_tensors(mod, W)
                tensors[id(mod)] = {k: v.to(spec["dtype"]).float() for k, v in t.items()}  # stored values
            if spec["format"] == "diffusers-peft":
                names = write_peft(path, fm, spec, tensors)
                if stem == "sd1-peft":
                    peft_modules_unet = [m for m in spec["modules"] if m["comp"] == "unet"]
                    peft_tensors_unet = [tensors[id(m)] for m in peft_modules_unet]
            else:
                names = write_kohya_style(path, fm, spec, tensors)

        canonicalize_header(path)
        # the file holds exactly the tensors we drew
        sd = load_file(path)
        for mod in spec["modules"]:
            lname = names[mod["path"] + "@" + mod["comp"]]
            for k, v in tensors[id(mod)].items():
                fk = f"{lname}.{k}"
                if spec["format"] in ("diffusers-peft", "peft-bare"):
                    fk = f"{lname}.{'lora_A' if k == 'lora_down.weight' else 'lora_B'}.weight"
                if fk not in sd or not torch.equal(sd[fk].float(), v) or sd[fk].dtype != spec["dtype"]:
                    raise AssertionError(f"{stem}: {fk} missing or different in the written file")

        # hand formula
        patched_hand = {}
        mod_info = []
        numel_by_layer = {}
        for mod in spec["modules"]:
            W = fm.base_weight(mod["comp"], mod["path"])
            key = fm.model_key(mod["comp"], mod["path"])
            sfw = fm.single_file_weight(key)
            if not torch.equal(sfw.reshape(W.shape), W):
                raise AssertionError(f"{key}: single file and diffusers weights differ")
            dw, scale, how = delta_and_scale(mod, tensors[id(mod)], W.shape)
            mult = multiplier(mod["comp"])
            patched_hand[(mod["comp"], mod["path"])] = (W.double() + mult * scale * dw).float()
            lname = names[mod["path"] + "@" + mod["comp"]]
            numel_by_layer[lname] = W.numel()
            mod_info.append({
                "layer": lname,
                "model_key": key,
                "component": mod["comp"],
                "diffusers_module": DIFFUSERS_COMPONENT[mod["comp"]] + "." + mod["path"],
                "weight_shape": list(W.shape),
                "algo": mod["algo"] + ("+tucker(lora_mid)" if mod.get("mid") else ""),
                "tensors": {k: list(v.shape) for k, v in tensors[id(mod)].items()},
                "rank": mod["rank"],
                "alpha": mod["alpha"],
                "scale": scale,
                "multiplier": mult,
                "delta": how,
                "delta_rms_over_weight_rms": (mult * scale * dw).pow(2).mean().sqrt().item() / W.double().pow(2).mean().sqrt().item(),
            })

        # library references where a library can load the file
        lib = None
        lib_how = None
        if spec["format"] in ("kohya-lora", "diffusers-peft"):
            lib = diffusers_fused(fm, lambda p: p.load_lora_weights(out_dir, weight_name=stem + ".safetensors", adapter_name="x"))
            lib_how = "pipe.load_lora_weights(file); fuse_lora(components=['unet'], lora_scale=0.6); fuse_lora(components=text encoders, lora_scale=0.8); unload_lora_weights()"
        elif spec["format"] == "peft-bare":
            def load_bare(p):
                p.unet.load_lora_adapter(load_file(path), prefix=None, adapter_name="x")
            lib = diffusers_fused(fm, load_bare)
            lib_how = "pipe.unet.load_lora_adapter(state_dict, prefix=None) (pipe.load_lora_weights skips keys without 'unet.'); fuse_lora(components=['unet'], lora_scale=0.6); unload_lora_weights()"
        elif spec["format"] == "lycoris-locon":
            # diffusers refuses lora_mid (leftover keys); load the rest to cross-check 3x3/1x1 convs and no-alpha
            part = {k: v for k, v in load_file(path).items() if ".lora_mid." not in k and "down_blocks_0_resnets_1_conv1" not in k}
            tmp = tempfile.mkdtemp()
            try:
                save_file(part, os.path.join(tmp, "part.safetensors"))
                lib = diffusers_fused(fm, lambda p: p.load_lora_weights(tmp, weight_name="part.safetensors", adapter_name="x"))
            finally:
                shutil.rmtree(tmp)
            lib_how = None

        lib_check = {}
        patched_ref = dict(patched_hand)
        lib_is_ref = lib is not None and spec["format"] != "lycoris-locon"
        if lib is not None:
            for mod in spec["modules"]:
                kp = (mod["comp"], mod["path"])
                if spec["format"] == "lycoris-locon" and mod.get("mid"):
                    continue
                key = fm.model_key(*kp)
                got = fm.module(lib, mod["comp"], mod["path"]).weight.detach().clone()
                d = max_abs(got, patched_hand[kp])
                if lib_is_ref:
                    lib_check[key] = d
                    patched_ref[kp] = got
                else:
                    # cross-check only: record what diffusers did to each layer
                    W = fm.base_weight(*kp).double()
                    step = patched_hand[kp].double() - W
                    eff = ((got.double() - W) * step).sum().item() / (step * step).sum().item()
                    info = next(i for i in mod_info if i["model_key"] == key)
                    lib_check[key] = {"max_abs_diff_to_hand": d, "matches": d <= TOL_HAND,
                                      "diffusers_effective_scale": eff * info["scale"], "hand_scale": info["scale"]}
            if lib_is_ref:
                worst = max(lib_check.values())
                checks[f"{stem}: diffusers fused vs hand formula, max |diff| over patched weights"] = worst
                if worst > TOL_HAND:
                    bad = {k: v for k, v in lib_check.items() if v > TOL_HAND}
                    raise AssertionError(f"{stem}: diffusers and the hand formula disagree: {bad}")
                # every other weight unchanged
                for comp_model, base_model in ((lib.unet, fm.pipe.unet), *zip(fm.text_encoders(lib).values(), fm.text_encoders(fm.pipe).values())):
                    patched_names = set()
                    for mod in spec["modules"]:
                        patched_names.add(mod["path"] + ".weight")
                        patched_names.add(hf_path(comp_model, mod["path"]) + ".weight")
                    base_sd = base_model.state_dict()
                    for k, v in comp_model.state_dict().items():
                        if k in patched_names:
                            continue
                        if not torch.equal(v, base_sd[k]):
                            raise AssertionError(f"{stem}: diffusers changed {k}, which the file does not patch")
            else:
                checks[f"{stem}: diffusers (file without the lora_mid module) vs hand formula, per layer"] = lib_check

        # reference tensors
        for mod in spec["modules"]:
            kp = (mod["comp"], mod["path"])
            key = fm.model_key(*kp)
            src = "diffusers fused" if lib_is_ref else "hand formula"
            info = next(i for i in mod_info if i["model_key"] == key)
            rec.put(f"{stem}/{key}", patched_ref[kp],
                    f"{key} patched: W + {info['multiplier']} * {info['scale']} * ΔW, ΔW = {info['delta']} ({src})")
            info["reference_source"] = src
        hand_pipe = hand_patched_pipe(fm, patched_ref)
        out_pipe = lib if lib_is_ref else hand_pipe
        u = unet_out(fm, out_pipe.unet)
        tx = text_out(fm, out_pipe)
        if out_pipe is not hand_pipe:
            checks[f"{stem}: unet.out diffusers vs hand-patched model, max |diff|"] = max_abs(u, unet_out(fm, hand_pipe.unet))
            checks[f"{stem}: text diffusers vs hand-patched model, max |diff|"] = max_abs(tx, text_out(fm, hand_pipe))
        base_u = fm.ref["unet.eps" if fm.name == "sd1" else "unet.out"]
        has_unet = any(m["comp"] == "unet" for m in spec["modules"])
        if has_unet and max_abs(u, base_u) < 1e-3:
            raise AssertionError(f"{stem}: the LoRA hardly changes the UNet output ({max_abs(u, base_u)})")
        has_te = any(m["comp"] != "unet" for m in spec["modules"])
        base_tx = fm.ref["text.prompt"] if fm.name == "sd1" else text_out(fm, fm.pipe)
        if has_te and max_abs(tx, base_tx) < 1e-3:
            raise AssertionError(f"{stem}: the LoRA hardly changes the text conditioning ({max_abs(tx, base_tx)})")
        if not has_te and max_abs(tx, base_tx) != 0.0:
            raise AssertionError(f"{stem}: no text-encoder layers, yet the text conditioning changed")
        ukey = "unet.eps" if fm.name == "sd1" else "unet.out"
        rec.put(f"{stem}/unet.out", u, f"patched UNet on {fm.name}-tiny reference inputs (unet.x, unet.t, unet.context"
                + (", unet.y" if fm.name == "sdxl" else "") + f"); unpatched value: {fm.name}-tiny {ukey}")
        text_desc = ("patched text encoder: last_hidden_state (final LN) of tokens.prompt ('a photo of a cat') [1,77,32]"
                     if fm.name == "sd1" else
                     "patched text encoders: cat(CLIP-L hidden_states[-2], bigG hidden_states[-2]) of 'a photo of a cat' "
                     "(A1111 chunk, CLIP-L EOS padding, bigG 0 padding after the first EOS) [1,77,32]")
        rec.put(f"{stem}/text", tx, text_desc)

        # wrong family
        wf = wrong_family_report(sd, numel_by_layer, other)

        meta_files[stem] = {
            "file": stem + ".safetensors",
            "family": spec["family"],
            "format": spec["format"],
            "written_as": spec["tool"],
            "dtype": str(spec["dtype"]).replace("torch.", ""),
            **file_stats(path),
            "safetensors_metadata": {k: v for k, v in sorted((safe_open(path, "pt").metadata() or {}).items()) if k != "lora_adapter_metadata"},
            "multipliers": {"te": TE_MULT, "unet": UNET_MULT},
            "modules": mod_info,
            "reference_from": lib_how if lib_how else "hand formula (diffusers cannot load this format; see checks for what it does with the loadable part)",
            "other_family": {"family": other.name, **wf},
        }
        if spec["format"] == "diffusers-peft":
            with safe_open(path, "pt") as f:
                m = json.loads(f.metadata()["lora_adapter_metadata"])
            meta_files[stem]["lora_adapter_metadata"] = {
                comp: {"r": m[f"{comp}.r"], "lora_alpha": m[f"{comp}.lora_alpha"], "target_modules": m[f"{comp}.target_modules"]}
                for comp in sorted({k.split(".", 1)[0] for k in m})
            }
        if spec["format"] == "peft-bare":
            meta_files[stem]["same_tensors_as"] = spec["same_tensors_as"]
        if spec["format"] == "lycoris-locon":
            meta_files[stem]["diffusers"] = "load_lora_weights raises ValueError on the lora_mid key ('keys have not been correctly renamed'); the other modules load and match"
        print(f"{stem}: {meta_files[stem]['bytes']} bytes, {len(spec['modules'])} layers, "
              f"{'diffusers' if lib_is_ref else 'hand'} reference; other family knows "
              f"{len(wf['layers_whose_name_the_other_family_knows'])}/{wf['layers']} names")

    # diffusers refusals, recorded
    refusals = {}
    for stem in ("sd1-locon", "sd1-loha", "sd1-lokr"):
        fm = fams["sd1"]
        p = fm.load_pipe()
        try:
            p.load_lora_weights(out_dir, weight_name=stem + ".safetensors", adapter_name="x")
            refusals[stem] = "loaded (unexpected)"
        except Exception as e:  # noqa: BLE001
            refusals[stem] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    checks["diffusers_load_lora_weights_on_lycoris_files"] = refusals

    # base weights (restore-to-base checks): one UNet linear, one UNet conv / second UNet layer, one text layer
    for name, keys in BASE_KEYS.items():
        fm = fams[name]
        for key in keys:
            if not any(k == f"{s}/{key}" for k in rec.R for s in meta_files):
                raise AssertionError(f"base key {key} is patched by no file")
            rec.put(f"base/{name}/{key}", fm.single_file_weight(key),
                    f"unpatched {key} of {name}-tiny (float32" + (", fp16 values" if name == "sdxl" else "") + ")")
    # unpatched SDXL text for the prompt (the SD1 one is sd1-tiny text.prompt)
    fm = fams["sdxl"]
    rec.put("base/sdxl/text", text_out(fm, fm.pipe), "unpatched SDXL text for 'a photo of a cat' (same rules as <stem>/text)")
    ids_l, ids_g, _ = sdxl_prompt_ids(fm.tok)
    rec.put("base/sdxl/tokens.clip_l", ids_l, "int64 [1,77] CLIP-L ids of 'a photo of a cat' (BOS, tokens, EOS padding)")
    rec.put("base/sdxl/tokens.open_clip", ids_g, "int64 [1,77] bigG ids: everything after the first EOS = 0")

    sd1.check_finite(rec)
    save_file(rec.R, os.path.join(out_dir, "reference.safetensors"))

    meta = {
        "generator": "scripts/make_lora_reference.py",
        "versions": versions(),
        "models": {"sd1": "tests/data/sd1-tiny (fp32)", "sdxl": "tests/data/sdxl-tiny (fp16 weights, computed in fp32)"},
        "multipliers": {
            "te": TE_MULT, "unet": UNET_MULT,
            "meaning": "A1111 <lora:NAME:0.8:0.6> (extra_networks_lora.py: te multiplier first, unet second, unet defaults to te); "
            "ComfyUI LoraLoader strength_clip = 0.8, strength_model = 0.6. patched W = W + multiplier * scale * ΔW",
        },
        "reference_names": "<file stem>/<model key> = patched weight (float32) under hiresfix's model key; <file stem>/unet.out; "
        "<file stem>/text; base/<family>/<model key> = unpatched weight; base/sdxl/text, base/sdxl/tokens.*",
        "model_keys": {
            "unet": "LDM single-file key: model.diffusion_model.<LDM path>.weight (diffusers paths mapped with make_sd1_reference.unet_module_map)",
            "sd1 text encoder": "cond_stage_model.transformer.text_model.encoder.layers.N.<self_attn.q_proj|...|mlp.fc1>.weight",
            "sdxl CLIP-L": "conditioner.embedders.0.transformer.text_model.encoder.layers.N.*.weight",
            "sdxl bigG": "conditioner.embedders.1.model.text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,mlp.fc1,mlp.fc2}.weight "
            "(hiresfix's names: the single file's attn.in_proj_weight split in q/k/v, attn.out_proj, mlp.c_fc, mlp.c_proj)",
            "conv weights": "patched 1x1 conv weights keep their 4-D shape [out,in,1,1] (SD 1.x proj_in/proj_out, conv_shortcut)",
        },
        "inputs": {
            "unet": "sd1: unet.x/unet.t/unet.context of tests/data/sd1-tiny/reference.safetensors (unpatched output unet.eps); "
            "sdxl: unet.x/unet.t/unet.context/unet.y of tests/data/sdxl-tiny/reference.safetensors with time_ids [h,w,0,0,h,w] "
            "for the unet_y_size of its reference.json (unpatched output unet.out). The context is the family reference's "
            "(made with the unpatched text encoders), so <stem>/unet.out depends on the UNet patches only.",
            "text": "sd1: tokens.prompt of sd1-tiny (clip_skip 1: final-LN last hidden state); sdxl: base/sdxl/tokens.*, "
            "penultimate hidden states of both encoders concatenated (no final LN), A1111 Original emphasis with weights 1",
        },
        "conventions": CONVENTIONS,
        "tools_disagree": DISAGREEMENTS,
        "wrong_family": {
            "rule": "A LoRA made for another family must be refused with a one-line error, not partly applied: sdxl-kohya "
            "(and sdxl-peft) on sd1-tiny, sd1-kohya (and every sd1-* file) on sdxl-tiny.",
            "cases": [
                {"lora": "sdxl-kohya.safetensors", "model": "tests/data/sd1-tiny", "expect": "refused"},
                {"lora": "sd1-kohya.safetensors", "model": "tests/data/sdxl-tiny", "expect": "refused"},
                {"lora": "sdxl-peft.safetensors", "model": "tests/data/sd1-tiny", "expect": "refused"},
                {"lora": "sd1-peft.safetensors", "model": "tests/data/sdxl-tiny", "expect": "refused"},
            ],
            "note": "Names alone do not always decide: see files.*.other_family for the layer names the other family's full "
            "name table (kohya LDM + diffusers underscores, peft with/without prefix, lora_te/lora_te1/lora_te2) also knows, "
            "and which of those even have a weight of the same element count there (the tiny models share widths). Files "
            "without safetensors metadata exist (kohya --no_metadata, peft-bare), so the refusal cannot rest on "
            "ss_base_model_version alone: e.g. text-encoder prefixes (lora_te_ vs lora_te1_/lora_te2_, text_encoder_2.), "
            "unknown names, or shape mismatches.",
        },
        "checks": checks,
        "files": meta_files,
        "tensors": sd1.tensors_json(rec),
    }
    sd1.write_json(os.path.join(out_dir, "reference.json"), meta)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(README)

    total = 0
    for nm in sorted(os.listdir(out_dir)):
        size = os.path.getsize(os.path.join(out_dir, nm))
        total += size
        print(f"  {size:>9}  {nm}")
    print(f"total {total} bytes ({total / 1e6:.2f} MB)")


BASE_KEYS = {
    "sd1": [
        UNET_P + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        UNET_P + "input_blocks.1.0.in_layers.2.weight",
        TE_PREFIX["te"] + "text_model.encoder.layers.0.self_attn.q_proj.weight",
    ],
    "sdxl": [
        UNET_P + "input_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
        TE_PREFIX["te1"] + "text_model.encoder.layers.0.self_attn.q_proj.weight",
        TE_PREFIX["te2"] + "text_model.encoder.layers.0.self_attn.k_proj.weight",
    ],
}

CONVENTIONS = {
    "kohya_names": "sd-scripts networks/lora.py LoRANetwork.create_modules: lora_name = prefix + '.' + module path, '.' -> '_'; "
    "prefixes lora_unet / lora_te (one text encoder) / lora_te1 + lora_te2 (SDXL); UNet targets Transformer2DModel "
    "(+ ResnetBlock2D, Downsample2D, Upsample2D with conv_dim); text targets CLIPAttention, CLIPMLP. SD 1.x UNet paths are "
    "diffusers paths (library/original_unet.py), SDXL paths LDM/sgm paths (library/sdxl_original_unet.py: input_blocks.N.M, "
    "in_layers.2, emb_layers.1, out_layers.3, skip_connection, op). Text-encoder paths are transformers' "
    "(text_model.encoder.layers.N.self_attn.q_proj, mlp.fc1); ComfyUI comfy/lora.py model_lora_keys_clip lists the same.",
    "kohya_tensors": "<name>.lora_down.weight [r,in] or conv [r,in,kh,kw] (same kernel/stride/padding as the layer), "
    "<name>.lora_up.weight [out,r] or [out,r,1,1], <name>.alpha 0-d (saved in the file dtype: fp16 in fp16 files)",
    "lora_scale": "alpha / rank with rank = lora_down.shape[0]; no alpha key -> scale 1 (kohya create_network_from_weights "
    "sets alpha = dim; A1111 NetworkModule.calc_scale; ComfyUI weight_adapter/lora.py: alpha / mat2.shape[0], 1.0 when None); "
    "alpha 0 means rank in kohya/LyCORIS (no file here has it)",
    "lora_delta": "linear: up @ down; conv: up.flatten(1) @ down.flatten(1) reshaped to [out,in,kh,kw] (kohya merge_to: "
    "conv2d(down.permute(1,0,2,3), up).permute(1,0,2,3), the same numbers)",
    "locon_tucker": "LyCORIS LoConModule use_tucker: lora_down [r,in,1,1], lora_mid [r,r,kh,kw], lora_up [out,r,1,1]; "
    "ΔW = einsum('i j k l, p i, j r -> p r k l', mid, up, down) (LyCORIS make_weight; ComfyUI lora.py and A1111 "
    "lyco_helpers.rebuild_cp_decomposition give the same); scale alpha / lora_down.shape[0]",
    "loha": "LyCORIS LohaModule: hada_w1_a [out,r], hada_w1_b [r,in*kh*kw], hada_w2_a, hada_w2_b; ΔW = (w1_a @ w1_b) * "
    "(w2_a @ w2_b) reshaped to the weight; scale alpha / hada_w1_b.shape[0] (ComfyUI weight_adapter/loha.py, A1111 network_hada.py)",
    "lokr": "LyCORIS LokrModule: lokr_w1 [out_l,in_m] (or lokr_w1_a @ lokr_w1_b), lokr_w2 [out_k,in_n(,kh,kw)] (or "
    "lokr_w2_a [out_k,r] @ lokr_w2_b [r,in_n*kh*kw]); ΔW = kron(w1, w2) (w1 gets two trailing 1-dims when w2 is 4-D) "
    "reshaped to the weight. Scale: both w1 and w2 full -> 1 and the file's alpha is ignored (LyCORIS sets alpha = lora_dim "
    "then; ComfyUI weight_adapter/lokr.py dim None -> 1.0; A1111 network_lokr.py dim None -> 1.0); otherwise alpha / dim with "
    "dim = lokr_w2_b.shape[0] when w2 is decomposed, else lokr_w1_b.shape[0] (ComfyUI and A1111 take w2's when both are). "
    "Factor split: LyCORIS factorization(dim, -1).",
    "peft_names": "diffusers StableDiffusionPipeline / StableDiffusionXLPipeline.save_lora_weights: unet.<diffusers module path>"
    ".lora_A.weight [r,in(,1,1)] / .lora_B.weight [out,r(,1,1)], text_encoder.<transformers path> (text_model. included, "
    "as transformers-4 models name it; diffusers strips it for transformers-5 CLIPTextModel), text_encoder_2.<path> (SDXL)",
    "peft_scale": "LoRA scale = lora_alpha / r from the safetensors metadata key 'lora_adapter_metadata' (JSON, keys "
    "'<component>.r', '<component>.lora_alpha', '<component>.target_modules', ... = LoraConfig.to_dict() per component, "
    "written by save_lora_weights(unet_lora_adapter_metadata=..., text_encoder_lora_adapter_metadata=...)); without it "
    "(and without per-layer '.alpha' keys) diffusers / peft / ComfyUI / A1111 use scale 1",
    "peft_bare": "ComfyUI comfy/lora.py model_lora_keys_unet accepts diffusers paths with prefix '' or 'unet.'; "
    "diffusers pipe.load_lora_weights ignores un-prefixed keys, unet.load_lora_adapter(sd, prefix=None) loads them",
    "multiplier": "A1111 NetworkModule.multiplier: te_multiplier for text-encoder layers, unet_multiplier otherwise; "
    "patched W = W + multiplier * scale * ΔW (finalize_updown: updown * calc_scale() * multiplier())",
    "reference_precision": "ΔW and W + m*s*ΔW computed in float64 from the stored (fp32 / fp16-rounded) LoRA values and "
    "cast to float32 for the hand formula; kohya / peft references are diffusers' fused float32 weights "
    "(max |diff| to the hand formula in checks, <= 1e-6)",
}

DISAGREEMENTS = [
    "diffusers 0.42 + peft 0.21, kohya/LyCORIS layer WITHOUT an alpha key: _convert_non_diffusers_lora_to_diffusers "
    "collects no alpha for it and get_peft_kwargs gives it the file's most common alpha (sd1-locon: "
    "lora_unet_down_blocks_0_attentions_1_transformer_blocks_0_attn2_to_v, rank 4, no alpha -> diffusers scale 1/4, "
    "kohya / LyCORIS / A1111 / ComfyUI scale 1; see checks). The reference follows the four tools.",
    "diffusers 0.42, kohya text-encoder LoRA with q/k/v_proj layers but no out_proj layer: convert_state_dict_to_peft "
    "infers the 'DIFFUSERS' layout (it looks for 'to_out_lora' to pick 'DIFFUSERS_OLD'), whose table has no "
    "to_q/to_k/to_v_lora entries, so those layers are silently not applied (sd1-locon's "
    "lora_te_text_model_encoder_layers_1_self_attn_v_proj: diffusers scale 0; see checks). sdxl-kohya's CLIP-L part "
    "has an out_proj layer for that reason, so diffusers can be its reference.",
    "diffusers 0.42 cannot load LyCORIS LoHa / LoKr files or LoCon with lora_mid: its kohya converter "
    "(_convert_non_diffusers_lora_to_diffusers) leaves those keys and raises ValueError (see checks); ComfyUI, A1111 "
    "and LyCORIS load all three.",
    "kohya SDXL names are LDM paths; diffusers maps them back with _maybe_map_sgm_blocks_to_diffusers using the "
    "model's layers_per_block (upsampler slots assume an attention block in every up level), ComfyUI and A1111 "
    "look the LDM names up directly.",
    "alpha 0: kohya / LyCORIS treat it as 'alpha = rank' (scale 1), ComfyUI divides it (scale 0). None of these files has alpha 0.",
    "LoKr with w1 AND w2 decomposed: ComfyUI and A1111 divide by lokr_w2_b.shape[0] (the last one set), LyCORIS by "
    "lora_dim = lokr_w1_a.shape[1]; equal for files LyCORIS writes (one rank). Not in these files.",
    "A1111 network_lokr.py (version read) sets dim with `w1b.shape[0] if self.w1b else ...` / `w2b.shape[0] if self.w2b "
    "else ...`, i.e. alpha / lokr_w2_b.shape[0] when w2 is decomposed; the truth test of a multi-element tensor would raise "
    "in torch, so A1111 may fail on such files where ComfyUI / LyCORIS work (not verified by running A1111).",
    "LyCORIS LohaModule.get_diff_weight multiplies by the scale twice (get_weight already applies gamma = scale) in "
    "the stored version read; its forward, merging in ComfyUI and A1111 apply alpha/rank once, as here.",
    "transformers 5 saves CLIPTextModel without 'text_model.'; a peft text-encoder file written today would say "
    "text_encoder.encoder.layers..., all published ones say text_encoder.text_model.encoder.layers...; diffusers reads both.",
]

README = """# loras: tiny LoRA files in every common format + reference values

For the committed tiny models `../sd1-tiny` (fp32) and `../sdxl-tiny` (fp16). Each file patches a handful of
layers (rank 2-4) with random but clearly non-zero values:

- `sd1-kohya.safetensors` — kohya sd-scripts LoRA (`lora_unet_<diffusers path>`, `lora_te_<transformers path>`,
  `.lora_down.weight` / `.lora_up.weight` / `.alpha`): attention q/k/v/out, cross-attention, ff, 1x1-conv proj_in/out, text encoder.
- `sd1-locon.safetensors` — LyCORIS LoCon: 3x3 resnet / down- / upsampler convs, a Tucker module (`lora_mid`),
  a 1x1 shortcut, a time-embedding linear, one module without alpha (scale 1).
- `sd1-loha.safetensors` — LyCORIS LoHa (`hada_w1_a/b`, `hada_w2_a/b`, `alpha`) on a linear, a 3x3 conv, a text layer.
- `sd1-lokr.safetensors` — LyCORIS LoKr: full `lokr_w1`/`lokr_w2` (scale 1, alpha ignored), and `lokr_w1` +
  `lokr_w2_a`/`lokr_w2_b` + alpha on a 3x3 conv and a text layer.
- `sd1-peft.safetensors` — diffusers/peft (`unet.…lora_A.weight`, `text_encoder.…`), written by
  `StableDiffusionPipeline.save_lora_weights`, lora_alpha/r in the `lora_adapter_metadata` safetensors metadata.
- `sd1-peft-bare.safetensors` — the UNet part of sd1-peft without `unet.` and without metadata (scale 1).
- `sdxl-kohya.safetensors` — kohya SDXL (`lora_unet_<LDM path>`, `lora_te1_`, `lora_te2_`), fp16.
- `sdxl-peft.safetensors` — diffusers SDXL (`unet.`, `text_encoder.`, `text_encoder_2.`), fp16, with metadata.
- `reference.safetensors` + `reference.json` — for multipliers te 0.8 / unet 0.6 (A1111 `<lora:name:0.8:0.6>`):
  every patched weight under its single-file model key (`<stem>/<model key>`), the patched UNet output
  (`<stem>/unet.out`) and text-encoder output (`<stem>/text`), unpatched base weights (`base/...`); reference.json
  lists every layer (name, model key, rank, alpha, scale), the conventions with their sources, checks against
  diffusers, and the wrong-family cases.

Regenerate (offline, deterministic): `python3 scripts/make_lora_reference.py` (needs peft besides the packages
of the other generators).
"""


if __name__ == "__main__":
    main()
