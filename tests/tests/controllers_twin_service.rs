//! `AzureTwinService` (the IoT Hub service REST client) against the real edge hub.

use std::time::{Duration, Instant};

use cloudpillar_controllers::twin::{
    AzureTwinService, Checkpoint, DeviceIdentity, EventPositions, IdentityAuth, TwinError,
    TwinEventKind, TwinPatch, TwinService,
};
use cloudpillar_tests::controllers::EdgeHub;
use futures::StreamExt;
use serde_json::json;

fn sas(primary: &str, secondary: &str) -> IdentityAuth {
    IdentityAuth::Sas {
        primary_key: primary.into(),
        secondary_key: secondary.into(),
    }
}

const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

#[tokio::test]
async fn registers_reads_patches_with_etags_and_deletes_against_the_edge_hub() -> anyhow::Result<()>
{
    let hub = EdgeHub::launch("twins").await?;
    let service = AzureTwinService::new(hub.connection(1000))?;

    // Register, then the same identity again: nothing new is created.
    let identity = DeviceIdentity {
        device_id: "dev-a".into(),
        auth: sas(KEY_A, KEY_B),
    };
    assert!(service.ensure_device(&identity).await?.created);
    assert!(!service.ensure_device(&identity).await?.created);
    let stored = hub.handle.core().get_device("dev-a")?;
    assert_eq!(
        serde_json::to_value(&stored)?["authentication"]["symmetricKey"]["primaryKey"],
        KEY_A
    );

    // New keys replace the old ones in place.
    let rotated = DeviceIdentity {
        device_id: "dev-a".into(),
        auth: sas(KEY_B, KEY_A),
    };
    assert!(!service.ensure_device(&rotated).await?.created);
    let stored = hub.handle.core().get_device("dev-a")?;
    assert_eq!(
        serde_json::to_value(&stored)?["authentication"]["symmetricKey"]["primaryKey"],
        KEY_B
    );

    // Patch guarded by the ETag; a stale ETag is refused and changes nothing.
    let twin = service.get_twin("dev-a").await?;
    let patch = TwinPatch {
        tags: Some(json!({"site": "lab"})),
        desired: Some(json!({"logLevel": "debug"})),
    };
    let written = service
        .patch_twin("dev-a", &patch, Some(&twin.etag))
        .await?;
    assert_eq!(written.tags["site"], "lab");
    assert_eq!(written.properties.desired["logLevel"], "debug");
    let stale = TwinPatch {
        tags: None,
        desired: Some(json!({"logLevel": "trace"})),
    };
    let refused = service.patch_twin("dev-a", &stale, Some(&twin.etag)).await;
    assert!(
        matches!(refused, Err(TwinError::EtagMismatch { .. })),
        "{refused:?}"
    );
    assert_eq!(
        service.get_twin("dev-a").await?.properties.desired["logLevel"],
        "debug"
    );

    // Query finds the twin by tag; paging through a continuation works.
    for id in ["dev-b", "dev-c"] {
        service
            .ensure_device(&DeviceIdentity {
                device_id: id.into(),
                auth: sas(KEY_A, KEY_B),
            })
            .await?;
    }
    let page = service
        .query("SELECT * FROM devices WHERE tags.site = 'lab'", None)
        .await?;
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0]["deviceId"], "dev-a");

    // Delete: gone afterwards, and a second delete says it was already gone.
    assert!(service.delete_device("dev-a").await?);
    assert!(!service.delete_device("dev-a").await?);
    assert!(matches!(
        service.get_twin("dev-a").await,
        Err(TwinError::NotFound { .. })
    ));
    assert!(service.get_device("dev-a").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn a_wrong_policy_key_is_refused_with_401_and_not_retried_as_an_outage() -> anyhow::Result<()>
{
    let hub = EdgeHub::launch("badkey").await?;
    let mut connection = hub.connection(100);
    connection.policy_key = KEY_A.into();
    let service = AzureTwinService::new(connection)?;
    let started = Instant::now();
    match service.get_twin("any").await {
        Err(TwinError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "an auth failure is not retried"
    );
    Ok(())
}

#[tokio::test]
async fn reported_changes_arrive_as_twin_events_from_the_checkpoint_on() -> anyhow::Result<()> {
    let hub = EdgeHub::launch("events").await?;
    let service = AzureTwinService::new(hub.connection(100))?;
    service
        .ensure_device(&DeviceIdentity {
            device_id: "dev-e".into(),
            auth: sas(KEY_A, KEY_B),
        })
        .await?;

    // Events before the subscription are not replayed with Checkpoint::Latest.
    hub.handle
        .core()
        .patch_reported("dev-e", json!({"deviceState": "READY"}))
        .await?;
    let mut events = service.subscribe(Checkpoint::Latest);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            let event = event?;
            let done = event.kind == TwinEventKind::TwinChanged
                && event
                    .body
                    .as_ref()
                    .and_then(|b| b.pointer("/properties/reported/deviceState"))
                    == Some(&json!("BUSY"));
            seen.push(event);
            if done {
                return Ok::<_, TwinError>(seen);
            }
        }
        Ok(seen)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    hub.handle
        .core()
        .patch_reported("dev-e", json!({"deviceState": "BUSY"}))
        .await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), reader).await???;
    assert!(seen.iter().all(|e| e.device_id == "dev-e"));
    let ready_seen = seen.iter().any(|e| {
        e.body
            .as_ref()
            .and_then(|b| b.pointer("/properties/reported/deviceState"))
            == Some(&json!("READY"))
    });
    assert!(
        !ready_seen,
        "the event before the subscription was replayed"
    );

    // Reading again from an explicit checkpoint replays from there.
    let first = seen.last().map(|e| e.sequence).unwrap_or(1);
    let mut replay = service.subscribe(Checkpoint::Sequence(first));
    let again = tokio::time::timeout(Duration::from_secs(10), replay.next())
        .await?
        .expect("an event")?;
    assert_eq!(again.sequence, first);
    Ok(())
}

