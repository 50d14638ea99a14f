//! The edge hub's Event Hubs-compatible AMQP endpoint in the chart: off by default; with
//! `hub.amqp.enabled` the container port and both Services carry it, and the hub started with
//! exactly the rendered arguments serves the event log there (a twin change read back over
//! AMQP with TLS and the policy key, as a reader of Azure IoT Hub's built-in endpoint would).
//! The `Hub` object the chart creates names that endpoint in `spec.eventHub` when it is served.

use std::time::Duration;

use anyhow::{Context, ensure};
use cloudpillar_controllers::twin::{
    AzureTwinService, Checkpoint, DeviceIdentity, EventHubConnection, EventPositions,
    HubConnection, IdentityAuth, RetryPolicy, TwinEventKind, TwinPatch, TwinService,
};
use cloudpillar_tests::controllers::tls_trusting;
use futures::StreamExt;
use serde_json::{Value, json};

// Shared with chart_roles.rs and chart.rs; this test uses only part of them.
#[allow(dead_code)]
#[path = "chart/roles.rs"]
mod roles;
#[allow(dead_code)]
#[path = "chart/tools.rs"]
mod tools;

use roles::{Role, Site, cloudpillar_binary, container, rendered_objects};

const STATEFULSET: &str = "templates/hub/statefulset.yaml";
const SERVICES: &str = "templates/hub/service.yaml";
const HUB_OBJECT: &str = "templates/hub-resource.yaml";
const STARTUP: Duration = Duration::from_secs(60);

