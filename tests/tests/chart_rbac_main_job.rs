//! The main job (`k3s-dev/demo`) with `cloudpillar run` acting as the chart's operator
//! ServiceAccount: the chart's rendered operator Role is all the controllers, the key holder
//! and the signing-key Secret need, and the rollout still succeeds on three real agents.
//!
//! `cloudpillar run` also embeds the edge hub, which publishes its credentials in the Secret
//! `cloudpillar-edge-hub`. No chart role does that (the chart's hub reads a Secret the
//! installer provides), so this test grants exactly that one `patch` on top of the chart's
//! Role, and nothing else.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use cloudpillar_crds::Device;
use cloudpillar_tests::controllers::eventually;
use cloudpillar_tests::{install_crds, kube_client};
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use tokio::io::{AsyncBufReadExt, BufReader};

// Shared with chart_roles.rs; this test needs only the kubeconfig writer.
#[allow(dead_code)]
#[path = "chart/roles.rs"]
mod roles;
// Shared with chart.rs; this test uses only part of it.
#[allow(dead_code)]
#[path = "chart/tools.rs"]
mod tools;

use roles::impersonating_kubeconfig;
use tools::{RELEASE, forbidden, kubectl, render};

/// What the embedded hub of `cloudpillar run` writes beyond the operator's work.
const RUN_HUB_SECRET_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: cloudpillar-run-hub-secret
rules:
  - apiGroups: [""]
    resources: ["secrets"]
    resourceNames: ["cloudpillar-edge-hub"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: cloudpillar-run-hub-secret
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: cloudpillar-run-hub-secret
subjects:
  - kind: ServiceAccount
    name: ACCOUNT
"#;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/debug`, where `k3s-dev/test` has built both binaries before the tests.
fn binaries() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.ancestors().nth(2).context("target profile directory")?;
    for name in ["cloudpillar", "cloudpillar-agent"] {
        ensure!(
            dir.join(name).exists(),
            "{name} is not built in {}: run the tests with `k3s-dev/test`",
            dir.display()
        );
    }
    Ok(dir.to_path_buf())
}

/// Binds the chart's operator Role, and the all-in-one hub's one extra right, in `namespace`.
async fn bind_operator_roles(namespace: &str, account: &str) -> anyhow::Result<()> {
    let rendered = render(
        namespace,
        &[
            "--show-only",
            "templates/operator/serviceaccount.yaml",
            "--show-only",
            "templates/operator/rbac.yaml",
        ],
    )
    .await?;
    let extra = RUN_HUB_SECRET_ROLE.replace("ACCOUNT", account);
    let manifest = format!("{rendered}\n---{extra}");
    let ran = kubectl(&["apply", "-n", namespace, "-f", "-"], &manifest).await?;
    ensure!(ran.success, "binding the operator's roles:\n{}", ran.stderr);
    Ok(())
}

/// A client acting as the account, once its Role has taken effect.
async fn as_account(kubeconfig: &Path, namespace: &str) -> anyhow::Result<Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &Default::default()).await?;
    let client = Client::try_from(config)?;
    let devices: Api<Device> = Api::namespaced(client.clone(), namespace);
    eventually(
        "the operator's Role to take effect",
        Duration::from_secs(10),
        || async { Ok(devices.list(&ListParams::default()).await.ok().map(|_| ())) },
    )
    .await?;
    Ok(client)
}

#[tokio::test]
async fn main_job_succeeds_with_cloudpillar_run_as_the_operators_service_account()
-> anyhow::Result<()> {
    let admin = kube_client().await?;
    install_crds(&admin).await?;
    let work = tempfile::tempdir()?;
    let namespace = format!("e2e-rbac-{}", std::process::id());
    let account = format!("{RELEASE}-cloudpillar-operator");
    // Written only once the account's roles exist; the demo waits for it.
    let wanted = work.path().join("operator.kubeconfig");

    let mut demo = tokio::process::Command::new(workspace_root().join("k3s-dev/demo"))
        .env("CP_DEMO_DIR", work.path().join("demo"))
        .env("CP_DEMO_NAMESPACE", &namespace)
        .env("CP_DEMO_TIMEOUT", "300")
        .env("CP_BIN_DIR", binaries()?)
        .env("CP_OPERATOR_KUBECONFIG", &wanted)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting k3s-dev/demo")?;
    let stdout = demo.stdout.take().context("stdout")?;
    let stderr = demo.stderr.take().context("stderr")?;
    let printed = tokio::spawn(async move {
        let mut text = String::new();
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    // The demo's progress lines, each noting whether the kubeconfig existed when it came.
    let watched = wanted.clone();
    let progress = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push((watched.exists(), line));
        }
        seen
    });

    // The namespace is the demo's own (it recreates it): bind the roles once it exists.
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    eventually("the demo's namespace", Duration::from_secs(180), || async {
        let found = namespaces.get_opt(&namespace).await?;
        let active = found.and_then(|n| n.status?.phase).as_deref() == Some("Active");
        Ok(active.then_some(()))
    })
    .await?;
    bind_operator_roles(&namespace, &account).await?;
    let staged = impersonating_kubeconfig(work.path(), &namespace, &account)?;
    let sa = as_account(&staged, &namespace).await?;
    std::fs::rename(&staged, &wanted)?;

    let status = demo.wait().await?;
    let stdout = printed.await?;
    let progress = progress.await?;
    let log = std::fs::read_to_string(work.path().join("demo/cloudpillar.log")).unwrap_or_default();
    let stderr: Vec<&str> = progress.iter().map(|(_, l)| l.as_str()).collect();
    let stderr = stderr.join("\n");
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    ensure!(
        status.success(),
        "demo failed:\n{stdout}\n{stderr}\ncloudpillar.log (last lines, newest first):\n{}",
        tail.join("\n")
    );

    // `cloudpillar run` started only with the account's kubeconfig in place.
    let started = progress
        .iter()
        .find(|(_, line)| line.contains("starting cloudpillar run"))
        .context("the demo never started cloudpillar run")?;
    ensure!(
        started.0,
        "cloudpillar run started before its kubeconfig existed"
    );
    ensure!(
        stdout.contains("rollout: phase=Succeeded wave=2 succeeded=3 failed=0"),
        "{stdout}"
    );
    ensure!(!log.to_lowercase().contains("forbidden"), "refused:\n{log}");

    // The identity it ran as is refused what the chart's Role does not grant.
    let elsewhere: Api<Secret> = Api::namespaced(sa.clone(), "default");
    forbidden(
        elsewhere.list(&ListParams::default()).await,
        "list Secrets in default",
    )?;
    let nodes: Api<Node> = Api::all(sa);
    forbidden(
        nodes.delete("any", &DeleteParams::default()).await,
        "delete a Node",
    )?;
    remove_namespace(&namespace).await
}

/// Deletes the demo's namespace; its operator is gone, so the finalizers are released first.
async fn remove_namespace(namespace: &str) -> anyhow::Result<()> {
    let kinds = "devices,rollouts,recipes,hubs";
    let listed = kubectl(&["-n", namespace, "get", kinds, "-o", "name"], "").await?;
    for object in listed.stdout.lines() {
        let release = r#"{"metadata":{"finalizers":null}}"#;
        let args = [
            "-n",
            namespace,
            "patch",
            object,
            "--type=merge",
            "-p",
            release,
        ];
        kubectl(&args, "").await?;
    }
    let ran = kubectl(&["delete", "namespace", namespace, "--wait=false"], "").await?;
    ensure!(ran.success, "deleting {namespace}:\n{}", ran.stderr);
    Ok(())
}
