//! The chart's roles run as real processes with exactly the arguments the chart renders: the
//! binary accepts every flag, each role's liveness and readiness probes (and the hub's startup
//! probe) pass on the port the chart points them at, `/metrics` carries the role's counters,
//! a real agent's RunDiagnostics upload is signed (streamer through the key holder role), and
//! readiness follows the role's dependencies. The operator runs as the chart's
//! ServiceAccount (impersonated), signs through the key holder, brings a Device and a Recipe
//! to their ready conditions, and is refused what its Role does not grant.

use std::time::Duration;

use anyhow::{Context, ensure};
use cloudpillar_crds::conditions::{DEVICE_REGISTERED, DEVICE_SYNCED, RECIPE_SIGNED, is_true};
use cloudpillar_crds::recipe::RECIPE_ARTIFACTS_AVAILABLE;
use cloudpillar_crds::{Device, DeviceSpec, Recipe};
use cloudpillar_protocol::signing::SigningKey;
use cloudpillar_tests::controllers::eventually;
use cloudpillar_tests::test_namespace;
use cloudpillar_tests::{delete_namespace, fixture_json, install_crds, kube_client};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

#[path = "chart/device.rs"]
mod device;
#[path = "chart/roles.rs"]
mod roles;
// Shared with chart.rs; this test uses only part of it.
#[allow(dead_code)]
#[path = "chart/tools.rs"]
mod tools;

use roles::{Role, Site, cloudpillar_binary, container, impersonating_kubeconfig};
use tools::{RELEASE, forbidden, kubectl, render};

const STARTUP: Duration = Duration::from_secs(60);

/// Values every render here uses: the hub known as `localhost`, so its certificate, the SAS
/// tokens and the `Hub` object agree on one name that resolves on this machine.
fn values(database: &str, extra: &[&str]) -> Vec<String> {
    let mut all = vec![
        "--set".to_owned(),
        "hub.hostname=localhost".to_owned(),
        "--set".to_owned(),
        format!("mongodb.database={database}"),
    ];
    all.extend(extra.iter().map(|s| (*s).to_owned()));
    all
}

/// Applies the rendered RBAC `templates` in `namespace`.
async fn apply_rendered(
    namespace: &str,
    templates: &[&str],
    values: &[&str],
) -> anyhow::Result<()> {
    let mut args = Vec::new();
    for template in templates {
        args.extend(["--show-only", template]);
    }
    args.extend_from_slice(values);
    let rendered = render(namespace, &args).await?;
    let ran = kubectl(&["apply", "-n", namespace, "-f", "-"], &rendered).await?;
    ensure!(ran.success, "applying {templates:?}:\n{}", ran.stderr);
    Ok(())
}

/// The Secrets the chart expects to exist before its pods start.
async fn create_secrets(
    admin: &Client,
    namespace: &str,
    site: &Site,
) -> anyhow::Result<SigningKey> {
    let key = SigningKey::generate()?;
    let tls = |file: &str| std::fs::read_to_string(site.path("tls").join(file));
    let secrets = [
        json!({"metadata": {"name": "cloudpillar-signing-key"},
               "stringData": {"signing.pem": key.to_pkcs8_pem()?}}),
        json!({"metadata": {"name": "cloudpillar-hub-policy"},
               "stringData": {"primaryKey": site.policy_key}}),
        json!({"metadata": {"name": "cloudpillar-hub-tls"},
               "stringData": {"ca.crt": site.ca_pem()?, "tls.crt": tls("dev-server.pem")?,
                              "tls.key": tls("dev-server.key")?}}),
        json!({"metadata": {"name": "cloudpillar-keyholder-token"},
               "stringData": {"token": site.api_token}}),
    ];
    let api: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    for secret in secrets {
        api.create(&PostParams::default(), &serde_json::from_value(secret)?)
            .await?;
    }
    Ok(key)
}

