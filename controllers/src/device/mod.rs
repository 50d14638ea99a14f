//! Device controller: registers the hub identity, keeps the twin's tags and desired
//! properties in line with the spec, and mirrors what the device reports into status.

mod credentials;
mod duplicate;
mod index;
mod memory;
mod mirror;
pub mod mode;
mod registered;
mod status;
mod sync;
mod upgrade;

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudpillar_crds::Device;
use cloudpillar_crds::conditions::{DEVICE_REGISTERED, DEVICE_SYNCED};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

pub use credentials::{DEVICE_ID, PRIMARY_KEY, SECONDARY_KEY, key_secret_name};
pub use duplicate::DUPLICATE_DEVICE_ID;
pub use index::DeviceIndex;
pub use memory::WrittenStatus;
pub use mirror::{Mirrored, mirror, recipe_status};
pub use registered::{Registrations, announce as announce_registrations};
pub use sync::{Owned, desired_value, drifted, plan, within_limits};

use crate::error::{Error, HubContext, Result};
use crate::runtime::{Context, finalizer, key_of};
use crate::status::{condition, merge_conditions};
use crate::twin::{DeviceIdentity, Twin, TwinError, TwinService};
use status::{announce_changes, next_check, record_hub_failure, write_status};

/// Finalizer that removes the hub identity before a Device goes away.
pub const FINALIZER: &str = "cloudpillar.io/device";

/// Controller name in metrics and logs.
pub const CONTROLLER: &str = "device";

/// Attempts at an ETag-guarded twin write before the reconcile is retried later.
const WRITE_ATTEMPTS: usize = 3;

/// Reconciles one Device.
pub async fn reconcile(device: Arc<Device>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = device
        .namespace()
        .ok_or(Error::Incomplete { what: "namespace" })?;
    let api: Api<Device> = Api::namespaced(ctx.client.clone(), &namespace);

    if device.meta().deletion_timestamp.is_some() {
        if device.finalizers().iter().any(|f| f == FINALIZER) {
            cleanup(&device, &namespace, &ctx).await?;
            finalizer::remove(&api, device.as_ref(), FINALIZER).await?;
        }
        ctx.device_status.forget(&device);
        return Ok(Action::await_change());
    }
    let device = finalizer::add(&api, device.as_ref(), FINALIZER).await?;
    let applied = apply(&device, &namespace, &api, &ctx).await;
    if let Err(error @ Error::Hub { .. }) = &applied
        && let Err(write) = record_hub_failure(&device, &api, &ctx, error).await
    {
        let write = crate::runtime::ErrorChain(&write);
        tracing::warn!(error = %write, "could not record the hub failure in status");
    }
    applied
}

/// How soon an UpgradeProvisioning message the hub did not take is sent again.
const UPGRADE_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// How often a Device provisioning through DPS is checked until its identity appears.
const AWAIT_PROVISIONING: std::time::Duration = std::time::Duration::from_secs(3);

