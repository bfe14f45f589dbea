//! `assist-jumphost serve`. (Interface skeleton: the SSH-side helper replaces the body.)

use std::path::Path;

pub fn run(_config: &Path) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