/// Starts the hub and the key holder (as its ServiceAccount) from their rendered containers.
async fn start_hub_and_keyholder(
    site: &Site,
    namespace: &str,
    values: &[&str],
) -> anyhow::Result<(Role, Role)> {
    let binary = cloudpillar_binary()?;
    let hub = container(namespace, values, "templates/hub/statefulset.yaml", "hub").await?;
    hub.check_probes_hit_the_metrics_port()?;
    ensure!(
        hub.probes.iter().any(|(kind, ..)| kind == "startupProbe"),
        "the hub has a startup probe while it opens its store"
    );
    let mut hub = Role::start(site, &binary, &hub, &[], None).await?;
    hub.wait_until_probes_pass(STARTUP).await?;

    let template = "templates/keyholder/deployment.yaml";
    let keyholder = container(namespace, values, template, "keyholder").await?;
    keyholder.check_probes_hit_the_metrics_port()?;
    let account = format!("{RELEASE}-cloudpillar-keyholder");
    let kubeconfig = impersonating_kubeconfig(site.dir.path(), namespace, &account)?;
    let mut keyholder = Role::start(site, &binary, &keyholder, &[], Some(&kubeconfig)).await?;
    keyholder.wait_until_probes_pass(STARTUP).await?;
    Ok((hub, keyholder))
}

#[tokio::test]
async fn backend_roles_run_with_the_charts_arguments_and_pass_its_probes() -> anyhow::Result<()> {
    install_tls_provider();
    let mongodb = std::env::var("CP_MONGODB_URL")
        .context("CP_MONGODB_URL must name a MongoDB (k3s-dev/test starts FerretDB)")?;
    let admin = kube_client().await?;
    let namespace = test_namespace(&admin, "chart-roles").await?;
    let site = Site::new()?;
    let result = async {
        let values = values(&namespace.replace('-', "_"), &[]);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        apply_rendered(&namespace, &["templates/keyholder/rbac.yaml"], &values).await?;
        let key = create_secrets(&admin, &namespace, &site).await?;
        let (hub, keyholder) = start_hub_and_keyholder(&site, &namespace, &values).await?;

        let binary = cloudpillar_binary()?;
        let mut consumers = Vec::new();
        for name in ["streamer", "writer"] {
            let rendered =
                container(&namespace, &values, "templates/partitioned.yaml", name).await?;
            rendered.check_probes_hit_the_metrics_port()?;
            let env = [("CP_MONGODB_URL", mongodb.clone())];
            let mut role = Role::start(&site, &binary, &rendered, &env, None).await?;
            role.wait_until_probes_pass(STARTUP).await?;
            consumers.push(role);
        }

        // Each role's counters, fed by real work.
        let (_, hub_metrics) = hub.get("/metrics").await?;
        for wanted in [
            "cloudpillar_dependency_up{dependency=\"store\"} 1",
            "cloudpillar_dependency_up{dependency=\"mqtt\"} 1",
            "cloudpillar_hub_last_event_sequence",
        ] {
            ensure!(
                hub_metrics.contains(wanted),
                "hub /metrics lacks {wanted}:\n{hub_metrics}"
            );
        }
        let keys = format!("http://127.0.0.1:{}/v1/keys", site.keyholder_http);
        ensure!(
            reqwest::get(&keys).await?.status().is_success(),
            "GET /v1/keys"
        );
        let (_, text) = keyholder.get("/metrics").await?;
        let counted = "cloudpillar_keyholder_requests_total{route=\"/v1/keys\",status=\"200\"} 1";
        ensure!(
            text.contains(counted),
            "key holder /metrics lacks {counted}:\n{text}"
        );
        for role in &consumers {
            let read = "cloudpillar_hub_requests_total{action=\"read_events\",outcome=\"ok\"}";
            eventually(
                &format!("{} counting its reads", role.name),
                STARTUP,
                || async { Ok(role.get("/metrics").await?.1.contains(read).then_some(())) },
            )
            .await?;
        }
        let (_, writer_metrics) = consumers[1].get("/metrics").await?;
        let mongo_up = "cloudpillar_dependency_up{dependency=\"mongodb\"} 1";
        ensure!(writer_metrics.contains(mongo_up), "{writer_metrics}");

        // A device's diagnostics upload is signed: the streamer asks the key holder role.
        device::diagnostics_pass(&site, &key, "diag-01")
            .await
            .with_context(|| format!("streamer:\n{}", consumers[0].log_tail()))?;
        let (_, text) = keyholder.get("/metrics").await?;
        let signed = "keyholder_requests_total{route=\"/v1/sign/blob\",status=\"200\"} 1";
        ensure!(
            text.contains(signed),
            "the key holder signed no upload:\n{text}"
        );

        // Without the hub the consumers stay alive but stop being ready, naming the hub.
        hub.stop().await?;
        for role in &consumers {
            let (status, body) = eventually("readiness to drop", STARTUP, || async {
                let answer = role.get("/readyz").await?;
                Ok((answer.0 == 503).then_some(answer))
            })
            .await?;
            ensure!(body.contains("hub: "), "{}: {status} {body}", role.name);
            ensure!(
                role.get("/healthz").await?.0 == 200,
                "{} is still alive",
                role.name
            );
        }
        Ok(())
    }
    .await;
    delete_namespace(&admin, &namespace).await?;
    result
}

