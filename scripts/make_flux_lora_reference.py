#!/usr/bin/env python3
"""Build tiny Flux LoRA files in the key layouts people download, for the tiny dev transformer of
scripts/make_flux_reference.py, and record diffusers' transformer output with each applied by
`FluxPipeline.load_lora_weights`.

    python3 scripts/make_flux_lora_reference.py [--data tests/data]

Reads --data/flux-tiny/dev/transformer (run make_flux_reference.py first) and the `square` case
inputs of --data/flux-tiny/dev/reference.safetensors. Writes under --data/flux-tiny/dev/lora/:
  kohya.safetensors
        sd-scripts / kohya layout: `lora_unet_double_blocks_N_img_attn_qkv.lora_down.weight`,
        `.lora_up.weight`, `.alpha` (alpha != rank, different per layer), fused qkv whole.
        Every double-block linear and the single blocks' `linear2` and `modulation_lin`; not the
        single blocks' `linear1` nor the top-level layers: diffusers' converter splits `linear1`
        with Flux.1's real widths hard-coded (dims=[3072, 3072, 3072, 12288]) and drops
        top-level layers (`x_embedder`, ... without the `transformer.` prefix its loader keeps).
  comfy.safetensors
        the same layout under Black Forest Labs' dotted names behind `diffusion_model.`
        (ComfyUI's): `diffusion_model.double_blocks.N.img_attn.qkv.lora_down.weight`, other
        random values, rank 2.
  diffusers.safetensors
        diffusers / peft layout as diffusers' own training scripts save it
        (`FluxPipeline.save_lora_weights` of a peft adapter with `lora_alpha` 6 over rank 4, kept in
        the `lora_adapter_metadata` JSON): `transformer.transformer_blocks.N.attn.to_q.lora_A.
        weight`, `transformer.single_transformer_blocks.N.proj_mlp.lora_B.weight`, ... every
        linear of the transformer, q/k/v (and the MLP input) separate where the model fuses them,
        the final modulation under diffusers' (scale, shift) order.
  reference.safetensors
        the inputs of one transformer call (`packed`, `timestep`, `guidance`, `context`, `pooled`,
        `img_ids`, `txt_ids`: the `square` case, batch 2) and the transformer's output with
        `base` no LoRA, `kohya` (weight 1), `comfy` (weight 1), `diffusers` (weight 0.7:
        `set_adapters`) and `kohya+diffusers` (weights 1 and 0.7 together).
Also, for the Flux backend's LoRA wiring through the host (the pipeline's own transformer is
another random model of the same widths, so the files above fit it):
  --data/flux-tiny/pipeline/dev/lora-reference.safetensors
        one denoiser call of the tiny dev pipeline of make_flux_pipeline_reference.py
        (run it first) in the host's terms: `input.latent` [1, 16, 16, 24] (48x32 px),
        `input.sigma`, `input.guidance` (3.5), the conditioning its reference.safetensors
        holds (`text.prompt`, `text.pooled`: not copied), and D(x, sigma) = x - sigma * v (v the transformer's
        velocity of the packed latent, unpacked) with `base` no LoRA, `kohya` kohya.safetensors
        at weight 1 and `kohya@0.5` at 0.5 (`load_lora_weights` + `set_adapters`).
LoRA tensors are fp32 (kohya's converter multiplies by alpha/rank in the file's dtype: in fp16
that rounding alone is 5e-4). Offline, CPU, fp32, deterministic: the same tensors and metadata
on every run (the safetensors writer may order diffusers.safetensors' two metadata keys either
way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from diffusers import FluxPipeline, FluxTransformer2DModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from safetensors import safe_open  # noqa: E402

SEED = 3132
INPUTS = ["packed", "timestep", "guidance", "context", "pooled", "img_ids", "txt_ids"]
DOUBLE = ["img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
          "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin"]
SINGLE = ["linear2", "modulation_lin"]
PEFT_RANK, PEFT_ALPHA = 4, 6.0
PEFT_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear",
    "norm1_context.linear", "proj_mlp", "proj_out", "norm.linear", "x_embedder",
    "context_embedder", "linear_1", "linear_2", "norm_out.linear",
]


def bfl_shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """The BFL-named linear weights' shapes of a diffusers state dict (blocks only)."""
    d = sd["x_embedder.weight"].shape[0]
    hidden = sd["transformer_blocks.0.ff.net.0.proj.weight"].shape[0]
    n_double = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    n_single = len({k.split(".")[1] for k in sd if k.startswith("single_transformer_blocks.")})
    out = {}
    for i in range(n_double):
        for s in ("img", "txt"):
            out[f"double_blocks.{i}.{s}_attn.qkv"] = (3 * d, d)
            out[f"double_blocks.{i}.{s}_attn.proj"] = (d, d)
            out[f"double_blocks.{i}.{s}_mlp.0"] = (hidden, d)
            out[f"double_blocks.{i}.{s}_mlp.2"] = (d, hidden)
            out[f"double_blocks.{i}.{s}_mod.lin"] = (6 * d, d)
    for i in range(n_single):
        out[f"single_blocks.{i}.linear2"] = (d, d + hidden)
        out[f"single_blocks.{i}.modulation.lin"] = (3 * d, d)
    return out