/// The ports of each rendered hub Service but the metrics one, by Service name.
async fn service_ports(values: &[&str]) -> anyhow::Result<Vec<(String, Vec<Value>)>> {
    let services = rendered_objects("cloudpillar", values, SERVICES).await?;
    Ok(services
        .iter()
        .filter(|s| s["kind"] == "Service")
        .filter(|s| s["metadata"]["labels"]["cloudpillar.io/metrics"].is_null())
        .map(|s| {
            let name = s["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let ports = s["spec"]["ports"].as_array().cloned().unwrap_or_default();
            (name, ports)
        })
        .collect())
}

fn amqp_port(ports: &[Value]) -> Option<&Value> {
    ports.iter().find(|p| p["name"] == "amqp")
}

#[tokio::test]
async fn the_amqp_endpoint_is_rendered_only_when_enabled() -> anyhow::Result<()> {
    let off = container("cloudpillar", &[], STATEFULSET, "hub").await?;
    ensure!(!off.ports.contains_key("amqp"), "{:?}", off.ports);
    ensure!(
        !off.args.iter().any(|a| a.starts_with("--amqp")),
        "{:?}",
        off.args
    );
    for (name, ports) in service_ports(&[]).await? {
        ensure!(amqp_port(&ports).is_none(), "{name} has an amqp port");
    }

    let on = [
        "--set",
        "hub.amqp.enabled=true",
        "--set",
        "hub.ports.amqp=5672",
        "--set",
        "hub.service.type=NodePort",
        "--set",
        "hub.service.nodePorts.amqp=30671",
    ];
    let hub = container("cloudpillar", &on, STATEFULSET, "hub").await?;
    ensure!(hub.ports.get("amqp") == Some(&5672), "{:?}", hub.ports);
    for wanted in [
        "--amqp=0.0.0.0:5672",
        "--event-hub-name=edgehub",
        "--partitions=4",
    ] {
        ensure!(
            hub.args.iter().any(|a| a == wanted),
            "{wanted}: {:?}",
            hub.args
        );
    }
    let services = service_ports(&on).await?;
    ensure!(services.len() == 2, "the hub Service and its headless one");
    for (name, ports) in services {
        let port = amqp_port(&ports).with_context(|| format!("{name} has no amqp port"))?;
        ensure!(
            port["port"] == 5672 && port["targetPort"] == "amqp",
            "{name}: {port}"
        );
        let node_port = if name.ends_with("-headless") {
            Value::Null
        } else {
            json!(30671)
        };
        ensure!(port["nodePort"] == node_port, "{name}: {port}");
    }
    Ok(())
}

#[tokio::test]
async fn the_hub_object_names_the_amqp_endpoint_only_when_it_is_served() -> anyhow::Result<()> {
    let hub_object = |objects: Vec<Value>| -> anyhow::Result<cloudpillar_crds::Hub> {
        let found = objects
            .into_iter()
            .find(|o| o["kind"] == "Hub")
            .context("the chart renders no Hub")?;
        Ok(serde_json::from_value(found)?)
    };
    let off = hub_object(rendered_objects("cloudpillar", &[], HUB_OBJECT).await?)?;
    ensure!(off.spec.event_hub.is_none(), "{:?}", off.spec.event_hub);

    let on = [
        "--set",
        "hub.amqp.enabled=true",
        "--set",
        "hub.ports.amqp=5672",
        "--set",
        "hub.amqp.eventHubName=fleet-events",
    ];
    let hub = hub_object(rendered_objects("cloudpillar", &on, HUB_OBJECT).await?)?;
    let endpoint = hub.spec.event_hub.context("no spec.eventHub")?;
    // The hub Service (not the headless one) on the AMQP port, and the name the hub serves.
    let service = service_ports(&on)
        .await?
        .into_iter()
        .map(|(name, _)| name)
        .find(|name| !name.ends_with("-headless"))
        .context("no hub Service")?;
    ensure!(
        endpoint.host == format!("{service}.cloudpillar.svc:5672"),
        "{endpoint:?}"
    );
    let served = container("cloudpillar", &on, STATEFULSET, "hub").await?;
    let name_arg = format!("--event-hub-name={}", endpoint.name);
    ensure!(
        endpoint.name == "fleet-events" && served.args.contains(&name_arg),
        "{endpoint:?} against {:?}",
        served.args
    );
    // Signed in with the Hub's own policy and the operator's default consumer group.
    ensure!(
        endpoint.access_policy.is_none() && endpoint.consumer_group == "$Default",
        "{endpoint:?}"
    );
    Ok(())
}

/// A service client of the local hub that reads its events from `site.hub_amqp`.
fn reader(site: &Site) -> anyhow::Result<std::sync::Arc<AzureTwinService>> {
    let ca = site.ca_pem()?;
    let tls = tls_trusting(&ca)?;
    let policy_name = "iothubowner".to_owned();
    Ok(AzureTwinService::new(HubConnection {
        service_host: format!("localhost:{}", site.hub_https),
        policy_name: policy_name.clone(),
        policy_key: site.policy_key.clone(),
        ca_bundle: Some(ca.into_bytes()),
        write_rate_limit: 100,
        retry: RetryPolicy::default(),
        event_stream: false,
        event_hub: Some(EventHubConnection {
            host: format!("localhost:{}", site.hub_amqp),
            name: "fleet-events".into(),
            consumer_group: "$Default".into(),
            policy_name,
            policy_key: site.policy_key.clone(),
            tls: Some(tls),
        }),
    })?)
}

#[tokio::test]
async fn the_hub_serves_its_event_log_over_amqp_with_the_rendered_arguments() -> anyhow::Result<()>
{
    // The service client's HTTPS connections take the process-wide TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let site = Site::new()?;
    let values = [
        "--set",
        "hub.hostname=localhost",
        "--set",
        "hub.amqp.enabled=true",
        "--set",
        "hub.amqp.eventHubName=fleet-events",
    ];
    let rendered = container("cloudpillar", &values, STATEFULSET, "hub").await?;
    let mut hub = Role::start(&site, &cloudpillar_binary()?, &rendered, &[], None).await?;
    hub.wait_until_probes_pass(STARTUP).await?;

    let service = reader(&site)?;
    let key = cloudpillar_hub::sas::random_key();
    let identity = DeviceIdentity {
        device_id: "amqp-01".into(),
        auth: IdentityAuth::Sas {
            primary_key: key.clone(),
            secondary_key: key,
        },
    };
    service.ensure_device(&identity).await?;
    // The selector takes events enqueued strictly after the start, in whole milliseconds:
    // start one before now so that a patch written within this millisecond is kept.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let mut events = service.subscribe(Checkpoint::Positions(EventPositions::starting_at(
        u64::try_from(since)?.saturating_sub(1),
    )));
    let patch = TwinPatch {
        tags: Some(json!({"site": "chart"})),
        desired: None,
    };
    service.patch_twin("amqp-01", &patch, None).await?;

    let read = async {
        while let Some(event) = events.next().await {
            let event = event?;
            if event.device_id == "amqp-01" && event.kind == TwinEventKind::TwinChanged {
                return Ok(event);
            }
        }
        anyhow::bail!("the event stream ended")
    };
    let event = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .with_context(|| format!("no twin change over AMQP:\n{}", hub.log_tail()))??;
    ensure!(
        event.partition.is_some(),
        "AMQP events name their partition"
    );
    let tags = event.body.as_ref().and_then(|b| b.pointer("/tags/site"));
    ensure!(tags == Some(&json!("chart")), "{:?}", event.body);
    hub.stop().await
}
