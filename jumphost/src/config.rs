//! jumphost.toml. (Interface skeleton: the data-side helper replaces the body.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JumphostConfig {
    pub ssh_listen: SocketAddr,
    pub api_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policies_dir: PathBuf,
}

impl JumphostConfig {
    /// Reads and validates the file; relative paths are resolved against the file's folder.
    pub fn load(_path: &Path) -> anyhow::Result<Self> {
        anyhow::bail!("not implemented yet")
    }
}
