//! Shared helpers for tests that run against a real Kubernetes API server.
//!
//! The server comes from `k3s-dev/up` (or any cluster): `KUBECONFIG` must point
//! at it. `k3s-dev/test` sets that up before running `cargo test`.

use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

/// Field manager used by tests when they apply objects.
pub const FIELD_MANAGER: &str = "cloudpillar-tests";

/// A client for the cluster named by `KUBECONFIG`.
pub async fn kube_client() -> anyhow::Result<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        bail!(
            "KUBECONFIG is not set: start a cluster with `k3s-dev/up` or run tests via `k3s-dev/test`"
        );
    }
    let config = Config::infer().await.context("reading KUBECONFIG")?;
    Client::try_from(config).context("building the Kubernetes client")
}

/// Applies every CloudPillar CRD and waits until the server reports it Established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in cloudpillar_crds::all() {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        wait_established(&api, &name).await?;
    }
    Ok(())
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let crd = api.get(name).await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("CRD {name} was not Established within 10 s")
}

/// Creates a fresh namespace named `prefix-<random>` for one test and returns its name.
pub async fn test_namespace(client: &Client, prefix: &str) -> anyhow::Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let suffix: u32 = rand_suffix();
    let name = format!("{prefix}-{suffix:08x}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "cloudpillar.io/test": "true" } }
    }))?;
    api.create(&PostParams::default(), &ns)
        .await
        .context("creating test namespace")?;
    Ok(name)
}

/// Deletes a namespace created by [`test_namespace`]; the server removes its objects.
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.delete(name, &DeleteParams::background()).await?;
    Ok(())
}

/// Directory of the field recipe fixtures: `CLOUDPILLAR_FIXTURES`, or `shared/fixtures/recipes`
/// next to the repository.
pub fn fixtures_dir() -> std::path::PathBuf {
    std::env::var_os("CLOUDPILLAR_FIXTURES").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/recipes"),
        std::path::PathBuf::from,
    )
}

/// Reads a fixture file as JSON and returns the member at `pointer` (e.g. `/changeSpec`).
pub fn fixture_json(file: &str, pointer: &str) -> anyhow::Result<serde_json::Value> {
    let path = fixtures_dir().join(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading fixture {} (set CLOUDPILLAR_FIXTURES)",
            path.display()
        )
    })?;
    let document: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    document
        .pointer(pointer)
        .cloned()
        .with_context(|| format!("{} has no {pointer}", path.display()))
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish() as u32
}
