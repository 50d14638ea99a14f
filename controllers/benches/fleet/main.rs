//! Operator at fleet scale: 10,000 Devices against an embedded edge hub and the API server
//! named by `KUBECONFIG`. Prints figures; asserts nothing.
//!
//! `cargo bench -p cloudpillar-controllers --bench fleet` (`FLEET_DEVICES` changes the size).
//! The operator runs in a child process of this binary so that its RSS is its own.
//!
//! Figures:
//! - cold start: from operator start until every Device is Registered and Synced (each one
//!   registered in the hub on the way), with the requests the API server answered meanwhile
//!   and the operator's CPU time;
//! - restart: a fresh operator process until it has checked every Device against its twin;
//! - first wave: from applying a Rollout (10 % first wave) until the first twin holds the
//!   recipe, and until the whole first wave does;
//! - operator peak RSS (VmHWM of the child).
//!
//! The operator runs with the default settings of `Config` (`FLEET_CONCURRENCY` overrides the
//! reconcile concurrency). The chart's MutatingAdmissionPolicy gives the Devices the
//! operator's finalizer at creation, as on a cluster the chart installed into;
//! `FLEET_FINALIZER_POLICY=off` leaves it out, so the operator adds the finalizer itself.
// A benchmark prints its figures and may stop at the first surprise.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

mod figures;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudpillar_controllers::{Config, SecretLocation, device, run_until};
use cloudpillar_crds::{Device, Hub, Recipe, Rollout};
use cloudpillar_hub::HubConfig;
use cloudpillar_protocol::signing::SigningKey;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const MANAGER: &str = "fleet-bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FLEET_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Ok(namespace) = std::env::var("FLEET_OPERATOR_NAMESPACE") {
        return operator(namespace).await;
    }
    let devices: usize = std::env::var("FLEET_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    bench(devices).await
}

/// Child process: the operator alone, until stdin closes.
async fn operator(namespace: String) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let config = Config {
        namespace: Some(namespace.clone()),
        metrics_addr: std::env::var("FLEET_METRICS_ADDR")
            .unwrap_or_else(|_| "127.0.0.1:0".into())
            .parse()?,
        concurrency: std::env::var("FLEET_CONCURRENCY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Config::default().concurrency),
        signing_key: Some(SecretLocation {
            namespace,
            name: "recipe-signing".into(),
            key: "key.pem".into(),
        }),
        ..Config::default()
    };
    let stop = CancellationToken::new();
    let trigger = stop.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
        trigger.cancel();
    });
    run_until(client, config, stop).await?;
    Ok(())
}