#[tokio::test]
async fn operator_as_the_charts_service_account_signs_through_the_key_holder_and_syncs_devices()
-> anyhow::Result<()> {
    install_tls_provider();
    let admin = kube_client().await?;
    install_crds(&admin).await?;
    let namespace = test_namespace(&admin, "chart-sa").await?;
    let other = test_namespace(&admin, "chart-sa-other").await?;
    let site = Site::new()?;
    let result = async {
        let values = values("cloudpillar", &["--set", "operator.signer=keyholder"]);
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let rbac = [
            "templates/operator/serviceaccount.yaml",
            "templates/operator/rbac.yaml",
            "templates/keyholder/rbac.yaml",
        ];
        apply_rendered(&namespace, &rbac, &values).await?;
        let key_id = create_secrets(&admin, &namespace, &site)
            .await?
            .key_id()
            .to_owned();
        let (_hub, keyholder) = start_hub_and_keyholder(&site, &namespace, &values).await?;

        // The operator, with its rendered arguments, as its ServiceAccount.
        let template = "templates/operator/deployment.yaml";
        let rendered = container(&namespace, &values, template, "operator").await?;
        rendered.check_probes_hit_the_metrics_port()?;
        let account = format!("{RELEASE}-cloudpillar-operator");
        let kubeconfig = impersonating_kubeconfig(site.dir.path(), &namespace, &account)?;
        let env = [("POD_NAME", "operator-0".to_owned())];
        let binary = cloudpillar_binary()?;
        let mut operator = Role::start(&site, &binary, &rendered, &env, Some(&kubeconfig)).await?;
        operator.wait_until_probes_pass(STARTUP).await?;

        create_objects(&admin, &namespace, &site).await?;
        let recipes: Api<Recipe> = Api::namespaced(admin.clone(), &namespace);
        let recipe = eventually("the Recipe signed", STARTUP, || async {
            let recipe = recipes.get("security-update").await?;
            let status = recipe.status.clone().unwrap_or_default();
            Ok(is_true(&status.conditions, RECIPE_SIGNED).then_some(recipe))
        })
        .await
        .with_context(|| operator.log_tail())?;
        let status = recipe.status.unwrap_or_default();
        ensure!(
            status.key_id.as_deref() == Some(key_id.as_str()),
            "{status:?}"
        );
        artifacts_are_looked_up_in_the_charts_blob_store(&recipes, &site)
            .await
            .with_context(|| operator.log_tail())?;
        let devices: Api<Device> = Api::namespaced(admin.clone(), &namespace);
        eventually("the Device registered and synced", STARTUP, || async {
            let device = devices.get("mri-01").await?;
            let conditions = device.status.map(|s| s.conditions).unwrap_or_default();
            let done =
                is_true(&conditions, DEVICE_REGISTERED) && is_true(&conditions, DEVICE_SYNCED);
            Ok(done.then_some(()))
        })
        .await
        .with_context(|| operator.log_tail())?;

        // It signed through the key holder and leads through its Lease.
        let (_, text) = keyholder.get("/metrics").await?;
        let signed = "keyholder_requests_total{route=\"/v1/sign/recipe\",status=\"200\"}";
        ensure!(
            text.contains(signed),
            "the key holder signed nothing:\n{text}"
        );
        let lease = Api::<Lease>::namespaced(admin.clone(), &namespace)
            .get("cloudpillar-operator")
            .await?;
        let holder = lease.spec.and_then(|s| s.holder_identity);
        ensure!(
            holder.as_deref() == Some("operator-0"),
            "lease held by {holder:?}"
        );
        let log = std::fs::read_to_string(site.path("operator.log"))?.to_lowercase();
        ensure!(
            !log.contains("forbidden"),
            "the operator was refused something:\n{log}"
        );

        // The same identity is refused what its Role does not grant.
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&kubeconfig)?,
            &Default::default(),
        )
        .await?;
        let sa = Client::try_from(config)?;
        let elsewhere: Api<Secret> = Api::namespaced(sa.clone(), &other);
        forbidden(
            elsewhere.list(&ListParams::default()).await,
            "list Secrets elsewhere",
        )?;
        let nodes: Api<Node> = Api::all(sa.clone());
        forbidden(
            nodes.delete("any", &DeleteParams::default()).await,
            "delete a Node",
        )?;
        let own: Api<Secret> = Api::namespaced(sa, &namespace);
        forbidden(own.list(&ListParams::default()).await, "list Secrets")?;
        Ok(())
    }
    .await;
    delete_namespace(&admin, &namespace).await?;
    delete_namespace(&admin, &other).await?;
    result
}

