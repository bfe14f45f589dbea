//! Registration API. (Interface skeleton: the data-side helper replaces the body.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::policy::PolicyHandle;
use crate::store::Store;

#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub policy: PolicyHandle,
}

pub fn router(_state: ApiState) -> axum::Router {
    axum::Router::new()
}

/// Serves the API on an already-bound listener until `shutdown` fires.
pub async fn serve(
    _listener: tokio::net::TcpListener,
    _state: ApiState,
    _shutdown: CancellationToken,
) -> std::io::Result<()> {
    Ok(())
}
