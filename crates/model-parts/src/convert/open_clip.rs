//! OpenCLIP text-tower keys, as SD 2.x (`cond_stage_model.model.*`) and SDXL
//! (`conditioner.embedders.1.model.*`) single files store them, ↔ transformers' CLIP names:
//! the fused attention `in_proj_weight` splits into q/k/v, `text_projection` is transposed.
//! The table follows diffusers' `convert_open_clip_checkpoint`, read as a rename.
use super::Transform;

/// OpenCLIP resblock part → transformers' encoder-layer part.
const LAYER_PARTS: [(&str, &str); 6] = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.in_proj_", "self_attn.in_proj_"),
];

const QKV: [&str; 3] = ["q_proj", "k_proj", "v_proj"];

/// `key` relative to the encoder's LDM prefix → model keys under `prefix` with the transform
/// that makes each. Resblocks at or past `used_layers` are dropped (SD 2.x single files carry
/// a last layer the model never runs).
pub fn to_model(prefix: &str, key: &str, used_layers: usize) -> Vec<(String, Transform)> {
    let out = |k: String, t| vec![(format!("{prefix}{k}"), t)];
    match key {
        "token_embedding.weight" => {
            return out(
                "text_model.embeddings.token_embedding.weight".into(),
                Transform::AsIs,
            )
        }
        "positional_embedding" => {
            return out(
                "text_model.embeddings.position_embedding.weight".into(),
                Transform::AsIs,
            )
        }
        "text_projection" => return out("text_projection.weight".into(), Transform::Transpose),
        _ => {}
    }
    if let Some(rest) = key.strip_prefix("ln_final.") {
        return out(
            format!("text_model.final_layer_norm.{rest}"),
            Transform::AsIs,
        );
    }
    let Some(rest) = key.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((index, part)) = rest.split_once('.') else {
        return Vec::new();
    };
    let Ok(i) = index.parse::<usize>() else {
        return Vec::new();
    };
    if i >= used_layers {
        return Vec::new();
    }
    let layer = format!("text_model.encoder.layers.{i}.");
    for (ours, theirs) in LAYER_PARTS {
        let Some(tail) = part.strip_prefix(ours) else {
            continue;
        };
        if ours != "attn.in_proj_" {
            return out(format!("{layer}{theirs}{tail}"), Transform::AsIs);
        }
        // in_proj_weight / in_proj_bias: q, k, v stacked along dim 0.
        let leaf = if tail == "weight" { "weight" } else { "bias" };
        return QKV
            .iter()
            .zip(0..)
            .map(|(name, index)| {
                let t = Transform::Chunk { index, of: 3 };
                (format!("{prefix}{layer}self_attn.{name}.{leaf}"), t)
            })
            .collect();
    }
    Vec::new()
}

/// The inverse for writing single files: model tensors `(key relative to prefix, tensor)` of
/// one encoder → OpenCLIP keys and tensors (q/k/v fused, projection transposed).
pub fn from_model(tensors: &[(String, tch::Tensor)]) -> Vec<(String, tch::Tensor)> {
    let get = |k: &str| tensors.iter().find(|(name, _)| name == k).map(|(_, t)| t);
    let mut out = Vec::new();
    for (key, tensor) in tensors {
        let renamed = match key.as_str() {
            "text_model.embeddings.token_embedding.weight" => {
                Some("token_embedding.weight".to_string())
            }
            "text_model.embeddings.position_embedding.weight" => {
                Some("positional_embedding".into())
            }
            "text_projection.weight" => {
                out.push(("text_projection".to_string(), tensor.tr().contiguous()));
                None
            }
            k => k
                .strip_prefix("text_model.final_layer_norm.")
                .map(|rest| format!("ln_final.{rest}"))
                .or_else(|| layer_key(k)),
        };
        if let Some(name) = renamed {
            out.push((name, tensor.shallow_clone()));
        }
    }
    let layers: std::collections::BTreeSet<&str> = tensors
        .iter()
        .filter_map(|(k, _)| {
            let rest = k.strip_prefix("text_model.encoder.layers.")?;
            let (layer, part) = rest.split_once('.')?;
            part.starts_with("self_attn.q_proj.").then_some(layer)
        })
        .collect();
    for layer in layers {
        for leaf in ["weight", "bias"] {
            let parts: Vec<&tch::Tensor> = QKV
                .iter()
                .filter_map(|n| {
                    get(&format!(
                        "text_model.encoder.layers.{layer}.self_attn.{n}.{leaf}"
                    ))
                })
                .collect();
            if parts.len() == 3 {
                let fused = tch::Tensor::cat(&parts, 0);
                out.push((
                    format!("transformer.resblocks.{layer}.attn.in_proj_{leaf}"),
                    fused,
                ));
            }
        }
    }
    out
}

fn layer_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("text_model.encoder.layers.")?;
    let (index, part) = rest.split_once('.')?;
    LAYER_PARTS
        .iter()
        .filter(|(ours, _)| *ours != "attn.in_proj_")
        .find_map(|(ours, theirs)| {
            part.strip_prefix(theirs)
                .map(|tail| format!("transformer.resblocks.{index}.{ours}{tail}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_qkv_splits_into_three_slices() {
        let got = to_model("p.", "transformer.resblocks.3.attn.in_proj_weight", 24);
        assert_eq!(
            got,
            vec![
                (
                    "p.text_model.encoder.layers.3.self_attn.q_proj.weight".to_string(),
                    Transform::Chunk { index: 0, of: 3 }
                ),
                (
                    "p.text_model.encoder.layers.3.self_attn.k_proj.weight".to_string(),
                    Transform::Chunk { index: 1, of: 3 }
                ),
                (
                    "p.text_model.encoder.layers.3.self_attn.v_proj.weight".to_string(),
                    Transform::Chunk { index: 2, of: 3 }
                ),
            ]
        );
        assert_eq!(
            to_model("p.", "transformer.resblocks.3.mlp.c_proj.bias", 24),
            vec![(
                "p.text_model.encoder.layers.3.mlp.fc2.bias".to_string(),
                Transform::AsIs
            )]
        );
    }

    #[test]
    fn layers_past_the_used_ones_and_unknown_keys_are_dropped() {
        assert!(to_model("p.", "transformer.resblocks.23.ln_1.weight", 23).is_empty());
        assert!(to_model("p.", "logit_scale", 23).is_empty());
        assert_eq!(
            to_model("p.", "text_projection", 23),
            vec![("p.text_projection.weight".to_string(), Transform::Transpose)]
        );
    }

    #[test]
    fn writing_inverts_reading() {
        use tch::{Device, Kind, Tensor};
        let t = |n: i64| Tensor::arange(n, (Kind::Float, Device::Cpu));
        let model: Vec<(String, Tensor)> = vec![
            (
                "text_model.encoder.layers.0.self_attn.q_proj.bias".into(),
                t(2),
            ),
            (
                "text_model.encoder.layers.0.self_attn.k_proj.bias".into(),
                t(2) + 10,
            ),
            (
                "text_model.encoder.layers.0.self_attn.v_proj.bias".into(),
                t(2) + 20,
            ),
            ("text_model.encoder.layers.0.mlp.fc1.weight".into(), t(4)),
            ("text_projection.weight".into(), t(6).reshape([2, 3])),
        ];
        let written = from_model(&model);
        for (key, tensor) in &written {
            for (back, transform) in to_model("", key, 1) {
                let original = &model.iter().find(|(k, _)| *k == back).unwrap().1;
                assert!(transform.apply(tensor).equal(original), "{key} -> {back}");
            }
        }
        assert_eq!(written.len(), 3);
    }
}