/// Registers, syncs the twin and mirrors it into status.
async fn apply(
    device: &Device,
    namespace: &str,
    api: &Api<Device>,
    ctx: &Context,
) -> Result<Action> {
    let object = key_of(device);
    let hub_name = device.spec.hub_ref.name.as_str();
    let device_id = device.device_id();
    let previous = ctx.device_status.current(device);
    let generation = device.meta().generation;

    // Another Device holds this identity: touch nothing of it.
    if let Some(holder) = ctx.index.held_by_other(device) {
        return duplicate::refuse(device, &holder, api, ctx, &previous).await;
    }

    let hub = match ctx.hubs.service(namespace, hub_name, &object).await {
        Ok(hub) => hub,
        Err(error) => {
            let reason = error.category();
            let message = error.to_string();
            let conditions = vec![
                condition(
                    DEVICE_REGISTERED,
                    false,
                    reason,
                    message.clone(),
                    generation,
                ),
                condition(DEVICE_SYNCED, false, reason, message, generation),
            ];
            write_status(ctx, api, device, &previous, |s| {
                s.conditions = merge_conditions(&s.conditions, conditions)
            })
            .await?;
            return Err(error);
        }
    };
    // Register when not known registered for this generation, or when the twin is gone.
    let registered = cloudpillar_crds::conditions::find(&previous.conditions, DEVICE_REGISTERED)
        .is_some_and(|c| c.status == "True" && c.observed_generation == generation);
    let mut created = false;
    let twin = match registered {
        true => match hub.get_twin(&device_id).await {
            Err(TwinError::NotFound { .. }) => None,
            other => Some(other.hub(&object)?),
        },
        false => None,
    };
    let twin = match twin {
        Some(twin) => twin,
        None if device.spec.authentication.provisioning.is_some() => {
            // The device provisions itself through DPS, which owns its credentials: adopt
            // the identity once DPS has created it, and never replace its keys.
            if hub.get_device(&device_id).await.hub(&object)?.is_none() {
                let message = format!("waiting for {device_id} to provision through DPS");
                let conditions = vec![condition(
                    DEVICE_REGISTERED,
                    false,
                    "AwaitingProvisioning",
                    message,
                    generation,
                )];
                write_status(ctx, api, device, &previous, |s| {
                    s.conditions = merge_conditions(&s.conditions, conditions)
                })
                .await?;
                return Ok(Action::requeue(AWAIT_PROVISIONING));
            }
            hub.get_twin(&device_id).await.hub(&object)?
        }
        None => {
            let auth = credentials::identity_auth(&ctx.client, device).await?;
            let identity = DeviceIdentity {
                device_id: device_id.clone(),
                auth,
            };
            created = hub.ensure_device(&identity).await.hub(&object)?.created;
            if created {
                tracing::info!(device = %device_id, "registered in the hub");
                ctx.registrations
                    .note(device, namespace, hub_name, &device_id);
            }
            hub.get_twin(&device_id).await.hub(&object)?
        }
    };

    // The desired properties the operator owns: the spec's, and the agent mode with what the
    // device authenticates with and where (`desired.provisioning`).
    let device_host = ctx
        .hubs
        .hub(namespace, hub_name)
        .map(|h| h.spec.endpoint.device_host().to_owned())
        .unwrap_or_default();
    let reserved = BTreeMap::from([(
        mode::PROVISIONING_KEY.to_owned(),
        mode::provisioning(device, &device_host),
    )]);

    // A spec the hub would refuse (F06) is reported, not sent.
    let mut desired = device.spec.desired.clone();
    desired.extend(reserved.clone());
    if let Err(problem) = sync::within_limits(&device.spec.tags, &desired) {
        let message = format!("not written to the twin: {problem}");
        write_status(ctx, api, device, &previous, |status| {
            status.observed_generation = generation;
            let wanted = vec![condition(
                DEVICE_SYNCED,
                false,
                "TwinLimitExceeded",
                message,
                generation,
            )];
            status.conditions = merge_conditions(&status.conditions, wanted);
        })
        .await?;
        return Ok(ctx.resync());
    }

    // Write what the spec wants, diffing against what was last written (F03).
    let empty = Default::default();
    let (applied_tags, applied_desired) = match created {
        true => (&empty, &Default::default()),
        false => (&previous.applied_tags, &previous.applied_desired),
    };
    let owned = sync::Owned {
        tags: &device.spec.tags,
        desired: &device.spec.desired,
        applied_tags,
        applied_desired,
        reserved: &reserved,
    };
    let twin = write_twin(hub.as_ref(), &device_id, owned, twin, ctx)
        .await
        .hub(&object)?;

    // A changed mode also needs an UpgradeProvisioning message, once the twin shows it.
    let wanted = &reserved[mode::PROVISIONING_KEY];
    let last_upgrade = previous.provisioning_upgrade.clone();
    let upgrade = match upgrade::next_step(wanted, &twin, last_upgrade.as_ref()) {
        upgrade::Step::Keep => last_upgrade,
        upgrade::Step::Record(record) => Some(record),
        upgrade::Step::Send => Some(upgrade::send(hub.as_ref(), device, &device_id, wanted).await),
    };

    // Mirror the twin into status; a twin older than what status shows is not mirrored.
    let stale_read = previous
        .reported_twin_version
        .zip(twin.reported_version())
        .is_some_and(|(seen, read)| u64::try_from(seen).is_ok_and(|seen| read < seen));
    let mirrored = mirror::mirror(
        &twin,
        previous.connection.as_ref(),
        crate::status::now(),
        ctx.config.stale_after,
    );
    let written = write_status(ctx, api, device, &previous, |status| {
        status.observed_generation = generation;
        status.applied_tags = device.spec.tags.clone();
        status.applied_desired = device.spec.desired.clone();
        if !stale_read {
            status.device_state = mirrored.device_state.clone();
            status.connection = mirrored.connection.clone();
            status.last_activity_time = mirrored.last_activity_time.clone();
            status.desired_twin_version = mirrored.desired_version;
            status.reported_twin_version = mirrored.reported_version;
            status.recipe = mirrored.recipe.clone();
        }
        status.provisioning_upgrade = upgrade.clone();
        let wanted = vec![
            condition(
                DEVICE_REGISTERED,
                true,
                "Registered",
                format!("identity {device_id} exists in hub {hub_name}"),
                generation,
            ),
            condition(
                DEVICE_SYNCED,
                true,
                "InSync",
                "twin tags and desired properties match the spec",
                generation,
            ),
        ];
        status.conditions = merge_conditions(&status.conditions, wanted);
    })
    .await?;

    announce_changes(device, &previous, &written, ctx).await;
    let retry_upgrade = written
        .provisioning_upgrade
        .as_ref()
        .is_some_and(|u| u.state == upgrade::FAILED);
    Ok(match retry_upgrade {
        true => Action::requeue(UPGRADE_RETRY),
        false => next_check(&written, ctx),
    })
}

