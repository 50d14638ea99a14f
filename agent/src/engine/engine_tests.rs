use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudpillar_protocol::signing::{SigningKey, TrustStore};
use serde_json::{Value, json};

use super::journal::{Journal, RecipeSource, RecipeStatus};
use super::*;
use crate::config::Config;
use crate::fixtures::read as fixture;
use crate::reported::Reported;
use crate::state::{Device, StateStore};
use crate::zones::Zones;

struct Rig {
    engine: Engine,
    reported: Arc<Reported>,
}

fn config(state_dir: &Path, extra: &str) -> Arc<Config> {
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = {:?}\ntrusted_keys = [\"/unused.pem\"]\n{extra}",
        state_dir.display().to_string()
    );
    Arc::new(Config::parse_with_env(&text, Path::new("t.toml"), &[]).expect("config"))
}

fn rig(state_dir: &Path, extra: &str, trust: TrustStore) -> Rig {
    let config = config(state_dir, extra);
    let zones = Arc::new(Zones::build(&config.zones).expect("zones"));
    let reported = Arc::new(Reported::open(state_dir));
    let device = Arc::new(Device::new(
        StateStore::open(state_dir).expect("state"),
        Arc::clone(&reported),
    ));
    let journal = Journal::open(state_dir).expect("journal");
    let engine = Engine::new(
        config,
        zones,
        journal,
        Arc::clone(&reported),
        device,
        None,
        trust,
    );
    Rig { engine, reported }
}

