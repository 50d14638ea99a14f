//! The Helm chart: `helm lint --strict` passes, every profile renders and the real API server
//! accepts every manifest, bad values are refused, and the operator's rendered RBAC lets it do
//! its work and nothing else (checked by impersonating its ServiceAccount).
//!
//! helm and hadolint come from the build cache (`k3s-dev/build-tools helm hadolint`); a test
//! fails, never skips, when one is missing.

use anyhow::{Context, ensure};
use cloudpillar_tests::{delete_namespace, install_crds, kube_client, test_namespace};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[path = "chart/rbac.rs"]
mod rbac;
#[path = "chart/tools.rs"]
mod tools;

use tools::{RELEASE, cached_tool, chart_dir, documents, helm, kubectl, pod_security_violations};
use tools::{render, repo, run};

/// Values files and settings rendered by the tests; paths are relative to the chart.
const PROFILES: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("azure", &["-f", "values-azure.yaml"]),
    ("laptop", &["-f", "values-laptop.yaml"]),
    (
        "cluster-wide",
        &[
            "--set",
            "operator.watchAllNamespaces=true",
            "--set",
            "streamer.partitions=3",
            "--set",
            "hub.amqp.enabled=true",
        ],
    ),
];

#[tokio::test]
async fn helm_lint_strict_passes_for_every_profile() -> anyhow::Result<()> {
    for (profile, args) in PROFILES {
        let mut all = vec!["lint", "--strict", "."];
        all.extend_from_slice(args);
        let ran = run(&helm(), &all, &chart_dir(), "").await?;
        assert!(
            ran.success,
            "helm lint --strict, {profile} profile:\n{}{}",
            ran.stdout, ran.stderr
        );
    }
    Ok(())
}

/// Applies one profile with `--dry-run=server` in `namespace`; pods must meet the `restricted`
/// Pod Security Standard except the agent's host access.
async fn dry_run_profile(profile: &str, args: &[&str], namespace: &str) -> anyhow::Result<()> {
    let docs = documents(&render(namespace, args).await?);
    let (agent, rest): (Vec<_>, Vec<_>) = docs
        .into_iter()
        .partition(|doc| doc.contains("\nkind: DaemonSet"));
    ensure!(
        agent.is_empty() == (profile != "laptop"),
        "{profile}: the agent DaemonSet is rendered only in the laptop profile"
    );

    let ran = kubectl(
        &["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
        &rest.join("\n---\n"),
    )
    .await?;
    ensure!(
        ran.success,
        "{profile}: the API server refused a manifest:\n{}",
        ran.stderr
    );
    ensure!(
        !ran.stderr.contains("Warning"),
        "{profile}: warnings:\n{}",
        ran.stderr
    );
    let accepted = ran
        .stdout
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    ensure!(
        accepted == rest.len(),
        "{profile}: {accepted} of {} objects accepted",
        rest.len()
    );

    if !agent.is_empty() {
        let ran = kubectl(
            &["apply", "--dry-run=server", "-n", namespace, "-f", "-"],
            &agent.join("\n---\n"),
        )
        .await?;
        ensure!(
            ran.success,
            "{profile}: the API server refused the agent:\n{}",
            ran.stderr
        );
        let violations = pod_security_violations(&ran.stderr);
        // Host network, the hostPath state directory and a probe on the node's loopback are
        // what the agent is for; everything else must meet `restricted`.
        let host_access = [
            "host namespaces",
            "probe or lifecycle host",
            "restricted volume types",
        ];
        ensure!(
            !violations.is_empty() && violations.iter().all(|v| host_access.contains(&v.as_str())),
            "{profile}: the agent breaks Pod Security checks beyond host access: {violations:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn every_profile_renders_and_the_api_server_accepts_every_manifest() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    for (profile, args) in PROFILES {
        let namespace = test_namespace(&client, &format!("chart-{profile}")).await?;
        let labels = json!({"metadata": {"labels": {
            "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/warn-version": "latest",
        }}});
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces
            .patch(&namespace, &PatchParams::default(), &Patch::Merge(&labels))
            .await?;
        let result = dry_run_profile(profile, args, &namespace).await;
        delete_namespace(&client, &namespace).await?;
        result?;
    }
    Ok(())
}

#[tokio::test]
async fn helm_installs_the_generated_crds_and_the_api_server_accepts_them() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let rendered = render("cloudpillar", &["--include-crds"]).await?;
    let crds: Vec<String> = documents(&rendered)
        .into_iter()
        .filter(|doc| doc.contains("\nkind: CustomResourceDefinition"))
        .collect();
    let mut names: Vec<&str> = crds
        .iter()
        .filter_map(|doc| doc.lines().find_map(|l| l.strip_prefix("  name: ")))
        .collect();
    names.sort_unstable();
    let generated: Vec<String> = cloudpillar_crds::all()
        .into_iter()
        .filter_map(|crd| crd.metadata.name)
        .collect();
    let mut generated: Vec<&str> = generated.iter().map(String::as_str).collect();
    generated.sort_unstable();
    assert_eq!(
        names, generated,
        "the chart installs every generated CRD and nothing else"
    );

    let ran = kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        &crds.join("\n---\n"),
    )
    .await?;
    assert!(
        ran.success,
        "the API server refused a chart CRD:\n{}",
        ran.stderr
    );
    Ok(())
}

