//! transformers `CLIPTextModel` / `CLIPTextModelWithProjection` keys → the model's keys
//! (`{prefix}text_model.*`, `{prefix}text_projection.weight`). Both layouts on disk are read:
//! with the `text_model.` level (transformers < 5, every published SD file) and without it
//! (transformers ≥ 5, and single files saved with transformers < 4.19).

/// `key` relative to the encoder (diffusers file key, or a single-file key with the LDM
/// prefix stripped) → the model key under `prefix`.
pub fn text_encoder_key(prefix: &str, key: &str) -> Option<String> {
    if key.ends_with("position_ids") {
        return None;
    }
    if key == "text_projection.weight" || key.starts_with("text_model.") {
        return Some(format!("{prefix}{key}"));
    }
    let known = ["embeddings.", "encoder.", "final_layer_norm."];
    known
        .iter()
        .any(|k| key.starts_with(k))
        .then(|| format!("{prefix}text_model.{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_transformers_layouts_land_on_the_same_key() {
        let p = "cond_stage_model.transformer.";
        let want = Some(
            "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight".to_string(),
        );
        assert_eq!(
            text_encoder_key(p, "text_model.encoder.layers.0.mlp.fc1.weight"),
            want
        );
        assert_eq!(text_encoder_key(p, "encoder.layers.0.mlp.fc1.weight"), want);
        assert_eq!(
            text_encoder_key("x.", "text_projection.weight").as_deref(),
            Some("x.text_projection.weight")
        );
        assert_eq!(
            text_encoder_key(p, "text_model.embeddings.position_ids"),
            None
        );
        assert_eq!(text_encoder_key(p, "logit_scale"), None);
    }
}
