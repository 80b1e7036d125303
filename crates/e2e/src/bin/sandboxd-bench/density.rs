//! The density figures (not written yet).

use anyhow::Result;

/// Measure and print the density figures.
pub async fn run(_args: &super::Args) -> Result<()> {
    Ok(())
}
