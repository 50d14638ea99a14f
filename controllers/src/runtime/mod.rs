//! Wiring: caches, controllers, leader election, metrics and health endpoints.

mod context;
pub mod finalizer;
mod gauges;
pub mod http;
mod leader;
pub mod metrics;
pub mod triggers;
pub mod watch;

use std::sync::Arc;

use cloudpillar_crds::{Device, Hub, Recipe, Rollout};
use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use context::{Context, ErrorChain, Stores, error_policy, instrumented, key_of};
pub use http::{Health, Phase};
pub use leader::{LeaderElection, Leadership};
pub use metrics::Metrics;

use crate::config::Config;
use crate::device::DeviceIndex;
use crate::hubs::HubClients;
use crate::recipe::{NoSigner, SecretSigner, Signer};
use crate::{device, hub, recipe, rollout};

/// Why the controllers stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client could be built.
    #[error("could not create a Kubernetes client")]
    Client(#[source] kube::Error),
    /// The metrics and health endpoint could not listen.
    #[error("could not listen for metrics on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// Leader election failed.
    #[error("leader election failed")]
    Election(#[source] crate::Error),
    /// Another replica took over; this one must stop writing.
    #[error("leadership lost")]
    LeadershipLost,
}

/// Runs every controller until SIGINT or SIGTERM (or lost leadership).
pub async fn run(config: Config) -> Result<(), RunError> {
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        trigger.cancel();
    });
    run_until(client, config, shutdown).await
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Runs every controller with `client` until `shutdown` is cancelled or leadership is lost.
pub async fn run_until(
    client: Client,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let addr = config.metrics_addr;
    let bound = http::serve(addr, metrics.clone(), health.clone(), shutdown.clone())
        .await
        .map_err(|source| RunError::Listen { addr, source })?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");

    // Only the leader writes: wait for the Lease before starting any watch or reconcile.
    health.set(Phase::Standby);
    let leadership = match &config.leader_election {
        Some(election) => {
            let acquire = leader::acquire(client.clone(), election.clone());
            let acquired = tokio::select! {
                acquired = acquire => acquired.map_err(RunError::Election)?,
                () = shutdown.cancelled() => return Ok(()),
            };
            metrics.leader.set(1);
            Some(acquired)
        }
        // Without election this replica is the only writer: it leads.
        None => {
            metrics.leader.set(1);
            None
        }
    };
    health.set(Phase::Syncing);

    let lost = leadership
        .as_ref()
        .map(|l| l.lost.clone())
        .unwrap_or_default();
    let stop = CancellationToken::new();
    let running = controllers(
        client.clone(),
        config.clone(),
        metrics.clone(),
        health,
        stop.clone(),
    );
    let result = tokio::select! {
        () = running => Ok(()),
        () = shutdown.cancelled() => Ok(()),
        () = lost.cancelled() => Err(RunError::LeadershipLost),
    };
    stop.cancel();
    metrics.leader.set(0);
    if let (Some(leadership), Some(election)) = (leadership, &config.leader_election)
        && result.is_ok()
    {
        leadership.release(client, election).await;
    }
    result
}

/// A relisting watch of `K` in the configured namespace (or all).
fn watch<K>(
    client: &Client,
    config: &Config,
    resource: &'static str,
    metrics: &Arc<Metrics>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match &config.namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    // Cached objects drop managedFields and the last-applied annotation: the operator never
    // reads them, and at 10,000 Devices they are a large share of the cache.
    watch::relisting_watcher(api, watcher::Config::default(), resource, metrics.clone())
        .default_backoff()
        .modify(|object: &mut K| {
            object.managed_fields_mut().clear();
            object
                .annotations_mut()
                .remove("kubectl.kubernetes.io/last-applied-configuration");
        })
}

