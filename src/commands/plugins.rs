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