async fn bench(count: usize) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cloudpillar_crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    let ns = format!("fleet-{:x}", rand::random::<u32>());
    let policy = std::env::var("FLEET_FINALIZER_POLICY").map_or(true, |v| v != "off");
    if policy {
        bind_finalizer_policy(&client, &ns).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;

    // The edge hub, its Hub object and a signing key.
    let dir = tempfile::tempdir()?;
    let mut hub_config = HubConfig::new(dir.path());
    hub_config.hostname = "localhost".into();
    let hub = cloudpillar_hub::Hub::start(hub_config).await?;
    let ca = std::fs::read(hub.ca_cert_path().expect("development CA"))?;
    let key = SigningKey::generate()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |name: &str, data: Vec<(&str, Vec<u8>)>| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    };
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "edge-policy",
                vec![
                    ("key", hub.policy_key().as_bytes().to_vec()),
                    ("ca.crt", ca),
                ],
            ),
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &secret(
                "recipe-signing",
                vec![("key.pem", key.to_pkcs8_pem()?.into_bytes())],
            ),
        )
        .await?;
    let hub_object = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Hub", "metadata": {"name": "edge"},
        "spec": {
            "kind": "edge",
            "endpoint": {"serviceHost": format!("localhost:{}", hub.http_addr().port())},
            "accessPolicy": {
                "policyName": hub.policy_name(),
                "secretRef": {"name": "edge-policy", "key": "key"},
            },
            "caBundle": {"name": "edge-policy", "key": "ca.crt"},
            "twinWriteRateLimit": 100_000,
        },
    });
    Api::<Hub>::namespaced(client.clone(), &ns)
        .patch(
            "edge",
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&hub_object),
        )
        .await?;

    // The fleet, before the operator starts.
    let requests_before = figures::request_counts(&client).await;
    let created = Instant::now();
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    stream::iter(0..count)
        .map(|i| {
            let devices = devices.clone();
            async move {
                let device: Device = serde_json::from_value(json!({
                    "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
                    "metadata": {"name": format!("dev-{i:05}"), "labels": {"fleet": "bench"}},
                    "spec": {
                        "hubRef": {"name": "edge"},
                        "tags": {"site": "bench"},
                        "desired": {"logLevel": "info"},
                    },
                }))?;
                devices.create(&PostParams::default(), &device).await?;
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    println!(
        "fleet: {count} Devices created in {:.1} s (setup, not measured)",
        created.elapsed().as_secs_f64()
    );
    let requests_after = figures::request_counts(&client).await;
    figures::print_request_delta("creation", &requests_before, &requests_after);

    // A cache of the Devices to watch progress without listing 10,000 objects per poll.
    let (store, writer) = reflector::store::<Device>();
    let feed = tokio::spawn(
        watcher(devices.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store.wait_until_ready().await?;
    let finalized = store
        .state()
        .iter()
        .filter(|d| d.finalizers().iter().any(|f| f == device::FINALIZER))
        .count();
    println!("fleet: Devices created with the operator's finalizer: {finalized} (policy {policy})");

    // Cold start.
    let requests_before = figures::request_counts(&client).await;
    let started = Instant::now();
    let (mut child, metrics_addr) = spawn_operator(&ns)?;
    let pid = child.id().expect("child pid");
    let synced = |d: &Arc<Device>| {
        let conditions = d
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        cloudpillar_crds::conditions::is_true(&conditions, "Synced")
    };
    wait("all Devices synced", Duration::from_secs(900), || {
        store.state().iter().filter(|d| synced(d)).count() == count
    })
    .await?;
    let cold = started.elapsed();
    let cold_cpu = figures::cpu_seconds(pid);
    let rss_synced = figures::rss_kib(pid, "VmRSS");
    let rss_synced_peak = figures::rss_kib(pid, "VmHWM");
    let requests_after = figures::request_counts(&client).await;
    println!(
        "fleet: cold start, {count} twins registered and in sync: {:.1} s (operator CPU {:.1} s)",
        cold.as_secs_f64(),
        cold_cpu
    );
    figures::print_request_delta("cold start", &requests_before, &requests_after);
    print_reconcile_figures(metrics_addr).await;
    let twins_ok = hub
        .core()
        .all_twins()?
        .iter()
        .filter(|t| t["tags"]["site"] == "bench")
        .count();
    println!("fleet: twins with the Device tags in the hub: {twins_ok}");

    // Restart: a fresh operator checks every Device against its twin; nothing needs writing.
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let requests_before = figures::request_counts(&client).await;
    let restarted = Instant::now();
    let (mut child, metrics_addr) = spawn_operator(&ns)?;
    let pid = child.id().expect("child pid");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let checked = figures::operator_metric(
            metrics_addr,
            "cloudpillar_reconciles_total{controller=\"device\"}",
        )
        .await
        .unwrap_or(0.0);
        if checked >= count as f64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "restart did not check every Device"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = restarted.elapsed();
    let restart_cpu = figures::cpu_seconds(pid);
    let requests_after = figures::request_counts(&client).await;
    println!(
        "fleet: restart, {count} Devices checked against their twins: {:.1} s \
         (operator CPU {:.1} s)",
        restart.as_secs_f64(),
        restart_cpu
    );
    figures::print_request_delta("restart", &requests_before, &requests_after);
    print_reconcile_figures(metrics_addr).await;

    // A Rollout: first wave of 10 %.
    let recipe = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe", "metadata": {"name": "fw"},
        "spec": {"changeSpec": {"id": "fw-bench-1", "patch": {"installSteps": [
            {"shell": "bash", "command": "echo installing"}]}}},
    });
    Api::<Recipe>::namespaced(client.clone(), &ns)
        .patch("fw", &PatchParams::apply(MANAGER), &Patch::Apply(&recipe))
        .await?;
    let recipes: Api<Recipe> = Api::namespaced(client.clone(), &ns);
    let mut signed = false;
    for _ in 0..300 {
        signed = recipes
            .get("fw")
            .await?
            .status
            .is_some_and(|s| s.signature.is_some());
        if signed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(signed, "recipe was not signed");
    let rollout = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "fw"},
        "spec": {"recipeRef": {"name": "fw"}, "selector": {"matchLabels": {"fleet": "bench"}},
                 "strategy": {"waves": [{"percent": 10}, {"percent": 90}]}},
    });
    let applied = Instant::now();
    Api::<Rollout>::namespaced(client.clone(), &ns)
        .patch("fw", &PatchParams::apply(MANAGER), &Patch::Apply(&rollout))
        .await?;
    let first_wave = count.div_ceil(10);
    let holds = |id: &str| {
        hub.core()
            .get_twin(id)
            .ok()
            .and_then(|t| t.pointer("/properties/desired/changeSpec/id").cloned())
            == Some(json!("fw-bench-1"))
    };
    wait(
        "first twin holds the recipe",
        Duration::from_secs(120),
        || (0..count).any(|i| holds(&format!("dev-{i:05}"))),
    )
    .await?;
    let first_twin = applied.elapsed();
    let assigned = |d: &Arc<Device>| {
        d.status
            .as_ref()
            .and_then(|s| s.assignment.as_ref())
            .is_some_and(|a| a.assigned_time.is_some())
    };
    wait("first wave written", Duration::from_secs(300), || {
        store.state().iter().filter(|d| assigned(d)).count() >= first_wave
    })
    .await?;
    let whole_wave = applied.elapsed();
    println!(
        "fleet: rollout first wave started (first twin written): {:.2} s",
        first_twin.as_secs_f64()
    );
    println!(
        "fleet: rollout first wave of {first_wave} devices written: {:.2} s",
        whole_wave.as_secs_f64()
    );
    println!(
        "fleet: operator RSS after the first sync: {} MiB (peak {} MiB); restarted operator \
         peak after its check and the first wave: {} MiB",
        rss_synced / 1024,
        rss_synced_peak / 1024,
        figures::rss_kib(pid, "VmHWM") / 1024
    );

    // Stop the operator, then clean up with a fresh one removing the hub identities.
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    feed.abort();
    cleanup(&client, &ns).await?;
    hub.shutdown().await;
    Ok(())
}

