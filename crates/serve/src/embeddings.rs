//! `GET /sdapi/v1/embeddings`, in A1111's shape (`{"loaded": {name: {step, sd_checkpoint,
//! sd_checkpoint_name, shape, vectors}}, "skipped": {...}}`): the files below --embeddings and
//! `$HIRESFIX_EMBEDDING_PATH` as the current model reads them (loaded, or skipped: another
//! family's width, a pickle to convert). The model is loaded on the generation thread if it is
//! not yet, as A1111 lists its loaded model's set. `POST /refresh-embeddings` has nothing to
//! do: the folders are read on every request.
use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use hiresfix_engine::generate::{LoadSettings, Models};
use hiresfix_engine::profile::Profile;
use host_api::EmbeddingState;

use super::error::{ApiError, ApiResult};
use super::worker::Outcome;
use super::Shared;

pub async fn list(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let mut profile = Profile::empty();
    profile.embedding_dirs = state.embedding_dirs();
    let dirs = hiresfix_engine::embeddings::dirs(&profile, std::path::Path::new("."));
    let files = hiresfix_engine::embeddings::files(&dirs);
    if files.is_empty() {
        return Ok(Json(json!({"loaded": {}, "skipped": {}})));
    }
    let checkpoint = state.default_checkpoint()?;
    profile.device = state.device.clone();
    profile.dtype = state.dtype;
    let settings =
        LoadSettings::from_profile(&profile).map_err(|e| ApiError::internal(e.to_string()))?;
    let (tx, rx) = oneshot::channel();
    let chore = move |models: &mut Models<'_>| {
        let states = models
            .get(&settings, &checkpoint.path, None, &[])
            .and_then(|(model, _)| Ok(models.set_embeddings(&model, &files)?));
        let _ = tx.send(states.map_err(|e| format!("{}: {e}", checkpoint.filename)));
        Outcome::Done(Vec::new())
    };
    super::sdapi::run_chore(&state, Box::new(chore)).await?;
    let states = rx
        .await
        .map_err(|_| ApiError::internal("the generation thread stopped"))?
        .map_err(ApiError::internal)?;
    Ok(Json(listing(&states)))
}

/// The states as A1111's two maps; what a file does not say is `null`.
fn listing(states: &[EmbeddingState]) -> Value {
    let (mut loaded, mut skipped) = (Map::new(), Map::new());
    for s in states {
        let text = |t: &str| (!t.is_empty()).then(|| t.to_owned());
        let count = |n: u32| (n > 0).then_some(n);
        let entry = json!({
            "step": (s.step >= 0).then_some(s.step),
            "sd_checkpoint": text(s.sd_checkpoint.as_str()),
            "sd_checkpoint_name": text(s.sd_checkpoint_name.as_str()),
            "shape": count(s.shape),
            "vectors": count(s.vectors),
        });
        match s.loaded {
            true => loaded.insert(s.name.to_string(), entry),
            false => skipped.insert(s.name.to_string(), entry),
        };
    }
    json!({"loaded": loaded, "skipped": skipped})
}