#[tokio::test]
async fn positions_without_a_log_position_start_at_their_instant_not_at_the_end_of_the_log()
-> anyhow::Result<()> {
    let hub = EdgeHub::launch("since").await?;
    let service = AzureTwinService::new(hub.connection(100))?;
    service
        .ensure_device(&DeviceIdentity {
            device_id: "dev-s".into(),
            auth: sas(KEY_A, KEY_B),
        })
        .await?;
    let core = hub.handle.core();
    core.patch_reported("dev-s", json!({"step": "long before"}))
        .await?;
    // A restarted operator with no saved position starts at the moment it started: what
    // happened after that instant and before its subscription is read, not skipped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let since = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    for step in ["after start 1", "after start 2"] {
        core.patch_reported("dev-s", json!({ "step": step }))
            .await?;
    }
    let mut events = service.subscribe(Checkpoint::Positions(EventPositions::starting_at(since)));
    let mut steps = Vec::new();
    while steps.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .expect("an event")?;
        if let Some(step) = event
            .body
            .as_ref()
            .and_then(|b| b.pointer("/properties/reported/step"))
            .and_then(|s| s.as_str())
        {
            steps.push(step.to_owned());
        }
    }
    assert_eq!(steps, ["after start 1", "after start 2"]);
    Ok(())
}

#[tokio::test]
async fn twin_writes_are_held_to_the_configured_rate() -> anyhow::Result<()> {
    let hub = EdgeHub::launch("rate").await?;
    let service = AzureTwinService::new(hub.connection(10))?;
    service
        .ensure_device(&DeviceIdentity {
            device_id: "dev-r".into(),
            auth: sas(KEY_A, KEY_B),
        })
        .await?;
    let started = Instant::now();
    for n in 0..21 {
        let patch = TwinPatch {
            tags: None,
            desired: Some(json!({ "n": n })),
        };
        service.patch_twin("dev-r", &patch, None).await?;
    }
    // 10 writes per second with a burst of 2: 21 writes cannot finish in under 1.9 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1_850),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
