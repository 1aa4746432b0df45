#!/usr/bin/env python3
"""fp8 (E4M3) Flux transformer files and the 2-pass run diffusers makes on their weights.

    python3 scripts/make_flux_fp8_reference.py [--out tests/data/flux-tiny/pipeline/dev/fp8]

Civitai's and Kijai's `flux1-dev-fp8.safetensors` store the transformer's linear weights as
F8_E4M3 (the rest bf16/fp16); ComfyUI's `*_fp8_scaled` files store each linear weight divided
by a per-tensor scale (`X.scale_weight`, fp32; amax / 448 here) and mark the file with a
`scaled_fp8` tensor (comfy/model_detection.py, comfy/ops.py `scaled_fp8_op`: the weight used is
`X.weight * X.scale_weight`). This script makes both from the tiny dev transformer of
scripts/make_flux_pipeline_reference.py (run that first):

  flux1-dev-tiny-fp8.safetensors         BFL names, every 2-D `.weight` cast to float8_e4m3fn
                                         (torch's round-to-nearest-even), the rest fp16
  t5xxl_fp8_e4m3fn.safetensors           the tiny T5's projections so (ComfyUI's t5xxl_fp8_e4m3fn)
  flux1-dev-tiny-fp8-scaled.safetensors  the same weights as (w / scale) in fp8 with
                                         `X.scale_weight` beside them and `scaled_fp8`
  t5xxl_fp8_e4m3fn_scaled.safetensors    the tiny T5 so (ComfyUI's t5xxl_fp8_e4m3fn_scaled)
  reference.safetensors, reference.json  for each file (`fp8.`, `scaled.`): the weights as
                                         ComfyUI dequantizes them (fp8 -> fp32, times the scale),
                                         renamed to diffusers by diffusers' own
                                         convert_flux_transformer_checkpoint_to_diffusers (its
                                         hard-coded Flux.1 width set to the tiny model's), and
                                         the 2-pass run of make_flux_pipeline_reference.py
                                         (FluxPipeline -> FluxImg2ImgPipeline, guidance 3.5)
                                         with that transformer and T5: run.latent1, run.latent2,
                                         run.image; plus how far each moved from the fp16 run

Everything runs on CPU in float32, offline and deterministically.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_sd1_reference as sd1  # noqa: E402  (offline environment first)
import make_flux_pipeline_reference as fp  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from diffusers import FluxPipeline  # noqa: E402
import diffusers.loaders.single_file_utils as single_file_utils  # noqa: E402
import inspect  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "flux-tiny", "pipeline", "dev")
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max


def to_diffusers(bfl: dict, width: int) -> dict:
    """diffusers' convert_flux_transformer_checkpoint_to_diffusers, its Flux.1 width (the
    hard-coded `inner_dim = 3072`) replaced by the tiny model's."""
    source = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
    if source.count("inner_dim = 3072") != 1:
        raise AssertionError("diffusers' converter changed: check its inner_dim")
    scope = dict(vars(single_file_utils))
    exec(source.replace("inner_dim = 3072", f"inner_dim = {width}"), scope)
    return scope["convert_flux_transformer_checkpoint_to_diffusers"](dict(bfl))


def is_linear(name: str, t: torch.Tensor) -> bool:
    """A linear layer's weight: every 2-D weight of the transformer; T5's attention and MLP
    projections (not its embeddings: `shared`, `relative_attention_bias`)."""
    if not name.endswith(".weight") or t.ndim != 2:
        return False
    if name == "shared.weight" or name.startswith("encoder."):
        return "relative_attention_bias" not in name and ("SelfAttention." in name or "DenseReluDense." in name)
    return True


def quantized(tensors: dict, scaled: bool) -> tuple[dict, dict]:
    """(the file's tensors, the fp32 weights ComfyUI computes with)."""
    stored, used = {}, {}
    for name, t in tensors.items():
        w = t.float()
        if not is_linear(name, w):
            stored[name], used[name] = t, w
            continue
        if scaled:
            scale = (w.abs().max() / FP8_MAX).reshape([])
            q = (w / scale).to(FP8)
            stored[name] = q
            stored[name[: -len(".weight")] + ".scale_weight"] = scale
            used[name] = q.float() * scale
        else:
            q = w.to(FP8)
            stored[name], used[name] = q, q.float()
    if scaled:
        stored["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return stored, used


@torch.no_grad()
def main() -> None:
    args = sd1.parse_args_and_setup(__doc__, "--out", os.path.join(HERE, "fp8"))
    os.makedirs(args.out, exist_ok=True)
    bfl = load_file(os.path.join(HERE, "flux1-dev-tiny.safetensors"))
    pipe = FluxPipeline.from_pretrained(os.path.join(HERE, "diffusers"), local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base = load_file(os.path.join(HERE, "reference.safetensors"))
    rec, checks = sd1.Recorder(), {}
    width = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    # The converter (with the tiny width) gives the pipeline's own weights back from the file.
    sd1.assert_same("BFL file -> diffusers", to_diffusers({k: v.float() for k, v in bfl.items()}, width),
                    dict(pipe.transformer.state_dict()))
    t5 = load_file(os.path.join(HERE, "..", "t5xxl.safetensors"))
    for key, file, t5_file, scaled in [
        ("fp8", "flux1-dev-tiny-fp8.safetensors", "t5xxl_fp8_e4m3fn.safetensors", False),
        ("scaled", "flux1-dev-tiny-fp8-scaled.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", True),
    ]:
        stored, used = quantized(bfl, scaled)
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(args.out, file))
        pipe.transformer.load_state_dict(to_diffusers(used, width), strict=True)
        stored, used = quantized(t5, scaled)
        save_file({k: v.contiguous() for k, v in stored.items()}, os.path.join(args.out, t5_file))
        missing, unexpected = pipe.text_encoder_2.load_state_dict(used, strict=False)
        if unexpected or set(missing) != {"encoder.embed_tokens.weight"}:
            raise AssertionError(f"T5 weights: missing {missing}, unexpected {unexpected}")
        run = sd1.Recorder()
        got = fp.references(pipe, "dev", run)
        checks.update({f"{key}.{k}": v for k, v in got.items()})
        for name in ("run.latent1", "run.latent2", "run.image"):
            rec.put(f"{key}.{name}", run.R[name], f"{file}: {run.D[name]}")
            checks[f"{key}.{name}_vs_fp16"] = fp.max_rel(run.R[name], base[name])
    fp.write_reference(args.out, rec, "scripts/make_flux_fp8_reference.py", "as ../reference.json (make_flux_pipeline_reference.py, dev)", checks)


if __name__ == "__main__":
    main()
