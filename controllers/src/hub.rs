//! Hub controller: checks that the operator reaches each hub with its credentials.

use std::sync::Arc;

use cloudpillar_crds::conditions::HUB_READY;
use cloudpillar_crds::{Hub, HubStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use crate::error::{Error, HubContext, Result};
use crate::runtime::{Context, ErrorChain, key_of};
use crate::status::{apply_status, condition, manager, merge_conditions, now};

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "hub";

/// Device id looked up to probe a hub; it need not exist (a 404 proves access).
const PROBE_DEVICE: &str = "cloudpillar-operator-probe";

/// Reconciles one Hub: a registry read with the policy key sets `Ready`.
pub async fn reconcile(hub: Arc<Hub>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = hub
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let api: Api<Hub> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = key_of(hub.as_ref());
    let generation = hub.meta().generation;
    let previous = hub.status.clone().unwrap_or_default();

    let probe = match ctx.hubs.service(&namespace, &hub.name_any(), &object).await {
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
    probe.map(|()| ctx.resync())
}