def kohya_style(shapes, gen, rank, alphas, name) -> dict[str, torch.Tensor]:
    """lora_down / lora_up / alpha per layer, the layer named by `name(bfl_module)`."""
    out = {}
    for j, (module, (rows, cols)) in enumerate(sorted(shapes.items())):
        key = name(module)
        out[f"{key}.lora_down.weight"] = torch.randn(rank, cols, generator=gen) / cols ** 0.5
        out[f"{key}.lora_up.weight"] = torch.randn(rows, rank, generator=gen) / rank ** 0.5
        out[f"{key}.alpha"] = torch.tensor(alphas[j % len(alphas)])
    return out


def peft_file(base: FluxTransformer2DModel, path: str) -> None:
    """A peft adapter with random A and B, saved as diffusers' training scripts save it."""
    model = FluxTransformer2DModel.from_config(base.config)
    model.load_state_dict(base.state_dict())
    torch.manual_seed(SEED + 2)
    config = LoraConfig(r=PEFT_RANK, lora_alpha=PEFT_ALPHA, target_modules=PEFT_TARGETS,
                        init_lora_weights=False)
    model.add_adapter(config)
    layers = get_peft_model_state_dict(model)
    metadata = config.to_dict()
    # peft keeps target_modules as a set: sorted, the file is the same on every run.
    metadata["target_modules"] = sorted(metadata["target_modules"])
    FluxPipeline.save_lora_weights(os.path.dirname(path), transformer_lora_layers=layers,
                                   weight_name=os.path.basename(path),
                                   transformer_lora_adapter_metadata=metadata)


