//! `AzureTwinService` reading twin change events from the real edge hub's Event
//! Hubs-compatible AMQP endpoint (TLS on loopback), as it reads Azure IoT Hub's.

use std::time::Duration;

use cloudpillar_controllers::twin::{
    AzureTwinService, Checkpoint, DeviceIdentity, EventPositions, IdentityAuth, TwinError,
    TwinEvent, TwinEventKind, TwinService,
};
use cloudpillar_tests::controllers::{EdgeHub, SimDevice};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

type Events = BoxStream<'static, Result<TwinEvent, TwinError>>;

/// A client of `hub` that reads events over AMQP, and a registered, connected device.
async fn setup(
    hub: &EdgeHub,
    device: &str,
) -> anyhow::Result<(std::sync::Arc<AzureTwinService>, SimDevice)> {
    let mut connection = hub.connection(1000);
    connection.event_hub = Some(hub.event_hub(hub.handle.policy_key()));
    let service = AzureTwinService::new(connection)?;
    let identity = DeviceIdentity {
        device_id: device.into(),
        auth: IdentityAuth::Sas {
            primary_key: KEY.into(),
            secondary_key: KEY.into(),
        },
    };
    service.ensure_device(&identity).await?;
    let sim = hub.connect(device, KEY).await?;
    Ok((service, sim))
}

/// A start instant just before now. The selector takes events enqueued strictly after it, in
/// whole milliseconds, and a patch reported right after the consumer starts can be enqueued
/// within the same millisecond; starting one millisecond earlier keeps such a patch. Events of
/// that millisecond that the test did not cause are skipped by device and kind.
fn just_before_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
        .saturating_sub(1)
}

/// The next reported patch of `device` on `events`, recording every event in `positions`.
async fn next_reported(
    events: &mut Events,
    device: &str,
    positions: &mut EventPositions,
) -> anyhow::Result<Value> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("event stream ended"))??;
        positions.record(&event);
        assert!(
            event.partition.is_some(),
            "AMQP events name their partition"
        );
        if event.device_id != device || event.kind != TwinEventKind::TwinChanged {
            continue;
        }
        if let Some(reported) = event
            .body
            .as_ref()
            .and_then(|b| b.pointer("/properties/reported"))
        {
            return Ok(reported.clone());
        }
    }
}

#[tokio::test]
async fn a_reported_patch_arrives_as_an_event_without_a_resync() -> anyhow::Result<()> {
    let hub = EdgeHub::launch("amqp-fast").await?;
    let (service, mut device) = setup(&hub, "mri-01").await?;
    let mut positions = EventPositions::starting_at(just_before_now_ms());
    let mut events = service.subscribe(Checkpoint::Positions(positions.clone()));
    // The client has no resync of its own: the patch can only come back as an event.
    device
        .report(json!({ "state": "READY", "progress": 100 }))
        .await?;
    let reported = next_reported(&mut events, "mri-01", &mut positions).await?;
    assert_eq!(reported["state"], "READY");
    assert_eq!(reported["progress"], 100);
    Ok(())
}

#[tokio::test]
async fn resumes_from_its_checkpoint_after_a_restart_without_loss_or_duplicates()
-> anyhow::Result<()> {
    let hub = EdgeHub::launch("amqp-resume").await?;
    let (service, mut device) = setup(&hub, "ct-02").await?;
    let mut positions = EventPositions::starting_at(just_before_now_ms());

    // A first consumer reads three patches, then stops.
    let mut events = service.subscribe(Checkpoint::Positions(positions.clone()));
    for step in 1..=3 {
        device.report(json!({ "step": step })).await?;
        let reported = next_reported(&mut events, "ct-02", &mut positions).await?;
        assert_eq!(reported["step"], step);
    }
    drop(events);

    // Three more while nobody reads.
    for step in 4..=6 {
        device.report(json!({ "step": step })).await?;
    }

    // A new consumer from the checkpoint sees exactly those, in order, and nothing twice.
    let mut events = service.subscribe(Checkpoint::Positions(positions.clone()));
    let mut seen = Vec::new();
    while seen.last() != Some(&json!(6)) {
        let reported = next_reported(&mut events, "ct-02", &mut positions).await?;
        seen.push(reported["step"].clone());
    }
    assert_eq!(seen, vec![json!(4), json!(5), json!(6)]);

    // And it goes on with live ones.
    device.report(json!({ "step": 7 })).await?;
    let reported = next_reported(&mut events, "ct-02", &mut positions).await?;
    assert_eq!(reported["step"], 7);
    Ok(())
}

#[tokio::test]
async fn a_token_signed_with_a_wrong_key_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let hub = EdgeHub::launch("amqp-bad-sas").await?;
    let mut connection = hub.connection(1000);
    let wrong = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    connection.event_hub = Some(hub.event_hub(wrong));
    let service = AzureTwinService::new(connection)?;

    let mut events = service.subscribe(Checkpoint::Latest);
    let first = tokio::time::timeout(Duration::from_secs(10), events.next()).await?;
    let error = match first {
        Some(Err(error)) => error,
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    };
    let text = error.to_string();
    assert!(matches!(error, TwinError::EventHubRefused { .. }), "{text}");
    assert!(
        !error.is_transient(),
        "a refused key is not worth retrying: {text}"
    );
    assert!(text.contains("put-token"), "{text}");
    assert!(
        text.contains("401: token refused: signature does not match"),
        "{text}"
    );
    Ok(())
}
