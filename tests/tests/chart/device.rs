//! A real agent against the chart's roles running as separate processes: it provisions
//! through the hub role's DPS and runs RunDiagnostics, whose upload the streamer role has
//! signed by the key holder role.

use std::time::Duration;

use anyhow::{Context, ensure};
use cloudpillar_protocol::signing::SigningKey;
use cloudpillar_tests::system::{AgentProcess, binaries};
use serde_json::{Value, json};

use super::roles::{Site, free_port};

/// ID scope of the hub role (it takes no flag for it).
const ID_SCOPE: &str = "0ne00EDGE01";
const STEPS: [&str; 5] = ["upload", "sign", "download", "verify", "compare"];

/// Starts an agent for `device` on the hub role and checks that RunDiagnostics passes every
/// step, `sign` included.
pub async fn diagnostics_pass(site: &Site, key: &SigningKey, device: &str) -> anyhow::Result<()> {
    // What `cloudpillar run` would publish: CA, ID scope, trusted key, group key.
    let server = site.path("server");
    let group_key = enrollment_group(site, "fleet").await?;
    write(&server.join("enrollments/fleet.key"), &group_key)?;
    write(
        &server.join("keys/recipe-signer.pub.pem"),
        &key.verifying_key().to_pem()?,
    )?;
    let ca = site.path("tls").join(cloudpillar_hub::tls::DEV_CA_FILE);
    let connection = json!({"caFile": ca.display().to_string(), "idScope": ID_SCOPE});
    write(&server.join("connection.json"), &connection.to_string())?;

    let agent = AgentProcess::start(
        &binaries()?,
        &site.path(&format!("agents/{device}")),
        device,
        free_port()?,
        &server,
        site.hub_mqtt,
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, state) = agent.call("GET", "GetDeviceState", None).await?;
        if state["reported"]["health"] == "connected" {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{device} did not connect:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let (status, report) = agent.call("GET", "RunDiagnostics", None).await?;
    let steps: Vec<(&str, &str)> = report["steps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s: &Value| {
            let text = |key: &str| s[key].as_str().unwrap_or_default();
            (text("name"), text("status"))
        })
        .collect();
    ensure!(
        status == 200 && steps == STEPS.map(|name| (name, "Success")),
        "RunDiagnostics: {status} {report}\n{}",
        agent.log()
    );
    Ok(())
}

/// Creates a symmetric-key DPS enrollment group on the hub role; its primary key.
async fn enrollment_group(site: &Site, group: &str) -> anyhow::Result<String> {
    let pem = std::fs::read(site.path("tls").join(cloudpillar_hub::tls::DEV_CA_FILE))?;
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?)
        .build()?;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    let token = cloudpillar_controllers::twin::service_token(
        &site.policy_key,
        "iothubowner",
        "localhost",
        expiry,
    )?;
    let url = format!(
        "https://localhost:{}/enrollmentGroups/{group}?api-version=2021-10-01",
        site.hub_https
    );
    let body = json!({"enrollmentGroupId": group, "attestation": {"type": "symmetricKey"}});
    let created = http
        .put(url)
        .header("Authorization", token)
        .json(&body)
        .send()
        .await?;
    let status = created.status();
    let answer: Value = created.json().await?;
    ensure!(
        status.is_success(),
        "enrollment group refused: {status} {answer}"
    );
    answer
        .pointer("/attestation/symmetricKey/primaryKey")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("enrollment group without a primary key")
}

/// Writes a file only its owner reads, as the agent wants its key files.
fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
