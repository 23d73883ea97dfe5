//! `cargo xtask bench`: jitproxy against a direct connection and HAProxy.

use anyhow::Result;

#[derive(Debug, clap::Args)]
pub struct Options {}

pub fn run(_options: &Options) -> Result<()> {
    anyhow::bail!("not written yet")
}
