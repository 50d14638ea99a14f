//! Device status: written only when it changes, and Events for changes people care about.

use std::time::Duration;

use cloudpillar_crds::conditions::DEVICE_SYNCED;
use cloudpillar_crds::{ConnectionState, Device, DeviceStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;

use super::CONTROLLER;
use crate::error::{Error, Result};
use crate::runtime::{Context, ErrorChain};
use crate::status::{apply_status, condition, manager, merge_conditions};

/// Applies the status `change` makes to the current one, unless it changes nothing.
pub(super) async fn write_status(
    ctx: &Context,
    api: &Api<Device>,
    device: &Device,
    previous: &DeviceStatus,
    change: impl FnOnce(&mut DeviceStatus),
) -> Result<DeviceStatus> {
    let mut wanted = previous.clone();
    change(&mut wanted);
    if wanted == *previous {
        return Ok(wanted);
    }
    let owned = super::memory::owned(&wanted);
    apply_status(api, device, &manager(CONTROLLER), &owned).await?;
    ctx.device_status.remember(device, &owned);
    Ok(wanted)
}

/// A hub call that failed marks the twin out of sync, with the whole cause chain (a TLS
/// refusal names the certificate problem).
pub(super) async fn record_hub_failure(
    device: &Device,
    api: &Api<Device>,
    ctx: &Context,
    error: &Error,
) -> Result<()> {
    let previous = ctx.device_status.current(device);
    let generation = kube::Resource::meta(device).generation;
    let failed = condition(
        DEVICE_SYNCED,
        false,
        error.category(),
        failure_message(error),
        generation,
    );
    write_status(ctx, api, device, &previous, |s| {
        s.conditions = merge_conditions(&s.conditions, vec![failed])
    })
    .await
    .map(drop)
}

/// The cause chain of a failed reconcile as the Device's own condition tells it: a hub call's
/// failure without the wrapper that names the Device (the condition is on it already).
fn failure_message(error: &Error) -> String {
    match error {
        Error::Hub { source, .. } => ErrorChain(source).to_string(),
        other => ErrorChain(other).to_string(),
    }
}

/// Events for changes a person cares about: connection lost or back, a failed recipe, a
/// provisioning upgrade sent, applied or not taken.
pub(super) async fn announce_changes(
    device: &Device,
    before: &DeviceStatus,
    after: &DeviceStatus,
    ctx: &Context,
) {
    let state = |s: &DeviceStatus| s.connection.as_ref().map(|c| c.state);
    if before.connection.is_some() && state(before) != state(after) {
        let (warning, reason) = match state(after) {
            Some(ConnectionState::Connected) => (false, "Connected"),
            Some(ConnectionState::Stale) => (true, "Stale"),
            _ => (true, "Disconnected"),
        };
        ctx.publish(
            device,
            warning,
            reason,
            format!("device connection is now {reason}"),
        )
        .await;
    }
    let failed = |s: &DeviceStatus| {
        s.recipe
            .as_ref()
            .filter(|r| r.status.as_deref() == Some("Failure"))
            .and_then(|r| r.id.clone())
    };
    if let Some(id) = failed(after)
        && failed(before).as_deref() != Some(id.as_str())
    {
        let recipe = after.recipe.as_ref();
        let at = recipe
            .and_then(|r| r.last_faulted_path.clone())
            .unwrap_or_default();
        let why = recipe
            .and_then(|r| r.result_text.as_deref())
            .map(|t| format!(": {t}"))
            .unwrap_or_default();
        ctx.publish(
            device,
            true,
            "RecipeFailed",
            format!("recipe {id} failed at {at}{why}"),
        )
        .await;
    }
    let (before, after) = (
        before.provisioning_upgrade.as_ref(),
        after.provisioning_upgrade.as_ref(),
    );
    super::upgrade::announce(device, before, after, ctx).await;
}

/// When to look again: the resync period, or sooner when a connected device would turn stale.
pub(super) fn next_check(status: &DeviceStatus, ctx: &Context) -> Action {
    let connected = status
        .connection
        .as_ref()
        .is_some_and(|c| c.state == ConnectionState::Connected);
    let Some(last) = status.last_activity_time.as_ref().filter(|_| connected) else {
        return ctx.resync();
    };
    let silent = Timestamp::now().duration_since(last.0).unsigned_abs();
    let until_stale = ctx.config.stale_after.saturating_sub(silent) + Duration::from_secs(1);
    if until_stale < ctx.config.resync_period {
        Action::requeue(until_stale)
    } else {
        ctx.resync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::twin::tests::invalid_id_refused;

    #[test]
    fn a_hub_refusal_in_a_condition_names_the_device_id_once() {
        let id = "a".repeat(200);
        let error = Error::Hub {
            object: format!("lab/{id}"),
            source: invalid_id_refused(&id),
        };
        let message = failure_message(&error);
        assert_eq!(message.matches(&id).count(), 1, "{message}");
    }
}
