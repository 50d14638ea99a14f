//! State shared by every reconcile, and the instrumentation around each of them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudpillar_crds::{Device, Recipe, Rollout};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use rand::RngExt;
use tracing::Instrument;

use super::metrics::Metrics;
use crate::config::Config;
use crate::device::DeviceIndex;
use crate::device::{Registrations, WrittenStatus};
use crate::error::Error;
use crate::hubs::HubClients;
use crate::recipe::Signer;
use crate::rollout::Expectations;

/// Everything a reconcile needs.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Hub clients.
    pub hubs: Arc<HubClients>,
    /// Device id to Device object, for twin events.
    pub index: Arc<DeviceIndex>,
    /// Cached Devices.
    pub devices: Store<Device>,
    /// Cached Recipes.
    pub recipes: Store<Recipe>,
    /// Cached Rollouts.
    pub rollouts: Store<Rollout>,
    /// Signs recipes.
    pub signer: Arc<dyn Signer>,
    /// Devices claimed by Rollouts whose claim the Device cache has not shown yet.
    pub expectations: Expectations,
    /// Device status writes the Device cache has not shown yet.
    pub device_status: WrittenStatus,
    /// Registrations whose `Registered` Event has not gone out yet.
    pub registrations: Registrations,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Caches the context is built over.
#[derive(Debug)]
pub struct Stores {
    /// Devices.
    pub devices: Store<Device>,
    /// Recipes.
    pub recipes: Store<Recipe>,
    /// Rollouts.
    pub rollouts: Store<Rollout>,
}

impl Context {
    /// Builds the context.
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        hubs: Arc<HubClients>,
        index: Arc<DeviceIndex>,
        stores: Stores,
        signer: Arc<dyn Signer>,
    ) -> Self {
        let recorder = Recorder::new(client.clone(), config.reporter());
        Self {
            client,
            config,
            metrics,
            recorder,
            hubs,
            index,
            devices: stores.devices,
            recipes: stores.recipes,
            rollouts: stores.rollouts,
            signer,
            expectations: Expectations::default(),
            device_status: WrittenStatus::default(),
            registrations: Registrations::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `object`; failures are logged, never fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.publish_to(&object.object_ref(&()), None, warning, reason, note)
            .await;
    }

    /// Publishes an Event about the object `reference` names, with a `related` object if any;
    /// failures are logged. Events with the same reason about the same pair of objects within
    /// a few minutes become one Event with a count (and the first note).
    pub async fn publish_to(
        &self,
        reference: &ObjectReference,
        related: Option<ObjectReference>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note.chars().take(1024).collect()),
            action: reason.to_owned(),
            secondary: related,
        };
        if let Err(error) = self.recorder.publish(&event, reference).await {
            tracing::debug!(%error, reason, "could not publish an Event");
        }
    }

    /// The periodic resync interval with up to a tenth of random spread, so that objects
    /// reconciled together at start do not stay in lockstep.
    pub fn resync(&self) -> Action {
        let base = self.config.resync_period;
        Action::requeue(base.mul_f64(1.0 - rand::rng().random_range(0.0..0.1)))
    }

    /// Next retry delay for `key` after a failure: doubles per consecutive failure up to the
    /// ceiling, minus up to a fifth at random.
    fn backoff(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let settings = &self.config.error_backoff;
        let step = settings
            .base
            .saturating_mul(1 << (*count - 1).min(20))
            .min(settings.max);
        step.mul_f64(1.0 - rand::rng().random_range(0.0..0.2))
    }

    fn succeeded(&self, key: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(key);
    }
}

/// `namespace/name` of an object, for logs and error messages.
pub fn key_of<K: Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Runs one reconcile inside a span carrying the object reference, and counts it.
pub async fn instrumented<K, Fut>(
    controller: &'static str,
    object: &K,
    ctx: &Context,
    work: Fut,
) -> Result<Action, Error>
where
    K: Resource,
    Fut: Future<Output = Result<Action, Error>>,
{
    let key = key_of(object);
    let span = tracing::info_span!("reconcile", controller, object = %key);
    let started = Instant::now();
    let result = work.instrument(span).await;
    ctx.metrics.reconciled(controller, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&format!("{controller}/{key}"));
    }
    result
}

/// What to do after a failed reconcile: count it, log it, retry with per-object backoff.
pub fn error_policy<K: Resource>(
    controller: &'static str,
    object: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    let key = key_of(object);
    let category = error.category();
    ctx.metrics.failed(controller, category);
    let chain = ErrorChain(error);
    if error.needs_attention() {
        tracing::warn!(controller, object = %key, category, error = %chain, "reconcile failed");
    } else {
        tracing::info!(controller, object = %key, category, error = %chain, "reconcile retried");
    }
    Action::requeue(ctx.backoff(&format!("{controller}/{key}")))
}

pub use cloudpillar_protocol::causes::ErrorChain;
