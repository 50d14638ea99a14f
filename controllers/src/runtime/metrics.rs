//! Prometheus metrics. Labels hold static categories only, never object names or error text.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which controller a reconcile metric is about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `device`, `recipe`, `rollout` or `hub`.
    pub controller: &'static str,
}

/// A reconcile failure by controller and category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `device`, `recipe`, `rollout` or `hub`.
    pub controller: &'static str,
    /// The error's static category (see [`crate::Error::category`]).
    pub category: &'static str,
}

/// A count of things in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: String,
}

/// A twin write outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `written`, `etag_mismatch` or `failed`.
    pub outcome: &'static str,
}

/// A watched resource.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    /// Plural resource name, for example `devices`.
    pub resource: &'static str,
}

/// Every metric the operator exports, registered under the `cloudpillar` prefix.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `cloudpillar_reconciles_total{controller}`.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// `cloudpillar_reconcile_failures_total{controller,category}`.
    pub failures: Family<FailureLabels, Counter>,
    /// `cloudpillar_reconcile_duration_seconds{controller}`.
    pub durations: Family<ControllerLabel, Histogram>,
    /// `cloudpillar_devices{state}`: Devices by reported agent state (`UNKNOWN` when none).
    pub devices_by_state: Family<StateLabel, Gauge>,
    /// `cloudpillar_device_connections{state}`: Devices by connection state.
    pub devices_by_connection: Family<StateLabel, Gauge>,
    /// `cloudpillar_rollouts{state}`: Rollouts by phase.
    pub rollouts_by_phase: Family<StateLabel, Gauge>,
    /// `cloudpillar_rollout_devices{state}`: devices of all Rollouts by their phase in it.
    pub rollout_devices: Family<StateLabel, Gauge>,
    /// `cloudpillar_twin_writes_total{outcome}`.
    pub twin_writes: Family<OutcomeLabel, Counter>,
    /// `cloudpillar_watch_relists_total{resource}`: watches restarted from a fresh list.
    pub relists: Family<ResourceLabel, Counter>,
    /// `cloudpillar_leader`: 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cloudpillar");
        let reconciles = Family::default();
        let failures = Family::default();
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        let devices_by_state = Family::default();
        let devices_by_connection = Family::default();
        let rollouts_by_phase = Family::default();
        let rollout_devices = Family::default();
        let twin_writes = Family::default();
        let relists = Family::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that failed",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            durations.clone(),
        );
        registry.register(
            "devices",
            "Devices by reported state",
            devices_by_state.clone(),
        );
        registry.register(
            "device_connections",
            "Devices by connection state",
            devices_by_connection.clone(),
        );
        registry.register("rollouts", "Rollouts by phase", rollouts_by_phase.clone());
        registry.register(
            "rollout_devices",
            "Devices of all Rollouts by phase",
            rollout_devices.clone(),
        );
        registry.register("twin_writes", "Twin writes by outcome", twin_writes.clone());
        registry.register(
            "watch_relists",
            "Watches restarted from a list",
            relists.clone(),
        );
        registry.register("leader", "1 while this replica leads", leader.clone());
        Self {
            registry,
            reconciles,
            failures,
            durations,
            devices_by_state,
            devices_by_connection,
            rollouts_by_phase,
            rollout_devices,
            twin_writes,
            relists,
            leader,
        }
    }

    /// Counts a reconcile of `controller` that took `elapsed`.
    pub fn reconciled(&self, controller: &'static str, elapsed: Duration) {
        let label = ControllerLabel { controller };
        self.reconciles.get_or_create(&label).inc();
        self.durations
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a failed reconcile of `controller`.
    pub fn failed(&self, controller: &'static str, category: &'static str) {
        self.failures
            .get_or_create(&FailureLabels {
                controller,
                category,
            })
            .inc();
    }

    /// Counts a twin write outcome.
    pub fn twin_write(&self, outcome: &'static str) {
        self.twin_writes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Replaces a gauge family's values with `counts`, so states no longer seen drop to 0.
    pub fn set_counts(family: &Family<StateLabel, Gauge>, counts: &[(String, i64)]) {
        family.clear();
        for (state, count) in counts {
            family
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*count);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "could not encode metrics");
        }
        text
    }
}
