//! A Device that names a hub identity another Device holds (see [`super::index`]): refused in
//! its conditions and a Warning Event. It writes nothing to the twin, shows nothing of the
//! twin in its status, and its deletion leaves the identity alone.

use cloudpillar_crds::conditions::{DEVICE_REGISTERED, DEVICE_SYNCED, find};
use cloudpillar_crds::{Device, DeviceStatus};
use kube::Resource;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::status::write_status;
use crate::error::Result;
use crate::runtime::Context;
use crate::status::{condition, merge_conditions};

/// Reason of the conditions and the Event of a refused Device.
pub const DUPLICATE_DEVICE_ID: &str = "DuplicateDeviceId";

/// Records that `holder` holds the identity `device` names.
pub(super) async fn refuse(
    device: &Device,
    holder: &ObjectRef<Device>,
    api: &Api<Device>,
    ctx: &Context,
    previous: &DeviceStatus,
) -> Result<Action> {
    let generation = device.meta().generation;
    let (device_id, hub) = (device.device_id(), &device.spec.hub_ref.name);
    let message = format!(
        "device id {device_id} in hub {hub} is held by Device {}: this Device writes nothing to \
         its twin and deleting it leaves the identity alone; recreate it with another \
         spec.deviceId",
        holder.name
    );
    let news = find(&previous.conditions, DEVICE_REGISTERED)
        .is_none_or(|c| c.reason != DUPLICATE_DEVICE_ID || c.message != message);

    write_status(ctx, api, device, previous, |status| {
        // Nothing of the holder's twin shows here; what this Device wrote before, if
        // anything, is the holder's to correct.
        *status = DeviceStatus {
            assignment: status.assignment.take(),
            conditions: std::mem::take(&mut status.conditions),
            ..DeviceStatus::default()
        };
        status.observed_generation = generation;
        let wanted = vec![
            condition(
                DEVICE_REGISTERED,
                false,
                DUPLICATE_DEVICE_ID,
                message.clone(),
                generation,
            ),
            condition(
                DEVICE_SYNCED,
                false,
                DUPLICATE_DEVICE_ID,
                format!(
                    "nothing written to the twin: device id {device_id} is held by Device {}",
                    holder.name
                ),
                generation,
            ),
        ];
        status.conditions = merge_conditions(&status.conditions, wanted);
    })
    .await?;
    if news {
        let holder = holder.name.as_str();
        tracing::warn!(device = %device_id, holder, "device id held by another Device");
        ctx.publish(device, true, DUPLICATE_DEVICE_ID, message)
            .await;
    }
    Ok(ctx.resync())
}
