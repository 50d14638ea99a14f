//! The main job end to end, exactly as the README's first command runs it: a real API
//! server, `cloudpillar run`, three agents provisioned through DPS, the examples applied,
//! and a two-wave rollout that must succeed because real agents did the work.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const DEVICES: [&str; 3] = ["mri-01", "ct-02", "us-03"];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/debug`, where `k3s-dev/test` has built both binaries before the tests.
fn binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .ancestors()
        .nth(2)
        .expect("target profile directory")
        .to_path_buf();
    for name in ["cloudpillar", "cloudpillar-agent"] {
        assert!(
            dir.join(name).exists(),
            "{name} is not built in {}: run the tests with `k3s-dev/test` (or `cargo build --workspace --bins` first)",
            dir.display()
        );
    }
    dir
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn rollout_patches_three_real_agents_and_status_tells_the_story() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG must name the test cluster"
    );
    let work = tempfile::tempdir().expect("work directory");
    let namespace = format!("e2e-{}", std::process::id());
    let _cleanup = ReleaseNamespace(namespace.clone());

    // A database of its own, so the history this run writes is told apart from others'.
    let database = format!("e2e_{}", std::process::id());
    let output = Command::new(workspace_root().join("k3s-dev/demo"))
        .env("CP_MONGODB_DATABASE", &database)
        .env("CP_DEMO_DIR", work.path())
        .env("CP_DEMO_NAMESPACE", &namespace)
        .env("CP_DEMO_TIMEOUT", "300")
        .env("CP_BIN_DIR", binaries())
        .output()
        .expect("running k3s-dev/demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");

    // The summary reports every device as succeeded and the rollout as done.
    assert!(
        stdout.contains("rollout: phase=Succeeded wave=2 succeeded=3 failed=0"),
        "{stdout}"
    );
    for device in DEVICES {
        assert!(
            stdout.contains(&format!(
                "{device}: state=READY recipe=linux-security-2.4.0 status=Success"
            )),
            "{device} not reported as succeeded:\n{stdout}"
        );
    }
    // The recipe's archive was found in the blob store; the fixtures' Windows files are
    // named missing, which holds only those recipes back.
    assert!(
        stdout.contains("  linux-security-2-4-0: True ArtifactsFound: the downloaded file is in"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  fixture-windows-update: False ArtifactsMissing: not in the blob store: CartoPatch-1.14.61047.zip"),
        "{stdout}"
    );
    // The field fixtures: the Windows recipe was taken, the placeholder-signed one refused.
    assert!(
        stderr.contains("windows-update-recipe.json: {\"id\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("security-update-desired.json: {\"error\":\"bad_signature"),
        "{stderr}"
    );
    // The summary says why the Windows recipe failed, in the device's words.
    assert!(
        stdout.contains("windows-update-recipe.json: Failure at changeSpec.patch."),
        "{stdout}"
    );

    let history = upload_history(&database);
    // Every agent holds a byte-identical copy of the archive and ran its installer.
    let source = sha256(&work.path().join("build/linux-patch-2.4.0.tar.gz"));
    for device in DEVICES {
        let workdir = work.path().join("agents").join(device).join("state/work");
        assert_eq!(
            sha256(&workdir.join("linux-patch-2.4.0.tar.gz")),
            source,
            "{device}"
        );
        let version = std::fs::read_to_string(workdir.join("installed/VERSION")).expect("VERSION");
        assert_eq!(version.trim(), "2.4.0", "{device}");

        // Its installation log reached the upload container, byte for byte.
        let uploads = work.path().join("server/blobs/uploads").join(device);
        let uploaded: Vec<PathBuf> = walk(&uploads)
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with("install.log"))
            .collect();
        assert_eq!(uploaded.len(), 1, "{device}: uploads {uploaded:?}");
        assert_eq!(
            uploaded[0].parent(),
            Some(uploads.as_path()),
            "filed once under the device's folder"
        );
        assert_eq!(
            sha256(&uploaded[0]),
            sha256(&workdir.join("install.log")),
            "{device}"
        );
        if let Some(history) = &history {
            let link = history
                .iter()
                .find(|record| record["deviceId"] == device && record["kind"] == "upload")
                .unwrap_or_else(|| panic!("{device}: no upload record in {history:?}"));
            let path = link["blob"]["path"].as_str().expect("blob path");
            assert_eq!(
                uploads.join(path.trim_start_matches(&format!("{device}/"))),
                uploaded[0],
                "the history record links the uploaded log"
            );
        }
    }
}

/// The `logs` records of `database`, when the tests have MongoDB (`CP_MONGODB_URL`).
fn upload_history(database: &str) -> Option<Vec<serde_json::Value>> {
    let url = std::env::var("CP_MONGODB_URL").ok()?;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    Some(runtime.block_on(async {
        let client = mongodb::Client::with_uri_str(&url)
            .await
            .expect("MongoDB client");
        let logs = client
            .database(database)
            .collection::<mongodb::bson::Document>("logs");
        let mut cursor = logs.find(mongodb::bson::doc! {}).await.expect("find");
        let mut records = Vec::new();
        while cursor.advance().await.expect("cursor") {
            let record = cursor.deserialize_current().expect("record");
            records.push(serde_json::to_value(record).expect("JSON"));
        }
        records
    }))
}

/// Deletes the demo's namespace when the test ends. `cloudpillar run` has stopped by then, so
/// its finalizers are released first, as `k3s-dev/demo` does for a previous run.
struct ReleaseNamespace(String);

impl Drop for ReleaseNamespace {
    fn drop(&mut self) {
        let kubectl = |args: &[&str]| {
            Command::new("kubectl")
                .args(["-n", &self.0])
                .args(args)
                .output()
                .ok()
        };
        let names = kubectl(&["get", "devices,rollouts,recipes,hubs", "-o", "name"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for name in names.lines() {
            kubectl(&[
                "patch",
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.0, "--wait=false"])
            .output();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