/// The operator reads the blob store the chart gives it: the fixture's two files are named
/// missing, and once published the recipe lists their sizes and counts them available.
async fn artifacts_are_looked_up_in_the_charts_blob_store(
    recipes: &Api<Recipe>,
    site: &Site,
) -> anyhow::Result<()> {
    let availability = |recipe: &Recipe| {
        let conditions = recipe.status.clone().unwrap_or_default().conditions;
        cloudpillar_crds::conditions::find(&conditions, RECIPE_ARTIFACTS_AVAILABLE)
            .map(|c| (c.status.clone(), c.message.clone()))
    };
    let files = ["mcaffeeV3_5150dat.zip", "SPU.zip"];
    let missing = format!("not in the blob store: {}", files.join(", "));
    eventually("both files named missing", STARTUP, || async {
        let found = availability(&recipes.get("security-update").await?);
        Ok((found == Some(("False".into(), missing.clone()))).then_some(()))
    })
    .await?;

    let patches = site.path("blobs/patches");
    for file in files {
        std::fs::write(patches.join(file), file.as_bytes())?;
    }
    let recipe = eventually("both files available", STARTUP, || async {
        let recipe = recipes.get("security-update").await?;
        let available = availability(&recipe).is_some_and(|(status, _)| status == "True");
        Ok(available.then_some(recipe))
    })
    .await?;
    let sizes: Vec<(String, Option<i64>)> = recipe
        .status
        .unwrap_or_default()
        .artifacts
        .into_iter()
        .map(|a| (a.name, a.size))
        .collect();
    let wanted: Vec<(String, Option<i64>)> = files
        .iter()
        .map(|f| ((*f).to_owned(), Some(f.len() as i64)))
        .collect();
    ensure!(sizes == wanted, "{sizes:?}");
    Ok(())
}

/// The `Hub` the chart renders, pointed at the local hub, a Device and a Recipe.
async fn create_objects(admin: &Client, namespace: &str, site: &Site) -> anyhow::Result<()> {
    let hub = render(
        namespace,
        &[
            "--show-only",
            "templates/hub-resource.yaml",
            "--set",
            "hub.hostname=localhost",
        ],
    )
    .await?;
    let service_host = format!("serviceHost: localhost:{}", site.hub_https);
    let hub = hub
        .lines()
        .map(|line| match line.trim_start().starts_with("serviceHost:") {
            true => format!("    {service_host}"),
            false => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ran = kubectl(&["apply", "-n", namespace, "-f", "-"], &hub).await?;
    ensure!(ran.success, "applying the Hub:\n{}", ran.stderr);

    let post = PostParams::default();
    let device = Device::new("mri-01", DeviceSpec::default());
    Api::<Device>::namespaced(admin.clone(), namespace)
        .create(&post, &device)
        .await?;
    let change_spec = fixture_json("security-update-desired.json", "/desired/changeSpec")?;
    let recipe: Recipe = serde_json::from_value(json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Recipe",
        "metadata": {"name": "security-update"}, "spec": {"changeSpec": change_spec},
    }))?;
    let created = Api::<Recipe>::namespaced(admin.clone(), namespace)
        .create(&post, &recipe)
        .await?;
    ensure!(created.name_any() == "security-update", "Recipe created");
    Ok(())
}

/// reqwest here uses rustls without a bundled provider: install ring once.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