/// The chart's Device finalizer policy, bound to the benchmark's namespace only.
async fn bind_finalizer_policy(client: &Client, ns: &str) -> anyhow::Result<()> {
    const POLICY: &str =
        include_str!("../../../charts/cloudpillar/files/device-finalizer-policy.yaml");
    let policy: DynamicObject = serde_yaml::from_str(POLICY)?;
    let name = policy.metadata.name.clone().expect("policy name");
    let group = "admissionregistration.k8s.io";
    let kinds = [
        ("MutatingAdmissionPolicy", "mutatingadmissionpolicies"),
        (
            "MutatingAdmissionPolicyBinding",
            "mutatingadmissionpolicybindings",
        ),
    ];
    let api = |(kind, plural): (&str, &str)| {
        let gvk = GroupVersionKind::gvk(group, "v1", kind);
        Api::<DynamicObject>::all_with(
            client.clone(),
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    };
    let apply = PatchParams::apply(MANAGER).force();
    api(kinds[0])
        .patch(&name, &apply, &Patch::Apply(&policy))
        .await?;
    let binding_name = format!("{ns}-device-finalizer");
    let binding = json!({
        "apiVersion": format!("{group}/v1"), "kind": kinds[1].0,
        "metadata": {"name": binding_name},
        "spec": {"policyName": name, "matchResources": {"namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    });
    api(kinds[1])
        .patch(&binding_name, &apply, &Patch::Apply(&binding))
        .await?;
    Ok(())
}

/// Reconcile counts and mean durations from the operator's metrics.
async fn print_reconcile_figures(addr: std::net::SocketAddr) {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else {
        return;
    };
    let Ok(text) = response.text().await else {
        return;
    };
    for line in text.lines() {
        let wanted = [
            "cloudpillar_reconciles_total",
            "cloudpillar_reconcile_failures_total",
            "cloudpillar_reconcile_duration_seconds_sum",
            "cloudpillar_twin_writes_total",
        ];
        if wanted.iter().any(|w| line.starts_with(w)) {
            println!("fleet: operator metric {line}");
        }
    }
}

async fn cleanup(client: &Client, ns: &str) -> anyhow::Result<()> {
    // Without the operator, the finalizers are taken off directly.
    let devices: Api<Device> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = devices
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let clear = json!({"metadata": {"finalizers": null}});
    let _ = rollouts
        .patch("fw", &PatchParams::default(), &Patch::Merge(&clear))
        .await;
    stream::iter(names)
        .map(|name| {
            let (devices, clear) = (devices.clone(), clear.clone());
            async move {
                let _ = devices
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&clear))
                    .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // The policy binding is the benchmark's own; the policy stays, as a chart would leave it.
    let bindings = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingAdmissionPolicyBinding",
        ),
        "mutatingadmissionpolicybindings",
    );
    let _ = Api::<DynamicObject>::all_with(client.clone(), &bindings)
        .delete(&format!("{ns}-device-finalizer"), &DeleteParams::default())
        .await;
    // Deleting the namespace removes the objects; a busy API server may drop the request,
    // which only leaves the namespace behind.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Err(error) = namespaces.delete(ns, &DeleteParams::default()).await {
        println!("fleet: could not delete namespace {ns} ({error}); delete it by hand");
    }
    Ok(())
}

async fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Starts the operator in a child process; returns it and its metrics address.
fn spawn_operator(ns: &str) -> anyhow::Result<(tokio::process::Child, std::net::SocketAddr)> {
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = tokio::process::Command::new(std::env::current_exe()?)
        .env("FLEET_OPERATOR_NAMESPACE", ns)
        .env("FLEET_METRICS_ADDR", metrics_addr.to_string())
        .stdin(Stdio::piped())
        .spawn()?;
    Ok((child, metrics_addr))
}