async fn wait_final(engine: &Engine) -> RecipeStatus {
    for _ in 0..400 {
        if let Some((_, status)) = engine.current().await
            && status.is_final()
        {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("recipe did not end");
}

fn local(spec: Value) -> Delivery {
    Delivery {
        spec,
        order: vec![],
        sign: None,
        source: RecipeSource::Local,
    }
}

fn counting_recipe(id: &str, counter: &Path) -> Value {
    let step =
        |n: u32| json!({"shell": "bash", "command": format!("echo {n} >> {}", counter.display())});
    json!({"id": id, "patch": {"preInstallConfig": [step(1)], "installSteps": [step(2), step(3)]}})
}

#[tokio::test]
async fn windows_fixture_fails_its_first_powershell_step_and_runs_nothing_after() {
    if shell::find_in_path("pwsh").is_some() || shell::find_in_path("powershell").is_some() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let bytes = fixture("windows-update-recipe.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let order =
        cloudpillar_protocol::recipe::section_order(&bytes, &["changeSpec"]).expect("order");
    let delivery = Delivery {
        order,
        ..local(doc["changeSpec"].clone())
    };
    assert_eq!(rig.engine.submit(delivery).await, Submitted::Started);
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Failure);
    let reported = rig.reported.wanted();
    let spec = &reported["changeSpec"];
    assert_eq!(
        spec["patch"]["preTransitConfig"][0],
        json!({"status": "Failure", "ResultCode": "shell_missing",
               "ResultText": "shell \"powershell\" is not installed on this device"})
    );
    assert_eq!(
        spec["patch"]["preTransitConfig"][1],
        json!({"status": "Pending"})
    );
    assert_eq!(
        spec["patch"]["postInstallConfig"][1],
        json!({"status": "Pending"})
    );
    assert_eq!(
        spec["lastFaultedPath"],
        "changeSpec.patch.preTransitConfig[0]"
    );
    assert_eq!(spec["lastFaultedRecipe"], "patch");
    assert_eq!(spec["Status"], "Failure");
    assert_eq!(reported["deviceState"], "READY");
}

#[tokio::test]
async fn security_fixture_with_placeholder_signatures_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut trust = TrustStore::new();
    trust.add(SigningKey::generate().expect("key").verifying_key().clone());
    let rig = rig(dir.path(), "", trust);
    let bytes = fixture("security-update-desired.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let delivery = Delivery {
        spec: doc["desired"]["changeSpec"].clone(),
        order: cloudpillar_protocol::recipe::section_order(&bytes, &["desired", "changeSpec"])
            .expect("order"),
        sign: doc["desired"]["changeSign"].as_str().map(str::to_owned),
        source: RecipeSource::Twin,
    };
    let Submitted::Refused(code, text) = rig.engine.submit(delivery).await else {
        panic!("must be refused");
    };
    assert!(
        code == "bad_signature_encoding" || code == "bad_signature",
        "{code}"
    );
    let spec = &rig.reported.wanted()["changeSpec"];
    assert_eq!(spec["Status"], "Refused");
    assert_eq!(spec["ResultCode"], code.as_str());
    assert_eq!(spec["ResultText"], text.as_str());
    assert_eq!(spec["id"], "1.15.77830.38115.20230503151445");
    assert!(spec.get("patch").is_none(), "nothing ran, no step status");
}

#[tokio::test]
async fn a_refused_local_recipe_leaves_the_twin_recipe_and_its_report_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    let mut trust = TrustStore::new();
    trust.add(key.verifying_key().clone());
    let rig = rig(dir.path(), "", trust);
    let counter = dir.path().join("count");
    let spec = counting_recipe("twin-1", &counter);
    let sign = cloudpillar_protocol::signing::SignedText::new(&key, &key.sign_json(&spec));
    let twin = Delivery {
        sign: Some(sign.to_string()),
        source: RecipeSource::Twin,
        ..local(spec)
    };
    assert_eq!(rig.engine.submit(twin).await, Submitted::Started);
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
    let before = rig.reported.wanted()["changeSpec"].clone();

    // The placeholder-signed field fixture, posted locally with its own changeSign.
    let bytes = fixture("security-update-desired.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    let mut refused = local(doc["desired"]["changeSpec"].clone());
    refused.sign = doc["desired"]["changeSign"].as_str().map(str::to_owned);
    assert!(matches!(
        rig.engine.submit(refused).await,
        Submitted::Refused(..)
    ));
    assert_eq!(
        rig.reported.wanted()["changeSpec"],
        before,
        "the report still shows the twin recipe"
    );
}

#[tokio::test]
async fn an_unknown_action_fails_at_its_turn_after_the_steps_before_it_ran() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let counter = dir.path().join("count");
    let first = json!({"shell": "bash", "command": format!("echo 1 >> {}", counter.display())});
    let spec = json!({"id": "r-unknown", "patch": {
        "installSteps": [first, {"action": "reboot"}],
        "postInstallConfig": []
    }});
    assert_eq!(rig.engine.submit(local(spec)).await, Submitted::Started);
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Failure);
    assert_eq!(std::fs::read_to_string(&counter).expect("count"), "1\n");
    let spec = &rig.reported.wanted()["changeSpec"];
    assert_eq!(
        spec["patch"]["installSteps"][1],
        json!({"status": "Failure", "ResultCode": "unknown_action",
               "ResultText": "unknown action \"reboot\""})
    );
    assert_eq!(spec["patch"]["postInstallConfig"], json!([]));
    assert_eq!(spec["lastFaultedPath"], "changeSpec.patch.installSteps[1]");
}

#[tokio::test]
async fn unsigned_twin_recipe_is_refused_when_signatures_are_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let counter = dir.path().join("count");
    let delivery = Delivery {
        source: RecipeSource::Twin,
        ..local(counting_recipe("r-unsigned", &counter))
    };
    let outcome = rig.engine.submit(delivery).await;
    assert!(matches!(outcome, Submitted::Refused(ref c, _) if c == "missing_signature"));
    assert!(!counter.exists());
}

#[tokio::test]
async fn signed_twin_recipe_runs_all_steps_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    let mut trust = TrustStore::new();
    trust.add(key.verifying_key().clone());
    let rig = rig(dir.path(), "", trust);
    let counter = dir.path().join("count");
    let spec = counting_recipe("r-signed", &counter);
    let sign = cloudpillar_protocol::signing::SignedText::new(&key, &key.sign_json(&spec));
    let delivery = Delivery {
        sign: Some(sign.to_string()),
        source: RecipeSource::Twin,
        ..local(spec)
    };
    assert_eq!(rig.engine.submit(delivery).await, Submitted::Started);
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
    assert_eq!(
        std::fs::read_to_string(&counter).expect("count"),
        "1\n2\n3\n"
    );
    assert_eq!(rig.reported.wanted()["changeSpec"]["Status"], "Success");
}

