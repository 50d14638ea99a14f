//! `/healthz`, `/readyz` and `/metrics` of the roles that run without the controllers: the
//! edge hub, streamer, writer and key holder. (The operator serves the same paths from the
//! controllers crate, where readiness follows leader election.)
//!
//! - `/healthz` answers 200 while the process serves requests at all.
//! - `/readyz` runs every registered check at once, each bounded by [`CHECK_TIMEOUT`], and
//!   answers 200 only when all of them pass; otherwise 503 with one line per failed
//!   dependency. Each run also sets `cloudpillar_dependency_up{dependency}`.
//! - `/metrics` is the role's registry in the Prometheus text format.

pub mod hub;
pub mod keyholder;
pub mod link;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Longest time one readiness check may take; kept below the chart's probe timeout (3 s) so
/// a hanging dependency shows up as "not ready" with its name, not as a probe timeout.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type CheckFn = Box<dyn Fn() -> CheckFuture + Send + Sync>;

/// The dependency a readiness gauge is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabel {
    /// Static name of the dependency, e.g. `hub`, `mongodb`, `blob_store`.
    pub dependency: &'static str,
}

/// A role's metrics registry and readiness checks, before they are served.
pub struct RoleHealth {
    registry: Registry,
    checks: Vec<(&'static str, CheckFn)>,
    up: Family<DependencyLabel, Gauge>,
}

impl std::fmt::Debug for RoleHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("RoleHealth")
            .field("checks", &names)
            .finish_non_exhaustive()
    }
}

impl Default for RoleHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl RoleHealth {
    /// An empty registry under the `cloudpillar` prefix with the readiness gauge in it.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cloudpillar");
        let up = Family::<DependencyLabel, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the dependency answered the last readiness check",
            up.clone(),
        );
        Self {
            registry,
            checks: Vec::new(),
            up,
        }
    }

    /// The registry the role registers its own metrics in.
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Adds a readiness check; `check` is called for every `/readyz` request.
    pub fn check<F, Fut>(&mut self, dependency: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.checks
            .push((dependency, Box::new(move || Box::pin(check()))));
    }

    /// Runs every check at once; the failures, by dependency, with their error chains.
    pub async fn failures(&self) -> Vec<(&'static str, String)> {
        let runs = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(format!("{error:#}")),
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (*name, outcome)
        });
        let mut failed = Vec::new();
        for (dependency, outcome) in futures::future::join_all(runs).await {
            let label = DependencyLabel { dependency };
            self.up
                .get_or_create(&label)
                .set(i64::from(outcome.is_ok()));
            if let Err(reason) = outcome {
                failed.push((dependency, reason));
            }
        }
        failed
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "could not encode metrics");
        }
        text
    }

    /// Serves the three paths on `addr` until `shutdown` is cancelled; returns the bound
    /// address (port 0 picks one).
    pub async fn serve(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let app = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(Arc::new(self));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(error) = server.await {
                tracing::warn!(%error, "metrics and health server stopped");
            }
        });
        tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
        Ok(bound)
    }
}

async fn ready(State(health): State<Arc<RoleHealth>>) -> impl IntoResponse {
    let failed = health.failures().await;
    if failed.is_empty() {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let mut body = String::from("not ready\n");
    for (dependency, reason) in &failed {
        tracing::debug!(dependency, %reason, "readiness check failed");
        body.push_str(&format!("{dependency}: {reason}\n"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn metrics(State(health): State<Arc<RoleHealth>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.encode(),
    )
}

/// Serves `health` on `addr` when one is configured; a role without `--metrics` serves
/// nothing.
pub async fn serve_if_configured(
    health: RoleHealth,
    addr: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let bound = health
        .serve(addr, shutdown)
        .await
        .map_err(|error| anyhow::anyhow!(error).context(format!("listening on {addr}")))?;
    Ok(Some(bound))
}

/// An embedded hub on plain loopback in a new directory, for the tests of the hub's metrics.
#[cfg(test)]
async fn loopback_hub() -> (tempfile::TempDir, cloudpillar_hub::HubHandle) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = cloudpillar_hub::HubConfig::new(dir.path());
    config.insecure_loopback = true;
    let hub = cloudpillar_hub::Hub::start(config)
        .await
        .expect("hub starts");
    (dir, hub)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        cloudpillar_backend::install_tls_provider();
        let response = reqwest::get(format!("http://{addr}{path}"))
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn readyz_names_the_dependency_that_fails_and_metrics_show_it() {
        let mut health = RoleHealth::new();
        health.check("hub", || async { Ok(()) });
        health.check("mongodb", || async { anyhow::bail!("connection refused") });
        let shutdown = CancellationToken::new();
        let addr = health
            .serve(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown.clone())
            .await
            .expect("serve");

        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("mongodb: connection refused"), "{body}");
        assert!(!body.contains("hub:"), "{body}");
        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            text.contains("cloudpillar_dependency_up{dependency=\"mongodb\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("cloudpillar_dependency_up{dependency=\"hub\"} 1"),
            "{text}"
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn readyz_is_ok_when_every_check_passes() {
        let mut health = RoleHealth::new();
        health.check("blob_store", || async { Ok(()) });
        let addr = health
            .serve(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                CancellationToken::new(),
            )
            .await
            .expect("serve");
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
    }

    #[tokio::test]
    async fn a_hanging_check_fails_after_the_timeout() {
        let mut health = RoleHealth::new();
        health.check("hub", std::future::pending);
        let failed = health.failures().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "hub");
        assert!(failed[0].1.contains("no answer"), "{failed:?}");
    }
}
