//! Two operator replicas behind one Lease; metrics and health endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use cloudpillar_controllers::LeaderElection;
use cloudpillar_crds::Device;
use cloudpillar_tests::controllers::{EdgeHub, Operator, apply, eventually, test_config};
use cloudpillar_tests::{install_crds, kube_client, test_namespace};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(40);

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from((
        [127, 0, 0, 1],
        cloudpillar_tests::free_port()?,
    )))
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let response = reqwest::get(format!("http://{addr}{path}")).await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Waits until the replica serving `addr` answers `/readyz` with `leading`.
async fn leads(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    eventually(what, WAIT, || async {
        Ok(get(addr, "/readyz")
            .await
            .ok()
            .filter(|(_, body)| body == "leading")
            .map(|_| ()))
    })
    .await
}

fn election(ns: &str, identity: &str) -> LeaderElection {
    LeaderElection {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        ..LeaderElection::new(ns, "cloudpillar-operator", identity)
    }
}

#[tokio::test]
async fn only_one_replica_leads_and_the_other_takes_over_when_it_stops() -> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-leader").await?;
    let hub = EdgeHub::start(&client, &ns, "edge", 1000).await?;

    let (addr_a, addr_b) = (free_port()?, free_port()?);
    let mut config_a = test_config(&ns);
    config_a.metrics_addr = addr_a;
    config_a.leader_election = Some(election(&ns, "replica-a"));
    let replica_a = Operator::start(&client, config_a);
    leads(addr_a, "replica a leads").await?;

    let mut config_b = test_config(&ns);
    config_b.metrics_addr = addr_b;
    config_b.leader_election = Some(election(&ns, "replica-b"));
    let replica_b = Operator::start(&client, config_b);
    eventually("replica b stands by", WAIT, || async {
        Ok(get(addr_b, "/readyz")
            .await
            .ok()
            .filter(|(code, body)| *code == 200 && body == "standby")
            .map(|_| ()))
    })
    .await?;
    assert_eq!(get(addr_b, "/healthz").await?, (200, "ok".to_owned()));

    // The leader reconciles and reports it; no object name appears in the metrics.
    let device = json!({
        "apiVersion": "cloudpillar.io/v1alpha1", "kind": "Device",
        "metadata": { "name": "dev-lead-7f3a" }, "spec": { "hubRef": { "name": "edge" } },
    });
    apply::<Device>(&client, &ns, device).await?;
    eventually("device registered by the leader", WAIT, || async {
        Ok(hub.twin("dev-lead-7f3a").map(|_| ()))
    })
    .await?;
    // A reconcile is counted when it ends, a little after the twin exists.
    let metrics = eventually("the device reconcile counted", WAIT, || async {
        let (_, metrics) = get(addr_a, "/metrics").await?;
        let counted = metrics.contains("cloudpillar_reconciles_total{controller=\"device\"}");
        Ok(counted.then_some(metrics))
    })
    .await?;
    assert!(metrics.contains("cloudpillar_leader 1"));
    assert!(metrics.contains("cloudpillar_reconcile_duration_seconds_bucket"));
    assert!(
        !metrics.contains("dev-lead-7f3a"),
        "an object name leaked into metrics"
    );
    let (_, standby) = get(addr_b, "/metrics").await?;
    assert!(standby.contains("cloudpillar_leader 0"));
    assert!(
        !standby.contains("cloudpillar_reconciles_total{"),
        "the standby replica reconciled"
    );

    // The leader stops and frees the Lease; the other replica takes over.
    replica_a.stop().await?;
    leads(addr_b, "replica b leads").await?;
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("cloudpillar-operator")
        .await?;
    let spec = lease.spec.expect("lease spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(spec.lease_transitions, Some(1));

    // The new leader handles the Device's deletion; then it stops and the namespace goes.
    let devices: Api<Device> = Api::namespaced(client.clone(), &ns);
    devices
        .delete("dev-lead-7f3a", &kube::api::DeleteParams::default())
        .await?;
    eventually("device removed by the new leader", WAIT, || async {
        Ok(devices
            .get_opt("dev-lead-7f3a")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    assert!(hub.twin("dev-lead-7f3a").is_none());
    replica_b.stop().await?;
    cloudpillar_tests::delete_namespace_and_wait(&client, &ns, Duration::from_secs(20)).await?;
    Ok(())
}

#[tokio::test]
async fn a_single_replica_without_election_shows_as_leader_and_exports_every_series()
-> anyhow::Result<()> {
    let client = kube_client().await?;
    install_crds(&client).await?;
    let ns = test_namespace(&client, "ctl-single").await?;
    let addr = free_port()?;
    let mut config = test_config(&ns);
    config.metrics_addr = addr;
    let operator = Operator::start(&client, config);
    leads(addr, "the replica leads").await?;
    let (_, metrics) = get(addr, "/metrics").await?;
    // `/readyz` and the gauge agree; relist counters exist before the first relist.
    assert!(metrics.contains("cloudpillar_leader 1"), "{metrics}");
    for resource in ["devices", "recipes", "rollouts", "hubs"] {
        let series = format!("cloudpillar_watch_relists_total{{resource=\"{resource}\"}} 0");
        assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
    }
    operator.stop().await
}