#[tokio::test]
async fn f07_finished_recipe_never_runs_again_on_redelivery_or_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("count");
    let spec = counting_recipe("ro-7", &counter);
    {
        let rig = rig(dir.path(), "", TrustStore::new());
        assert_eq!(
            rig.engine.submit(local(spec.clone())).await,
            Submitted::Started
        );
        assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
        // (c) delivered again at once, twice.
        let again = rig.engine.submit(local(spec.clone())).await;
        assert_eq!(again, Submitted::AlreadyEnded(RecipeStatus::Success));
        assert_eq!(
            rig.engine.submit(local(spec.clone())).await,
            Submitted::AlreadyEnded(RecipeStatus::Success)
        );
    }
    // (a) restart, then (b) the full twin delivered again as after a token renewal.
    let rig = rig(dir.path(), "", TrustStore::new());
    assert_eq!(
        rig.engine.resume().await,
        Some(Submitted::AlreadyEnded(RecipeStatus::Success))
    );
    assert_eq!(
        rig.engine.submit(local(spec.clone())).await,
        Submitted::AlreadyEnded(RecipeStatus::Success)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        std::fs::read_to_string(&counter).expect("count"),
        "1\n2\n3\n",
        "zero re-runs"
    );
    assert_eq!(rig.reported.wanted()["changeSpec"]["Status"], "Success");
}

#[tokio::test]
async fn restart_mid_recipe_resumes_at_the_first_unfinished_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("count");
    let gate = dir.path().join("gate");
    let spec = json!({"id": "r-resume", "patch": {"installSteps": [
        {"shell": "bash", "command": format!("echo 1 >> {}", counter.display())},
        {"shell": "bash", "command": format!(
            "echo 2 >> {c}; while [ ! -e {g} ]; do sleep 0.05; done",
            c = counter.display(), g = gate.display())},
        {"shell": "bash", "command": format!("echo 3 >> {}", counter.display())}]}});
    {
        let rig = rig(dir.path(), "", TrustStore::new());
        rig.engine.submit(local(spec.clone())).await;
        for _ in 0..200 {
            if std::fs::read_to_string(&counter)
                .unwrap_or_default()
                .contains('2')
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The process "dies" here: the engine and its tasks are dropped with the runtime.
    }
    std::fs::write(&gate, "").expect("open gate");
    let rig = rig(dir.path(), "", TrustStore::new());
    assert_eq!(rig.engine.resume().await, Some(Submitted::Started));
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
    let lines = std::fs::read_to_string(&counter).expect("count");
    assert!(lines.starts_with("1\n2\n"), "{lines}");
    assert_eq!(
        lines.matches('1').count(),
        1,
        "finished step 0 is not repeated: {lines}"
    );
    assert!(lines.ends_with("3\n"));
}

#[tokio::test]
async fn new_changespec_id_supersedes_the_running_recipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let slow = json!({"id": "old", "patch": {"installSteps": [
        {"shell": "bash", "command": "sleep 30"},
        {"shell": "bash", "command": "touch never"}]}});
    rig.engine.submit(local(slow)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let counter = dir.path().join("count");
    assert_eq!(
        rig.engine
            .submit(local(counting_recipe("new", &counter)))
            .await,
        Submitted::Started
    );
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
    assert_eq!(
        rig.engine.current().await.map(|c| c.0).as_deref(),
        Some("new")
    );
    assert!(dir.path().join("work").is_dir());
    assert!(!dir.path().join("work/never").exists());
    let journal = Journal::open(dir.path()).expect("journal");
    assert_eq!(journal.status_of("old"), Some(RecipeStatus::Cancelled));
}

#[tokio::test]
async fn strict_mode_refuses_shell_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "strict_mode = true", TrustStore::new());
    let counter = dir.path().join("count");
    rig.engine
        .submit(local(counting_recipe("strict", &counter)))
        .await;
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Failure);
    let step = &rig.reported.wanted()["changeSpec"]["patch"]["preInstallConfig"][0];
    assert_eq!(step["ResultCode"], "strict_mode");
    assert!(!counter.exists());
}

