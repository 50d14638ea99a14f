//! `Registered` Events, gathered per hub: a Device that registers alone gets its Event as
//! before; a burst (a fleet applied at once, a cold start) gets one Event on its Hub per
//! gathering period instead of one per Device.
//!
//! Each Event is a write to the API server with no other purpose than to be read by a person.
//! Ten thousand `Registered` Events in a minute told nobody more than a count and a sample of
//! names does; each Device keeps its own record in its `Registered` condition (reason, message
//! and `lastTransitionTime`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use tokio_util::sync::CancellationToken;

use crate::runtime::Context;

/// How long registrations are gathered before their Events go out.
pub const GATHER: Duration = Duration::from_secs(1);

/// Names a burst's Event lists before it only counts the rest.
const NAMED: usize = 5;

/// Registrations not announced yet, by namespace and hub name.
#[derive(Debug, Default)]
pub struct Registrations {
    pending: Mutex<BTreeMap<(String, String), Vec<Registered>>>,
}

#[derive(Debug)]
struct Registered {
    device: ObjectReference,
    device_id: String,
}

impl Registrations {
    /// Notes that `device_id` of `device` was created in hub `namespace/hub`.
    pub fn note<K: Resource<DynamicType = ()>>(
        &self,
        device: &K,
        namespace: &str,
        hub: &str,
        device_id: &str,
    ) {
        let registered = Registered {
            device: device.object_ref(&()),
            device_id: device_id.to_owned(),
        };
        self.lock()
            .entry((namespace.to_owned(), hub.to_owned()))
            .or_default()
            .push(registered);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Vec<Registered>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> BTreeMap<(String, String), Vec<Registered>> {
        std::mem::take(&mut *self.lock())
    }
}

/// Publishes the gathered registrations every [`GATHER`] until `stop`, and once more then.
pub async fn announce(ctx: Arc<Context>, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(GATHER);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            () = stop.cancelled() => true,
        };
        for ((namespace, hub), registered) in ctx.registrations.take() {
            publish(&ctx, &namespace, &hub, registered).await;
        }
        if stopping {
            return;
        }
    }
}

async fn publish(ctx: &Context, namespace: &str, hub: &str, registered: Vec<Registered>) {
    // A Device alone, or a burst whose Hub left the cache: an Event on each Device.
    let burst_hub = ctx
        .hubs
        .hub(namespace, hub)
        .filter(|_| registered.len() > 1);
    let Some(hub_object) = burst_hub else {
        for one in registered {
            let note = format!("identity {} created in hub {hub}", one.device_id);
            ctx.publish_to(&one.device, None, false, "Registered", note)
                .await;
        }
        return;
    };
    let named: Vec<&str> = registered
        .iter()
        .take(NAMED)
        .map(|r| r.device_id.as_str())
        .collect();
    let more = match registered.len() - named.len() {
        0 => String::new(),
        rest => format!(" and {rest} more"),
    };
    let note = format!(
        "{} identities created in hub {hub}: {}{more} (each Device's Registered condition has its own)",
        registered.len(),
        named.join(", ")
    );
    // The first Device of the burst as the related object keeps each burst's Event its own;
    // with the Hub alone, later bursts would only raise the count of the first one's Event.
    let reference = hub_object.object_ref(&());
    let first = registered.first().map(|r| r.device.clone());
    ctx.publish_to(&reference, first, false, "Registered", note)
        .await;
}
