//! Hub controller: checks that the operator reaches each hub with its credentials, reading its
//! Secrets again, every `hub_probe_period` (30 s by default) so that an outage or a deleted
//! Secret shows in `Ready` within that period, and keeps a Hub that Devices still use from
//! going away before they do.

use std::sync::Arc;
use std::time::Duration;

use cloudpillar_crds::conditions::HUB_READY;
use cloudpillar_crds::{Hub, HubStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::error::{Error, HubContext, Result};
use crate::runtime::{Context, ErrorChain, finalizer, key_of};
use crate::status::{apply_status, condition, manager, merge_conditions, now};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "hub";

/// Device id looked up to probe a hub; it need not exist (a 404 proves access).
const PROBE_DEVICE: &str = "cloudpillar-operator-probe";

/// How often a deleted Hub checks whether the Devices that use it are gone.
const IN_USE_RECHECK: Duration = Duration::from_secs(5);

/// Finalizer that keeps a Hub until no Device names it, so that each Device can still remove
/// its identity from the hub when it is deleted (a namespace deleted whole included).
pub const FINALIZER: &str = "cloudpillar.io/hub";

/// Devices named in an in-use message before it only counts the rest.
const NAMED_USERS: usize = 3;

/// Reconciles one Hub: a registry read with the policy key sets `Ready`.
pub async fn reconcile(hub: Arc<Hub>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = hub
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let api: Api<Hub> = Api::namespaced(ctx.client.clone(), &namespace);
    if hub.meta().deletion_timestamp.is_some() {
        return release(&hub, &namespace, &api, &ctx).await;
    }
    let hub = Arc::new(finalizer::add(&api, hub.as_ref(), FINALIZER).await?);
    let object = key_of(hub.as_ref());
    let generation = hub.meta().generation;
    let previous = hub.status.clone().unwrap_or_default();

    let probe = match ctx
        .hubs
        // Each probe reads the Secrets again, not each reconcile (the event pump's checkpoint
        // writes reconcile the Hub every few seconds).
        .service_checked_within(
            &namespace,
            &hub.name_any(),
            &object,
            ctx.config.hub_probe_period / 2,
        )
        .await
    {
        Ok(service) => service
            .get_device(PROBE_DEVICE)
            .await
            .hub(&object)
            .map(|_| ()),
        Err(error) => Err(error),
    };
    let mut status = HubStatus {
        observed_generation: generation,
        ..previous.clone()
    };
    let ready = match &probe {
        Ok(()) => condition(
            HUB_READY,
            true,
            "Reachable",
            "the service API answers with the policy key",
            generation,
        ),
        // The whole cause chain: a TLS refusal names the certificate problem, not just the call.
        Err(error) => condition(
            HUB_READY,
            false,
            error.category(),
            ErrorChain(error).to_string(),
            generation,
        ),
    };
    status.conditions = merge_conditions(&previous.conditions, vec![ready]);
    let flipped = status.conditions != previous.conditions;
    if probe.is_ok() && (flipped || previous.last_contact_time.is_none()) {
        status.last_contact_time = Some(Time(now()));
    }
    if status != previous {
        // The event checkpoint belongs to the event pump's field manager.
        let owned = HubStatus {
            event_checkpoint: None,
            ..status.clone()
        };
        apply_status(&api, hub.as_ref(), &manager(CONTROLLER), &owned).await?;
        if flipped {
            let (warning, reason) = if probe.is_ok() {
                (false, "Reachable")
            } else {
                (true, "Unreachable")
            };
            let mut note = format!("hub {} is {}", hub.name_any(), reason.to_lowercase());
            if let Err(error) = &probe {
                note.push_str(&format!(": {}", ErrorChain(error)));
            }
            ctx.publish(hub.as_ref(), warning, reason, note).await;
        }
    }
    probe.map(|()| Action::requeue(ctx.config.hub_probe_period))
}

/// A deleted Hub: its finalizer goes once no Device of its namespace names it; until then
/// `Ready` says which Devices hold it.
async fn release(hub: &Hub, namespace: &str, api: &Api<Hub>, ctx: &Context) -> Result<Action> {
    if !hub.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let name = hub.name_any();
    let mut users: Vec<String> = ctx
        .devices
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(namespace) && d.spec.hub_ref.name == name)
        .map(|d| d.name_any())
        .collect();
    if users.is_empty() {
        finalizer::remove(api, hub, FINALIZER).await?;
        tracing::info!(hub = %key_of(hub), "no Device uses the hub any more; deletion goes on");
        return Ok(Action::await_change());
    }
    users.sort();
    let more = match users.len().saturating_sub(NAMED_USERS) {
        0 => String::new(),
        rest => format!(" and {rest} more"),
    };
    let who = match users.len() {
        1 => "the Device that uses this hub is".to_owned(),
        n => format!("the {n} Devices that use this hub are"),
    };
    let message = format!(
        "deletion waits until {who} deleted: {}{more}",
        users[..users.len().min(NAMED_USERS)].join(", ")
    );
    let generation = hub.meta().generation;
    let previous = hub.status.clone().unwrap_or_default();
    let was_held = cloudpillar_crds::conditions::find(&previous.conditions, HUB_READY)
        .is_some_and(|c| c.reason == "InUse");
    let held = condition(HUB_READY, false, "InUse", message.clone(), generation);
    let conditions = merge_conditions(&previous.conditions, vec![held]);
    if conditions != previous.conditions {
        let owned = HubStatus {
            conditions,
            event_checkpoint: None,
            ..previous
        };
        apply_status(api, hub, &manager(CONTROLLER), &owned).await?;
        if !was_held {
            ctx.publish(hub, true, "InUse", message).await;
        }
    }
    Ok(Action::requeue(IN_USE_RECHECK))
}