#[tokio::test]
async fn f22_cancel_after_success_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let counter = dir.path().join("count");
    rig.engine
        .submit(local(counting_recipe("ro-7", &counter)))
        .await;
    wait_final(&rig.engine).await;
    assert_eq!(
        rig.engine.cancel("ro-7").await,
        json!({"id": "ro-7", "result": "cancel_rejected: already_succeeded"})
    );
}

#[tokio::test]
async fn strict_mode_download_outside_every_zone_is_denied_with_the_exact_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let deny_root = dir.path().join("work/secret");
    let extra = format!(
        "strict_mode = true\n[zones.SecretDeny]\naction = \"download\"\nkind = \"deny\"\n\
         root = {:?}\n\
         [zones.PackagesAllow]\naction = \"download\"\nroot = {:?}\npatterns = [\"*.zip\"]\n\
         [transfer]\nallow_unsigned_downloads = true\n",
        deny_root.display().to_string(),
        dir.path().join("work").display().to_string()
    );
    let rig = rig(dir.path(), &extra, TrustStore::new());
    let step =
        |dest: &str| json!({"action": "singularDownload", "source": "a", "destinationPath": dest});
    let spec = |id: &str, dest: &str| json!({"id": id, "patch": {"transitPackage": [step(dest)]}});

    rig.engine.submit(local(spec("z1", "./fw.bin"))).await;
    wait_final(&rig.engine).await;
    let result = &rig.reported.wanted()["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(result["ResultCode"], "zone_denied");
    assert_eq!(
        result["ResultText"],
        "Denied by the lack of local allowance"
    );

    // Allowed by PackagesAllow: the zone check passes and the step goes on to the link.
    rig.engine.submit(local(spec("z-ok", "./fw.zip"))).await;
    wait_final(&rig.engine).await;
    let result = &rig.reported.wanted()["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(result["ResultText"], "no hub link to download over");
    rig.engine
        .submit(local(spec("z2", "${SecretDeny}/x.zip")))
        .await;
    wait_final(&rig.engine).await;
    let result = &rig.reported.wanted()["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(
        result["ResultText"],
        "Denied by local a restriction \"SecretDeny\""
    );
}

#[tokio::test]
async fn windows_drive_paths_fail_their_step_clearly_on_linux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let bytes = fixture("security-update-desired.json");
    let doc: Value = serde_json::from_slice(&bytes).expect("json");
    // Signature checks aside (a local recipe without changeSign), the `I:\` upload path fails.
    rig.engine
        .submit(local(doc["desired"]["changeSpec"].clone()))
        .await;
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Failure);
    let step = &rig.reported.wanted()["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(step["ResultCode"], "bad_path");
    assert_eq!(
        step["ResultText"],
        "path \"I:\\ExportedData_2023.05.*\" is a Windows drive or network path, \
         not available on this system"
    );
}

