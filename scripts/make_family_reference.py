#!/usr/bin/env python3
"""Build tiny random SD 2.x (eps and v) and SDXL-base models and record reference outputs.

    python3 scripts/make_family_reference.py [--data tests/data] [--bpe PATH]

Writes, under --data:
  sd2-tiny/    SD 2.x, epsilon prediction
  sd2v-tiny/   SD 2.x, v-prediction (same weights as sd2-tiny; its diffusers/ folder links
               text_encoder, tokenizer, unet and vae to ../../sd2-tiny/diffusers/)
  sdxl-tiny/   SDXL base
  sd1-tiny/long_prompt.safetensors + long_prompt.json
               long-prompt references for the committed sd1-tiny model (nothing else in
               sd1-tiny is touched; its diffusers/ folder is only read)

Each family folder holds
  diffusers/               a normal diffusers pipeline folder (fp16 weights)
  <name>.safetensors       the same weights as one original-LDM (CompVis/SGM/A1111) checkpoint (fp16)
  reference.safetensors    CPU fp32 reference tensors
  reference.json           settings, conventions, scalars and a description of every tensor
  README.md

The prompt handling re-implements AUTOMATIC1111's algorithms (modules/prompt_parser.py
parse_prompt_attention, modules/sd_hijack_clip.py chunking with comma backtracking,
modules/sd_emphasis.py "Original" emphasis, modules/sd_models_xl.py SDXL conditioning);
the sampling follows make_sd1_reference.py (k-diffusion Discrete*DDPMDenoiser, Euler,
A1111 noise and denoise slicing).  Every parameter is rounded to fp16 right after
randomising, so the fp32 references use exactly the stored values.

Everything runs on CPU in float32, offline, and is deterministic (reruns give
byte-identical files).  Needs torch, diffusers, transformers, k-diffusion, open_clip,
safetensors.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Importing make_sd1_reference sets the offline environment (HF_HUB_OFFLINE, ...) and quiets
# diffusers/transformers logging, so it comes before every Hugging Face import.  It also
# holds the helpers and settings both scripts share (LDM key maps, sampling, reference files).
import make_sd1_reference as sd1  # noqa: E402
from make_sd1_reference import (  # noqa: E402  settings shared with sd1-tiny (same sampling setup)
    BETA_END,
    BETA_START,
    CFG,
    DENOISE,
    MAX_LEN,
    NUM_TRAIN_T,
    SEED,
    SEED_UNET_X,
    SEED_VAE_IMAGE,
    SEED_VAE_LATENT,
    STEPS1,
    STEPS2,
    UNET_P,
    UNET_T,
    VAE_FACTOR,
    VAE_P,
)
from make_sd1_reference import (  # noqa: E402  shared helpers
    Recorder,
    check_finite,
    hires_run,
    model_sd,
    put_run,
    tensors_json,
    unet_inputs,
    write_json,
)
import clip_vocab  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders import single_file_utils as sfu  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)
import k_diffusion  # noqa: E402
import k_diffusion.external  # noqa: E402
import open_clip  # noqa: E402
import open_clip.tokenizer  # noqa: E402
import open_clip.transformer  # noqa: E402

# ----------------------------------------------------------------------------
# Settings (shared by all families)
# ----------------------------------------------------------------------------
LONG = (
    r"a highly detailed ((masterpiece)) painting of an old lighthouse on a rocky (coast:1.3), "
    r"[blurry] waves crashing under a stormy sky, seagulls flying over the dark water, "
    r"warm light glowing from the tall window, a small red boat tied to the wooden pier, "
    r"\(oil on canvas\), dramatic clouds, golden hour, soft rim lighting, intricate brush strokes, "
    r"cinematic composition, volumetric fog rolling in from the sea, (distant mountains:0.8) "
    r"fading into the haze, wet stones reflecting the lantern glow BREAK (night scene:1.1), stars"
)
NEGATIVE = "lowres, (blurry:1.2), watermark"
EXPECTED_LONG_CHUNK_TOKENS = [69, 22, 4]  # prompt tokens per chunk (without BOS/EOS/padding)
EXPECTED_NEGATIVE_CHUNK_TOKENS = [7]

BOS, EOS, COMMA = 49406, 49407, 267  # CLIP BPE: <|startoftext|>, <|endoftext|>, ",</w>"
CHUNK_LEN = 75  # A1111 TextConditionalModel.chunk_length
COMMA_BACKTRACK = 20  # A1111 opts.comma_padding_backtrack default
OPEN_CLIP_PAD = 0  # A1111 FrozenOpenCLIPEmbedder*WithCustomWords.id_pad ("!" in the HF tokenizers)

# SEED, CFG, STEPS1/2, DENOISE, UNET_T, the probe seeds, the beta schedule, MAX_LEN and
# VAE_FACTOR are make_sd1_reference's (imported above).
TEXT_HIDDEN, TEXT_HEADS, TEXT_INTER = 16, 1, 32
SD2_TE_LAYERS = 2  # diffusers text_encoder layers; the LDM file carries one more (penultimate rule)
SD2_SEED_CANDIDATES = [2, 102, 202, 302, 402]  # re-seed until the eps model probes "eps"
SDXL_SEED = 3
SD2_SCALING, SDXL_SCALING = 0.18215, 0.13025
SDXL_TIME_DIM = 32  # addition_time_embed_dim (256 in the real model)
SDXL_POOLED = 16  # bigG projection_dim

SIZES = {
    "sd2": {"width1": 32, "height1": 32, "width2": 64, "height2": 64},
    "sdxl": {"width1": 48, "height1": 32, "width2": 96, "height2": 64},
}
VAE_CHANNELS = (32, 32)  # block_out_channels of both families' VAE (latent factor 2)


# ----------------------------------------------------------------------------
# A1111 prompt handling (own implementation of the algorithms in
# modules/prompt_parser.py, modules/sd_hijack_clip.py, modules/sd_emphasis.py)
# ----------------------------------------------------------------------------
RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """[[fragment, weight], ...]; a BREAK is the pair ["BREAK", -1]."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for i in range(start, len(res)):
            res[i][1] *= factor

    for m in RE_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            scale_from(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale_from(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale_from(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(RE_BREAK.split(piece)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:  # unbalanced brackets still apply
        scale_from(start, 1.1)
    for start in square_open:
        scale_from(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    i = 0  # merge neighbours with equal weight
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


_OPEN_CLIP_TOKENIZER = None


def tokenize_fragments(tok: CLIPTokenizer, texts: list[str]) -> list[list[int]]:
    """HF CLIPTokenizer per fragment (no BOS/EOS, no truncation), cross-checked against
    OpenCLIP's SimpleTokenizer (which A1111 uses for SD2 / SDXL-bigG)."""
    global _OPEN_CLIP_TOKENIZER
    ids = tok(texts, truncation=False, add_special_tokens=False)["input_ids"]
    if _OPEN_CLIP_TOKENIZER is None:
        _OPEN_CLIP_TOKENIZER = open_clip.tokenizer.SimpleTokenizer()
    for text, got in zip(texts, ids):
        if text == "BREAK":
            continue
        want = _OPEN_CLIP_TOKENIZER.encode(text)
        if list(got) != list(want):
            raise AssertionError(f"HF and OpenCLIP tokenizers disagree on {text!r}: {got} vs {want}")
    return [list(x) for x in ids]


def build_chunks(tok: CLIPTokenizer, text: str):
    """A1111 TextConditionalModel.tokenize_line: 75-token chunks with comma backtracking
    and BREAK; each chunk is BOS + 75 (tokens, EOS padding) + EOS, weights 1.0 outside the
    prompt tokens.  Returns (chunks, notes): chunks = [(ids[77], weights[77], n_prompt_tokens)]."""
    parsed = parse_prompt_attention(text)
    tokenized = tokenize_fragments(tok, [t for t, _ in parsed])
    chunks = []
    notes = []
    cur_t: list[int] = []
    cur_w: list[float] = []
    last_comma = -1

    def close(reason: str) -> None:
        nonlocal cur_t, cur_w, last_comma
        n = len(cur_t)
        pad = CHUNK_LEN - n
        chunks.append(([BOS] + cur_t + [EOS] * pad + [EOS], [1.0] + cur_w + [1.0] * pad + [1.0], n))
        notes.append(reason)
        cur_t, cur_w, last_comma = [], [], -1

    for ids, (frag, weight) in zip(tokenized, parsed):
        if frag == "BREAK" and weight == -1:
            close("BREAK")
            continue
        for token in ids:
            if token == COMMA:
                last_comma = len(cur_t)
            elif (
                COMMA_BACKTRACK != 0
                and len(cur_t) == CHUNK_LEN
                and last_comma != -1
                and len(cur_t) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                moved_t, moved_w = cur_t[cut:], cur_w[cut:]
                cur_t, cur_w = cur_t[:cut], cur_w[:cut]
                close(
                    f"comma backtrack: the {len(moved_t)} tokens after the comma at prompt-token index {last_comma} "
                    f"(0-based, BOS not counted) moved to the next chunk"
                )
                cur_t, cur_w = moved_t, moved_w
            if len(cur_t) == CHUNK_LEN:
                close("full (75 tokens)")
            cur_t.append(token)
            cur_w.append(weight)
    if cur_t or not chunks:
        close("end of prompt")
    return chunks, notes


def chunk_ids(chunks, pad_id: int) -> torch.Tensor:
    """int64 [k, 77]; for OpenCLIP encoders everything after the first EOS becomes pad_id
    (A1111 process_tokens when id_end != id_pad)."""
    rows = []
    for ids, _, _ in chunks:
        ids = list(ids)
        if pad_id != EOS:
            first = ids.index(EOS)
            ids[first + 1 :] = [pad_id] * (len(ids) - first - 1)
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.int64)


def chunk_weights(chunks) -> torch.Tensor:
    return torch.asarray([w for _, w, _ in chunks])  # python floats -> float32, as A1111


def emphasis_original(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111 EmphasisOriginal.after_transformers for one chunk: z [1,77,C], weights [1,77]."""
    original_mean = z.mean()
    z = z * weights.reshape(weights.shape + (1,)).expand(z.shape)
    new_mean = z.mean()
    return z * (original_mean / new_mean)


@torch.no_grad()
def a1111_encode(ids: torch.Tensor, weights: torch.Tensor, encode):
    """Per chunk: encode -> (z, pooled); emphasis on z; chunks concatenated along tokens.
    Returns (z [1, 77k, C], pooled of the FIRST chunk (not emphasised) or None)."""
    zs, pooled = [], []
    for i in range(ids.shape[0]):
        z, p = encode(ids[i : i + 1])
        zs.append(emphasis_original(z, weights[i : i + 1]))
        pooled.append(p)
    return torch.hstack(zs), pooled[0]


def chunk_summary(chunks, notes) -> list[dict]:
    return [{"prompt_tokens": n, "closed_by": why} for (_, _, n), why in zip(chunks, notes)]


# ----------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------
def clip_config(layers: int, act: str, pad_id: int) -> CLIPTextConfig:
    return sd1.clip_text_config(TEXT_HIDDEN, TEXT_INTER, layers, TEXT_HEADS, act, pad_id, projection_dim=SDXL_POOLED)


@torch.no_grad()
def randomize_fp16_(model: nn.Module) -> None:
    """make_sd1_reference.randomize_, then round every parameter to fp16 (the stored precision)."""
    sd1.randomize_(model)
    for p in model.parameters():
        p.copy_(p.half().float())
    model.eval()


@torch.no_grad()
def random_fp16(*shape, scale: float) -> torch.Tensor:
    return (torch.randn(*shape) * scale).half().float()


def scaled_linear_scheduler_kwargs(prediction_type: str) -> dict:
    return dict(**sd1.SCHEDULE_KWARGS, prediction_type=prediction_type, set_alpha_to_one=False, steps_offset=1)


@torch.no_grad()
def build_sd2(seed: int) -> dict:
    torch.manual_seed(seed)
    # The "LDM" OpenCLIP-H text tower has one resblock more than the diffusers text encoder
    # (SD2 conditions on the penultimate layer: 24 blocks in the file, 23 in diffusers).
    te_full = CLIPTextModel(clip_config(SD2_TE_LAYERS + 1, "gelu", OPEN_CLIP_PAD))
    unet = sd1.tiny_unet(
        block_out_channels=(64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=(1, 1),  # diffusers' name for the head COUNT: 64 channels / 64 per head
        use_linear_projection=True,
    )
    vae = sd1.make_vae(SD2_SCALING, VAE_CHANNELS)
    for m in (te_full, unet, vae):
        randomize_fp16_(m)
    text_projection = random_fp16(TEXT_HIDDEN, TEXT_HIDDEN, scale=TEXT_HIDDEN**-0.5)  # unused by SD2
    logit_scale = torch.tensor(math.log(1 / 0.07)).half().float()
    te = CLIPTextModel(clip_config(SD2_TE_LAYERS, "gelu", OPEN_CLIP_PAD))
    drop = f"encoder.layers.{SD2_TE_LAYERS}."
    te.load_state_dict({k: v for k, v in te_full.state_dict().items() if not k.startswith(drop)}, strict=True)
    te.eval()
    return {
        "text_encoder": te,
        "text_encoder_full": te_full,
        "text_projection": text_projection,
        "logit_scale": logit_scale,
        "unet": unet,
        "vae": vae,
    }


@torch.no_grad()
def build_sdxl(seed: int) -> dict:
    torch.manual_seed(seed)
    te1 = CLIPTextModel(clip_config(2, "quick_gelu", EOS))  # CLIP-L style
    te2 = CLIPTextModelWithProjection(clip_config(3, "gelu", OPEN_CLIP_PAD))  # OpenCLIP bigG style
    unet = sd1.tiny_unet(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),  # mid block gets the last entry (2)
        attention_head_dim=(1, 1, 1),  # head count per level: width / 64
        cross_attention_dim=2 * TEXT_HIDDEN,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM,
        projection_class_embeddings_input_dim=SDXL_POOLED + 6 * SDXL_TIME_DIM,
    )
    vae = sd1.make_vae(SDXL_SCALING, VAE_CHANNELS)
    for m in (te1, te2, unet, vae):
        randomize_fp16_(m)
    logit_scale = torch.tensor(math.log(1 / 0.07)).half().float()
    return {"text_encoder": te1, "text_encoder_2": te2, "logit_scale": logit_scale, "unet": unet, "vae": vae}


# ----------------------------------------------------------------------------
# diffusers -> single-file LDM / SGM layouts
# ----------------------------------------------------------------------------
SD2_CLIP_P = "cond_stage_model.model."
SDXL_CLIP_L_P = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_P = "conditioner.embedders.1.model."


def half_sd(model: nn.Module) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}


def strip_text_model(sd: dict) -> dict:
    return {k[len("text_model.") :] if k.startswith("text_model.") else k: v for k, v in sd.items()}


def openclip_state(te_sd: dict, n_layers: int, prefix: str, text_projection, logit_scale) -> dict:
    """HF CLIPTextModel weights (either layout) -> OpenCLIP text tower names (fp16).
    text_projection is OpenCLIP's [width, proj] matrix (x @ P)."""
    sd = strip_text_model(te_sd)
    used = set()

    def take(k):
        used.add(k)
        return sd[k].detach().half().contiguous()

    out = {
        prefix + "token_embedding.weight": take("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": take("embeddings.position_embedding.weight"),
    }
    for i in range(n_layers):
        h, o = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        out[o + "ln_1.weight"] = take(h + "layer_norm1.weight")
        out[o + "ln_1.bias"] = take(h + "layer_norm1.bias")
        out[o + "attn.in_proj_weight"] = torch.cat([take(h + f"self_attn.{p}_proj.weight") for p in "qkv"]).contiguous()
        out[o + "attn.in_proj_bias"] = torch.cat([take(h + f"self_attn.{p}_proj.bias") for p in "qkv"]).contiguous()
        out[o + "attn.out_proj.weight"] = take(h + "self_attn.out_proj.weight")
        out[o + "attn.out_proj.bias"] = take(h + "self_attn.out_proj.bias")
        out[o + "ln_2.weight"] = take(h + "layer_norm2.weight")
        out[o + "ln_2.bias"] = take(h + "layer_norm2.bias")
        out[o + "mlp.c_fc.weight"] = take(h + "mlp.fc1.weight")
        out[o + "mlp.c_fc.bias"] = take(h + "mlp.fc1.bias")
        out[o + "mlp.c_proj.weight"] = take(h + "mlp.fc2.weight")
        out[o + "mlp.c_proj.bias"] = take(h + "mlp.fc2.bias")
    out[prefix + "ln_final.weight"] = take("final_layer_norm.weight")
    out[prefix + "ln_final.bias"] = take("final_layer_norm.bias")
    out[prefix + "text_projection"] = text_projection.detach().half().contiguous()
    out[prefix + "logit_scale"] = logit_scale.detach().half().reshape(())
    unused = sorted(k for k in sd if k not in used and not k.endswith("position_ids") and not k.startswith("text_projection."))
    if unused:
        raise KeyError(f"unmapped text encoder keys: {unused[:5]}")
    return out


def unet_vae_ldm(unet, vae, sdxl: bool) -> dict:
    umap = sd1.unet_module_map(unet.config)
    if sdxl:
        umap = umap + [
            ("add_embedding.linear_1", "label_emb.0.0", sd1.SAME),
            ("add_embedding.linear_2", "label_emb.0.2", sd1.SAME),
        ]
    ckpt = sd1.apply_module_map(half_sd(unet), umap, UNET_P)
    ckpt.update(sd1.vae_to_ldm(half_sd(vae), vae.config))
    return ckpt


def sd2_to_ldm(m: dict) -> dict:
    ckpt = unet_vae_ldm(m["unet"], m["vae"], sdxl=False)
    ckpt.update(
        openclip_state(m["text_encoder_full"].state_dict(), SD2_TE_LAYERS + 1, SD2_CLIP_P, m["text_projection"], m["logit_scale"])
    )
    ckpt.update(sd1.ldm_schedule_buffers())  # fp32 betas / alphas_cumprod / alphas_cumprod_prev
    return ckpt


def sdxl_to_ldm(m: dict) -> dict:
    ckpt = unet_vae_ldm(m["unet"], m["vae"], sdxl=True)
    ckpt.update(sd1.clip_to_ldm(m["text_encoder"], SDXL_CLIP_L_P, torch.float16))
    te2 = m["text_encoder_2"]
    ckpt.update(
        openclip_state(
            te2.state_dict(),
            te2.config.num_hidden_layers,
            SDXL_CLIP_G_P,
            te2.text_projection.weight.detach().t(),  # OpenCLIP [width, proj] = HF Linear weight^T
            m["logit_scale"],
        )
    )
    return ckpt


# ----------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------
# same keys, shapes and values; got may be the fp16 twin of want (got_dtype checks that)
assert_same_values = functools.partial(sd1.assert_same, cast=True)


def verify_unet_vae(ckpt: dict, unet, vae) -> None:
    got_unet = sfu.convert_ldm_unet_checkpoint(ckpt, dict(unet.config))
    got_vae = sfu.convert_ldm_vae_checkpoint(ckpt, dict(vae.config))
    assert_same_values("unet (convert_ldm_unet_checkpoint)", got_unet, unet.state_dict(), torch.float16)
    assert_same_values("vae (convert_ldm_vae_checkpoint)", got_vae, vae.state_dict(), torch.float16)
    n_unet = sum(k.startswith(UNET_P) for k in ckpt)
    n_vae = sum(k.startswith(VAE_P) for k in ckpt)
    if (n_unet, n_vae) != (len(unet.state_dict()), len(vae.state_dict())):
        raise AssertionError(f"LDM unet/vae key counts {(n_unet, n_vae)} != diffusers {(len(unet.state_dict()), len(vae.state_dict()))}")


@torch.no_grad()
def openclip_tower(ckpt: dict, prefix: str, layers: int) -> open_clip.transformer.TextTransformer:
    """Load the file's OpenCLIP weights into open_clip's own TextTransformer (strict)."""
    tt = open_clip.transformer.TextTransformer(
        context_length=MAX_LEN,
        vocab_size=49408,
        width=TEXT_HIDDEN,
        heads=TEXT_HEADS,
        layers=layers,
        mlp_ratio=TEXT_INTER / TEXT_HIDDEN,
        output_dim=SDXL_POOLED,
    )
    sd = {k[len(prefix) :]: v.float() for k, v in ckpt.items() if k.startswith(prefix) and not k.endswith("logit_scale")}
    tt.load_state_dict(sd, strict=True)
    return tt.eval()


@torch.no_grad()
def openclip_forward(tt, ids: torch.Tensor):
    """sgm FrozenOpenCLIPEmbedder2.encode_with_transformer (batch-first open_clip 3.x):
    returns (penultimate [no ln_final], ln_final(last), pooled = ln_final(last)[argmax ids] @ P)."""
    assert getattr(tt.transformer, "batch_first", True)
    x = tt.token_embedding(ids) + tt.positional_embedding
    blocks = tt.transformer.resblocks
    penultimate = None
    for i, r in enumerate(blocks):
        if i == len(blocks) - 1:
            penultimate = x
        x = r(x, attn_mask=tt.attn_mask)
    last = tt.ln_final(x)
    pooled = last[torch.arange(last.shape[0]), ids.argmax(dim=-1)] @ tt.text_projection
    return penultimate, tt.ln_final(penultimate), pooled


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def verify_sd2_ldm(path: str, ddir: str, m: dict, probe_ids: torch.Tensor) -> dict:
    ckpt = load_file(path)
    te, unet, vae = m["text_encoder"], m["unet"], m["vae"]
    extra = sorted(k for k in ckpt if not k.startswith((UNET_P, VAE_P, SD2_CLIP_P)))
    expected_extra = ["alphas_cumprod", "alphas_cumprod_prev", "betas"] + (["v_pred"] if "v_pred" in ckpt else [])
    if extra != expected_extra:
        raise AssertionError(f"unexpected top-level keys {extra}")
    verify_unet_vae(ckpt, unet, vae)

    # diffusers' OpenCLIP converter: the extra (last) resblock is not dropped by name
    # (SD_2_TEXT_ENCODER_KEYS_TO_IGNORE only lists resblocks.23); it becomes
    # text_model.encoder.layers.N.* which the N-layer text encoder does not have.
    got = sfu.convert_open_clip_checkpoint(te, ckpt, prefix=SD2_CLIP_P)
    want = sd1.text_encoder_hf_state_dict(te)
    extra_layer = f"text_model.encoder.layers.{SD2_TE_LAYERS}."
    leftover = sorted(k for k in got if k not in want)
    if not leftover or any(not k.startswith(extra_layer) for k in leftover):
        raise AssertionError(f"unexpected converter output keys {leftover[:5]}")
    assert_same_values("text_encoder (convert_open_clip_checkpoint)", {k: v for k, v in got.items() if k in want}, want, torch.float16)

    pipe = StableDiffusionPipeline.from_single_file(path, config=ddir, local_files_only=True, dtype=torch.float32)
    assert_same_values("from_single_file unet", pipe.unet.state_dict(), unet.state_dict())
    assert_same_values("from_single_file vae", pipe.vae.state_dict(), vae.state_dict())
    assert_same_values("from_single_file text_encoder", model_sd(pipe.text_encoder), model_sd(te))
    prediction_type = pipe.scheduler.config.prediction_type

    # independent check of the OpenCLIP layout with open_clip itself: SD2's context is
    # ln_final(output of the penultimate block) of the full (N+1)-block tower.
    tt = openclip_tower(ckpt, SD2_CLIP_P, SD2_TE_LAYERS + 1)
    _, penult_ln, _ = openclip_forward(tt, probe_ids)
    d = max_diff(penult_ln, te(input_ids=probe_ids).last_hidden_state)
    if d > 1e-4:
        raise AssertionError(f"open_clip penultimate+ln_final differs from the diffusers text encoder by {d}")
    return {
        "tensors": len(ckpt),
        "converter_extra_layer_keys": len(leftover),
        "open_clip_max_abs_diff": d,
        "scheduler_prediction_type": prediction_type,
    }


@torch.no_grad()
def verify_sdxl_ldm(path: str, ddir: str, m: dict, probe_ids_l: torch.Tensor, probe_ids_g: torch.Tensor) -> dict:
    ckpt = load_file(path)
    te1, te2, unet, vae = m["text_encoder"], m["text_encoder_2"], m["unet"], m["vae"]
    extra = sorted(k for k in ckpt if not k.startswith((UNET_P, VAE_P, SDXL_CLIP_L_P, SDXL_CLIP_G_P)))
    if extra:
        raise AssertionError(f"unexpected top-level keys {extra}")
    verify_unet_vae(ckpt, unet, vae)

    got1 = {k: v for k, v in sfu.convert_ldm_clip_checkpoint(ckpt).items() if not k.endswith("position_ids")}
    assert_same_values("text_encoder (convert_ldm_clip_checkpoint)", got1, sd1.text_encoder_hf_state_dict(te1), torch.float16)
    got2 = sfu.convert_open_clip_checkpoint(te2, ckpt, prefix=SDXL_CLIP_G_P)
    assert_same_values("text_encoder_2 (convert_open_clip_checkpoint)", got2, sd1.text_encoder_hf_state_dict(te2), torch.float16)

    pipe = StableDiffusionXLPipeline.from_single_file(path, config=ddir, local_files_only=True, dtype=torch.float32)
    assert_same_values("from_single_file unet", pipe.unet.state_dict(), unet.state_dict())
    assert_same_values("from_single_file vae", pipe.vae.state_dict(), vae.state_dict())
    assert_same_values("from_single_file text_encoder", model_sd(pipe.text_encoder), model_sd(te1))
    # from_single_file picks the CLIP-L branch for ANY CLIPText* class when the CLIP-L
    # position embedding width equals the model's width (here both towers are 16 wide),
    # so its text_encoder_2 may come out with CLIP-L weights; record what happens.
    te2_ok = True
    try:
        assert_same_values("from_single_file text_encoder_2", model_sd(pipe.text_encoder_2), model_sd(te2))
    except AssertionError:
        te2_ok = False
        got_emb = pipe.text_encoder_2.text_model.embeddings.token_embedding.weight
        clip_l_emb = ckpt[SDXL_CLIP_L_P + "text_model.embeddings.token_embedding.weight"]
        if got_emb.device.type == "meta" or not torch.equal(got_emb.half(), clip_l_emb):
            raise
        te2_note = (
            "diffusers from_single_file filled text_encoder_2 from the CLIP-L tower (conditioner.embedders.0): its "
            "create_diffusers_clip_model_from_ldm takes the CLIP-L branch whenever the CLIP-L position embedding width "
            "equals the model's width (both towers are 16 wide here), leaving the 3rd layer and text_projection "
            "uninitialised; the bigG tower is verified with convert_open_clip_checkpoint and open_clip instead"
        )
    # independent check with open_clip: penultimate (no ln_final) and pooled
    tt = openclip_tower(ckpt, SDXL_CLIP_G_P, te2.config.num_hidden_layers)
    penult, _, pooled = openclip_forward(tt, probe_ids_g)
    out = te2(input_ids=probe_ids_g, output_hidden_states=True)
    d1 = max_diff(penult, out.hidden_states[-2])
    d2 = max_diff(pooled, out.text_embeds)
    if max(d1, d2) > 1e-4:
        raise AssertionError(f"open_clip bigG differs from transformers: {d1}, {d2}")
    res = {
        "tensors": len(ckpt),
        "open_clip_max_abs_diff_penultimate": d1,
        "open_clip_max_abs_diff_pooled": d2,
        "from_single_file_text_encoder_2_matches": te2_ok,
    }
    if not te2_ok:
        res["from_single_file_text_encoder_2_note"] = te2_note
    return res


# ----------------------------------------------------------------------------
# A1111-style sampling on top of k-diffusion
# ----------------------------------------------------------------------------
def unet_forward(unet, x, t, cond: dict):
    kw = {}
    if "text_embeds" in cond:
        kw["added_cond_kwargs"] = {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]}
    return unet(x, t, encoder_hidden_states=cond["crossattn"], **kw).sample


class UNetEpsDenoiser(k_diffusion.external.DiscreteEpsDDPMDenoiser):
    """A1111's CompVisDenoiser over a diffusers UNet (eps, fractional t)."""

    def get_eps(self, x, t, cond):
        return unet_forward(self.inner_model, x, t, cond)


class UNetVDenoiser(k_diffusion.external.DiscreteVDDPMDenoiser):
    """A1111's CompVisVDenoiser over a diffusers UNet (v, fractional t)."""

    def get_v(self, x, t, cond):
        return unet_forward(self.inner_model, x, t, cond)


class CFGDenoiser(nn.Module):
    """A1111 CFGDenoiser with default settings (batch size 1): one batched call [cond, uncond]
    when the token lengths agree, otherwise separate calls (no padding); x0 is combined as
    uncond + (cond - uncond) * cfg."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, sigma, cond, uncond, cond_scale):
        if cond["crossattn"].shape[1] == uncond["crossattn"].shape[1]:
            merged = {k: torch.cat([cond[k], uncond[k]]) for k in cond}
            out = self.model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=merged)
            out_cond, out_uncond = out[:1], out[1:]
        else:
            out_cond = self.model(x, sigma, cond=cond)
            out_uncond = self.model(x, sigma, cond=uncond)
        return out_uncond + (out_cond - out_uncond) * cond_scale


def sgm_timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """sgm.modules.diffusionmodules.util.timestep_embedding (cos first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sdxl_vector(pooled: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SGM GeneralConditioner vector: cat(pooled, emb(original h, w), emb(crop top, left),
    emb(target h, w)) with original = target = (height, width) and crop = (0, 0).
    Also returns the diffusers time_ids [h, w, top, left, h, w]."""
    parts = [pooled]
    for pair in ([height, width], [0, 0], [height, width]):
        x = torch.tensor([pair], dtype=torch.float32)  # [1, 2]
        emb = sgm_timestep_embedding(x.reshape(-1), SDXL_TIME_DIM)  # [(1*2), D]
        parts.append(emb.reshape(1, 2 * SDXL_TIME_DIM))
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
    return torch.cat(parts, dim=1), time_ids


def check_diffusers_time_embeds(unet, y: torch.Tensor, time_ids: torch.Tensor) -> None:
    got = unet.add_time_proj(time_ids.flatten()).reshape(time_ids.shape[0], -1)
    if not torch.equal(got, y[:, SDXL_POOLED:]):
        raise AssertionError(f"diffusers add_time_proj differs from the SGM embedding by {max_diff(got, y[:, SDXL_POOLED:])}")


@torch.no_grad()
def put_unet_vae_common(rec: Recorder, vae, scaling: float, model_wrap) -> None:
    sd1.put_vae_refs(rec, vae, scaling)
    rec.put("sigmas.model", model_wrap.sigmas, "model sigma table sqrt((1-ac)/ac), ascending, ac = float32 alphas_cumprod")


def put_tokens(rec: Recorder, chunks, key: str, pad_id: int, what: str) -> torch.Tensor:
    ids = chunk_ids(chunks, pad_id)
    rec.put(key, ids, what)
    return ids


# ----------------------------------------------------------------------------
# References per family
# ----------------------------------------------------------------------------
@torch.no_grad()
def sd2_text(m: dict, tok):
    te = m["text_encoder"]

    def encode(ids):
        return te(input_ids=ids).last_hidden_state, None

    out = {}
    for name, text in (("long", LONG), ("negative", NEGATIVE)):
        chunks, notes = build_chunks(tok, text)
        ids = chunk_ids(chunks, OPEN_CLIP_PAD)
        w = chunk_weights(chunks)
        z, _ = a1111_encode(ids, w, encode)
        out[name] = {"chunks": chunks, "notes": notes, "ids": ids, "weights": w, "z": z}
    return out


@torch.no_grad()
def sd2_probe(unet, ctx_dim: int) -> tuple[float, str]:
    """A1111 modules/sd_models_config.py is_using_v_parameterization_for_sd2 (tiny context width)."""
    x_test = torch.ones((1, 4, 8, 8)) * 0.5
    test_cond = torch.ones((1, 2, ctx_dim)) * 0.5
    out = (unet(x_test, torch.asarray([999]), encoder_hidden_states=test_cond).sample - x_test).mean().item()
    return out, ("v" if out < -1 else "eps")


@torch.no_grad()
def sd2_references(m: dict, tok, alphas_cumprod: torch.Tensor, v_pred: bool, text: dict):
    rec = Recorder()
    unet, vae = m["unet"], m["vae"]
    size = SIZES["sd2"]
    L, N = text["long"], text["negative"]
    rec.put("tokens.long.open_clip", L["ids"], "int64 [k,77] OpenCLIP ids of LONG per A1111 chunk: BOS + tokens + EOS, everything after the first EOS = 0 (pad '!')")
    rec.put("weights.long", L["weights"], "float32 [k,77] A1111 emphasis multipliers of LONG per chunk (1.0 at BOS/EOS/padding)")
    rec.put("text.long", L["z"], "[1,77k,16] A1111: per chunk text_encoder(ids).last_hidden_state (= ln_final of the LDM tower's penultimate block), Original emphasis, chunks concatenated")
    rec.put("text.negative", N["z"], f"[1,77m,16] same for NEGATIVE {NEGATIVE!r}")

    x, t = unet_inputs()
    ctx = torch.cat([N["z"][:, :MAX_LEN], L["z"][:, :MAX_LEN]])
    rec.put("unet.x", x, f"UNet input latents, randn after manual_seed({SEED_UNET_X})")
    rec.put("unet.t", t, "UNet timesteps (fractional, float32)")
    rec.put("unet.context", ctx, "cat(first chunk of text.negative, first chunk of text.long) along batch")
    kind = "v" if v_pred else "eps"
    rec.put("unet.out", unet(x, t, encoder_hidden_states=ctx).sample, f"raw UNet output ({kind}) for unet.x/unet.t/unet.context")

    wrap_cls = UNetVDenoiser if v_pred else UNetEpsDenoiser
    model_wrap = wrap_cls(unet, alphas_cumprod, quantize=False)
    put_unet_vae_common(rec, vae, SD2_SCALING, model_wrap)

    rec.put("tokens.negative.open_clip", N["ids"], "int64 [m,77] OpenCLIP ids of NEGATIVE (pad 0)")
    rec.put("weights.negative", N["weights"], "float32 [m,77] emphasis multipliers of NEGATIVE")

    cond = {"crossattn": L["z"]}
    uncond = {"crossattn": N["z"]}
    run = hires_run(model_wrap, CFGDenoiser(model_wrap), (cond, uncond), (cond, uncond), size, SD2_SCALING, vae)
    put_run(rec, run, size, SD2_SCALING)
    return rec


@torch.no_grad()
def sdxl_text(m: dict, tok):
    te1, te2 = m["text_encoder"], m["text_encoder_2"]

    def encode_l(ids):
        return te1(input_ids=ids, output_hidden_states=True).hidden_states[-2], None

    def encode_g(ids):
        out = te2(input_ids=ids, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    out = {}
    for name, text in (("long", LONG), ("negative", NEGATIVE), ("empty", "")):
        chunks, notes = build_chunks(tok, text)
        ids_l = chunk_ids(chunks, EOS)
        ids_g = chunk_ids(chunks, OPEN_CLIP_PAD)
        w = chunk_weights(chunks)
        z_l, _ = a1111_encode(ids_l, w, encode_l)
        z_g, pooled = a1111_encode(ids_g, w, encode_g)
        out[name] = {
            "chunks": chunks, "notes": notes, "ids_l": ids_l, "ids_g": ids_g, "weights": w,
            "z": torch.cat([z_l, z_g], dim=2), "pooled": pooled,
        }
    return out


@torch.no_grad()
def sdxl_references(m: dict, tok, alphas_cumprod: torch.Tensor, text: dict):
    rec = Recorder()
    unet, vae = m["unet"], m["vae"]
    size = SIZES["sdxl"]
    L, N, E = text["long"], text["negative"], text["empty"]
    rec.put("tokens.long.clip_l", L["ids_l"], "int64 [k,77] CLIP-L ids of LONG per A1111 chunk: BOS + tokens + EOS, EOS padding")
    rec.put("tokens.long.open_clip", L["ids_g"], "int64 [k,77] bigG ids of LONG: same chunks, everything after the first EOS = 0")
    rec.put("weights.long", L["weights"], "float32 [k,77] A1111 emphasis multipliers of LONG per chunk (shared by both encoders)")
    rec.put(
        "text.long",
        L["z"],
        "[1,77k,32] A1111 SDXL crossattn: cat(CLIP-L hidden_states[-2], bigG hidden_states[-2]) along the hidden axis "
        "(no final LN), Original emphasis applied per encoder per chunk before the concat, chunks concatenated",
    )
    rec.put("text.long.pooled", L["pooled"], "[1,16] bigG text_embeds (final LN of the last layer at the first EOS, text_projection) of the FIRST chunk, not emphasised")
    rec.put("text.negative", N["z"], f"[1,77m,32] same for NEGATIVE {NEGATIVE!r} (non-empty, not zeroed)")
    rec.put("text.negative.pooled", N["pooled"], "[1,16] pooled of NEGATIVE's first chunk")

    x, t = unet_inputs()
    ctx = torch.cat([N["z"][:, :MAX_LEN], L["z"][:, :MAX_LEN]])
    h1, w1 = size["height1"], size["width1"]
    y_n, ids_n = sdxl_vector(N["pooled"], h1, w1)
    y_l, ids_l = sdxl_vector(L["pooled"], h1, w1)
    y = torch.cat([y_n, y_l])
    time_ids = torch.cat([ids_n, ids_l])
    check_diffusers_time_embeds(unet, y, time_ids)
    rec.put("unet.x", x, f"UNet input latents, randn after manual_seed({SEED_UNET_X})")
    rec.put("unet.t", t, "UNet timesteps (fractional, float32)")
    rec.put("unet.context", ctx, "cat(first chunk of text.negative, first chunk of text.long) along batch")
    rec.put(
        "unet.y",
        y,
        f"[2,208] SDXL vector: negative's then long's cat(pooled, emb(h={h1}), emb(w={w1}), emb(0), emb(0), emb(h={h1}), emb(w={w1})), "
        f"32-d sinusoidal embeddings (cos first, max period 10000), size = pass-1 size {w1}x{h1} (w x h)",
    )
    cond_unet = {"crossattn": ctx, "text_embeds": y[:, :SDXL_POOLED], "time_ids": time_ids}
    rec.put("unet.out", unet_forward(unet, x, t, cond_unet), "raw UNet output (eps); diffusers added_cond_kwargs text_embeds = unet.y[:, :16], time_ids = [h, w, 0, 0, h, w]")

    model_wrap = UNetEpsDenoiser(unet, alphas_cumprod, quantize=False)
    put_unet_vae_common(rec, vae, SDXL_SCALING, model_wrap)

    rec.put("tokens.negative.clip_l", N["ids_l"], "int64 [m,77] CLIP-L ids of NEGATIVE")
    rec.put("tokens.negative.open_clip", N["ids_g"], "int64 [m,77] bigG ids of NEGATIVE (pad 0)")
    rec.put("weights.negative", N["weights"], "float32 [m,77] emphasis multipliers of NEGATIVE")

    # 2-pass run: prompt LONG, EMPTY negative -> A1111 zeroes its text parts (crossattn + pooled)
    zero_ctx = torch.zeros_like(E["z"])
    zero_pooled = torch.zeros_like(E["pooled"])
    conds = []
    for p, (h, w) in enumerate(((size["height1"], size["width1"]), (size["height2"], size["width2"])), start=1):
        y_c, tid = sdxl_vector(L["pooled"], h, w)
        y_u, _ = sdxl_vector(zero_pooled, h, w)
        check_diffusers_time_embeds(unet, y_c, tid)
        rec.put(f"run.y.cond.pass{p}", y_c, f"[1,208] cond vector of pass {p}: cat(text.long.pooled, emb of ({h},{w}),(0,0),({h},{w}))")
        rec.put(f"run.y.uncond.pass{p}", y_u, f"[1,208] uncond vector of pass {p}: empty negative -> pooled zeroed, size embeddings of ({h},{w}),(0,0),({h},{w}) kept")
        cond = {"crossattn": L["z"], "text_embeds": y_c[:, :SDXL_POOLED], "time_ids": tid}
        uncond = {"crossattn": zero_ctx, "text_embeds": y_u[:, :SDXL_POOLED], "time_ids": tid}
        conds.append((cond, uncond))
    run = hires_run(model_wrap, CFGDenoiser(model_wrap), conds[0], conds[1], size, SDXL_SCALING, vae)
    put_run(rec, run, size, SDXL_SCALING)
    return rec


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------
def write_tokenizer(tok_dir: str, bpe: str, pad: str) -> CLIPTokenizer:
    """Classic tokenizer folder (vocab.json + merges.txt + configs); pad '!' for OpenCLIP towers."""
    if os.path.isdir(tok_dir):
        shutil.rmtree(tok_dir)
    clip_vocab.write_tokenizer_dir(tok_dir, bpe, MAX_LEN)
    if pad != clip_vocab.EOS:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            p = os.path.join(tok_dir, name)
            with open(p, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["pad_token"] = pad
            with open(p, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2, sort_keys=True)
                f.write("\n")
    tok = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    want_pad = OPEN_CLIP_PAD if pad != clip_vocab.EOS else EOS
    if tok.pad_token_id != want_pad or tok.bos_token_id != BOS or tok.eos_token_id != EOS:
        raise AssertionError(f"{tok_dir}: pad/bos/eos ids {tok.pad_token_id}/{tok.bos_token_id}/{tok.eos_token_id}")
    return tok


def state_keys(path: str) -> list[str]:
    return sorted(load_file(path).keys())


def check_reload_text(cls, folder: str, model: nn.Module) -> None:
    re_m = cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    assert_same_values(f"{folder} reload", model_sd(re_m), model_sd(model))


def versions() -> dict:
    def ver(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "k_diffusion": ver("k-diffusion"),
        "open_clip_torch": ver("open_clip_torch"),
        "safetensors": ver("safetensors"),
    }


def common_settings(size: dict) -> dict:
    return {
        "long_prompt": LONG,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "cfg": CFG,
        **size,
        "latent_factor": VAE_FACTOR,
        "steps1": STEPS1,
        "steps2": STEPS2,
        "denoise": DENOISE,
        "sampler": "euler",
        "schedule": "normal",
        "upscaler": "latent",
        "upscale_mode": "bilinear",
        "antialias": False,
        "clip_skip": 1,
        "unet_t": UNET_T,
        "seeds": {"unet.x": SEED_UNET_X, "vae.latent": SEED_VAE_LATENT, "vae.image": SEED_VAE_IMAGE},
        "cfg_calls": "A1111 default: cond and uncond with different token lengths are separate UNet calls (no padding); "
        "equal lengths are one batched call [cond, uncond]; x0 = uncond + cfg * (cond - uncond)",
    }


PROMPT_CONVENTIONS = {
    "parser": "A1111 parse_prompt_attention: (x) x1.1, [x] /1.1, (x:w), \\( \\) \\[ \\] \\\\ escapes, unbalanced brackets close at the end, "
    "BREAK via \\s*\\bBREAK\\b\\s* inside plain text, equal-weight neighbours merged; each fragment tokenized on its own "
    "(HF CLIPTokenizer, no BOS/EOS; identical to OpenCLIP's SimpleTokenizer for these prompts)",
    "chunks": "A1111 tokenize_line: 75 prompt tokens per chunk; when a chunk is full and the last ',</w>' (267) is within the "
    "last 20 tokens, the tokens after that comma move to the next chunk; BREAK closes the chunk; each chunk = BOS + tokens "
    "+ EOS padding to 75 + EOS (77); weights 1.0 outside the prompt tokens",
    "padding": "CLIP-L encoders pad with EOS 49407; OpenCLIP encoders (SD2, SDXL bigG) get everything after the first EOS "
    "replaced by 0",
    "emphasis": "A1111 'Original' per encoder per chunk: m0 = z.mean(); z = z * w[...,None]; z = z * (m0 / z.mean())",
}


def readme(name: str, title: str, lines: list[str]) -> str:
    body = "\n".join(f"- {x}" for x in lines)
    return f"# {name}: {title}\n\n{body}\n"


def file_tree_sizes(paths: list[str]) -> list[tuple[str, int, bool]]:
    out = []
    for top in paths:
        if os.path.isfile(top) or os.path.islink(top):
            out.append((top, os.lstat(top).st_size, os.path.islink(top)))
            continue
        for root, dirs, names in os.walk(top):
            for d in list(dirs):
                p = os.path.join(root, d)
                if os.path.islink(p):
                    out.append((p, 0, True))
                    dirs.remove(d)
            for nm in names:
                p = os.path.join(root, nm)
                out.append((p, os.lstat(p).st_size, os.path.islink(p)))
    return sorted(out)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------
# Family builders
# ----------------------------------------------------------------------------
def save_fp16_pipeline(pipe_cls, ddir: str, components: dict, **extra) -> None:
    halves = {k: copy.deepcopy(v).half() if isinstance(v, nn.Module) else v for k, v in components.items()}
    pipe = pipe_cls(**halves, **extra)
    pipe.save_pretrained(ddir, safe_serialization=True)


def make_sd2(data: str, bpe: str) -> dict:
    out = os.path.join(data, "sd2-tiny")
    outv = os.path.join(data, "sd2v-tiny")
    ddir, ddirv = os.path.join(out, "diffusers"), os.path.join(outv, "diffusers")
    for d in (ddir, ddirv):
        if os.path.isdir(d):
            shutil.rmtree(d)
    os.makedirs(out, exist_ok=True)
    os.makedirs(outv, exist_ok=True)

    # 1. models (re-seed until the eps model probes "eps", as real SD2-base does)
    tried = []
    for seed in SD2_SEED_CANDIDATES:
        m = build_sd2(seed)
        probe_mean, probe = sd2_probe(m["unet"], TEXT_HIDDEN)
        tried.append({"model_seed": seed, "probe_mean": probe_mean, "probe": probe})
        if probe == "eps":
            break
    else:
        raise AssertionError(f"no candidate seed gives an eps probe: {tried}")
    print(f"sd2: model seed {seed}, v-probe mean(out - x) = {probe_mean:.6f} -> {probe}")

    # 2. diffusers folders (fp16)
    tmp_tok = os.path.join(out, "_tok")
    tok = write_tokenizer(tmp_tok, bpe, "!")
    sched = PNDMScheduler(skip_prk_steps=True, **scaled_linear_scheduler_kwargs("epsilon"))
    comps = {"vae": m["vae"], "text_encoder": m["text_encoder"], "tokenizer": tok, "unet": m["unet"]}
    nosafety = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save_fp16_pipeline(StableDiffusionPipeline, ddir, {**comps, "scheduler": sched}, **nosafety)
    tok = write_tokenizer(os.path.join(ddir, "tokenizer"), bpe, "!")
    shutil.rmtree(tmp_tok)
    te_keys = state_keys(os.path.join(ddir, "text_encoder", "model.safetensors"))
    if any(k.startswith("text_model.") for k in te_keys):
        raise AssertionError("sd2 text_encoder was expected in the transformers-5 native layout")
    check_reload_text(CLIPTextModel, os.path.join(ddir, "text_encoder"), m["text_encoder"])

    # SD2-v: own model_index.json + scheduler/, every weight folder a relative symlink to sd2-tiny
    tmpv = os.path.join(outv, "_tmp")
    if os.path.isdir(tmpv):
        shutil.rmtree(tmpv)
    sched_v = DDIMScheduler(clip_sample=False, **scaled_linear_scheduler_kwargs("v_prediction"))
    save_fp16_pipeline(StableDiffusionPipeline, tmpv, {**comps, "scheduler": sched_v}, **nosafety)
    os.makedirs(ddirv)
    shutil.copyfile(os.path.join(tmpv, "model_index.json"), os.path.join(ddirv, "model_index.json"))
    shutil.copytree(os.path.join(tmpv, "scheduler"), os.path.join(ddirv, "scheduler"))
    for sub in ("text_encoder", "unet", "vae"):
        for nm in os.listdir(os.path.join(tmpv, sub)):
            if sha256(os.path.join(tmpv, sub, nm)) != sha256(os.path.join(ddir, sub, nm)):
                raise AssertionError(f"sd2v {sub}/{nm} would differ from sd2's")
    shutil.rmtree(tmpv)
    for sub in ("text_encoder", "tokenizer", "unet", "vae"):
        os.symlink(os.path.join("..", "..", "sd2-tiny", "diffusers", sub), os.path.join(ddirv, sub))

    for d, pt, cls_name in ((ddir, "epsilon", "PNDMScheduler"), (ddirv, "v_prediction", "DDIMScheduler")):
        pipe = StableDiffusionPipeline.from_pretrained(d, local_files_only=True, dtype=torch.float32)
        if pipe.scheduler.config.prediction_type != pt or type(pipe.scheduler).__name__ != cls_name:
            raise AssertionError(f"{d}: scheduler {type(pipe.scheduler).__name__}/{pipe.scheduler.config.prediction_type}")
        assert_same_values(f"{d} unet", pipe.unet.state_dict(), m["unet"].state_dict())
        assert_same_values(f"{d} vae", pipe.vae.state_dict(), m["vae"].state_dict())
        assert_same_values(f"{d} text_encoder", model_sd(pipe.text_encoder), model_sd(m["text_encoder"]))
    print(f"diffusers pipelines saved to {ddir} and {ddirv} (symlinked weights)")

    # 3. single files
    path = os.path.join(out, "sd2-tiny.safetensors")
    pathv = os.path.join(outv, "sd2v-tiny.safetensors")
    ckpt = sd2_to_ldm(m)
    save_file(ckpt, path)
    ckpt_v = dict(ckpt)
    ckpt_v["v_pred"] = torch.tensor([])  # ComfyUI's marker (float32, shape [0])
    save_file(ckpt_v, pathv)

    # 4. references (text once: both share the weights)
    text = sd2_text(m, tok)
    probe_ids = text["long"]["ids"][:1]
    ver = verify_sd2_ldm(path, ddir, m, probe_ids)
    ver_v = verify_sd2_ldm(pathv, ddirv, m, probe_ids)
    if ver["scheduler_prediction_type"] != "epsilon" or ver_v["scheduler_prediction_type"] != "v_prediction":
        raise AssertionError("from_single_file scheduler prediction types")
    print(f"LDM round trips matched ({path}: {ver['tensors']} tensors, {pathv}: {ver_v['tensors']} tensors); "
          f"diffusers' OpenCLIP converter produced {ver['converter_extra_layer_keys']} keys for the extra resblock "
          f"(dropped when loading the {SD2_TE_LAYERS}-layer text encoder); open_clip check max|diff| {ver['open_clip_max_abs_diff']:.2e}")
    for chunks_name in ("long", "negative"):
        counts = [n for _, _, n in text[chunks_name]["chunks"]]
        want = EXPECTED_LONG_CHUNK_TOKENS if chunks_name == "long" else EXPECTED_NEGATIVE_CHUNK_TOKENS
        if counts != want:
            raise AssertionError(f"{chunks_name} chunk token counts {counts} != {want}")
    ac = ckpt["alphas_cumprod"]
    results = {}
    for fam, o, p, v_pred, verinfo in (("sd2", out, path, False, ver), ("sd2v", outv, pathv, True, ver_v)):
        rec = sd2_references(m, tok, ac, v_pred, text)
        check_finite(rec)
        save_file(rec.R, os.path.join(o, "reference.safetensors"))
        fname = os.path.basename(p)
        meta = {
            "generator": "scripts/make_family_reference.py",
            "family": "sd2",
            "prediction": "v" if v_pred else "eps",
            "versions": versions(),
            "settings": {
                **common_settings(SIZES["sd2"]),
                "run_prompt": "LONG",
                "run_negative": "NEGATIVE",
                "model_seed": seed,
                "denoiser": f"k_diffusion.external.{'DiscreteVDDPMDenoiser' if v_pred else 'DiscreteEpsDDPMDenoiser'}(quantize=False) "
                f"over the float32 alphas_cumprod buffer of {fname}",
            },
            "prompt_chunks": {
                "long": chunk_summary(text["long"]["chunks"], text["long"]["notes"]),
                "negative": chunk_summary(text["negative"]["chunks"], text["negative"]["notes"]),
            },
            "conventions": {
                **PROMPT_CONVENTIONS,
                "text_encoder": "OpenCLIP ViT-H style (gelu, pad 0). Context = last_hidden_state of the diffusers text encoder "
                f"({SD2_TE_LAYERS} layers) = ln_final(output of the penultimate block) of the {SD2_TE_LAYERS + 1}-block tower "
                "in the single file (A1111/ldm FrozenOpenCLIPEmbedder layer='penultimate'). A1111 ignores clip_skip for SD2.",
                "unet_heads": "64 channels per head (attention_head_dim in the diffusers config is the head count: 1)",
                "prediction_detection": (
                    "the single file carries the ComfyUI marker key 'v_pred' (float32, shape [0]); the diffusers scheduler has "
                    "prediction_type v_prediction. These are the same weights as sd2-tiny, so A1111's UNet probe (which ignores "
                    "'v_pred') still says eps here."
                    if v_pred
                    else "no 'v_pred' key; scheduler prediction_type epsilon; A1111 UNet probe says eps (see 'probe')"
                ),
                "vae_decode": f"vae.decode(latent / {SD2_SCALING})",
            },
            "layouts": {
                "diffusers/text_encoder": "transformers-5 native CLIPTextModel layout: keys WITHOUT the 'text_model.' prefix",
                "diffusers/tokenizer": "vocab.json + merges.txt (OpenAI CLIP BPE), pad_token '!' (id 0)",
                "diffusers/scheduler": "DDIMScheduler, v_prediction" if v_pred else "PNDMScheduler, epsilon",
                **({"diffusers/symlinks": "text_encoder, tokenizer, unet, vae -> ../../sd2-tiny/diffusers/*"} if v_pred else {}),
                "single_file": {
                    "unet": UNET_P,
                    "vae": VAE_P + " (attention 1x1 conv weights 4-D)",
                    "text": SD2_CLIP_P + " OpenCLIP names: token_embedding.weight, positional_embedding [77,16], "
                    "transformer.resblocks.{i}.{ln_1,ln_2,attn.in_proj_weight [48,16] = cat(q,k,v),attn.in_proj_bias,"
                    "attn.out_proj.*,mlp.c_fc.*,mlp.c_proj.*}, ln_final.*, text_projection [16,16] (unused), logit_scale []",
                    "text_resblocks": SD2_TE_LAYERS + 1,
                    "text_resblocks_used": SD2_TE_LAYERS,
                    "schedule_buffers": "alphas_cumprod, alphas_cumprod_prev, betas (float32)",
                    "v_pred": "present (float32, shape [0])" if v_pred else "absent",
                    "dtype": "float16 weights, float32 schedule buffers",
                },
            },
            "verification": verinfo,
            "probe": {
                "what": "A1111 modules/sd_models_config.py is_using_v_parameterization_for_sd2: UNet at t=999 (int) with "
                "x = 0.5*ones([1,4,8,8]) and context = 0.5*ones([1,2,16]); v if mean(out - x) < -1",
                "mean": probe_mean,
                "decision": probe,
                "tried_seeds": tried,
            },
            "scalars": {
                "scaling_factor": SD2_SCALING,
                "beta_start": BETA_START, "beta_end": BETA_END, "num_train_timesteps": NUM_TRAIN_T,
                "sigma_min": rec.R["sigmas.model"][0].item(), "sigma_max": rec.R["sigmas.model"][-1].item(),
                "text_hidden": TEXT_HIDDEN, "text_heads": TEXT_HEADS, "context_dim": TEXT_HIDDEN,
                "unet_block_out_channels": [64, 64], "unet_head_channels": 64,
            },
            "tensors": tensors_json(rec),
        }
        write_json(os.path.join(o, "reference.json"), meta)
        results[fam] = rec
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme("sd2-tiny", "tiny random SD 2.x (epsilon) model + reference outputs", [
            "`diffusers/` — a normal diffusers `StableDiffusionPipeline` folder, fp16 (OpenCLIP-H-style text encoder 16-d/1 head/"
            f"{SD2_TE_LAYERS} layers/gelu in the transformers-5 layout without `text_model.`; UNet 64/64 with linear projection and "
            "64-channel heads, context 16; VAE 32/32, factor 2, scaling 0.18215; PNDM scheduler, epsilon; tokenizer pads with `!`).",
            f"`sd2-tiny.safetensors` — the same weights as one original-LDM checkpoint, fp16: `model.diffusion_model.`, "
            f"`first_stage_model.`, `cond_stage_model.model.` (OpenCLIP layout with {SD2_TE_LAYERS + 1} resblocks; the last one is "
            "random and unused, like the 24th block of real SD2 files), fp32 `betas`/`alphas_cumprod`/`alphas_cumprod_prev`.",
            "`reference.safetensors` + `reference.json` — CPU fp32 references: A1111 long-prompt tokens/weights/conditioning "
            "(chunks, comma backtracking, BREAK, emphasis), UNet, VAE, sigma table, A1111's SD2 v-probe value, and a 2-pass Euler "
            "hires-fix run (32x32 -> 64x64) with k-diffusion.",
            "Regenerate (offline, deterministic): `python3 scripts/make_family_reference.py`",
        ]))
    with open(os.path.join(outv, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme("sd2v-tiny", "tiny random SD 2.x v-prediction model + reference outputs", [
            "Same weights as `../sd2-tiny`. `diffusers/` has its own `model_index.json` and `scheduler/` (DDIM, "
            "`prediction_type` v_prediction); `text_encoder`, `tokenizer`, `unet`, `vae` are relative symlinks to "
            "`../../sd2-tiny/diffusers/`.",
            "`sd2v-tiny.safetensors` — the sd2-tiny LDM file plus the key `v_pred` (float32, shape [0]; ComfyUI's v-prediction marker).",
            "`reference.safetensors` + `reference.json` — the sd2-tiny references with a v-prediction denoiser "
            "(k-diffusion DiscreteVDDPMDenoiser) for the 2-pass run; `unet.out` is the raw UNet output (v).",
            "Regenerate (offline, deterministic): `python3 scripts/make_family_reference.py`",
        ]))
    return {"seed": seed, "probe_mean": probe_mean, "probe": probe, "verify": ver, "verify_v": ver_v, "text": text}


def make_sdxl(data: str, bpe: str) -> dict:
    out = os.path.join(data, "sdxl-tiny")
    ddir = os.path.join(out, "diffusers")
    if os.path.isdir(ddir):
        shutil.rmtree(ddir)
    os.makedirs(out, exist_ok=True)
    m = build_sdxl(SDXL_SEED)

    tmp_tok = os.path.join(out, "_tok")
    tok1 = write_tokenizer(tmp_tok + "1", bpe, clip_vocab.EOS)
    tok2 = write_tokenizer(tmp_tok + "2", bpe, "!")
    sched = EulerDiscreteScheduler(
        **sd1.SCHEDULE_KWARGS,
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )
    comps = {
        "vae": m["vae"], "text_encoder": m["text_encoder"], "text_encoder_2": m["text_encoder_2"],
        "tokenizer": tok1, "tokenizer_2": tok2, "unet": m["unet"], "scheduler": sched,
    }
    save_fp16_pipeline(StableDiffusionXLPipeline, ddir, comps, force_zeros_for_empty_prompt=True, add_watermarker=False)
    tok1 = write_tokenizer(os.path.join(ddir, "tokenizer"), bpe, clip_vocab.EOS)
    tok2 = write_tokenizer(os.path.join(ddir, "tokenizer_2"), bpe, "!")
    shutil.rmtree(tmp_tok + "1")
    shutil.rmtree(tmp_tok + "2")
    # text_encoder: classic layout (every key under 'text_model.'), rewritten like make_sd1_reference.py
    te_file = os.path.join(ddir, "text_encoder", "model.safetensors")
    save_file(sd1.text_encoder_hf_state_dict(m["text_encoder"], torch.float16), te_file, metadata={"format": "pt"})
    keys1 = state_keys(te_file)
    keys2 = state_keys(os.path.join(ddir, "text_encoder_2", "model.safetensors"))
    if not all(k.startswith("text_model.") for k in keys1):
        raise AssertionError("sdxl text_encoder should be in the classic layout")
    native2_prefixed = all(k.startswith(("text_model.", "text_projection.")) for k in keys2)
    check_reload_text(CLIPTextModel, os.path.join(ddir, "text_encoder"), m["text_encoder"])
    check_reload_text(CLIPTextModelWithProjection, os.path.join(ddir, "text_encoder_2"), m["text_encoder_2"])
    with open(os.path.join(ddir, "model_index.json"), encoding="utf-8") as f:
        mi = json.load(f)
    if mi.get("force_zeros_for_empty_prompt") is not True:
        raise AssertionError("model_index.json lacks force_zeros_for_empty_prompt: true")
    pipe = StableDiffusionXLPipeline.from_pretrained(ddir, local_files_only=True, dtype=torch.float32)
    assert_same_values("sdxl unet reload", pipe.unet.state_dict(), m["unet"].state_dict())
    assert_same_values("sdxl vae reload", pipe.vae.state_dict(), m["vae"].state_dict())
    assert_same_values("sdxl te reload", model_sd(pipe.text_encoder), model_sd(m["text_encoder"]))
    assert_same_values("sdxl te2 reload", model_sd(pipe.text_encoder_2), model_sd(m["text_encoder_2"]))
    print(f"diffusers pipeline saved to {ddir}")

    path = os.path.join(out, "sdxl-tiny.safetensors")
    ckpt = sdxl_to_ldm(m)
    save_file(ckpt, path)

    text = sdxl_text(m, tok1)
    ver = verify_sdxl_ldm(path, ddir, m, text["long"]["ids_l"][:1], text["long"]["ids_g"][:1])
    print(f"LDM round trip matched ({path}: {ver['tensors']} tensors); from_single_file text_encoder_2 matches: "
          f"{ver['from_single_file_text_encoder_2_matches']}")
    for chunks_name, want in (("long", EXPECTED_LONG_CHUNK_TOKENS), ("negative", EXPECTED_NEGATIVE_CHUNK_TOKENS), ("empty", [0])):
        counts = [n for _, _, n in text[chunks_name]["chunks"]]
        if counts != want:
            raise AssertionError(f"{chunks_name} chunk token counts {counts} != {want}")

    # alphas_cumprod as A1111's LegacyDDPMDiscretization: float64 numpy, then float32
    betas = (torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_T, dtype=torch.float64) ** 2).numpy()
    ac64 = np.cumprod(1.0 - betas, axis=0)
    alphas_cumprod = torch.asarray(ac64, dtype=torch.float32)
    same_as_sd = torch.equal(alphas_cumprod, sd1.ldm_schedule_buffers()["alphas_cumprod"])

    rec = sdxl_references(m, tok1, alphas_cumprod, text)
    check_finite(rec)
    save_file(rec.R, os.path.join(out, "reference.safetensors"))
    size = SIZES["sdxl"]
    meta = {
        "generator": "scripts/make_family_reference.py",
        "family": "sdxl",
        "prediction": "eps",
        "versions": versions(),
        "settings": {
            **common_settings(size),
            "run_prompt": "LONG",
            "run_negative": "",
            "model_seed": SDXL_SEED,
            "denoiser": "k_diffusion.external.DiscreteEpsDDPMDenoiser(quantize=False) over float32 alphas_cumprod "
            "(scaled_linear betas in float64, numpy cumprod, cast to float32: A1111 LegacyDDPMDiscretization)",
            "unet_y_size": {"width": size["width1"], "height": size["height1"]},
        },
        "prompt_chunks": {
            "long": chunk_summary(text["long"]["chunks"], text["long"]["notes"]),
            "negative": chunk_summary(text["negative"]["chunks"], text["negative"]["notes"]),
            "empty": chunk_summary(text["empty"]["chunks"], text["empty"]["notes"]),
        },
        "conventions": {
            **PROMPT_CONVENTIONS,
            "crossattn": "cat(CLIP-L hidden_states[-2], bigG hidden_states[-2]) along the hidden axis, no final layer norm, "
            "emphasis per encoder before the concat; [1, 77k, 32]",
            "pooled": "bigG text_embeds of the FIRST chunk (final LN of the last layer at the first EOS, then text_projection), "
            "not emphasised",
            "vector_y": f"cat(pooled[16], emb(orig h), emb(orig w), emb(crop top=0), emb(crop left=0), emb(target h), emb(target w)); "
            f"emb = {SDXL_TIME_DIM}-d sinusoidal (cos first, max period 10000); original = target = the pass's own image size "
            "(A1111 calculate_hr_conds uses SdConditioning(width=hr_upscale_to_x, height=hr_upscale_to_y) for the hires pass)",
            "empty_negative": "A1111 sd_models_xl.get_learned_conditioning: is_negative_prompt and all prompts '' -> "
            "force_zero_embeddings=['txt']: crossattn and pooled zeroed (size embeddings kept); holds for the hires pass too "
            "(its negative is SdConditioning(..., is_negative_prompt=True) and an empty hires negative falls back to the "
            "(empty) first-pass negative)",
            "unet_heads": "64 channels per head; transformer depth per level (1, 1, 2), mid block 2; no attention at level 0",
            "addition_time_embed_dim": f"{SDXL_TIME_DIM} (must be inferred from label_emb.0.0.weight: in = 16 + 6*{SDXL_TIME_DIM})",
            "alphas_cumprod_equal_to_sd_buffer": same_as_sd,
            "vae_decode": f"vae.decode(latent / {SDXL_SCALING})",
        },
        "layouts": {
            "diffusers/text_encoder": "CLIPTextModel in the CLASSIC layout: every key starts with 'text_model.'",
            "diffusers/text_encoder_2": (
                "CLIPTextModelWithProjection as transformers 5 saves it natively: keys 'text_model.*' + 'text_projection.weight' "
                "(transformers 5 flattened only CLIPTextModel; the WithProjection class keeps the text_model wrapper)"
                if native2_prefixed
                else "CLIPTextModelWithProjection as transformers 5 saves it natively (no 'text_model.' prefix)"
            ),
            "diffusers/tokenizer": "vocab.json + merges.txt, pad <|endoftext|>",
            "diffusers/tokenizer_2": "vocab.json + merges.txt, pad '!' (id 0)",
            "diffusers/scheduler": "EulerDiscreteScheduler, scaled_linear 0.00085/0.012, epsilon",
            "model_index": "StableDiffusionXLPipeline, force_zeros_for_empty_prompt true",
            "single_file": {
                "unet": UNET_P + " (add_embedding.linear_1/2 -> label_emb.0.0 / label_emb.0.2)",
                "vae": VAE_P + " (attention 1x1 conv weights 4-D)",
                "text_encoder": SDXL_CLIP_L_P + "text_model.* (HF names, plus int64 position_ids)",
                "text_encoder_2": SDXL_CLIP_G_P + " OpenCLIP names, all 3 resblocks, text_projection [16,16] = HF "
                "text_projection.weight transposed (pooled = x @ P), logit_scale []",
                "schedule_buffers": "none (real SDXL files have none)",
                "dtype": "float16 (position_ids int64)",
            },
        },
        "verification": ver,
        "scalars": {
            "scaling_factor": SDXL_SCALING,
            "beta_start": BETA_START, "beta_end": BETA_END, "num_train_timesteps": NUM_TRAIN_T,
            "sigma_min": rec.R["sigmas.model"][0].item(), "sigma_max": rec.R["sigmas.model"][-1].item(),
            "text_hidden": TEXT_HIDDEN, "text_heads": TEXT_HEADS, "context_dim": 2 * TEXT_HIDDEN,
            "pooled_dim": SDXL_POOLED, "addition_time_embed_dim": SDXL_TIME_DIM, "adm_in_channels": SDXL_POOLED + 6 * SDXL_TIME_DIM,
            "unet_block_out_channels": [32, 64, 64], "unet_transformer_depth": [1, 1, 2], "unet_head_channels": 64,
        },
        "tensors": tensors_json(rec),
    }
    write_json(os.path.join(out, "reference.json"), meta)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(readme("sdxl-tiny", "tiny random SDXL-base model + reference outputs", [
            "`diffusers/` — a normal diffusers `StableDiffusionXLPipeline` folder, fp16 (`force_zeros_for_empty_prompt` true): "
            "`text_encoder` CLIP-L style (16-d, 2 layers, quick_gelu, classic `text_model.` layout), `text_encoder_2` "
            "OpenCLIP-bigG style `CLIPTextModelWithProjection` (16-d, 3 layers, gelu, projection 16, transformers-5 native layout), "
            "UNet 32/64/64 (no attention at level 0, transformer depth 1/1/2, mid 2, 64-channel heads, context 32, "
            f"text_time embedding with addition_time_embed_dim {SDXL_TIME_DIM}), VAE 32/32 factor 2 scaling 0.13025, Euler scheduler.",
            "`sdxl-tiny.safetensors` — the same weights as one SGM/A1111 checkpoint, fp16: `model.diffusion_model.` (incl. "
            "`label_emb.0.0`/`label_emb.0.2`), `first_stage_model.`, `conditioner.embedders.0.transformer.text_model.` (CLIP-L), "
            "`conditioner.embedders.1.model.` (bigG, OpenCLIP layout); no schedule buffers.",
            "`reference.safetensors` + `reference.json` — CPU fp32 references: A1111 long-prompt conditioning for both encoders "
            "(crossattn, pooled), the SDXL vector y, UNet, VAE, sigma table, and a 2-pass Euler hires-fix run (48x32 -> 96x64) "
            "with an EMPTY negative prompt (zeroed, as A1111).",
            "Regenerate (offline, deterministic): `python3 scripts/make_family_reference.py`",
        ]))
    return {"verify": ver, "text": text, "alphas_same": same_as_sd, "te2_native_prefixed": native2_prefixed}


@torch.no_grad()
def make_sd1_long(data: str) -> dict:
    """Long-prompt references for the committed sd1-tiny model (reads its diffusers/ folder only)."""
    base = os.path.join(data, "sd1-tiny")
    ddir = os.path.join(base, "diffusers")
    tok = CLIPTokenizer.from_pretrained(os.path.join(ddir, "tokenizer"), local_files_only=True)
    te = CLIPTextModel.from_pretrained(os.path.join(ddir, "text_encoder"), local_files_only=True, dtype=torch.float32).eval()

    def encode1(ids):
        return te(input_ids=ids, output_hidden_states=True).last_hidden_state, None

    def encode2(ids):
        return te.final_layer_norm(te(input_ids=ids, output_hidden_states=True).hidden_states[-2]), None

    rec = Recorder()
    chunks, notes = build_chunks(tok, LONG)
    nchunks, nnotes = build_chunks(tok, NEGATIVE)
    if [n for _, _, n in chunks] != EXPECTED_LONG_CHUNK_TOKENS:
        raise AssertionError("sd1 long chunking differs")
    ids, w = chunk_ids(chunks, EOS), chunk_weights(chunks)
    nids, nw = chunk_ids(nchunks, EOS), chunk_weights(nchunks)
    rec.put("tokens.long.clip_l", ids, "int64 [3,77] CLIP ids of LONG per A1111 chunk (BOS + tokens + EOS padding + EOS)")
    rec.put("weights.long", w, "float32 [3,77] A1111 emphasis multipliers of LONG")
    rec.put("text.long", a1111_encode(ids, w, encode1)[0], "[1,231,32] per chunk last_hidden_state (clip_skip 1), Original emphasis, concatenated")
    rec.put("text.long.skip2", a1111_encode(ids, w, encode2)[0], "[1,231,32] clip_skip 2: final_layer_norm(hidden_states[-2]) per chunk, Original emphasis, concatenated")
    rec.put("text.negative", a1111_encode(nids, nw, encode1)[0], f"[1,77,32] NEGATIVE {NEGATIVE!r}, clip_skip 1, Original emphasis")
    check_finite(rec)
    save_file(rec.R, os.path.join(base, "long_prompt.safetensors"))
    meta = {
        "generator": "scripts/make_family_reference.py",
        "model": "tests/data/sd1-tiny/diffusers (text_encoder + tokenizer only)",
        "versions": versions(),
        "settings": {"long_prompt": LONG, "negative_prompt": NEGATIVE, "clip_skip": [1, 2]},
        "prompt_chunks": {"long": chunk_summary(chunks, notes), "negative": chunk_summary(nchunks, nnotes)},
        "conventions": {**PROMPT_CONVENTIONS, "clip_skip": "A1111: clip_skip n>1 -> final_layer_norm(hidden_states[-n]) before emphasis"},
        "tensors": tensors_json(rec),
    }
    write_json(os.path.join(base, "long_prompt.json"), meta)
    return {"chunks": chunks}


# ----------------------------------------------------------------------------
def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--data", "tests/data")
    bpe = clip_vocab.find_bpe_file(args.bpe)

    sd2 = make_sd2(args.data, bpe)
    sdxl = make_sdxl(args.data, bpe)
    make_sd1_long(args.data)

    # prompt structure
    print(f"LONG prompt: {LONG!r}")
    for (ids, ws, n), why in zip(sd2["text"]["long"]["chunks"], sd2["text"]["long"]["notes"]):
        print(f"  chunk: {n} prompt tokens, closed by {why}; weights {sorted(set(round(x, 6) for x in ws))}")

    # sizes
    paths = [os.path.join(args.data, d) for d in ("sd2-tiny", "sd2v-tiny", "sdxl-tiny")] + [
        os.path.join(args.data, "sd1-tiny", "long_prompt.safetensors"),
        os.path.join(args.data, "sd1-tiny", "long_prompt.json"),
    ]
    existing = {}
    for p, _, link in file_tree_sizes([os.path.join(args.data, "sd1-tiny", "diffusers")]):
        if not link:
            existing[sha256(p)] = p
    total = 0
    dup = 0
    for p, size, link in file_tree_sizes(paths):
        total += size
        tag = "symlink" if link else ("same bytes as " + os.path.relpath(existing[sha256(p)], args.data)) if sha256(p) in existing else ""
        if tag.startswith("same"):
            dup += size
        print(f"  {size:>10}  {os.path.relpath(p, args.data)}  {tag}")
    print(f"total {total} bytes ({total / 1e6:.2f} MB) in new files; {dup} bytes of it are byte-identical copies of "
          f"committed sd1-tiny files (git stores them once); new content {(total - dup) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
