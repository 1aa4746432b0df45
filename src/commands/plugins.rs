//! `hiresfix plugins`: every plugin found, what it registers, and why any was refused.
use anyhow::Result;

use crate::registry::{self, Registry};

pub fn run() -> Result<()> {
    let registry = Registry::load(&[], &Default::default());
    for plugin in &registry.plugins {
        println!(
            "{}  (host-api {}, libtorch {})",
            plugin.file.display(),
            plugin.handshake.host_api_version,
            plugin.handshake.torch_version
        );
        for (kind, name) in &plugin.names {
            println!("    {kind:<9} {name}");
        }
    }
    // Model upscalers from $HIRESFIX_UPSCALER_PATH, described by the plugin that runs them.
    let models = crate::upscaler_models::scan(&crate::upscaler_models::dirs(&[]));
    if let Ok(runner) = registry::find(&registry.upscalers, "model", "upscaler") {
        for model in &models {
            let what = runner
                .decl
                .run_describe(&model.options())
                .unwrap_or_else(|e| e.to_string());
            println!("{}  upscaler {}: {what}", model.path.display(), model.stem);
        }
    }
    for refusal in &registry.refused {
        println!("{}  REFUSED: {}", refusal.file.display(), refusal.reason);
    }
    if registry.plugins.is_empty() && registry.refused.is_empty() {
        println!(
            "no plugins found; searched: {}",
            registry::search_dirs(&[])
                .iter()
                .map(|(d, _)| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