#[tokio::test]
async fn on_pause_and_on_resume_run_when_the_device_goes_busy_and_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "");
    let zones = Arc::new(Zones::build(&config.zones).expect("zones"));
    let reported = Arc::new(Reported::open(dir.path()));
    let device = Arc::new(Device::new(
        StateStore::open(dir.path()).expect("state"),
        Arc::clone(&reported),
    ));
    let engine = Engine::new(
        config,
        zones,
        Journal::open(dir.path()).expect("journal"),
        Arc::clone(&reported),
        Arc::clone(&device),
        None,
        TrustStore::new(),
    );
    let log = dir.path().join("hooks");
    let gate = dir.path().join("gate");
    let spec = json!({"id": "hooks", "patch": {"preTransitConfig": [{
        "shell": "bash",
        "command": format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
        "onPause": format!("echo paused >> {}", log.display()),
        "onResume": format!("echo resumed >> {}", log.display())}]}});
    engine.submit(local(spec)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(device.state(), crate::state::DeviceState::ActionInProgress);
    device.apply(crate::state::Command::SetBusy).expect("busy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    device
        .apply(crate::state::Command::SetReady)
        .expect("ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&gate, "").expect("gate");
    assert_eq!(wait_final(&engine).await, RecipeStatus::Success);
    assert_eq!(
        std::fs::read_to_string(&log).expect("hooks ran"),
        "paused\nresumed\n"
    );
    assert_eq!(device.state(), crate::state::DeviceState::Ready);
}

#[tokio::test]
async fn f07_startup_resume_and_a_twin_delivery_start_an_unfinished_recipe_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("count");
    let gate = dir.path().join("gate");
    let spec = json!({"id": "race", "patch": {"installSteps": [
        {"shell": "bash", "command": format!(
            "echo run >> {c}; while [ ! -e {g} ]; do sleep 0.05; done",
            c = counter.display(), g = gate.display())}]}});
    {
        let rig = rig(dir.path(), "", TrustStore::new());
        rig.engine.submit(local(spec.clone())).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::fs::remove_file(&counter).expect("first run started");
    let rig = rig(dir.path(), "", TrustStore::new());
    let (a, b) = tokio::join!(rig.engine.submit(local(spec.clone())), rig.engine.resume());
    let started = [Some(a), b]
        .iter()
        .filter(|o| **o == Some(Submitted::Started))
        .count();
    assert_eq!(started, 1, "exactly one start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&gate, "").expect("gate");
    assert_eq!(wait_final(&rig.engine).await, RecipeStatus::Success);
    assert_eq!(std::fs::read_to_string(&counter).expect("count"), "run\n");
}

#[tokio::test]
async fn upgraded_strict_and_comm_modes_restrict_recipes_beyond_local_config() {
    use cloudpillar_protocol::messages::ProvisioningMode;
    let dir = tempfile::tempdir().expect("tempdir");
    let rig = rig(dir.path(), "", TrustStore::new());
    let counter = dir.path().join("count");
    let state_dir = dir.path().to_path_buf();
    crate::mode::save(&state_dir, ProvisioningMode::Strict).expect("mode");
    rig.engine
        .submit(local(counting_recipe("m-strict", &counter)))
        .await;
    wait_final(&rig.engine).await;
    let step = &rig.reported.wanted()["changeSpec"]["patch"]["preInstallConfig"][0];
    assert_eq!(step["ResultCode"], "strict_mode");

    crate::mode::save(&state_dir, ProvisioningMode::Comm).expect("mode");
    rig.engine
        .submit(local(counting_recipe("m-comm", &counter)))
        .await;
    wait_final(&rig.engine).await;
    let step = &rig.reported.wanted()["changeSpec"]["patch"]["preInstallConfig"][0];
    assert_eq!(step["ResultCode"], "communication_only");
    assert!(!counter.exists());
}

#[tokio::test]
async fn f12_a_download_without_sign_fails_while_signatures_are_required() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = dir.path().join("count");
    let spec = |id: &str| {
        json!({"id": id, "patch": {
            "transitPackage": [{"action": "singularDownload", "source": "fw.zip",
                "destinationPath": "./fw.zip"}],
            "installSteps": [{"shell": "bash",
                "command": format!("echo ran >> {}", counter.display())}]}})
    };
    let required = rig(dir.path(), "", TrustStore::new());
    required.engine.submit(local(spec("u-1"))).await;
    assert_eq!(wait_final(&required.engine).await, RecipeStatus::Failure);
    let reported = required.reported.wanted();
    let step = &reported["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(step["status"], "Failure");
    assert_eq!(step["ResultCode"], "unsigned_download");
    assert!(
        step["ResultText"]
            .as_str()
            .is_some_and(|t| t.contains("no sign") && t.contains("allow_unsigned_downloads")),
        "{step}"
    );
    assert!(!counter.exists(), "nothing runs after the refused download");

    // The local setting lets the step through to the transfer (no link in this rig).
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[transfer]\nallow_unsigned_downloads = true\n";
    let allowed = rig(dir.path(), extra, TrustStore::new());
    allowed.engine.submit(local(spec("u-2"))).await;
    wait_final(&allowed.engine).await;
    let step = &allowed.reported.wanted()["changeSpec"]["patch"]["transitPackage"][0];
    assert_eq!(step["ResultText"], "no hub link to download over");
}
