//! The cases users hit, on the whole system: `cloudpillar run` and real agents as separate
//! processes, a real API server, the signed-download path through the streamer.

use std::time::Duration;

use cloudpillar_crds::{Device, Rollout, RolloutPhase};
use cloudpillar_tests::system::{Artifact, PatchArchive, System, SystemOptions, objects};
use serde_json::json;
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;
const LONG: Duration = Duration::from_secs(240);

fn sha256(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

fn state(device: &Device) -> &str {
    device
        .status
        .as_ref()
        .and_then(|s| s.device_state.as_deref())
        .unwrap_or_default()
}

fn phase(rollout: &Rollout) -> RolloutPhase {
    rollout.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn one_wave() -> serde_json::Value {
    json!([{ "name": "all", "percent": 100 }])
}

fn canary_then_everyone() -> serde_json::Value {
    json!([{ "name": "canary", "count": 1 }, { "name": "everyone", "percent": 100 }])
}

/// Publishes `archive`, applies a Recipe `name` for it (id `<archive name>`) and a Rollout
/// `name` of it in `waves`; the published artifact.
async fn roll_out(
    system: &System,
    name: &str,
    archive: &PatchArchive,
    waves: serde_json::Value,
) -> Artifact {
    let artifact = system.publish(archive).expect("artifact");
    system
        .apply(objects::recipe(name, &archive.name, &artifact))
        .await
        .expect("recipe");
    system
        .apply(objects::rollout(name, name, waves))
        .await
        .expect("rollout");
    artifact
}

/// Waits until the Rollout reaches `want`, failing early on any other final phase.
async fn wait_phase(system: &System, name: &str, want: RolloutPhase) -> anyhow::Result<Rollout> {
    system
        .wait_for(&format!("rollout {name} {want:?}"), LONG, || async {
            let rollout = system.rollout(name).await?;
            let now = phase(&rollout);
            if now == want {
                return Ok(Some(rollout));
            }
            anyhow::ensure!(
                !matches!(
                    now,
                    RolloutPhase::Succeeded | RolloutPhase::Failed | RolloutPhase::Aborted
                ),
                "rollout {name} ended {now:?}: {:?}",
                rollout.status
            );
            Ok(None)
        })
        .await
}

/// Waits until `device` reports that it is downloading.
async fn wait_downloading(system: &System, device: &str) -> anyhow::Result<()> {
    system
        .wait_for(&format!("{device} downloading"), LONG, || async {
            let device = system.device(device).await?;
            Ok((state(&device) == "PATCH_INTRANSIT").then_some(()))
        })
        .await
}

#[tokio::test]
async fn set_busy_during_a_download_is_deferred_not_failed_and_set_ready_finishes_it() {
    let options = SystemOptions {
        download_bytes_per_sec: 512 * 1024,
    };
    let mut system = System::start("sys-busy", options).await.expect("system");
    system
        .add_devices(&["busy-01"], &[])
        .await
        .expect("devices");
    let archive = PatchArchive::counting("patch-busy-1.0.0", 4 * MIB, "");
    let artifact = roll_out(&system, "patch-busy", &archive, one_wave()).await;

    wait_downloading(&system, "busy-01")
        .await
        .expect("download starts");
    let agent = system.agent("busy-01").expect("agent");
    let (status, answer) = agent.call("POST", "SetBusy", None).await.expect("SetBusy");
    assert_eq!(status, 200, "{answer}");

    let deferred = system
        .wait_for("the rollout counts the device deferred", LONG, || async {
            let rollout = system.rollout("patch-busy").await?;
            let counts = rollout
                .status
                .as_ref()
                .map(|s| s.counts.clone())
                .unwrap_or_default();
            Ok((counts.deferred == 1).then_some(counts))
        })
        .await
        .expect("deferred");
    assert_eq!(deferred.failed, 0);
    // Busy stays busy: no failure, no progress to success while the clinician works.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rollout = system.rollout("patch-busy").await.expect("rollout");
    let status = rollout.status.expect("status");
    assert_eq!(
        (status.counts.deferred, status.counts.failed),
        (1, 0),
        "{status:?}"
    );
    assert_eq!(status.phase, RolloutPhase::Progressing);

    let (status, answer) = agent
        .call("POST", "SetReady", None)
        .await
        .expect("SetReady");
    assert_eq!(status, 200, "{answer}");
    wait_phase(&system, "patch-busy", RolloutPhase::Succeeded)
        .await
        .expect("succeeds after SetReady");
    let agent = system.agent("busy-01").expect("agent");
    assert_eq!(
        sha256(&agent.work_dir().join(&artifact.name)),
        sha256(&artifact.path),
        "the resumed download is byte-identical"
    );
    system.shutdown().await.expect("shutdown");
}

/// Lines in the agent's `runs.log`: how often an installer of [`PatchArchive::counting`] ran.
fn runs(system: &System, device: &str) -> usize {
    let agent = system.agent(device).expect("agent");
    std::fs::read_to_string(agent.work_dir().join("runs.log"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_agent_killed_mid_download_resumes_after_restart_and_succeeds() {
    let options = SystemOptions {
        download_bytes_per_sec: 512 * 1024,
    };
    let mut system = System::start("sys-kill", options).await.expect("system");
    system
        .add_devices(&["kill-01"], &[])
        .await
        .expect("devices");
    let archive = PatchArchive::counting("patch-kill-1.0.0", 4 * MIB, "");
    let artifact = roll_out(&system, "patch-kill", &archive, one_wave()).await;

    wait_downloading(&system, "kill-01")
        .await
        .expect("download starts");
    // At least one CRC range is on disk, then the process dies without a word.
    let partial = system
        .agent("kill-01")
        .expect("agent")
        .work_dir()
        .join(format!("{}.cppart", artifact.name));
    system
        .wait_for("part of the file on disk", LONG, || async {
            let len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            Ok((len >= MIB as u64).then_some(()))
        })
        .await
        .expect("partial file");
    system.kill_agent("kill-01").expect("kill -9");
    system.start_agent("kill-01").await.expect("restart");

    wait_phase(&system, "patch-kill", RolloutPhase::Succeeded)
        .await
        .expect("succeeds after the restart");
    let agent = system.agent("kill-01").expect("agent");
    assert_eq!(
        sha256(&agent.work_dir().join(&artifact.name)),
        sha256(&artifact.path),
        "byte-identical after resuming"
    );
    assert_eq!(runs(&system, "kill-01"), 1, "installed once");
    // It resumed: the restarted agent asked for the file from past its beginning.
    let resumed = agent.log().lines().any(|line| {
        line.contains("requesting the file from its verified length")
            && line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("from="))
                .and_then(|from| from.parse::<u64>().ok())
                .is_some_and(|from| from > 0)
    });
    assert!(
        resumed,
        "no resume from a verified length:\n{}",
        agent.log()
    );
    system.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failing_install_on_the_canary_pauses_the_rollout_before_the_second_wave() {
    let mut system = System::start("sys-canary", SystemOptions::default())
        .await
        .expect("system");
    let devices = ["canary-01", "canary-02", "canary-03"];
    system.add_devices(&devices, &[]).await.expect("devices");
    let archive = PatchArchive::counting("patch-bad-1.0.0", MIB, "echo 'disk full' >&2; exit 3");
    roll_out(&system, "patch-bad", &archive, canary_then_everyone()).await;

    let rollout = system
        .wait_for("the rollout to pause", LONG, || async {
            let rollout = system.rollout("patch-bad").await?;
            Ok((phase(&rollout) == RolloutPhase::Paused).then_some(rollout))
        })
        .await
        .expect("paused");
    let status = rollout.status.expect("status");
    assert_eq!(status.counts.failed, 1, "{status:?}");
    assert_eq!(
        status.current_wave,
        Some(1),
        "the second wave never started"
    );
    let failed = &status.failed_devices[0];
    assert_eq!(failed.reason, "StepFailed", "{failed:?}");
    assert_eq!(
        failed.action_path.as_deref(),
        Some("changeSpec.patch.installSteps[0]"),
        "the failed step is named: {failed:?}"
    );
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exited with code 3")),
        "the device's reason is carried: {failed:?}"
    );

    // The other devices never received the recipe, and stay that way.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut ran = 0;
    for name in devices {
        let device = system.device(name).await.expect("device");
        let assigned = device.status.as_ref().and_then(|s| s.assignment.as_ref());
        if name == failed.name {
            assert!(assigned.is_some(), "{name}");
            ran += runs(&system, name);
        } else {
            assert!(assigned.is_none(), "{name} was claimed: {assigned:?}");
            assert_eq!(runs(&system, name), 0, "{name} ran the installer");
        }
    }
    assert_eq!(ran, 1, "the canary ran the installer once");

    // `kubectl describe` tells a person why it stopped.
    let described = system
        .kubectl(&["describe", "rollout", "patch-bad"])
        .expect("describe");
    assert!(described.contains("FailureThreshold"), "{described}");
    assert!(described.contains(&failed.name), "{described}");
    assert!(described.contains("installSteps[0]"), "{described}");
    assert!(described.contains("exited with code 3"), "{described}");
    system.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn editing_a_recipe_signs_it_again_and_rolls_the_new_id_only_when_asked() {
    let mut system = System::start("sys-edit", SystemOptions::default())
        .await
        .expect("system");
    system
        .add_devices(&["edit-01"], &[])
        .await
        .expect("devices");
    let artifact = system
        .publish(&PatchArchive::counting("patch-edit-1.0.0", MIB, ""))
        .expect("artifact");
    system
        .apply(objects::recipe("patch-edit", "patch-edit-1.0.0", &artifact))
        .await
        .expect("recipe");
    system
        .apply(objects::rollout("edit-first", "patch-edit", one_wave()))
        .await
        .expect("rollout");
    wait_phase(&system, "edit-first", RolloutPhase::Succeeded)
        .await
        .expect("first rollout");
    let recipes: kube::Api<cloudpillar_crds::Recipe> =
        kube::Api::namespaced(system.client.clone(), &system.namespace);
    let first = recipes
        .get("patch-edit")
        .await
        .expect("recipe")
        .status
        .expect("status");
    let first_signature = first.signature.clone().expect("signed");

    // A new version of the same Recipe object.
    system
        .apply(objects::recipe("patch-edit", "patch-edit-1.0.1", &artifact))
        .await
        .expect("edited recipe");
    let second = system
        .wait_for("the edited recipe to be signed again", LONG, || async {
            let status = recipes.get("patch-edit").await?.status.unwrap_or_default();
            Ok(
                (status.signature.is_some() && status.signature != Some(first_signature.clone()))
                    .then_some(status),
            )
        })
        .await
        .expect("signed again");
    assert_ne!(second.digest, first.digest);

    // Nobody asked for a rollout of the new id: the device keeps the old one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let device = system.device("edit-01").await.expect("device");
    let running = device.status.as_ref().and_then(|s| s.recipe.as_ref());
    assert_eq!(
        running.and_then(|r| r.id.as_deref()),
        Some("patch-edit-1.0.0")
    );
    assert_eq!(
        phase(&system.rollout("edit-first").await.expect("rollout")),
        RolloutPhase::Succeeded
    );
    assert_eq!(runs(&system, "edit-01"), 1);

    // Asked for: a new Rollout takes the new id to the device.
    system
        .apply(objects::rollout("edit-second", "patch-edit", one_wave()))
        .await
        .expect("second rollout");
    let done = wait_phase(&system, "edit-second", RolloutPhase::Succeeded)
        .await
        .expect("second rollout");
    assert_eq!(
        done.status.and_then(|s| s.recipe_id).as_deref(),
        Some("patch-edit-1.0.1")
    );
    let device = system.device("edit-01").await.expect("device");
    let running = device.status.as_ref().and_then(|s| s.recipe.as_ref());
    assert_eq!(
        running.and_then(|r| r.id.as_deref()),
        Some("patch-edit-1.0.1")
    );
    assert_eq!(runs(&system, "edit-01"), 2);
    system.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn deleting_a_device_removes_its_twin_and_identity_from_the_hub() {
    let mut system = System::start("sys-delete", SystemOptions::default())
        .await
        .expect("system");
    system
        .add_devices(&["gone-01"], &[])
        .await
        .expect("devices");
    system
        .wait_for("gone-01 connected", LONG, || async {
            let device = system.device("gone-01").await?;
            Ok((state(&device) == "READY").then_some(()))
        })
        .await
        .expect("connected");
    let hub = system.twin_service().await.expect("hub client");
    assert!(hub.get_device("gone-01").await.expect("lookup").is_some());

    system
        .kubectl(&["delete", "device", "gone-01", "--timeout=60s"])
        .expect("kubectl delete");
    assert!(
        hub.get_device("gone-01").await.expect("lookup").is_none(),
        "the identity is gone from the hub"
    );
    assert!(hub.get_twin("gone-01").await.is_err(), "the twin is gone");
    system.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn restarting_cloudpillar_mid_rollout_neither_repeats_nor_skips_a_device() {
    let options = SystemOptions {
        download_bytes_per_sec: 1024 * 1024,
    };
    let mut system = System::start("sys-restart", options).await.expect("system");
    let devices = ["restart-01", "restart-02", "restart-03"];
    system.add_devices(&devices, &[]).await.expect("devices");
    let archive = PatchArchive::counting("patch-restart-1.0.0", 3 * MIB, "");
    let artifact = roll_out(&system, "patch-restart", &archive, canary_then_everyone()).await;

    // Killed while the canary downloads, and again while the second wave runs.
    for wave in [1, 2] {
        system
            .wait_for(&format!("wave {wave} running"), LONG, || async {
                let status = system
                    .rollout("patch-restart")
                    .await?
                    .status
                    .unwrap_or_default();
                Ok(
                    (status.current_wave == Some(wave) && status.counts.in_progress > 0)
                        .then_some(()),
                )
            })
            .await
            .expect("wave running");
        system.kill_server().expect("kill -9 cloudpillar");
        tokio::time::sleep(Duration::from_secs(2)).await;
        system.start_server().await.expect("restart cloudpillar");
    }

    let done = wait_phase(&system, "patch-restart", RolloutPhase::Succeeded)
        .await
        .expect("succeeds");
    let status = done.status.expect("status");
    assert_eq!(
        (status.counts.succeeded, status.counts.failed),
        (3, 0),
        "{status:?}"
    );
    for name in devices {
        assert_eq!(runs(&system, name), 1, "{name} installed exactly once");
        let agent = system.agent(name).expect("agent");
        assert_eq!(
            sha256(&agent.work_dir().join(&artifact.name)),
            sha256(&artifact.path),
            "{name}"
        );
    }
    system.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_device_whose_hub_does_not_exist_fails_alone_and_the_rollout_can_be_deleted() {
    let mut system = System::start("sys-orphan", SystemOptions::default())
        .await
        .expect("system");
    system
        .add_devices(&["real-01"], &[])
        .await
        .expect("devices");
    let mut orphan = objects::device("orphan-01", &[]);
    orphan["spec"]["hubRef"]["name"] = json!("no-such-hub");
    system.apply(orphan).await.expect("orphan device");
    let archive = PatchArchive::counting("patch-orphan-1.0.0", MIB, "");
    roll_out(&system, "patch-orphan", &archive, one_wave()).await;

    let rollout = system
        .wait_for(
            "the orphan to fail and the real device to succeed",
            LONG,
            || async {
                let rollout = system.rollout("patch-orphan").await?;
                let counts = rollout
                    .status
                    .as_ref()
                    .map(|s| s.counts.clone())
                    .unwrap_or_default();
                Ok((counts.failed == 1 && counts.succeeded == 1).then_some(rollout))
            },
        )
        .await
        .expect("rollout goes on");
    let status = rollout.status.expect("status");
    let failed = &status.failed_devices[0];
    assert_eq!(
        (failed.name.as_str(), failed.reason.as_str()),
        ("orphan-01", "HubUnusable")
    );
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no-such-hub")),
        "{failed:?}"
    );
    assert_eq!(runs(&system, "real-01"), 1);

    system
        .kubectl(&["delete", "rollout", "patch-orphan", "--timeout=60s"])
        .expect("the rollout can be deleted");
    system.shutdown().await.expect("shutdown");
}
