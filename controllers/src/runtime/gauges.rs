//! Periodic gauges from the caches: devices by state and connection, rollouts by phase.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::{ConnectionState, Device, Rollout};
use kube::runtime::reflector::Store;

use super::metrics::Metrics;

/// How often the gauges are recomputed.
const PERIOD: Duration = Duration::from_secs(15);

/// Agent states a device may report; anything else is counted as `OTHER`, so a device can
/// never add label values of its own.
const DEVICE_STATES: [&str; 13] = [
    "PROVISIONING",
    "READY",
    "BUSY",
    "PATCH_INTRANSIT",
    "PATCH_READY",
    "PATCH_WAITCONFIRM",
    "PATCH_APPLYING",
    "UPDATE_INTRANSIT",
    "UPDATE_READY",
    "UPDATE_WAITCONFIRM",
    "UPDATE_APPLYING",
    "UPLOAD_INTRANSIT",
    "ACTION_INPROGRESS",
];

/// Recomputes the gauges every [`PERIOD`] until aborted.
pub async fn run(devices: Store<Device>, rollouts: Store<Rollout>, metrics: Arc<Metrics>) {
    loop {
        update(&devices, &rollouts, &metrics);
        tokio::time::sleep(PERIOD).await;
    }
}

/// One recomputation.
pub fn update(devices: &Store<Device>, rollouts: &Store<Rollout>, metrics: &Metrics) {
    let mut states: BTreeMap<&str, i64> = BTreeMap::new();
    let mut connections: BTreeMap<&str, i64> = BTreeMap::new();
    for device in devices.state() {
        let status = device.status.as_ref();
        let state = status
            .and_then(|s| s.device_state.as_deref())
            .map_or("UNKNOWN", |s| {
                DEVICE_STATES
                    .iter()
                    .copied()
                    .find(|known| *known == s)
                    .unwrap_or("OTHER")
            });
        *states.entry(state).or_default() += 1;
        let connection = match status.and_then(|s| s.connection.as_ref()).map(|c| c.state) {
            Some(ConnectionState::Connected) => "Connected",
            Some(ConnectionState::Disconnected) => "Disconnected",
            Some(ConnectionState::Stale) => "Stale",
            None => "Unknown",
        };
        *connections.entry(connection).or_default() += 1;
    }
    let mut phases: BTreeMap<String, i64> = BTreeMap::new();
    let mut device_phases: BTreeMap<&str, i64> = BTreeMap::new();
    for rollout in rollouts.state() {
        let status = rollout.status.clone().unwrap_or_default();
        *phases.entry(format!("{:?}", status.phase)).or_default() += 1;
        let c = &status.counts;
        for (phase, count) in [
            ("Pending", c.pending),
            ("Deferred", c.deferred),
            ("Assigned", c.assigned),
            ("InProgress", c.in_progress),
            ("Succeeded", c.succeeded),
            ("Failed", c.failed),
            ("Unreachable", c.unreachable),
            ("Cancelled", c.cancelled),
        ] {
            *device_phases.entry(phase).or_default() += i64::from(count);
        }
    }
    let owned = |m: BTreeMap<&str, i64>| {
        m.into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Vec<_>>()
    };
    Metrics::set_counts(&metrics.devices_by_state, &owned(states));
    Metrics::set_counts(&metrics.devices_by_connection, &owned(connections));
    Metrics::set_counts(
        &metrics.rollouts_by_phase,
        &phases.into_iter().collect::<Vec<_>>(),
    );
    Metrics::set_counts(&metrics.rollout_devices, &owned(device_phases));
}