/// Sends the planned patch, guarded by the twin's ETag; re-reads and re-plans on conflict.
async fn write_twin(
    hub: &dyn TwinService,
    device_id: &str,
    owned: sync::Owned<'_>,
    mut twin: Twin,
    ctx: &Context,
) -> std::result::Result<Twin, TwinError> {
    for _ in 0..WRITE_ATTEMPTS {
        let patch = sync::plan(owned, &twin);
        if patch.is_empty() {
            return Ok(twin);
        }
        match hub.patch_twin(device_id, &patch, Some(&twin.etag)).await {
            Ok(written) => {
                ctx.metrics.twin_write("written");
                return Ok(written);
            }
            Err(TwinError::EtagMismatch { .. }) => {
                ctx.metrics.twin_write("etag_mismatch");
                twin = hub.get_twin(device_id).await?;
            }
            Err(error) => {
                ctx.metrics.twin_write("failed");
                return Err(error);
            }
        }
    }
    Err(TwinError::EtagMismatch {
        device_id: device_id.to_owned(),
    })
}

/// Removes the hub identity; an identity already gone counts as removed (F21). An identity
/// another Device holds is left alone.
async fn cleanup(device: &Device, namespace: &str, ctx: &Context) -> Result<()> {
    let object = key_of(device);
    let hub_name = device.spec.hub_ref.name.as_str();
    let device_id = device.device_id();
    if let Some(holder) = ctx.index.held_by_other(device) {
        let holder = holder.name.as_str();
        tracing::info!(device = %device_id, holder, "identity held by another Device; kept");
        return credentials::delete_generated(&ctx.client, device).await;
    }
    match ctx.hubs.service(namespace, hub_name, &object).await {
        Ok(hub) => {
            let existed = hub.delete_device(&device_id).await.hub(&object)?;
            let note = if existed {
                "removed from"
            } else {
                "was already gone from"
            };
            tracing::info!(device = %device_id, existed, "hub identity removed");
            ctx.publish(
                device,
                false,
                "Deregistered",
                format!("identity {device_id} {note} hub {hub_name}"),
            )
            .await;
        }
        Err(Error::HubUnusable { reason, .. }) if ctx.hubs.hub(namespace, hub_name).is_none() => {
            tracing::warn!(device = %device_id, %reason, "hub object gone; nothing to remove");
        }
        Err(error) => return Err(error),
    }
    credentials::delete_generated(&ctx.client, device).await
}
