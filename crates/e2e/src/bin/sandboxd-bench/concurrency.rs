//! The concurrency figures (not written yet).

use anyhow::Result;

/// Measure and print the concurrency figures.
pub async fn run(_args: &super::Args) -> Result<()> {
    Ok(())
}