#[tokio::test]
async fn invalid_values_are_refused_with_a_reason() -> anyhow::Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "hub.mode=cloud"], "/hub/mode"),
        (&["--set", "hub.amqp.partitions=33"], "/hub/amqp/partitions"),
        (
            &["--set", "hub.policy.value=c2VjcmV0"],
            "additional properties 'value' not allowed",
        ),
        (
            &[
                "--set",
                "operator.replicas=3",
                "--set",
                "operator.leaderElection.enabled=false",
            ],
            "leaderElection",
        ),
        (
            &[
                "--set",
                "hub.mode=azure",
                "--set",
                "azure.serviceHost=x.azure-devices.net",
            ],
            "Event Hubs",
        ),
        (
            &[
                "--set",
                "writer.enabled=true",
                "--set",
                "mongodb.existingSecret=",
            ],
            "mongodb.existingSecret",
        ),
    ];
    for (args, reason) in cases {
        let mut all = vec!["template", RELEASE, "."];
        all.extend_from_slice(args);
        let ran = run(&helm(), &all, &chart_dir(), "").await?;
        assert!(!ran.success, "helm accepted {args:?}");
        assert!(
            ran.stderr.contains(reason),
            "refusing {args:?} should name {reason:?}:\n{}",
            ran.stderr
        );
    }
    Ok(())
}

#[tokio::test]
async fn service_monitor_renders_only_when_the_prometheus_api_is_served() -> anyhow::Result<()> {
    let without = render("cloudpillar", &[]).await?;
    assert!(
        !without.contains("kind: ServiceMonitor"),
        "ServiceMonitor without its API"
    );

    let with = render(
        "cloudpillar",
        &["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"],
    )
    .await?;
    let monitor = documents(&with)
        .into_iter()
        .find(|doc| doc.contains("\nkind: ServiceMonitor"))
        .context("no ServiceMonitor although monitoring.coreos.com/v1 is served")?;
    assert!(
        monitor.contains("cloudpillar.io/metrics: \"true\""),
        "{monitor}"
    );
    let metrics_services = documents(&with)
        .iter()
        .filter(|doc| {
            doc.contains("\nkind: Service\n") && doc.contains("cloudpillar.io/metrics: \"true\"")
        })
        .count();
    assert_eq!(
        metrics_services, 5,
        "one metrics Service per role: operator, hub, streamer, keyholder, writer"
    );
    Ok(())
}

#[tokio::test]
async fn container_files_pass_hadolint() -> anyhow::Result<()> {
    let hadolint = cached_tool("hadolint", "CP_HADOLINT_VERSION", "2.15.1");
    let dir = repo().join("deploy/containers");
    let mut files: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".Dockerfile"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["cloudpillar-agent.Dockerfile", "cloudpillar.Dockerfile"],
        "one file per binary"
    );
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let ran = run(&hadolint, &args, &dir, "").await?;
    assert!(
        ran.success,
        "hadolint findings:\n{}{}",
        ran.stdout, ran.stderr
    );
    Ok(())
}

#[tokio::test]
async fn operator_service_account_does_its_work_and_is_refused_the_rest() -> anyhow::Result<()> {
    let admin = kube_client().await?;
    install_crds(&admin).await?;
    let namespace = test_namespace(&admin, "chart-rbac").await?;
    let other = test_namespace(&admin, "chart-rbac-other").await?;
    let result = async {
        let rendered = render(
            &namespace,
            &[
                "--show-only",
                "templates/operator/serviceaccount.yaml",
                "--show-only",
                "templates/operator/rbac.yaml",
            ],
        )
        .await?;
        let ran = kubectl(&["apply", "-n", &namespace, "-f", "-"], &rendered).await?;
        ensure!(
            ran.success,
            "applying the operator's RBAC failed:\n{}",
            ran.stderr
        );
        rbac::check(
            &admin,
            &namespace,
            &other,
            &format!("{RELEASE}-cloudpillar-operator"),
        )
        .await
    }
    .await;
    delete_namespace(&admin, &namespace).await?;
    delete_namespace(&admin, &other).await?;
    result
}