/// Builds the caches and runs the four controllers until `stop`.
async fn controllers(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) {
    const BUFFER: usize = 4096;
    let (devices, device_writer) = reflector::store_shared::<Device>(BUFFER);
    let (recipes, recipe_writer) = reflector::store_shared::<Recipe>(BUFFER);
    let (rollouts, rollout_writer) = reflector::store_shared::<Rollout>(BUFFER);
    let (hubs, hub_writer) = reflector::store_shared::<Hub>(BUFFER);
    let (Some(device_events), Some(recipe_events), Some(rollout_events), Some(hub_events)) = (
        device_writer.subscribe(),
        recipe_writer.subscribe(),
        rollout_writer.subscribe(),
        hub_writer.subscribe(),
    ) else {
        return;
    };
    let drive = |stream: std::pin::Pin<Box<dyn Stream<Item = ()> + Send>>| {
        tokio::spawn(stream.for_each(|()| async {}))
    };
    let device_lists = triggers::Lists::default();
    let lists = device_lists.clone();
    // Which Device holds each hub identity follows the watch before the cache does, so that
    // a reconcile never sees a Device the index does not know. A Device that takes over an
    // identity its holder left is reconciled.
    let (triggers, twin_events) = mpsc::unbounded::<ObjectRef<Device>>();
    let index = Arc::new(DeviceIndex::default());
    let (claims, woken) = (index.clone(), triggers.clone());
    let feeds = [
        drive(
            watch::<Device>(&client, &config, "devices", &metrics)
                .inspect(move |event| lists.note(event))
                .inspect(move |event| {
                    if let Ok(event) = event {
                        for device in claims.observe(event) {
                            let _ = woken.unbounded_send(device);
                        }
                    }
                })
                .reflect_shared(device_writer)
                .map(|_| ())
                .boxed(),
        ),
        drive(
            watch::<Recipe>(&client, &config, "recipes", &metrics)
                .reflect_shared(recipe_writer)
                .map(|_| ())
                .boxed(),
        ),
        drive(
            watch::<Rollout>(&client, &config, "rollouts", &metrics)
                .reflect_shared(rollout_writer)
                .map(|_| ())
                .boxed(),
        ),
        drive(
            watch::<Hub>(&client, &config, "hubs", &metrics)
                .reflect_shared(hub_writer)
                .map(|_| ())
                .boxed(),
        ),
    ];
    let hub_clients = Arc::new(HubClients::new(
        client.clone(),
        config.connector.clone(),
        hubs.clone(),
        devices.clone(),
        index.clone(),
        triggers,
    ));
    let signer: Arc<dyn Signer> = match (&config.signer, &config.signing_key) {
        (Some(signer), _) => signer.clone(),
        (None, Some(location)) => Arc::new(SecretSigner::new(client.clone(), location.clone())),
        (None, None) => Arc::new(NoSigner),
    };
    let stores = Stores {
        devices: devices.clone(),
        recipes: recipes.clone(),
        rollouts: rollouts.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
        hub_clients,
        index,
        stores,
        signer,
    ));

    // Reconcile only from filled caches, so that nothing acts on a partial view.
    let filled = tokio::try_join!(
        devices.wait_until_ready(),
        recipes.wait_until_ready(),
        rollouts.wait_until_ready(),
        hubs.wait_until_ready()
    );
    if filled.is_err() {
        return;
    }
    health.set(Phase::Leading);
    tracing::info!("caches filled; reconciling");
    let gauges = tokio::spawn(gauges::run(
        devices.clone(),
        rollouts.clone(),
        metrics.clone(),
    ));
    let registrations = tokio::spawn(device::announce_registrations(ctx.clone(), stop.clone()));

    let settings = ControllerConfig::default().concurrency(config.concurrency);
    let graceful = || {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    // Device reconciles follow spec changes, deletions, twin events and the resync; status
    // and finalizer writes alone do not call for one.
    let device_triggers = triggers::spec_or_deletion(device_events.clone(), device_lists);
    let device_controller = Controller::for_shared_stream(device_triggers, devices.clone())
        .with_config(settings.clone())
        .reconcile_on(twin_events)
        .graceful_shutdown_on(graceful())
        .run(
            |d, c| async move {
                instrumented(
                    device::CONTROLLER,
                    d.as_ref(),
                    &c,
                    device::reconcile(d.clone(), c.clone()),
                )
                .await
            },
            |d, e, c| error_policy(device::CONTROLLER, d.as_ref(), e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let recipe_controller = Controller::for_shared_stream(recipe_events.clone(), recipes.clone())
        .with_config(settings.clone())
        .graceful_shutdown_on(graceful())
        .run(
            |r, c| async move {
                instrumented(
                    recipe::CONTROLLER,
                    r.as_ref(),
                    &c,
                    recipe::reconcile(r.clone(), c.clone()),
                )
                .await
            },
            |r, e, c| error_policy(recipe::CONTROLLER, r.as_ref(), e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let by_device = rollouts_of_device(rollouts.clone());
    let by_recipe = rollouts_of_recipe(rollouts.clone());
    let rollout_controller = Controller::for_shared_stream(rollout_events, rollouts.clone())
        .with_config(settings.clone())
        .watches_shared_stream(device_events, by_device)
        .watches_shared_stream(recipe_events, by_recipe)
        .graceful_shutdown_on(graceful())
        .run(
            |r, c| async move {
                instrumented(
                    rollout::CONTROLLER,
                    r.as_ref(),
                    &c,
                    rollout::reconcile(r.clone(), c.clone()),
                )
                .await
            },
            |r, e, c| error_policy(rollout::CONTROLLER, r.as_ref(), e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let hub_controller = Controller::for_shared_stream(hub_events, hubs)
        .with_config(settings)
        .graceful_shutdown_on(graceful())
        .run(
            |h, c| async move {
                instrumented(
                    hub::CONTROLLER,
                    h.as_ref(),
                    &c,
                    hub::reconcile(h.clone(), c.clone()),
                )
                .await
            },
            |h, e, c| error_policy(hub::CONTROLLER, h.as_ref(), e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});

    tokio::join!(
        device_controller,
        recipe_controller,
        rollout_controller,
        hub_controller
    );
    gauges.abort();
    // The last gathered registrations still get their Events.
    let _ = registrations.await;
    for feed in feeds {
        feed.abort();
    }
}

/// Rollouts a Device change may concern: those whose selector matches it, the one that
/// claimed it and those whose finished records it keeps.
fn rollouts_of_device(
    rollouts: Store<Rollout>,
) -> impl Fn(Arc<Device>) -> Vec<ObjectRef<Rollout>> + Send + 'static {
    move |device| {
        let namespace = device.namespace();
        let status = device.status.as_ref();
        let claimed: Vec<&str> = status
            .and_then(|s| s.assignment.as_ref())
            .into_iter()
            .chain(status.into_iter().flat_map(|s| &s.previous_assignments))
            .map(|a| a.rollout.as_str())
            .collect();
        rollouts
            .state()
            .into_iter()
            .filter(|r| r.namespace() == namespace)
            .filter(|r| {
                claimed.contains(&r.name_any().as_str())
                    || Selector::try_from(r.spec.selector.clone())
                        .is_ok_and(|s| s.matches(device.labels()))
            })
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

/// Rollouts that name a Recipe.
fn rollouts_of_recipe(
    rollouts: Store<Rollout>,
) -> impl Fn(Arc<Recipe>) -> Vec<ObjectRef<Rollout>> + Send + 'static {
    move |recipe| {
        let namespace = recipe.namespace();
        let name = recipe.name_any();
        rollouts
            .state()
            .into_iter()
            .filter(|r| r.namespace() == namespace && r.spec.recipe_ref.name == name)
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}