def pipeline(transformer: FluxTransformer2DModel) -> FluxPipeline:
    return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def pipeline_reference(data: str, kohya_path: str) -> None:
    """The denoiser outputs of the tiny dev pipeline with kohya.safetensors (see the docstring)."""
    pipe_dir = os.path.join(data, "flux-tiny", "pipeline", "dev")
    refs = load_file(os.path.join(pipe_dir, "reference.safetensors"))
    transformer = FluxTransformer2DModel.from_pretrained(
        os.path.join(pipe_dir, "diffusers", "transformer"), torch_dtype=torch.float32).eval()
    pipe = pipeline(transformer)
    gen = torch.Generator().manual_seed(SEED + 7)
    latent = torch.randn(1, 16, 16, 24, generator=gen)
    sigma = torch.tensor([0.75])
    guidance = torch.tensor([3.5])
    context, pooled = refs["text.prompt"], refs["text.pooled"]
    b, c, h, w = latent.shape

    def denoised() -> torch.Tensor:
        packed = FluxPipeline._pack_latents(latent, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32)
        txt_ids = torch.zeros(context.shape[1], 3)
        with torch.no_grad():
            v = transformer(hidden_states=packed, timestep=sigma, guidance=guidance,
                            pooled_projections=pooled, encoder_hidden_states=context,
                            txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        v = FluxPipeline._unpack_latents(v, h * 2, w * 2, 2)
        return latent - sigma.view(1, 1, 1, 1) * v

    out = {"input.latent": latent, "input.sigma": sigma, "input.guidance": guidance,
           "base.output": denoised()}
    pipe.load_lora_weights(kohya_path, adapter_name="kohya")
    for label, weight in (("kohya", 1.0), ("kohya@0.5", 0.5)):
        pipe.set_adapters(["kohya"], adapter_weights=[weight])
        out[f"{label}.output"] = denoised()
        change = (out[f"{label}.output"] - out["base.output"]).abs().max() / out["base.output"].abs().max()
        print(f"pipeline {label}: LoRA changes D by {change:.3f} (max, relative)", file=sys.stderr)
        assert change > 0.01, label
    save_file({k: v.contiguous() for k, v in out.items()},
              os.path.join(pipe_dir, "lora-reference.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="tests/data")
    args = ap.parse_args()
    dev = os.path.join(args.data, "flux-tiny", "dev")
    out_dir = os.path.join(dev, "lora")
    os.makedirs(out_dir, exist_ok=True)
    refs = load_file(os.path.join(dev, "reference.safetensors"))
    inputs = {k: refs[f"square.{k}"] for k in INPUTS}

    transformer = FluxTransformer2DModel.from_pretrained(
        os.path.join(dev, "transformer"), torch_dtype=torch.float32).eval()
    base_sd = {k: v.clone() for k, v in transformer.state_dict().items()}
    shapes = bfl_shapes(base_sd)
    gen = torch.Generator().manual_seed(SEED)
    kohya = kohya_style(shapes, gen, 4, [2.0, 8.0, 3.0],
                        lambda m: "lora_unet_" + m.replace(".", "_"))
    save_file(kohya, os.path.join(out_dir, "kohya.safetensors"))
    comfy = kohya_style(shapes, gen, 2, [1.0, 5.0], lambda m: "diffusion_model." + m)
    save_file(comfy, os.path.join(out_dir, "comfy.safetensors"))
    peft_file(transformer, os.path.join(out_dir, "diffusers.safetensors"))
    with safe_open(os.path.join(out_dir, "diffusers.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        assert meta["transformer.lora_alpha"] == PEFT_ALPHA, meta
        n_peft = len(list(f.keys())) // 2

    pipe = pipeline(transformer)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return transformer(
                hidden_states=inputs["packed"], encoder_hidden_states=inputs["context"],
                pooled_projections=inputs["pooled"], timestep=inputs["timestep"],
                img_ids=inputs["img_ids"], txt_ids=inputs["txt_ids"],
                guidance=inputs["guidance"], return_dict=False)[0]

    out = {f"input.{k}": v for k, v in inputs.items()}
    out["base.output"] = run()
    for name in ("kohya", "comfy", "diffusers"):
        pipe.load_lora_weights(os.path.join(out_dir, f"{name}.safetensors"), adapter_name=name)
    # Every layer of each file became a LoRA layer of the model (nothing silently dropped).
    for name, want in (("kohya", len(kohya) // 3), ("comfy", len(comfy) // 3), ("diffusers", n_peft)):
        # kohya's fused qkv becomes three peft layers (q, k, v).
        got = sum(1 for m in transformer.modules() if hasattr(m, "lora_A") and name in m.lora_A)
        fused = sum(1 for k in (kohya if name == "kohya" else comfy if name == "comfy" else {})
                    if k.endswith("qkv.lora_down.weight"))
        assert got == want + 2 * fused, f"{name}: {got} LoRA layers, expected {want + 2 * fused}"
    assert pipe.transformer.peft_config["diffusers"].lora_alpha == PEFT_ALPHA
    for label, names, weights in (("kohya", ["kohya"], [1.0]), ("comfy", ["comfy"], [1.0]),
                                  ("diffusers", ["diffusers"], [0.7]),
                                  ("kohya+diffusers", ["kohya", "diffusers"], [1.0, 0.7])):
        pipe.set_adapters(names, adapter_weights=weights)
        out[f"{label}.output"] = run()
        change = (out[f"{label}.output"] - out["base.output"]).abs().max() / out["base.output"].abs().max()
        print(f"{label}: LoRA changes the output by {change:.3f} (max, relative)", file=sys.stderr)
        assert change > 0.05, label
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(out_dir, "reference.safetensors"))
    pipeline_reference(args.data, os.path.join(out_dir, "kohya.safetensors"))


if __name__ == "__main__":
    main()
