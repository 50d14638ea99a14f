//! Counts the key holder's API requests by route and status, with their durations.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A request by route pattern and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route pattern (`/v1/sign/recipe`), or `unmatched`: never the raw path.
    pub route: String,
    /// HTTP status code.
    pub status: u16,
}

/// A route pattern.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route pattern, or `unmatched`.
    pub route: String,
}

/// The key holder's request metrics.
#[derive(Debug, Clone)]
pub struct KeyholderMetrics {
    /// `cloudpillar_keyholder_requests_total{route,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `cloudpillar_keyholder_request_duration_seconds{route}`.
    pub durations: Family<RouteLabel, Histogram>,
}

impl KeyholderMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::default();
        // 1 ms to about 16 s: local P-521 signatures take milliseconds, Key Vault round trips
        // and large blobs take longer.
        let durations = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        registry.register(
            "keyholder_requests",
            "Key API requests by route and status",
            requests.clone(),
        );
        registry.register(
            "keyholder_request_duration_seconds",
            "Key API request duration",
            durations.clone(),
        );
        Self {
            requests,
            durations,
        }
    }

    /// `router` with every request counted.
    pub fn layer(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), track))
    }
}

async fn track(State(metrics): State<KeyholderMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics
        .durations
        .get_or_create(&RouteLabel {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels { route, status })
        .inc();
    response
}
