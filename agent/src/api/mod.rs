//! The loopback REST API for the application beside the agent (one file per route).

pub mod add_recipe;
pub mod auth;
pub mod get_device_state;
pub mod initiate_provisioning;
pub mod json;
pub mod run_diagnostics;
pub mod set_busy;
pub mod set_ready;
pub mod tls;
pub mod update_reported_props;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::routing::{get, post, put};
use serde_json::Value;
use utoipa::OpenApi;

use crate::engine::Engine;
use crate::reported::Reported;
use crate::state::Device;

/// API version served under `/api/v1`.
pub const API_VERSION: &str = "v1";

/// What the API asks of the hub link.
#[async_trait::async_trait]
pub trait LinkControl: Send + Sync + std::fmt::Debug {
    /// Provisions through DPS with `registration_id` and connects to the assigned hub.
    async fn provision(&self, registration_id: String) -> Result<(), String>;
    /// Disconnects (BUSY).
    async fn pause(&self);
    /// Reconnects with fresh credentials (READY).
    async fn resume(&self);
    /// The device id in use, once known.
    fn device_id(&self) -> Option<String>;
    /// The last desired section applied.
    fn desired(&self) -> Value;
    /// Runs the diagnostics round trip; the report, or the step that failed with the report.
    async fn run_diagnostics(&self) -> Result<Value, run_diagnostics::DiagnosticsFailed>;
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// Value expected in `CP-SECRET-KEY`.
    pub secret: String,
    /// Configured device id, if any.
    pub configured_id: Option<String>,
    /// The state machine.
    pub device: Arc<Device>,
    /// The reported document.
    pub reported: Arc<Reported>,
    /// The recipe engine.
    pub engine: Arc<Engine>,
    /// The hub link; `None` when the agent has no hub or DPS configured.
    pub link: Option<Arc<dyn LinkControl>>,
    /// Desired section when no link exists.
    pub offline_desired: RwLock<Value>,
    /// Held while a diagnostics run is in progress.
    pub diagnostics: tokio::sync::Mutex<()>,
}

impl ApiState {
    /// The device id callers must send, once known.
    pub fn device_id(&self) -> Option<String> {
        self.link
            .as_ref()
            .and_then(|l| l.device_id())
            .or_else(|| self.configured_id.clone())
    }
}

/// The OpenAPI document of the API.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "CloudPillar agent local API", version = "1"),
    paths(
        initiate_provisioning::handle,
        set_busy::handle,
        set_ready::handle,
        update_reported_props::handle,
        get_device_state::handle,
        add_recipe::handle,
        run_diagnostics::handle,
    ),
    components(schemas(json::ErrorBody, crate::state::DeviceState))
)]
pub struct ApiDoc;

/// Builds the router: the seven routes behind the credential and BUSY guard, and the
/// OpenAPI document at `/api/v1/openapi.json`.
pub fn router(state: Arc<ApiState>) -> Router {
    let guarded = Router::new()
        .route("/InitiateProvisioning", post(initiate_provisioning::handle))
        .route("/SetBusy", post(set_busy::handle))
        .route("/SetReady", post(set_ready::handle))
        .route("/UpdateReportedProps", put(update_reported_props::handle))
        .route("/GetDeviceState", get(get_device_state::handle))
        .route("/AddRecipe", post(add_recipe::handle))
        .route("/RunDiagnostics", get(run_diagnostics::handle))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::guard,
        ))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(ApiDoc::openapi()) }),
        );
    Router::new()
        .nest(&format!("/api/{API_VERSION}"), guarded)
        .layer(axum::extract::DefaultBodyLimit::max(json::BODY_LIMIT))
        .with_state(state)
}

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is not loopback.
    #[error("refusing to serve the local API on non-loopback address {0}")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("failed to bind the local API on {addr}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS certificate could not be made or loaded.
    #[error("failed to prepare the local API certificate")]
    Tls(#[from] tls::TlsError),
}

/// Binds the API on `addr` (loopback only) and returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    tls_dir: Option<std::path::PathBuf>,
    state: Arc<ApiState>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let app = router(state).into_make_service();
    let task = match tls_dir {
        Some(dir) => {
            let config = tls::server_config(&dir).await?;
            let server = axum_server::from_tcp_rustls(listener, config)
                .map_err(|source| ServeError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(error) = server.serve(app).await {
                    tracing::error!(%error, "local API stopped");
                }
            })
        }
        None => {
            let server = axum_server::from_tcp(listener)
                .map_err(|source| ServeError::Bind { addr, source })?;
            tokio::spawn(async move {
                if let Err(error) = server.serve(app).await {
                    tracing::error!(%error, "local API stopped");
                }
            })
        }
    };
    tracing::info!(%bound, "local API listening");
    Ok((bound, task))
}
#[cfg(test)]
mod tests;
