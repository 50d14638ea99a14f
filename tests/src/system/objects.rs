//! The objects and artifacts an operations team would write for the system under test.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The `Hub` named `default` for the edge hub of `cloudpillar run` (its Secret is published
/// by `cloudpillar run` itself).
pub fn hub(http_port: u16) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Hub",
        "metadata": { "name": "default" },
        "spec": {
            "kind": "edge",
            "endpoint": { "serviceHost": format!("localhost:{http_port}") },
            "accessPolicy": {
                "policyName": "iothubowner",
                "secretRef": { "name": "cloudpillar-edge-hub", "key": "primaryKey" }
            },
            "caBundle": { "name": "cloudpillar-edge-hub", "key": "ca.crt" },
            "twinWriteRateLimit": 50
        }
    })
}

/// A `Device` that provisions itself through the `fleet` DPS group with SAS.
pub fn device(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut all = serde_json::Map::new();
    all.insert("cloudpillar.io/fleet".into(), "test".into());
    for (key, value) in labels {
        all.insert((*key).into(), (*value).into());
    }
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Device",
        "metadata": { "name": name, "labels": all },
        "spec": {
            "hubRef": { "name": "default" },
            "mode": "FULL",
            "authentication": {
                "provisioning": { "method": "SAS" },
                "permanent": { "method": "SAS" }
            }
        }
    })
}

/// A patch archive to build: `<name>/payload.bin` of `payload_bytes` and `<name>/install.sh`
/// running `install` (bash) in the agent's work directory.
#[derive(Debug, Clone)]
pub struct PatchArchive {
    /// Archive and directory name, e.g. `patch-1.0.0`.
    pub name: String,
    /// Size of the payload file.
    pub payload_bytes: usize,
    /// Body of the install script.
    pub install: String,
}

/// A published, signed artifact as `cloudpillar artifact put` printed it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Blob name in the patches container.
    pub name: String,
    /// The archive on disk, for comparing what agents received.
    pub path: std::path::PathBuf,
    /// Its signature text for a recipe's `sign`.
    pub sign: String,
}

impl PatchArchive {
    /// An archive whose installer appends one line to `runs.log` in the work directory (so
    /// a test can count runs) and then runs `then`.
    pub fn counting(name: &str, payload_bytes: usize, then: &str) -> Self {
        Self {
            name: name.to_owned(),
            payload_bytes,
            install: format!("echo \"{name} $(date -u +%FT%T.%NZ)\" >> runs.log\n{then}\n"),
        }
    }

    pub(super) fn publish(
        &self,
        bin: &Path,
        build: &Path,
        blob_dir: &Path,
        signing_secret: &str,
    ) -> anyhow::Result<Artifact> {
        let dir = build.join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // Random bytes, so that the archive is as large as the payload.
        let mut payload = Vec::with_capacity(self.payload_bytes);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open("/dev/urandom")?,
                self.payload_bytes as u64,
            ),
            &mut payload,
        )?;
        std::fs::write(dir.join("payload.bin"), payload)?;
        let script = dir.join("install.sh");
        std::fs::write(
            &script,
            format!("#!/bin/bash\nset -euo pipefail\n{}", self.install),
        )?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let file = format!("{}.tar.gz", self.name);
        let status = Command::new("tar")
            .arg("-C")
            .arg(build)
            .args(["-czf", &file, &self.name])
            .current_dir(build)
            .status()
            .context("running tar")?;
        if !status.success() {
            bail!("tar failed for {}", self.name);
        }
        let path = build.join(&file);
        let output = Command::new(bin.join("cloudpillar"))
            .args(["artifact", "put"])
            .arg(&path)
            .arg("--blob-dir")
            .arg(blob_dir)
            .args(["--signing-secret", signing_secret])
            .output()
            .context("running cloudpillar artifact put")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "artifact put failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let field = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}: ")))
                .map(str::to_owned)
                .with_context(|| format!("artifact put printed no {key}: {stdout}"))
        };
        Ok(Artifact {
            name: field("name")?,
            path,
            sign: field("sign")?,
        })
    }
}

/// A Linux `Recipe` named `name` with `changeSpec.id` `id`: download `artifact`, unpack it,
/// run its installer into `install.log`, upload that log.
pub fn recipe(name: &str, id: &str, artifact: &Artifact) -> Value {
    let dir = artifact.name.trim_end_matches(".tar.gz");
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Recipe",
        "metadata": { "name": name },
        "spec": { "changeSpec": {
            "id": id,
            "patch": {
                "transitPackage": [{
                    "action": "singularDownload",
                    "description": "Download the signed patch archive",
                    "source": artifact.name,
                    "protocol": "iotmqtt",
                    "destinationPath": format!("./{}", artifact.name),
                    "sign": artifact.sign
                }],
                "preInstallConfig": [{
                    "action": "executeOnce",
                    "description": "Unpack the patch archive",
                    "shell": "bash",
                    "command": format!("rm -rf {dir} && tar xzf {}", artifact.name)
                }],
                "installSteps": [{
                    "action": "executeOnce",
                    "description": "Run the installer",
                    "shell": "bash",
                    "command": format!("./{dir}/install.sh > install.log 2>&1")
                }],
                "postInstallConfig": [{
                    "action": "periodicUpload",
                    "description": "Upload the installation log",
                    "filename": "./install.log",
                    "interval": 60,
                    "enabled": true
                }]
            }
        }}
    })
}

/// A `Rollout` of `recipe` to every test device, in `waves` (the CRD's wave list), pausing
/// after the first failure.
pub fn rollout(name: &str, recipe: &str, waves: Value) -> Value {
    json!({
        "apiVersion": "cloudpillar.io/v1alpha1",
        "kind": "Rollout",
        "metadata": { "name": name },
        "spec": {
            "recipeRef": { "name": recipe },
            "selector": { "matchLabels": { "cloudpillar.io/fleet": "test" } },
            "strategy": {
                "waves": waves,
                "maxConcurrent": 5,
                "failureThreshold": { "count": 0, "action": "Pause" },
                "deviceTimeout": "10m"
            }
        }
    })
}
